// diffusers FluxImg2ImgPipeline (plain FLUX), reproduced step by step through charflow's nodes on the
// golden model set: Load Image -> VAE input, then DiTSample with an init latent and denoise, then Decode.
// The case records the encoder's latent sample and the noise (torch's RNG), so both are fed in.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import type { Services } from '../../nodes/services.ts';
import { type NodeHarness, openNodeHarness } from '../helpers/node-harness.ts';
import { DiTSample } from '../../nodes/dit_sample.ts';
import { Decode } from '../../nodes/decode.ts';
import { LoadImage } from '../../nodes/load_image.ts';
import { VAEEncode, vaeInput } from '../../nodes/vae_encode.ts';
import type { Conditioning, Latent, ModelSet, RgbImage } from '../../nodes/types.ts';
import { expectClose, goldenFind, goldenStepCount, goldenTensors, need, pythonFloat, scalarOf } from '../helpers/goldens.ts';
import { writeGoldenModelSet } from '../helpers/goldenset.ts';
import { type Tensor, f32, toFloat32 } from '../../models/tensor.ts';
import { flowMatchSchedule, packLatents, truncateSchedule } from '../../models/sampling.ts';
import { decodeImage } from '../../nodes/lib/image.ts';

const CASE = 'flux_img2img';
const inputs = goldenTensors(CASE, 'inputs.safetensors');
const outputs = goldenTensors(CASE, 'outputs.safetensors');
const STEP_TOL = 5e-4;
const IMAGE_TOL = 1e-3;

/** Services over a temporary data folder; harness.runs records every pool run (graph, feeds, outputs). */
let harness: NodeHarness;

let models: ModelSet;

/** Batch item i of [B, ...], as [1, ...]. */
function item(t: Tensor, i: number): Tensor {
  const d = toFloat32(t);
  const per = d.length / t.dims[0]!;
  return f32([1, ...t.dims.slice(1)], d.slice(i * per, (i + 1) * per));
}

beforeAll(async () => {
  harness = await openNodeHarness('charflow-img2img-', async (paths) => {
    await writeGoldenModelSet(paths.models, { t5SeqLen: need(inputs, 't5_input_ids').dims[1]!, clipSeqLen: need(inputs, 'clip_input_ids').dims[1]! });
  });
  models = harness.services.modelSet('golden');
}, 600_000);

afterAll(async () => {
  await harness?.close();
});

describe('image-to-image against diffusers FluxImg2ImgPipeline', () => {
  it('loads the init picture into exactly the pipeline\'s VAE input', async () => {
    const png = goldenFind(CASE, /^init_image\.png$/);
    copyFileSync(png, join(harness.services.paths.inputs, basename(png)));
    const vin = need(inputs, 'vae_input');
    const [, , H, W] = vin.dims as number[];
    const image = await harness.run<RgbImage>(LoadImage, { path: basename(png), width: W, height: H }, 'image');
    expect([image.width, image.height]).toEqual([W, H]);
    expectClose(vaeInput(image), vin, 1e-7, 'vae_input');
    // The encoder harness.runs on it and gives a latent of the recorded sample's shape.
    const latent = await harness.run<Latent>(VAEEncode, { models, image }, 'latent');
    expect(latent.samples.dims).toEqual(need(outputs, 'image_latents').dims);
  });

  it('reproduces the schedule, the start latents, every step and the image', async () => {
    const init: Latent = { samples: need(outputs, 'image_latents') };
    const noise: Latent = { samples: need(inputs, 'noise') };
    const [, c, h, w] = noise.samples.dims as [number, number, number, number];
    const steps = scalarOf(need(inputs, 'num_inference_steps'));
    const strength = pythonFloat(need(inputs, 'strength'));
    const full = flowMatchSchedule(steps, (h / 2) * (w / 2));
    expect(Array.from(full.sigmas)).toEqual(Array.from(toFloat32(need(outputs, 'sigmas'))));
    const kept = truncateSchedule(full, strength);
    expect(kept.timesteps[0]).toBe(scalarOf(need(outputs, 'latent_timestep')));
    const recorded = goldenStepCount(outputs);
    expect(kept.timesteps.length).toBe(recorded);

    const conditioning: Conditioning = { promptEmbeds: need(inputs, 'prompt_embeds'), pooled: need(inputs, 'pooled_prompt_embeds') };
    harness.runs.length = 0;
    const latent = await harness.run<Latent>(DiTSample, {
      models, conditioning, init, noise, steps, denoise: strength, width: w * 8, height: h * 8,
      guidance: scalarOf(need(inputs, 'guidance_scale')),
    }, 'latent');
    const flux = harness.runs.filter((r) => r.model.endsWith('flux.onnx'));
    expect(flux.length).toBe(recorded);
    expect(harness.runs.filter((r) => r.model.endsWith('adapter_time.onnx')).length).toBe(0); // plain FLUX: no character

    const start = expectClose(flux[0]!.feeds.hidden_states, need(outputs, 'start_latents_packed'), STEP_TOL, 'start latents');
    const startUnpacked = need(outputs, 'start_latents');
    expectClose(f32([1, (h / 2) * (w / 2), 4 * c], packLatents(toFloat32(startUnpacked), c, h, w)), need(outputs, 'start_latents_packed'), 0, 'packing');
    console.log(`start latents ${start.toExponential(2)}`);
    for (let i = 0; i < recorded; i++) {
      const gold = (n: string) => need(outputs, `step.${i}.${n}`);
      expectClose(flux[i]!.feeds.timestep, gold('transformer_timestep'), 0, `step ${i} timestep`);
      const v = expectClose(flux[i]!.out.noise_pred, gold('noise_pred'), STEP_TOL, `step ${i} noise_pred`);
      const after = i + 1 < recorded ? flux[i + 1]!.feeds.hidden_states : f32([1, (h / 2) * (w / 2), 4 * c], packLatents(toFloat32(latent.samples), c, h, w));
      const lat = expectClose(after, gold('latents'), STEP_TOL, `step ${i} latents`);
      console.log(`step ${i}: noise_pred ${v.toExponential(2)} latents ${lat.toExponential(2)}`);
    }

    harness.runs.length = 0;
    const decoded = await harness.run<RgbImage>(Decode, { models, latent }, 'image');
    const vae = harness.runs.find((r) => r.model.endsWith('vae.onnx'))!;
    console.log('image', expectClose(item(vae.out.image!, 0), need(outputs, 'image'), IMAGE_TOL, 'image'));
    const ref8 = await decodeImage(goldenFind(CASE, /^output_image\.png$/));
    let maxPixel = 0;
    for (let i = 0; i < ref8.data.length; i++) maxPixel = Math.max(maxPixel, Math.abs(ref8.data[i]! - decoded.data[i]!));
    expect(maxPixel).toBeLessThanOrEqual(1);
  });
});
