import { describe, expect, it } from 'vitest';
import { type ScheduleConfig, flowMatchSchedule, packLatents, seededNormal, unpackLatents } from '../../models/sampling.ts';
import { fluxImageIds } from '../../models/rope.ts';
import { goldenConfig, goldenStepCount, goldenTensors, expectClose } from '../helpers/goldens.ts';
import { f32 } from '../../models/tensor.ts';

const inputs = goldenTensors('instantcharacter_e2e', 'inputs.safetensors');
const outputs = goldenTensors('instantcharacter_e2e', 'outputs.safetensors');

describe('flow-matching schedule', () => {
  it('matches the reference sigmas, timesteps and mu', () => {
    const noise = inputs.get('noise_latents')!;
    const [, , h, w] = noise.dims as [number, number, number, number];
    const steps = goldenStepCount(outputs);
    const sc = goldenConfig('instantcharacter_e2e', 'scheduler_config.json');
    const cfg: ScheduleConfig = {
      baseImageSeqLen: sc['base_image_seq_len'] as number, maxImageSeqLen: sc['max_image_seq_len'] as number,
      baseShift: sc['base_shift'] as number, maxShift: sc['max_shift'] as number, numTrainTimesteps: sc['num_train_timesteps'] as number,
    };
    const s = flowMatchSchedule(steps, (h / 2) * (w / 2), cfg);
    expect(s.mu).toBeCloseTo((outputs.get('mu')!.data as Float64Array)[0]!, 12);
    expect(Array.from(s.sigmas)).toEqual(Array.from(outputs.get('sigmas')!.data as Float32Array));
    expect(Array.from(s.timesteps)).toEqual(Array.from(outputs.get('timesteps')!.data as Float32Array));
  });

  it('gives mu = 1.15 at 1024x1024', () => {
    expect(flowMatchSchedule(28, 64 * 64).mu).toBeCloseTo(1.15, 12);
  });

  it('rejects a zero step count', () => {
    expect(() => flowMatchSchedule(0, 16)).toThrow(/positive integer/);
  });
});

describe('latent layout', () => {
  it('packs as the reference pipeline and unpacks back', () => {
    const noise = inputs.get('noise_latents')!;
    const [, c, h, w] = noise.dims as [number, number, number, number];
    const packed = packLatents(noise.data as Float32Array, c, h, w);
    expectClose(f32([1, (h / 2) * (w / 2), c * 4], packed), inputs.get('noise_latents_packed'), 0, 'packed');
    expect(unpackLatents(packed, c, h, w)).toEqual(noise.data);
  });

  it('numbers image tokens (0, row, col)', () => {
    const ids = inputs.get('img_ids')!;
    const [, , h, w] = inputs.get('noise_latents')!.dims as [number, number, number, number];
    expect(Array.from(fluxImageIds(h / 2, w / 2))).toEqual(Array.from(ids.data as Float32Array));
  });

  it('draws the same noise for the same seed and different noise otherwise', () => {
    const a = seededNormal(42, 1001);
    expect(seededNormal(42, 1001)).toEqual(a);
    expect(seededNormal(43, 1001)).not.toEqual(a);
    const mean = a.reduce((s, v) => s + v, 0) / a.length;
    const variance = a.reduce((s, v) => s + (v - mean) ** 2, 0) / a.length;
    expect(Math.abs(mean)).toBeLessThan(0.1);
    expect(Math.abs(variance - 1)).toBeLessThan(0.15);
  });
});
