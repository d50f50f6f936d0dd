// diffusers FluxInpaintPipeline (plain FLUX), reproduced through charflow's nodes on the golden model set: Load
// Mask reads the case's mask picture, DiT Sample runs with the recorded init latents, noise and the mask, Decode
// makes the picture. Every shape, count and tolerance is read from the case's files (CHARFLOW_GOLDENS may point
// at another case set in the same layout).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { type NodeHarness, openNodeHarness } from '../helpers/node-harness.ts';
import { DiTSample } from '../../nodes/dit_sample.ts';
import { Decode } from '../../nodes/decode.ts';
import { LoadMask } from '../../nodes/load_mask.ts';
import type { Conditioning, Latent, Mask, ModelSet, RgbImage } from '../../nodes/types.ts';
import {
  expectClose, goldenFind, goldenReadme, goldenStepCount, goldenTensors, need, pythonFloat, scalarOf,
} from '../helpers/goldens.ts';
import { writeGoldenModelSet } from '../helpers/goldenset.ts';
import { type Tensor, f32, toFloat32 } from '../../models/tensor.ts';
import { eulerStep, flowMatchSchedule, packLatents, truncateSchedule, unpackLatents } from '../../models/sampling.ts';
import { binarizeMask, latentGridMask, packMask, resizeMask } from '../../nodes/lib/mask.ts';
import { decodeImage } from '../../nodes/lib/image.ts';

const CASE = 'flux_inpaint';
const inputs = goldenTensors(CASE, 'inputs.safetensors');
const outputs = goldenTensors(CASE, 'outputs.safetensors');

/** A tolerance the case README states in its "Tolerances ..." line, e.g. "step latents 5e-4" or "image 1e-3". */
function readmeTolerance(what: string): number {
  const line = goldenReadme(CASE).split('\n').find((l) => /^Tolerances\b/i.test(l.trim()));
  if (!line) throw new Error(`${CASE}/README.md states no tolerances`);
  const m = new RegExp(`\\b${what}\\s+(\\d+(?:\\.\\d+)?(?:e-?\\d+)?)`, 'i').exec(line);
  if (!m) throw new Error(`${CASE}/README.md: no "${what}" tolerance in "${line.trim()}"`);
  return Number(m[1]);
}
const STEP_TOL = readmeTolerance('step latents');
const IMAGE_TOL = readmeTolerance('image');

let harness: NodeHarness;
let models: ModelSet;
let mask: Mask;

/** [1, L, 4C] packed latents -> the unpacked [1, C, h, w] latent over an h x w grid. */
function unpacked(t: Tensor, h: number, w: number): Latent {
  const c = t.dims[2]! / 4;
  return { samples: f32([1, c, h, w], unpackLatents(toFloat32(t), c, h, w)) };
}

beforeAll(async () => {
  harness = await openNodeHarness('charflow-inpaint-', async (paths) => {
    await writeGoldenModelSet(paths.models, { t5SeqLen: need(inputs, 't5_input_ids').dims[1]!, clipSeqLen: need(inputs, 'clip_input_ids').dims[1]! });
  });
  models = harness.services.modelSet('golden');
  const png = goldenFind(CASE, /^mask\.png$/);
  copyFileSync(png, join(harness.services.paths.inputs, basename(png)));
  mask = await harness.run<Mask>(LoadMask, { path: basename(png) }, 'mask');
}, 600_000);

afterAll(async () => {
  await harness?.close();
});

describe('inpainting against diffusers FluxInpaintPipeline', () => {
  it('binarizes the mask picture as the pipeline\'s mask processor and packs it on the latent grid exactly', () => {
    const ref = need(inputs, 'mask_image');
    const [, , H, W] = ref.dims as number[];
    const binary = binarizeMask(resizeMask(mask, W!, H!));
    expectClose(f32([1, 1, H!, W!], binary.data), ref, 0, 'mask_image');
    const packed = need(outputs, 'mask_packed');
    const [, L, C4] = packed.dims as number[];
    const down = models.manifest.vae.downscale;
    const h = H! / down;
    const w = W! / down;
    expect((h / 2) * (w / 2)).toBe(L);
    const grid = latentGridMask(mask, W!, H!, h, w, { grow: 0, feather: 0, mode: 'binary' });
    expectClose(f32([1, L!, C4!], packMask(grid, C4! / 4, h, w)), packed, 0, 'mask_packed');
  });

  it('reproduces the start latents, every Euler step and blend, and the image', async () => {
    const [, , H, W] = need(inputs, 'mask_image').dims as number[];
    const down = models.manifest.vae.downscale;
    const h = H! / down;
    const w = W! / down;
    const packedDims = need(inputs, 'image_latents_packed').dims;
    const c = packedDims[2]! / 4;
    const init = unpacked(need(inputs, 'image_latents_packed'), h, w);
    const noise = unpacked(need(inputs, 'noise_packed'), h, w);
    const steps = scalarOf(need(inputs, 'num_inference_steps'));
    const strength = pythonFloat(need(inputs, 'strength'));
    const full = flowMatchSchedule(steps, (h / 2) * (w / 2));
    expect(Array.from(full.sigmas)).toEqual(Array.from(toFloat32(need(outputs, 'sigmas'))));
    const kept = truncateSchedule(full, strength);
    const recorded = goldenStepCount(outputs);
    expect(kept.timesteps.length).toBe(recorded);

    const conditioning: Conditioning = { promptEmbeds: need(inputs, 'prompt_embeds'), pooled: need(inputs, 'pooled_prompt_embeds') };
    harness.runs.length = 0;
    const latent = await harness.run<Latent>(DiTSample, {
      models, conditioning, init, noise, mask, steps, denoise: strength, width: W, height: H,
      guidance: scalarOf(need(inputs, 'guidance_scale')),
    }, 'latent');
    const flux = harness.runs.filter((r) => r.model.endsWith('flux.onnx'));
    expect(flux.length).toBe(recorded);

    const start = expectClose(flux[0]!.feeds.hidden_states, need(outputs, 'start_latents_packed'), STEP_TOL, 'start latents');
    console.log(`start latents ${start.toExponential(2)}`);
    const final = f32(packedDims as number[], packLatents(toFloat32(latent.samples), c, h, w));
    for (let i = 0; i < recorded; i++) {
      const gold = (n: string) => need(outputs, `step.${i}.${n}`);
      expectClose(flux[i]!.feeds.timestep, gold('transformer_timestep'), 0, `step ${i} timestep`);
      const v = expectClose(flux[i]!.out.noise_pred, gold('noise_pred'), STEP_TOL, `step ${i} noise_pred`);
      // The Euler step from what the transformer saw, before the blend puts the kept region back.
      const euler = new Float32Array(toFloat32(flux[i]!.feeds.hidden_states!));
      eulerStep(euler, toFloat32(flux[i]!.out.noise_pred!), kept.sigmas[i]!, kept.sigmas[i + 1]!);
      const e = expectClose(f32(packedDims as number[], euler), gold('euler_latents'), STEP_TOL, `step ${i} euler_latents`);
      const after = i + 1 < recorded ? flux[i + 1]!.feeds.hidden_states : final;
      const lat = expectClose(after, gold('latents'), STEP_TOL, `step ${i} latents`);
      console.log(`step ${i}: noise_pred ${v.toExponential(2)} euler ${e.toExponential(2)} latents ${lat.toExponential(2)}`);
    }
    // The kept region is the init latents bit for bit; the repainted region moved.
    const m = toFloat32(need(outputs, 'mask_packed'));
    const initPacked = toFloat32(need(inputs, 'image_latents_packed'));
    const out = toFloat32(final);
    let moved = 0;
    for (let k = 0; k < m.length; k++) {
      if (m[k] === 0) expect(out[k]).toBe(initPacked[k]);
      else if (out[k] !== initPacked[k]) moved++;
    }
    expect(moved).toBeGreaterThan(0);

    harness.runs.length = 0;
    const decoded = await harness.run<RgbImage>(Decode, { models, latent }, 'image');
    const vae = harness.runs.find((r) => r.model.endsWith('vae.onnx'))!;
    console.log('image', expectClose(vae.out.image, need(outputs, 'image'), IMAGE_TOL, 'image'));
    const ref8 = await decodeImage(goldenFind(CASE, /^output_image\.png$/));
    let maxPixel = 0;
    for (let i = 0; i < ref8.data.length; i++) maxPixel = Math.max(maxPixel, Math.abs(ref8.data[i]! - decoded.data[i]!));
    expect(maxPixel).toBeLessThanOrEqual(1);
  });
});
