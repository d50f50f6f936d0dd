// The official pipeline with a negative prompt and true CFG, reproduced through charflow's nodes on the
// golden model set: the e2e case's inputs, plus the negative prompt's embeddings and the true CFG scale.
// Both passes of a step run as ONE batch-2 transformer call (positive first), with the same character
// tokens and subject scale and the same distilled guidance; noise = neg + cfg * (pos - neg).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import type { Services } from '../../nodes/services.ts';
import { type NodeHarness, openNodeHarness } from '../helpers/node-harness.ts';
import { LoadCharacter } from '../../nodes/load_character.ts';
import { SigLIPEncode } from '../../nodes/siglip_encode.ts';
import { DINOv2Encode } from '../../nodes/dinov2_encode.ts';
import { AdapterFuse } from '../../nodes/adapter_fuse.ts';
import { DiTSample } from '../../nodes/dit_sample.ts';
import { Decode } from '../../nodes/decode.ts';
import type { CharacterTokens, Conditioning, Latent, ModelSet, RgbImage, VisionFeatures } from '../../nodes/types.ts';
import { expectClose, goldenFind, goldenStepCount, goldenTensors, need, scalarOf } from '../helpers/goldens.ts';
import { e2eSeqLens, writeGoldenModelSet } from '../helpers/goldenset.ts';
import { type Tensor, f32, toFloat32 } from '../../models/tensor.ts';
import { decodeImage } from '../../nodes/lib/image.ts';
import { packLatents } from '../../models/sampling.ts';

const BASE = 'instantcharacter_e2e';
const CASE = 'instantcharacter_true_cfg';
const e2eInputs = goldenTensors(BASE, 'inputs.safetensors');
const cfgInputs = goldenTensors(CASE, 'inputs.safetensors');
const outputs = goldenTensors(CASE, 'outputs.safetensors');
// The case README's tolerances (as instantcharacter_e2e).
const STEP_TOL = 5e-4;
const IP_TOL = 2e-4;
const DECODER_TOL = 2e-3;
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
  harness = await openNodeHarness('charflow-truecfg-', async (paths) => {
    const ref = goldenFind(BASE, /^reference\.png$/);
    copyFileSync(ref, join(paths.inputs, basename(ref)));
    await writeGoldenModelSet(paths.models, e2eSeqLens());
  });
  models = harness.services.modelSet('golden');
}, 600_000);

afterAll(async () => {
  await harness?.close();
});

describe('negative prompt with true CFG, against the official pipeline', () => {
  it('harness.runs both passes of each step as one batch-2 call and matches every step and the image', async () => {
    const image = await harness.run<RgbImage>(LoadCharacter, { path: basename(goldenFind(BASE, /^reference\.png$/)), square: 'stretch' }, 'image');
    const siglip = await harness.run<VisionFeatures>(SigLIPEncode, { models, image }, 'features');
    const dinov2 = await harness.run<VisionFeatures>(DINOv2Encode, { models, image }, 'features');
    const character = await harness.run<CharacterTokens>(AdapterFuse, { models, siglip, dinov2 }, 'character');

    const noise: Latent = { samples: need(e2eInputs, 'noise_latents') };
    const [, , h, w] = noise.samples.dims as number[];
    const conditioning: Conditioning = { promptEmbeds: need(e2eInputs, 'prompt_embeds'), pooled: need(e2eInputs, 'pooled_prompt_embeds') };
    const negative: Conditioning = { promptEmbeds: need(cfgInputs, 'negative_prompt_embeds'), pooled: need(cfgInputs, 'negative_pooled_prompt_embeds') };
    const steps = goldenStepCount(outputs);
    const trueCfg = scalarOf(need(cfgInputs, 'true_cfg_scale'));
    expect(trueCfg).toBeGreaterThan(1);
    harness.runs.length = 0;
    const latent = await harness.run<Latent>(DiTSample, {
      models, conditioning, negative, character, noise, steps, width: w! * 8, height: h! * 8, true_cfg: trueCfg,
      guidance: scalarOf(need(e2eInputs, 'guidance_scale')), subject_scale: scalarOf(need(e2eInputs, 'subject_scale')),
    }, 'latent');

    const flux = harness.runs.filter((r) => r.model.endsWith('flux.onnx'));
    const time = harness.runs.filter((r) => r.model.endsWith('adapter_time.onnx'));
    expect(flux.length).toBe(steps); // one call per step ...
    expect(time.length).toBe(steps); // ... and the character's tokens once per step, for both passes
    for (let i = 0; i < steps; i++) {
      const gold = (n: string) => need(outputs, `step.${i}.${n}`);
      const feeds = flux[i]!.feeds;
      expect(feeds.hidden_states!.dims[0], 'batch of the call').toBe(2);
      // The same guidance and timestep in both passes.
      expect(new Set(toFloat32(feeds.guidance!)).size).toBe(1);
      expect(new Set(toFloat32(feeds.timestep!)).size).toBe(1);
      const ip = expectClose(time[i]!.out.ip_hidden_states, gold('ip_hidden_states'), IP_TOL, `step ${i} ip_hidden_states`);
      const pred = flux[i]!.out.noise_pred!;
      const pos = expectClose(item(pred, 0), gold('noise_pred_positive'), STEP_TOL, `step ${i} positive noise_pred`);
      const neg = expectClose(item(pred, 1), gold('noise_pred_negative'), STEP_TOL, `step ${i} negative noise_pred`);
      const [, c, lh, lw] = latent.samples.dims as number[];
      const after = i + 1 < steps ? item(flux[i + 1]!.feeds.hidden_states!, 0) : f32(gold('latents').dims, packLatents(toFloat32(latent.samples), c!, lh!, lw!));
      const lat = expectClose(after, gold('latents'), STEP_TOL, `step ${i} latents`);
      console.log(`step ${i}: ip ${ip.toExponential(2)} pos ${pos.toExponential(2)} neg ${neg.toExponential(2)} latents ${lat.toExponential(2)}`);
    }

    harness.runs.length = 0;
    const decoded = await harness.run<RgbImage>(Decode, { models, latent }, 'image');
    const vae = harness.runs.find((r) => r.model.endsWith('vae.onnx'))!;
    console.log('decoder_output', expectClose(vae.out.sample, need(outputs, 'decoder_output'), DECODER_TOL, 'decoder_output'));
    console.log('image', expectClose(vae.out.image, need(outputs, 'image'), IMAGE_TOL, 'image'));
    const ref8 = await decodeImage(goldenFind(CASE, /^output_image\.png$/));
    let maxPixel = 0;
    for (let i = 0; i < ref8.data.length; i++) maxPixel = Math.max(maxPixel, Math.abs(ref8.data[i]! - decoded.data[i]!));
    expect(maxPixel).toBeLessThanOrEqual(1);
  });
});
