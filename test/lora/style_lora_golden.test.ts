// The official InstantCharacter pipeline after flux_load_lora merged a kohya style LoRA (instantcharacter_style_lora),
// reproduced with the LoRA applied at run time (LoraLoader): the merged-weight deltas, the LoRA'd CLIP pooled
// embedding, every sampling step and the image. Tolerances and counts come from the case README.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { type NodeHarness, openNodeHarness } from '../helpers/node-harness.ts';
import { LoadCharacter } from '../../nodes/load_character.ts';
import { SigLIPEncode } from '../../nodes/siglip_encode.ts';
import { DINOv2Encode } from '../../nodes/dinov2_encode.ts';
import { AdapterFuse } from '../../nodes/adapter_fuse.ts';
import { DiTSample } from '../../nodes/dit_sample.ts';
import { Decode } from '../../nodes/decode.ts';
import { LoraLoader } from '../../nodes/lora_loader.ts';
import type { CharacterTokens, Conditioning, Latent, ModelSet, RgbImage, VisionFeatures } from '../../nodes/types.ts';
import { goldenConfig, goldenPath, goldenReadme, goldenStepCount, goldenTensors, expectClose, scalarOf } from '../helpers/goldens.ts';
import { writeGoldenModelSet } from '../helpers/goldenset.ts';
import { type Tensor, f32 } from '../../models/tensor.ts';
import { decodeImage } from '../../nodes/lib/image.ts';
import { packLatents } from '../../models/sampling.ts';
import { fluxConfigFromJson } from '../../models/flux.ts';
import { clipConfigFromJson } from '../../models/clip.ts';
import { clipLoraTable, fluxLoraTable, joinTables, moduleDelta, planLoras, type LoraComponent } from '../../models/lora/keys.ts';
import { loraDownName, loraUpName } from '../../models/lora/graph.ts';
import { type LoraModelSet, loraRunOptions, loraState } from '../../nodes/lib/lora.ts';
import { SafetensorsFile } from '../../models/weights/safetensors.ts';

const CASE = 'instantcharacter_style_lora';
const e2eInputs = goldenTensors('instantcharacter_e2e', 'inputs.safetensors');
const e2eOutputs = goldenTensors('instantcharacter_e2e', 'outputs.safetensors');
const inputs = goldenTensors(CASE, 'inputs.safetensors');
const outputs = goldenTensors(CASE, 'outputs.safetensors');
const deltas = goldenTensors(CASE, 'merged_delta.safetensors');
const readme = goldenReadme(CASE);
const loraWeight = scalarOf(inputs.get('lora_weight')!);

/** A tolerance the README states ("step latents 5e-4, ..."). */
function tolerance(what: string): number {
  const m = new RegExp(`${what} ([0-9.]+e-?[0-9]+)`).exec(readme);
  if (!m) throw new Error(`${CASE}/README.md states no tolerance for "${what}"`);
  return Number(m[1]);
}
const TOL = { latents: tolerance('step latents'), decoder: tolerance('decoder output'), image: tolerance('image'), delta: tolerance('merged deltas') };

/** "The merge changed N transformer tensors and M CLIP tensors". */
function changedCounts(): Record<LoraComponent, number> {
  const m = /changed (\d+) transformer tensors and (\d+) CLIP tensors/.exec(readme);
  if (!m) throw new Error(`${CASE}/README.md does not say how many tensors the merge changed`);
  return { flux: Number(m[1]), clip: Number(m[2]), t5: 0 }; // "T5 is not touched"
}

/** The golden delta's component and module name. */
function deltaTarget(key: string): { component: LoraComponent; module: string } {
  const component: LoraComponent = key.startsWith('transformer.') ? 'flux' : 'clip';
  return { component, module: key.slice(key.indexOf('.') + 1, -'.weight'.length) };
}

function tables() {
  const clipCfg = clipConfigFromJson(goldenConfig('clip_text'));
  return joinTables(fluxLoraTable(fluxConfigFromJson(goldenConfig('flux_transformer_ip'))), clipLoraTable(clipCfg.numLayers, clipCfg.hiddenSize, clipCfg.intermediateSize));
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

let harness: NodeHarness;
let models: ModelSet;

beforeAll(async () => {
  harness = await openNodeHarness('charflow-style-lora-', async (paths) => {
    copyFileSync(goldenPath('instantcharacter_e2e', 'reference.png'), join(paths.inputs, 'reference.png'));
    mkdirSync(join(paths.root, 'loras'), { recursive: true });
    copyFileSync(goldenPath(CASE, 'style_lora.safetensors'), join(paths.root, 'loras', 'style_lora.safetensors'));
    await writeGoldenModelSet(paths.models, { t5SeqLen: e2eInputs.get('t5_input_ids')!.dims[1]!, clipSeqLen: e2eInputs.get('clip_input_ids')!.dims[1]! });
  });
  models = harness.services.modelSet('golden');
}, 300_000);

afterAll(async () => {
  await harness?.close();
});

describe('style LoRA at run time, against the official flux_load_lora', () => {
  it('computes the merged-weight deltas of the official merge (kohya keys, fused qkv and linear1 split by rows)', () => {
    const file = new SafetensorsFile(goldenPath(CASE, 'style_lora.safetensors'));
    const warnings: string[] = [];
    const plan = planLoras([{ path: 'style_lora.safetensors', source: file, strength: { flux: loraWeight, clip: loraWeight, t5: loraWeight } }], tables(), (m) => warnings.push(m));
    file.close();
    expect(warnings).toEqual([]);
    const changed = { flux: new Set<string>(), clip: new Set<string>(), t5: new Set<string>() };
    for (const u of plan.updates) changed[u.target.component].add(u.target.module);
    expect({ flux: changed.flux.size, clip: changed.clip.size, t5: changed.t5.size }).toEqual(changedCounts());
    expect(deltas.size).toBeGreaterThan(0);
    for (const [key, ref] of deltas) {
      const { component, module } = deltaTarget(key);
      const d = moduleDelta(plan.updates, module, component);
      expect(d, key).toBeDefined();
      expect(maxDiff(d!, ref.data as Float32Array), key).toBeLessThanOrEqual(TOL.delta);
    }
  });

  it('binds factors whose product is the same delta on every sampled module', async () => {
    const lora = await harness.run<LoraModelSet>(LoraLoader, { models, lora_name: 'style_lora.safetensors', strength_model: loraWeight, strength_clip: loraWeight }, 'models');
    const state = loraState(lora)!;
    for (const [key, ref] of deltas) {
      const { component, module } = deltaTarget(key);
      const c = state.components[component]!;
      const site = c.variant.sites.find((s) => s.modules.includes(module))!;
      expect(site, key).toBeDefined();
      // The module's output columns inside its (possibly fused) site.
      let col = 0;
      for (const m of site.modules) {
        if (m === module) break;
        col += [...c.variant.table.values()].flat().find((t) => t.module === m)!.out;
      }
      const down = c.bound.feeds[loraDownName(site.name)]!; // [in, R]
      const up = c.bound.feeds[loraUpName(site.name)]!; // [R, out]
      const [inF, R] = down.dims as [number, number];
      const [out] = ref.dims as [number, number];
      const got = new Float64Array(out * inF);
      const A = down.data as Float32Array;
      const B = up.data as Float32Array;
      for (let o = 0; o < out; o++) {
        for (let i = 0; i < inF; i++) {
          let s = 0;
          for (let r = 0; r < R; r++) s += A[i * R + r]! * B[r * site.out + col + o]!;
          got[o * inF + i] = s;
        }
      }
      expect(maxDiff(got, ref.data as Float32Array), key).toBeLessThanOrEqual(TOL.delta);
    }
  });

  it('reproduces the pooled prompt embedding, every step and the image', async () => {
    const lora = await harness.run<ModelSet>(LoraLoader, { models, lora_name: 'style_lora.safetensors', strength_model: loraWeight, strength_clip: loraWeight }, 'models');
    const clip = await harness.services.pool.run(lora.path('clip'), { input_ids: e2eInputs.get('clip_input_ids')! }, { outputs: ['pooler_output'], ...loraRunOptions(lora, 'clip') });
    const pooledRef = outputs.get('pooled_prompt_embeds')!;
    // Same tolerance basis as the e2e case's pooled embedding: its float32 noise floor times 100.
    const floors = JSON.parse((await import('node:fs')).readFileSync(goldenPath('noise_floor.json'), 'utf8')) as Record<string, Record<string, number>>;
    const pooledTol = 100 * floors['clip_text']!['pooler_output']!;
    console.log('pooled', expectClose(clip.pooler_output, pooledRef, pooledTol, 'pooled_prompt_embeds'));
    // The LoRA changes the embedding: the plain graph does not give the reference.
    const plain = await harness.services.pool.run(models.path('clip'), { input_ids: e2eInputs.get('clip_input_ids')! }, { outputs: ['pooler_output'] });
    expect(maxDiff(plain.pooler_output!.data as Float32Array, pooledRef.data as Float32Array)).toBeGreaterThan(100 * pooledTol);

    const image = await harness.run<RgbImage>(LoadCharacter, { path: 'reference.png', square: 'stretch' }, 'image');
    const siglip = await harness.run<VisionFeatures>(SigLIPEncode, { models: lora, image }, 'features');
    const dinov2 = await harness.run<VisionFeatures>(DINOv2Encode, { models: lora, image }, 'features');
    const character = await harness.run<CharacterTokens>(AdapterFuse, { models: lora, siglip, dinov2 }, 'character');

    const noise: Latent = { samples: e2eInputs.get('noise_latents')! };
    const [, , h, w] = noise.samples.dims as number[];
    const conditioning: Conditioning = { promptEmbeds: e2eInputs.get('prompt_embeds')!, pooled: clip.pooler_output! };
    const steps = goldenStepCount(outputs);
    const vaeScale = 2 ** ((goldenConfig('vae_decoder')['block_out_channels'] as number[]).length - 1);
    harness.runs.length = 0;
    const latent = await harness.run<Latent>(DiTSample, {
      models: lora, conditioning, character, noise, steps, width: w! * vaeScale, height: h! * vaeScale,
      guidance: scalarOf(e2eInputs.get('guidance_scale')!), subject_scale: scalarOf(e2eInputs.get('subject_scale')!),
    }, 'latent');
    const fluxRuns = harness.runs.filter((r) => r.model === lora.path('flux'));
    const timeRuns = harness.runs.filter((r) => r.model.endsWith('adapter_time.onnx'));
    expect(lora.path('flux')).not.toBe(models.path('flux'));
    expect(fluxRuns.length).toBe(steps);
    for (let i = 0; i < steps; i++) {
      const gold = (n: string) => outputs.get(`step.${i}.${n}`)!;
      const ip = expectClose(timeRuns[i]!.out.ip_hidden_states, gold('ip_hidden_states'), TOL.latents, `step ${i} ip_hidden_states`);
      const v = expectClose(fluxRuns[i]!.out.noise_pred, gold('noise_pred'), TOL.latents, `step ${i} noise_pred`);
      const [, c, lh, lw] = latent.samples.dims as [number, number, number, number];
      const next: Tensor = i + 1 < steps ? fluxRuns[i + 1]!.feeds.hidden_states!
        : f32(gold('latents').dims, packLatents(latent.samples.data as Float32Array, c, lh, lw));
      const lat = expectClose(next, gold('latents'), TOL.latents, `step ${i} latents`);
      console.log(`step ${i}: ip ${ip.toExponential(2)} noise_pred ${v.toExponential(2)} latents ${lat.toExponential(2)}`);
      // The style changes the prediction: far from the e2e case's (no LoRA) one.
      expect(maxDiff(gold('noise_pred').data as Float32Array, e2eOutputs.get(`step.${i}.noise_pred`)!.data as Float32Array)).toBeGreaterThan(10 * TOL.latents);
    }

    harness.runs.length = 0;
    const decoded = await harness.run<RgbImage>(Decode, { models: lora, latent }, 'image');
    const vae = harness.runs.find((r) => r.model.endsWith('vae.onnx'))!;
    console.log('decoder_output', expectClose(vae.out.sample, outputs.get('decoder_output'), TOL.decoder, 'decoder_output'));
    console.log('image', expectClose(vae.out.image, outputs.get('image'), TOL.image, 'image'));
    const ref8 = await decodeImage(goldenPath(CASE, 'output_image.png'));
    let maxPixel = 0;
    for (let i = 0; i < ref8.data.length; i++) maxPixel = Math.max(maxPixel, Math.abs(ref8.data[i]! - decoded.data[i]!));
    expect(maxPixel).toBeLessThanOrEqual(1);
  });
});
