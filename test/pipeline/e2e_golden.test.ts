// The official InstantCharacter pipeline, reproduced step by step through charflow's real nodes on
// the golden model set: reference image -> encoders -> adapter -> 4 sampling steps -> VAE.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Services } from '../../nodes/services.ts';
import { type NodeHarness, openNodeHarness } from '../helpers/node-harness.ts';
import { LoadCharacter } from '../../nodes/load_character.ts';
import { SigLIPEncode } from '../../nodes/siglip_encode.ts';
import { DINOv2Encode } from '../../nodes/dinov2_encode.ts';
import { AdapterFuse } from '../../nodes/adapter_fuse.ts';
import { DiTSample } from '../../nodes/dit_sample.ts';
import { Decode } from '../../nodes/decode.ts';
import type { CharacterTokens, Conditioning, Latent, ModelSet, RgbImage, VisionFeatures } from '../../nodes/types.ts';
import { clipSpecialIds, goldenConfig, goldenPath, goldenStepCount, goldenTensors, expectClose, maxAbs } from '../helpers/goldens.ts';
import { e2eNormalization, e2eStagePath } from '../helpers/e2e.ts';
import { writeGoldenModelSet } from '../helpers/goldenset.ts';
import { type Tensor, f32 } from '../../models/tensor.ts';
import { decodeImage, pixelValues } from '../../nodes/lib/image.ts';
import { packLatents } from '../../models/sampling.ts';

const inputs = goldenTensors('instantcharacter_e2e', 'inputs.safetensors');
const outputs = goldenTensors('instantcharacter_e2e', 'outputs.safetensors');
const intermediates = goldenTensors('instantcharacter_e2e', 'intermediates.safetensors');

/** Services over a temporary data folder; harness.runs records every pool run (graph, feeds, outputs). */
let harness: NodeHarness;

let models: ModelSet;

beforeAll(async () => {
  harness = await openNodeHarness('charflow-e2e-', async (paths) => {
    copyFileSync(goldenPath('instantcharacter_e2e', 'reference.png'), join(paths.inputs, 'reference.png'));
    await writeGoldenModelSet(paths.models, { t5SeqLen: inputs.get('t5_input_ids')!.dims[1]!, clipSeqLen: inputs.get('clip_input_ids')!.dims[1]! });
  });
  models = harness.services.modelSet('golden');
}, 300_000);

afterAll(async () => {
  await harness?.close();
});

describe('InstantCharacter end to end, against the official pipeline', () => {
  it('encodes the prompt ids as the reference did', async () => {
    // The set's tokenizer writes the specials the reference ids carry.
    expect(clipSpecialIds(inputs.get('clip_input_ids')!)).toEqual({ bos: models.manifest.clip.bosId, eos: models.manifest.clip.eosId });
    const t5 = await harness.services.pool.run(models.path('t5'), { input_ids: inputs.get('t5_input_ids')! });
    console.log('prompt_embeds', expectClose(t5.last_hidden_state, inputs.get('prompt_embeds'), 1e-4, 'prompt_embeds'));
    const clip = await harness.services.pool.run(models.path('clip'), { input_ids: inputs.get('clip_input_ids')! });
    console.log('pooled', expectClose(clip.pooler_output, inputs.get('pooled_prompt_embeds'), 1e-4, 'pooled_prompt_embeds'));
  });

  it('reproduces features, adapter tokens, every step, the decoder output and the image', async () => {
    harness.runs.length = 0;
    const image = await harness.run<RgbImage>(LoadCharacter, { path: 'reference.png', square: 'stretch' }, 'image');
    // The pipeline stretches the reference to a square of its longer side (the square stage image).
    const [refH, refW] = inputs.get('reference_image_uint8')!.dims as [number, number, number];
    const square = await decodeImage(e2eStagePath('square'));
    expect([square.width, square.height]).toEqual([Math.max(refW, refH), Math.max(refW, refH)]);
    expect([image.width, image.height]).toEqual([square.width, square.height]);
    expect(Buffer.from(image.data).equals(Buffer.from(square.data)), 'square stage pixels').toBe(true);
    const siglip = await harness.run<VisionFeatures>(SigLIPEncode, { models, image }, 'features');
    const dinov2 = await harness.run<VisionFeatures>(DINOv2Encode, { models, image }, 'features');
    const character = await harness.run<CharacterTokens>(AdapterFuse, { models, siglip, dinov2 }, 'character');

    const magnitudeTol = (t: Tensor, base: number) => base * Math.max(1, maxAbs(t));
    const low = harness.runs.find((r) => r.model.endsWith('adapter_static.onnx'))!.feeds;
    for (const [name, key] of [['low_res_deep', 'image_embeds_low_res_deep'], ['low_res_shallow', 'image_embeds_low_res_shallow'], ['high_res_deep', 'image_embeds_high_res_deep']] as const) {
      const ref = intermediates.get(key)!;
      console.log(name, expectClose(low[name], ref, magnitudeTol(ref, 1e-4), name));
    }
    const refResampler = intermediates.get('resampler_input')!;
    console.log('resampler_input', expectClose(character.resamplerInput, refResampler, magnitudeTol(refResampler, 1e-4), 'resampler_input'));

    const noise: Latent = { samples: inputs.get('noise_latents')! };
    const [, , h, w] = noise.samples.dims as number[];
    const conditioning: Conditioning = { promptEmbeds: inputs.get('prompt_embeds')!, pooled: inputs.get('pooled_prompt_embeds')! };
    const steps = goldenStepCount(outputs);
    expect(outputs.get('timesteps')!.dims).toEqual([steps]);
    // Pixels per latent cell: the VAE halves the size once per block after the first.
    const vaeScale = 2 ** ((goldenConfig('vae_decoder')['block_out_channels'] as number[]).length - 1);
    harness.runs.length = 0;
    const latent = await harness.run<Latent>(DiTSample, {
      models, conditioning, character, noise, steps, width: w! * vaeScale, height: h! * vaeScale,
      guidance: (inputs.get('guidance_scale')!.data as Float32Array)[0], subject_scale: (inputs.get('subject_scale')!.data as Float32Array)[0],
    }, 'latent');

    const fluxRuns = harness.runs.filter((r) => r.model.endsWith('flux.onnx'));
    const timeRuns = harness.runs.filter((r) => r.model.endsWith('adapter_time.onnx'));
    expect(fluxRuns.length).toBe(steps);
    expect(timeRuns.length).toBe(steps);
    for (let i = 0; i < steps; i++) {
      const gold = (n: string) => outputs.get(`step.${i}.${n}`)!;
      expectClose(timeRuns[i]!.feeds.timestep, gold('projector_timesteps'), 0, `step ${i} projector timestep`);
      expectClose(fluxRuns[i]!.feeds.timestep, gold('transformer_timestep'), 0, `step ${i} transformer timestep`);
      const ip = expectClose(timeRuns[i]!.out.ip_hidden_states, gold('ip_hidden_states'), 2e-4, `step ${i} ip_hidden_states`);
      const v = expectClose(fluxRuns[i]!.out.noise_pred, gold('noise_pred'), 5e-4, `step ${i} noise_pred`);
      // After step i: what the next transformer run was fed, or after the last step the sampler's result, packed.
      const [, c, lh, lw] = latent.samples.dims as [number, number, number, number];
      const next = i + 1 < steps ? fluxRuns[i + 1]!.feeds.hidden_states!
        : f32(gold('latents').dims, packLatents(latent.samples.data as Float32Array, c, lh, lw));
      const lat = expectClose(next, gold('latents'), 5e-4, `step ${i} latents`);
      console.log(`step ${i}: ip ${ip.toExponential(2)} noise_pred ${v.toExponential(2)} latents ${lat.toExponential(2)}`);
    }
    console.log('final latents', expectClose(latent.samples, outputs.get('final_latents_unpacked'), 5e-4, 'final latents'));

    harness.runs.length = 0;
    const decoded = await harness.run<RgbImage>(Decode, { models, latent }, 'image');
    const vae = harness.runs.find((r) => r.model.endsWith('vae.onnx'))!;
    console.log('decoder_output', expectClose(vae.out.sample, outputs.get('decoder_output'), 2e-3, 'decoder_output'));
    console.log('image', expectClose(vae.out.image, outputs.get('image'), 1e-3, 'image'));
    const ref8 = await decodeImage(goldenPath('instantcharacter_e2e', 'output_image.png'));
    let maxPixel = 0;
    for (let i = 0; i < ref8.data.length; i++) maxPixel = Math.max(maxPixel, Math.abs(ref8.data[i]! - decoded.data[i]!));
    console.log('8-bit image max diff', maxPixel);
    expect(maxPixel).toBeLessThanOrEqual(1);
  });

  it('feeds the encoders exactly the pixel values of the reference stages (charflow resize is PIL-exact)', async () => {
    const stage = await decodeImage(e2eStagePath('low_res'));
    const image = await harness.run<RgbImage>(LoadCharacter, { path: 'reference.png', square: 'stretch' }, 'image');
    harness.runs.length = 0;
    await harness.run<VisionFeatures>(SigLIPEncode, { models, image }, 'features');
    const fed = harness.runs[0]!.feeds.pixel_values!;
    const { mean, std } = e2eNormalization('siglip');
    const expected = pixelValues([stage], mean, std);
    const first = f32(expected.dims, (fed.data as Float32Array).subarray(0, expected.data.length));
    expectClose(first, expected, 0, 'low-res pixel values');
  });
});
