// Run-time LoRAs beyond the golden case: every key format gives the same update, unknown keys warn, bad files
// fail naming file, module and shapes (and nothing is applied), stacking adds the deltas, strength changes and
// swaps reuse the loaded model, a quantized (int4) base keeps the LoRA's full effect, and a set converted with
// `--lora` gives what the run-time node gives.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { type NodeHarness, openNodeHarness } from '../helpers/node-harness.ts';
import { DiTSample } from '../../nodes/dit_sample.ts';
import { LoraLoader, LoraLoaderModelOnly } from '../../nodes/lora_loader.ts';
import type { Conditioning, Latent, ModelSet } from '../../nodes/types.ts';
import { goldenConfig, goldenPath, goldenTensors, scalarOf } from '../helpers/goldens.ts';
import { writeGoldenModelSet } from '../helpers/goldenset.ts';
import { E2E_SEQ, goldenCheckpoints } from '../convert/fixtures.ts';
import { convertCheckpoints } from '../../models/convert/convert.ts';
import { type Tensor, toFloat32 } from '../../models/tensor.ts';
import { writeSafetensors } from '../../models/weights/safetensors.ts';
import { memorySource } from '../../models/weights/source.ts';
import { fluxConfigFromJson } from '../../models/flux.ts';
import { clipConfigFromJson } from '../../models/clip.ts';
import { t5ConfigFromJson } from '../../models/t5.ts';
import { clipLoraTable, fluxLoraTable, joinTables, moduleDelta, planLoras, t5LoraTable, type LoraInput } from '../../models/lora/keys.ts';
import { loraDownName, loraUpName } from '../../models/lora/graph.ts';
import { type LoraModelSet, loraRunOptions, loraState } from '../../nodes/lib/lora.ts';

const cfg = fluxConfigFromJson(goldenConfig('flux_transformer_ip'));
const clipCfg = clipConfigFromJson(goldenConfig('clip_text'));
const C = cfg.numHeads * cfg.headDim;
const t5Cfg = t5ConfigFromJson(goldenConfig('t5_encoder'));
const table = joinTables(
  fluxLoraTable(cfg), clipLoraTable(clipCfg.numLayers, clipCfg.hiddenSize, clipCfg.intermediateSize),
  t5LoraTable(t5Cfg.numLayers, t5Cfg.dModel, t5Cfg.numHeads * t5Cfg.dKv, t5Cfg.dFf, t5Cfg.gated),
);
/** A kohya LoRA on T5's (te2) attention query and feed-forward output of block 0, rank 2. */
function t5Lora(): Map<string, Tensor> {
  const inner = t5Cfg.numHeads * t5Cfg.dKv;
  return new Map([
    ['lora_te2_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight', matrix(2, t5Cfg.dModel, 31, 0.3)],
    ['lora_te2_encoder_block_0_layer_0_SelfAttention_q.lora_up.weight', matrix(inner, 2, 32, 0.3)],
    ['lora_te2_encoder_block_0_layer_1_DenseReluDense_wo.lora_down.weight', matrix(2, t5Cfg.dFf, 33, 0.3)],
    ['lora_te2_encoder_block_0_layer_1_DenseReluDense_wo.lora_up.weight', matrix(t5Cfg.dModel, 2, 34, 0.3)],
    ['lora_te2_encoder_block_0_layer_1_DenseReluDense_wo.alpha', scalar(1)],
  ]);
}
const e2e = goldenTensors('instantcharacter_e2e', 'inputs.safetensors');
const styleWeight = scalarOf(goldenTensors('instantcharacter_style_lora', 'inputs.safetensors').get('lora_weight')!);

/** Deterministic small values. */
function matrix(rows: number, cols: number, seed: number, amp = 0.05): Tensor {
  const data = Float32Array.from({ length: rows * cols }, (_, i) => Math.sin(seed * 12.9898 + i * 78.233) * amp);
  return { dtype: 'float32', dims: [rows, cols], data };
}
const scalar = (v: number): Tensor => ({ dtype: 'float32', dims: [], data: Float32Array.of(v) });
const rowsOf = (t: Tensor, a: number, b: number): Tensor => {
  const cols = t.dims[1]!;
  return { dtype: 'float32', dims: [b - a, cols], data: toFloat32(t).slice(a * cols, b * cols) };
};
const plan = (tensors: Map<string, Tensor>, warn?: (m: string) => void, path = 'test.safetensors') =>
  planLoras([{ path, source: memorySource(tensors), strength: { flux: 1, clip: 1, t5: 1 } } satisfies LoraInput], table, warn);

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}
const maxAbs = (a: ArrayLike<number>): number => maxDiff(a, new Float32Array(a.length));

describe('LoRA key formats', () => {
  const r = 4;
  const down = matrix(r, C, 1);
  const up = matrix(3 * C, r, 2);
  const S = cfg.numSingleLayers - 1;
  const formats: Record<string, Map<string, Tensor>> = {
    kohya: new Map([
      ['lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight', down],
      ['lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight', up],
      ['lora_unet_double_blocks_0_img_attn_qkv.alpha', scalar(r)],
    ]),
    'diffusers/PEFT': new Map(['to_q', 'to_k', 'to_v'].flatMap((n, i): [string, Tensor][] => [
      [`transformer.transformer_blocks.0.attn.${n}.lora_A.weight`, down],
      [`transformer.transformer_blocks.0.attn.${n}.lora_B.weight`, rowsOf(up, i * C, (i + 1) * C)],
    ])),
    'BFL dotted': new Map([
      ['diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight', down],
      ['diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight', up],
    ]),
    XLabs: new Map([
      ['double_blocks.0.processor.qkv_lora1.down.weight', down],
      ['double_blocks.0.processor.qkv_lora1.up.weight', up],
    ]),
  };

  it('maps kohya, diffusers/PEFT, BFL dotted and XLabs names of one LoRA to the same updates', () => {
    const deltas = Object.entries(formats).map(([name, t]) => {
      const p = plan(t);
      expect(new Set(p.updates.map((u) => u.target.module)), name).toEqual(new Set(['to_q', 'to_k', 'to_v'].map((n) => `transformer_blocks.0.attn.${n}`)));
      return ['to_q', 'to_k', 'to_v'].map((n) => moduleDelta(p.updates, `transformer_blocks.0.attn.${n}`, 'flux')!);
    });
    for (const d of deltas.slice(1)) for (let i = 0; i < 3; i++) expect(maxDiff(d[i]!, deltas[0]![i]!)).toBeLessThan(1e-7);
    expect(maxAbs(deltas[0]![1]!)).toBeGreaterThan(1e-4);
  });

  it('applies XLabs single-block qkv to q, k and v only, and the text stream (qkv_lora2) to the add_ projections', () => {
    const p = plan(new Map([
      [`single_blocks.${S}.processor.qkv_lora.down.weight`, down],
      [`single_blocks.${S}.processor.qkv_lora.up.weight`, up],
      ['double_blocks.0.processor.qkv_lora2.down.weight', down],
      ['double_blocks.0.processor.qkv_lora2.up.weight', up],
    ]));
    const mods = new Set(p.updates.map((u) => u.target.module));
    expect(mods).toEqual(new Set([
      ...['to_q', 'to_k', 'to_v'].map((n) => `single_transformer_blocks.${S}.attn.${n}`),
      ...['add_q_proj', 'add_k_proj', 'add_v_proj'].map((n) => `transformer_blocks.0.attn.${n}`),
    ]));
  });

  it('reads kohya CLIP-L keys (lora_te1_) with their alpha', () => {
    const t = new Map([
      ['lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight', matrix(2, clipCfg.hiddenSize, 3)],
      ['lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight', matrix(clipCfg.intermediateSize, 2, 4)],
      ['lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha', scalar(1)],
    ]);
    const [u] = plan(t).updates;
    expect(u!.target).toMatchObject({ component: 'clip', module: 'text_model.encoder.layers.0.mlp.fc1' });
    expect(u!.scale).toBeCloseTo(1 / 2, 12);
  });

  it('warns about keys that apply to nothing, with their count and a few names', () => {
    const t = new Map(formats.kohya!);
    for (let i = 0; i < 5; i++) t.set(`lora_unet_nonexistent_${i}.lora_down.weight`, matrix(r, 8, i));
    t.set('some_other_tensor', scalar(1));
    const warnings: string[] = [];
    const p = plan(t, (m) => warnings.push(m), 'mixed.safetensors');
    expect(p.updates.length).toBe(3);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/^mixed\.safetensors: 6 LoRA tensors match no layer and are ignored \(lora_unet_nonexistent_0\.lora_down\.weight, .*, \.\.\.\)$/);
  });

  it('refuses a file of which nothing applies, and one whose shapes do not match, naming file, module and both shapes', () => {
    const sdxl = new Map([['lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight', matrix(2, 4, 1)], ['lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight', matrix(4, 2, 1)]]);
    expect(() => plan(sdxl, undefined, 'sdxl.safetensors')).toThrow(/^sdxl\.safetensors: no LoRA module matches a FLUX transformer layer or a CLIP-L \/ T5 layer/);
    const wide = new Map(formats.kohya!);
    wide.set('lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight', matrix(r, C + 8, 1));
    expect(() => plan(wide, undefined, 'wide.safetensors')).toThrow(
      new RegExp(`^wide\\.safetensors: LoRA module 'lora_unet_double_blocks_0_img_attn_qkv': down .* has shape \\[${r},${C + 8}\\], but FLUX transformer module 'transformer_blocks\\.0\\.attn\\.to_q' .* has weight \\[${C}, ${C}\\]`),
    );
    const tall = new Map(formats.kohya!);
    tall.set('lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight', matrix(2 * C, r, 1));
    expect(() => plan(tall, undefined, 'tall.safetensors')).toThrow(new RegExp(`up .* has shape \\[${2 * C},${r}\\], but .* needs \\[${3 * C}, ${r}\\]`));
  });
});

// ---- Graph level: the golden model set, a converted int4 set and converted sets with --lora.

let harness: NodeHarness;
let golden: ModelSet;
let secondLora: string;

/** One transformer call (the first sampling step) and the latents after 2 steps, through DiTSample. */
async function sample(models: ModelSet): Promise<{ noisePred: Float32Array; latents: Float32Array }> {
  const noise: Latent = { samples: e2e.get('noise_latents')! };
  const [, , h, w] = noise.samples.dims as number[];
  const vaeScale = 2 ** ((goldenConfig('vae_decoder')['block_out_channels'] as number[]).length - 1);
  const conditioning: Conditioning = { promptEmbeds: e2e.get('prompt_embeds')!, pooled: e2e.get('pooled_prompt_embeds')! };
  const start = harness.runs.length;
  const latent = await harness.run<Latent>(DiTSample, {
    models, conditioning, noise, steps: 2, width: w! * vaeScale, height: h! * vaeScale, guidance: scalarOf(e2e.get('guidance_scale')!),
  }, 'latent');
  const first = harness.runs.slice(start).find((x) => x.model === models.path('flux'))!;
  return { noisePred: toFloat32(first.out.noise_pred!), latents: toFloat32(latent.samples) };
}

const withLora = (models: ModelSet, name: string, model: number, clip = 0) =>
  harness.run<LoraModelSet>(LoraLoader, { models, lora_name: name, strength_model: model, strength_clip: clip }, 'models');

beforeAll(async () => {
  harness = await openNodeHarness('charflow-lora-rt-', async (paths) => {
    const loras = join(paths.root, 'loras');
    mkdirSync(loras, { recursive: true });
    copyFileSync(goldenPath('instantcharacter_style_lora', 'style_lora.safetensors'), join(loras, 'style.safetensors'));
    // A second LoRA in diffusers/PEFT form on other modules and overlapping ones, rank 3.
    secondLora = join(loras, 'second.safetensors');
    writeSafetensors(secondLora, new Map([
      ['transformer.transformer_blocks.0.attn.to_q.lora_A.weight', matrix(3, C, 21, 0.2)],
      ['transformer.transformer_blocks.0.attn.to_q.lora_B.weight', matrix(C, 3, 22, 0.2)],
      ['transformer.single_transformer_blocks.0.proj_out.lora_A.weight', matrix(3, 5 * C, 23, 0.2)],
      ['transformer.single_transformer_blocks.0.proj_out.lora_B.weight', matrix(C, 3, 24, 0.2)],
      ['transformer.proj_out.lora_A.weight', matrix(3, C, 25, 0.2)],
      ['transformer.proj_out.lora_B.weight', matrix(cfg.outChannels, 3, 26, 0.2)],
    ]));
    await writeGoldenModelSet(paths.models, E2E_SEQ);
    const ck = goldenCheckpoints(join(paths.root, 'ck'));
    const common = { ...ck, ...E2E_SEQ, modelsDir: paths.models, dtype: 'float32' as const, warn: () => {} };
    for (const weights of ['int4', 'int8', 'fp16'] as const) await convertCheckpoints({ ...common, name: weights, weights, ...(weights === 'fp16' ? {} : { block: 32 }) });
    await convertCheckpoints({ ...common, name: 'merged', loras: [{ path: join(loras, 'style.safetensors'), weight: styleWeight }] });
    writeSafetensors(join(loras, 't5.safetensors'), t5Lora());
    await convertCheckpoints({ ...common, name: 'merged_t5', loras: [{ path: join(loras, 't5.safetensors'), weight: 0.9 }] });
    await convertCheckpoints({ ...common, name: 'merged2', loras: [{ path: join(loras, 'style.safetensors'), weight: styleWeight }, { path: secondLora, weight: -0.7 }] });
  });
  golden = harness.services.modelSet('golden');
}, 600_000);

afterAll(async () => {
  await harness?.close();
});

describe('LoRAs at run time on a loaded model', () => {
  it('changes strength and swaps LoRAs without loading the transformer again', async () => {
    const plain = await sample(golden);
    const a = await sample(await withLora(golden, 'style.safetensors', styleWeight));
    const loads = harness.services.pool.stats().loads;
    const b = await sample(await withLora(golden, 'style.safetensors', 2 * styleWeight));
    const c = await sample(await withLora(golden, 'second.safetensors', 1));
    const a2 = await sample(await withLora(golden, 'style.safetensors', styleWeight));
    const zero = await sample(await withLora(golden, 'style.safetensors', 0));
    expect(harness.services.pool.stats().loads).toBe(loads);
    expect(maxDiff(a.noisePred, plain.noisePred)).toBeGreaterThan(1e-3);
    expect(maxDiff(b.noisePred, a.noisePred)).toBeGreaterThan(1e-3);
    expect(maxDiff(c.noisePred, a.noisePred)).toBeGreaterThan(1e-3);
    expect(maxDiff(a2.noisePred, a.noisePred)).toBe(0);
    expect(maxDiff(zero.noisePred, plain.noisePred)).toBeLessThan(1e-5);
  });

  it('stacks LoRAs as the sum of their deltas, equal to a set converted with both (--lora)', async () => {
    const one = await withLora(golden, 'style.safetensors', styleWeight, styleWeight);
    const two = await harness.run<LoraModelSet>(LoraLoaderModelOnly, { models: one, lora_name: 'second.safetensors', strength_model: -0.7 }, 'models');
    expect(loraState(two)!.stack.map((e) => e.name)).toEqual(['style.safetensors', 'second.safetensors']);
    // Factor products: the two deltas added, on a module both touch.
    const flux = loraState(two)!.components.flux!;
    const site = flux.variant.sites.find((s) => s.modules.includes('transformer_blocks.0.attn.to_q'))!;
    const A = flux.bound.feeds[loraDownName(site.name)]!;
    const B = flux.bound.feeds[loraUpName(site.name)]!;
    const R = A.dims[1]!;
    const single = (m: LoraModelSet) => {
      const f = loraState(m)!.components.flux!;
      return [f.bound.feeds[loraDownName(site.name)]!, f.bound.feeds[loraUpName(site.name)]!] as const;
    };
    const [A1] = single(one);
    expect(R).toBe(A1.dims[1]! + 3);
    const product = (a: Tensor, b: Tensor, out: number, col: number) => {
      const [inF, r] = a.dims as [number, number];
      const d = new Float64Array(out * inF);
      for (let o = 0; o < out; o++) for (let i = 0; i < inF; i++) {
        let s = 0;
        for (let j = 0; j < r; j++) s += (a.data as Float32Array)[i * r + j]! * (b.data as Float32Array)[j * site.out + col + o]!;
        d[o * inF + i] = s;
      }
      return d;
    };
    const both = product(A, B, C, 0);
    const [a1, b1] = single(one);
    const first = product(a1, b1, C, 0);
    const secondAlone = moduleDelta(planLoras([{ path: secondLora, source: memorySource(new Map([
      ['transformer.transformer_blocks.0.attn.to_q.lora_A.weight', matrix(3, C, 21, 0.2)],
      ['transformer.transformer_blocks.0.attn.to_q.lora_B.weight', matrix(C, 3, 22, 0.2)],
    ])), strength: { flux: -0.7, clip: 0, t5: 0 } }], table).updates, 'transformer_blocks.0.attn.to_q', 'flux')!;
    expect(maxDiff(both, first.map((v, i) => v + secondAlone[i]!))).toBeLessThan(1e-6);

    // The pictures: run time (stack on the plain set) vs conversion (both merged into the weights).
    const merged2 = harness.services.modelSet('merged2');
    const rt = await sample(two);
    const conv = await sample(merged2);
    const err = maxDiff(rt.latents, conv.latents);
    console.log('stack: run time vs --lora conversion, latents max diff', err.toExponential(2));
    expect(err).toBeLessThan(1e-4);
    expect(maxDiff(rt.latents, (await sample(one)).latents)).toBeGreaterThan(1e-2);
  });

  it('gives what a set converted with --lora gives, CLIP-L included', async () => {
    const merged = harness.services.modelSet('merged');
    const rtModels = await withLora(golden, 'style.safetensors', styleWeight, styleWeight);
    const ids = { input_ids: e2e.get('clip_input_ids')! };
    const pooledRt = await harness.services.pool.run(rtModels.path('clip'), ids, { outputs: ['pooler_output'], ...loraRunOptions(rtModels, 'clip') });
    const pooledConv = await harness.services.pool.run(merged.path('clip'), ids, { outputs: ['pooler_output'] });
    const pooledPlain = await harness.services.pool.run(golden.path('clip'), ids, { outputs: ['pooler_output'] });
    const pd = maxDiff(toFloat32(pooledRt.pooler_output!), toFloat32(pooledConv.pooler_output!));
    expect(pd).toBeLessThan(1e-5);
    expect(maxDiff(toFloat32(pooledConv.pooler_output!), toFloat32(pooledPlain.pooler_output!))).toBeGreaterThan(100 * pd);
    const rt = await sample(rtModels);
    const conv = await sample(merged);
    const err = maxDiff(rt.latents, conv.latents);
    console.log('run time vs --lora conversion: pooled', pd.toExponential(2), 'latents', err.toExponential(2));
    expect(err).toBeLessThan(1e-4);
  });

  it('applies T5 keys (kohya te2) to T5-XXL with the CLIP strength, as a set converted with the LoRA does', async () => {
    const p = plan(t5Lora());
    expect(new Set(p.updates.map((u) => `${u.target.component}:${u.target.module}`))).toEqual(new Set([
      't5:encoder.block.0.layer.0.SelfAttention.q', 't5:encoder.block.0.layer.1.DenseReluDense.wo',
    ]));
    const rt = await withLora(golden, 't5.safetensors', 1, 0.9);
    expect(Object.keys(loraState(rt)!.components)).toEqual(['t5']);
    const ids = { input_ids: e2e.get('t5_input_ids')! };
    const got = await harness.services.pool.run(rt.path('t5'), ids, loraRunOptions(rt, 't5'));
    const conv = await harness.services.pool.run(harness.services.modelSet('merged_t5').path('t5'), ids);
    const plain = await harness.services.pool.run(golden.path('t5'), ids);
    const d = maxDiff(toFloat32(got.last_hidden_state!), toFloat32(conv.last_hidden_state!));
    console.log('T5: run time vs --lora conversion', d.toExponential(2));
    expect(d).toBeLessThan(1e-5);
    expect(maxDiff(toFloat32(conv.last_hidden_state!), toFloat32(plain.last_hidden_state!))).toBeGreaterThan(100 * d);
    // LoraLoaderModelOnly leaves the text encoders alone: nothing of this file applies then.
    const only = await harness.run<LoraModelSet>(LoraLoaderModelOnly, { models: golden, lora_name: 't5.safetensors', strength_model: 1 }, 'models');
    expect(loraState(only)!.components).toEqual({});
    expect(only.path('t5')).toBe(golden.path('t5'));
  });

  for (const format of ['int4', 'int8', 'fp16'] as const) {
    it(`keeps the full LoRA effect on a ${format} base (applied in float, never requantized)`, async () => {
      const base = harness.services.modelSet(format);
      expect(base.manifest.files.flux.weights).toBe(format);
      const f = await sample(golden);
      const fl = await sample(await withLora(golden, 'style.safetensors', styleWeight));
      const q = await sample(base);
      const ql = await sample(await withLora(base, 'style.safetensors', styleWeight));
      const effectF = fl.noisePred.map((v, i) => v - f.noisePred[i]!);
      const effectQ = ql.noisePred.map((v, i) => v - q.noisePred[i]!);
      // The format's own error on this call is the tolerance: the effect is a difference of two runs, each within
      // about that error of its float counterpart, so it may differ from the float effect by twice that, no more.
      const ownError = maxDiff(q.noisePred, f.noisePred);
      const effectError = maxDiff(effectQ, effectF);
      let dot = 0;
      let norm = 0;
      for (let i = 0; i < effectF.length; i++) {
        dot += effectQ[i]! * effectF[i]!;
        norm += effectF[i]! * effectF[i]!;
      }
      console.log(`${format}: own error ${ownError.toExponential(2)}, LoRA effect ${maxAbs(effectF).toExponential(2)}, effect error ${effectError.toExponential(2)}, gain ${(dot / norm).toFixed(4)}`);
      expect(ownError).toBeGreaterThan(0);
      expect(effectError).toBeLessThanOrEqual(2 * ownError);
      expect(maxAbs(effectF)).toBeGreaterThan(2 * effectError);
      // Full strength: the effect through the base, projected on the float one, is neither damped nor amplified.
      expect(Math.abs(dot / norm - 1)).toBeLessThan(0.1);
    });
  }
});
