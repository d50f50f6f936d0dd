// Section 10: what the sampler options cost. A batch runs as one transformer call per step: the figure is
// the per-image step time at batch 4 over batch 1. True CFG runs both passes as one batch-2 call: the
// figure is that call's time over two batch-1 calls. Mid-size DiT (FLUX's head dim and block kinds at 1/6
// of its width) at 512x512 with the pipeline's 512 text tokens and one character, fed as DiTSample feeds it.
import { performance } from 'node:perf_hooks';
import { fluxRopeFor } from '../models/rope.ts';
import { f32, type Tensor } from '../models/tensor.ts';
import { MID_ADAPTER, MID_FLUX, MID_SET_NAME } from './lib/fixtures.ts';
import type { BenchContext } from './lib/context.ts';
import { type Figure, info, judged } from './lib/report.ts';
import { median } from './lib/stats.ts';
import { noise } from './lib/tensors.ts';
import { cpuMeter } from './lib/cpuload.ts';

const GRID = 32; // 512 x 512: 32 x 32 packed latent tokens
const TEXT = 512;

/** One step's feeds for `batch` images (the character's tokens and mask are shared by the batch). */
function feeds(batch: number): Record<string, Tensor> {
  const L = GRID * GRID;
  const rope = fluxRopeFor(TEXT, GRID, GRID, MID_FLUX.axesDimsRope, MID_FLUX.ropeTheta);
  return {
    hidden_states: noise([batch, L, MID_FLUX.inChannels], 1),
    encoder_hidden_states: noise([batch, TEXT, MID_FLUX.jointAttentionDim], 2),
    pooled_projections: noise([batch, MID_FLUX.pooledProjectionDim], 3),
    timestep: f32([batch], new Array<number>(batch).fill(0.75)),
    guidance: f32([batch], new Array<number>(batch).fill(3.5)),
    rope_cos: rope.cos,
    rope_sin: rope.sin,
    ip_hidden_states: noise([1, MID_ADAPTER.numQueries, MID_ADAPTER.outputDim], 4),
    ip_masks: f32([1, L], new Float32Array(L).fill(0.9)),
  };
}

export async function benchSamplerOptions(ctx: BenchContext): Promise<Figure[]> {
  const pool = ctx.services.pool;
  const flux = ctx.services.modelSet(MID_SET_NAME).path('flux');
  const f1 = feeds(1);
  const f2 = feeds(2);
  const f4 = feeds(4);
  const time = async (f: Record<string, Tensor>, calls = 1): Promise<number> => {
    const s = performance.now();
    for (let i = 0; i < calls; i++) await pool.run(flux, f);
    return performance.now() - s;
  };
  await time(f1); // load and warm up
  await time(f4);
  const reps = ctx.quick ? 2 : 5;
  const one: number[] = [];
  const four: number[] = [];
  const two: number[] = [];
  const pair: number[] = [];
  const meter = cpuMeter();
  // Interleaved, so a disturbance hits every variant alike; the ratios take the best (least disturbed) run of each.
  for (let r = 0; r < reps; r++) {
    one.push(await time(f1));
    four.push(await time(f4));
    pair.push(await time(f2));
    two.push(await time(f1, 2));
  }
  const otherCores = meter().otherCores;
  const best = (xs: number[]): number => Math.min(...xs);
  const perImage1 = best(one);
  const perImage4 = best(four) / 4;
  ctx.details.samplerOptions = { one, four, pair, two, grid: GRID, text: TEXT };
  const where = `mid-size DiT step (FLUX 4 heads x 128, 1 double + 2 single blocks), 512x512, T=${TEXT}, one character; best of ${reps}, interleaved`;
  const medians = (a: number[], b: number[], div = 1): string => `medians ${(median(a) / div).toFixed(1)} vs ${median(b).toFixed(1)} ms`;
  return [
    info(10, 'DiT step per image, batch 1', perImage1, 'ms', { samples: one, otherCores, note: where }),
    info(10, 'DiT step per image, batch 4', perImage4, 'ms', { samples: four.map((v) => v / 4), otherCores, note: 'one batch-4 call / 4' }),
    judged(10, 'per-image time, batch 4 / batch 1', perImage4 / perImage1, 'x', '<=', 1.05, {
      otherCores, note: `${perImage4.toFixed(1)} ms vs ${perImage1.toFixed(1)} ms per image per step (best runs; ${medians(four, one, 4)})`,
    }),
    judged(10, 'true CFG: one batch-2 call / two calls', best(pair) / best(two), 'x', '<=', 1.05, {
      otherCores, note: `${best(pair).toFixed(1)} ms for the batch-2 call (positive + negative) vs ${best(two).toFixed(1)} ms for two batch-1 calls (best runs; ${medians(pair, two)})`,
    }),
  ];
}
