// The instantcharacter_e2e pipeline on golden sets whose transformer and VAE write attention each way
// (models/layers.ts AttentionForm): the fused MultiHeadAttention and the 'auto' If give today's (plain) image
// within 1e-5.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { type NodeHarness, openNodeHarness } from '../helpers/node-harness.ts';
import { LoadCharacter } from '../../nodes/load_character.ts';
import { SigLIPEncode } from '../../nodes/siglip_encode.ts';
import { DINOv2Encode } from '../../nodes/dinov2_encode.ts';
import { AdapterFuse } from '../../nodes/adapter_fuse.ts';
import { DiTSample } from '../../nodes/dit_sample.ts';
import { Decode } from '../../nodes/decode.ts';
import type { CharacterTokens, Conditioning, Latent, RgbImage, VisionFeatures } from '../../nodes/types.ts';
import { FUSED_FROM_SCORES } from '../../models/layers.ts';
import { goldenConfig, goldenPath, goldenStepCount, goldenTensors, maxAbsDiff } from '../helpers/goldens.ts';
import { e2eSeqLens, writeGoldenModelSet } from '../helpers/goldenset.ts';
import type { Tensor } from '../../models/tensor.ts';

const inputs = goldenTensors('instantcharacter_e2e', 'inputs.safetensors');
const outputs = goldenTensors('instantcharacter_e2e', 'outputs.safetensors');
const SETS = { plain: 'golden_plain', fused: 'golden_fused', auto: 'golden_auto' } as const;

let harness: NodeHarness;

beforeAll(async () => {
  harness = await openNodeHarness('charflow-attn-e2e-', async (paths) => {
    copyFileSync(goldenPath('instantcharacter_e2e', 'reference.png'), join(paths.inputs, 'reference.png'));
    await writeGoldenModelSet(paths.models, { ...e2eSeqLens(), attention: { form: 'plain' } }, SETS.plain);
    await writeGoldenModelSet(paths.models, { ...e2eSeqLens(), attention: { form: 'fused' } }, SETS.fused);
    await writeGoldenModelSet(paths.models, e2eSeqLens(), SETS.auto);
  });
}, 300_000);

afterAll(async () => {
  await harness?.close();
});

describe('instantcharacter_e2e with fused attention', () => {
  it('gives the plain form\'s image within 1e-5 fused, and exactly through the auto set below its threshold', async () => {
    const plainSet = harness.services.modelSet(SETS.plain);
    const image = await harness.run<RgbImage>(LoadCharacter, { path: 'reference.png', square: 'stretch' }, 'image');
    const siglip = await harness.run<VisionFeatures>(SigLIPEncode, { models: plainSet, image }, 'features');
    const dinov2 = await harness.run<VisionFeatures>(DINOv2Encode, { models: plainSet, image }, 'features');
    const character = await harness.run<CharacterTokens>(AdapterFuse, { models: plainSet, siglip, dinov2 }, 'character');
    const noise: Latent = { samples: inputs.get('noise_latents')! };
    const [, , h, w] = noise.samples.dims as number[];
    const vaeScale = 2 ** ((goldenConfig('vae_decoder')['block_out_channels'] as number[]).length - 1);
    const conditioning: Conditioning = { promptEmbeds: inputs.get('prompt_embeds')!, pooled: inputs.get('pooled_prompt_embeds')! };

    const imageOf = async (set: string): Promise<Tensor> => {
      const models = harness.services.modelSet(set);
      const latent = await harness.run<Latent>(DiTSample, {
        models, conditioning, character, noise, steps: goldenStepCount(outputs), width: w! * vaeScale, height: h! * vaeScale,
        guidance: (inputs.get('guidance_scale')!.data as Float32Array)[0], subject_scale: (inputs.get('subject_scale')!.data as Float32Array)[0],
      }, 'latent');
      harness.runs.length = 0;
      await harness.run<RgbImage>(Decode, { models, latent }, 'image');
      return harness.runs.find((r) => r.model.endsWith('vae.onnx'))!.out.image!;
    };
    const plain = await imageOf(SETS.plain);
    const fused = await imageOf(SETS.fused);
    const auto = await imageOf(SETS.auto);
    const d = maxAbsDiff(fused, plain);
    console.log(`image: fused vs plain max abs diff ${d}; auto vs plain ${maxAbsDiff(auto, plain)}`);
    expect(d).toBeLessThanOrEqual(1e-5);
    expect(harness.services.modelSet(SETS.auto).manifest.flux.attention).toEqual({ form: 'auto', fusedFrom: FUSED_FROM_SCORES });
    // Below the threshold the If's plain branch runs: the same ops, though onnxruntime optimises a subgraph
    // apart from the main graph, so the last bits may differ.
    expect(maxAbsDiff(auto, plain)).toBeLessThanOrEqual(1e-5);
  }, 300_000);
});
