// T5 encoder (transformers T5EncoderModel, v1.1) against the t5_encoder golden case.
import { describe, expect, it } from 'vitest';
import {
  FULL_T5, buildT5, relativePositionBucket, t5ConfigFromJson, t5WeightShapes,
} from '../../models/t5.ts';
import { countParameters } from '../../models/layers.ts';
import { Graph } from '../../models/onnx/graph.ts';
import { runOnce } from '../../models/onnx/ort.ts';
import type { Tensor } from '../../models/tensor.ts';
import { type WeightSource, memorySource } from '../../models/weights/source.ts';
import { expectClose, goldenConfig, goldenTensors, goldenWeights, need, expectGoldenShapes } from '../helpers/goldens.ts';

const CASE = 't5_encoder';
const TOL = 1e-4;
const json = goldenConfig(CASE);
const cfg = t5ConfigFromJson(json);
const inputs = goldenTensors(CASE, 'inputs.safetensors');
const outputs = goldenTensors(CASE, 'outputs.safetensors');


const inputIds = need(inputs, 'input_ids');
const seqLen = inputIds.dims[1]!;

function build(w: WeightSource): Uint8Array {
  const g = new Graph({ name: 't5_encoder' });
  buildT5({ g, w }, cfg, { seqLen });
  return g.toBytes();
}

const REL_BIAS = 'encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight';

/** The golden weights in memory, keys renamed, one key dropped and one 2-D tensor's dims swapped on request. */
function goldenMemory(rename: (key: string) => string = (k) => k, drop?: string, reshape?: string): WeightSource {
  const file = goldenWeights(CASE);
  const map = new Map<string, Tensor>();
  try {
    for (const k of file.keys()) {
      if (k === drop) continue;
      const t = file.get(k);
      map.set(rename(k), k === reshape ? { ...t, dims: [t.dims[1]!, t.dims[0]!] } : t);
    }
  } finally {
    file.close();
  }
  return memorySource(map);
}

describe('T5 encoder', () => {
  it('parses config.json', () => {
    // transformers writes the parsed feed_forward_proj too: is_gated_act and dense_act_fn.
    expect(cfg).toEqual({
      vocabSize: json['vocab_size'], dModel: json['d_model'], dKv: json['d_kv'], dFf: json['d_ff'], numLayers: json['num_layers'],
      numHeads: json['num_heads'], numBuckets: json['relative_attention_num_buckets'], maxDistance: json['relative_attention_max_distance'],
      layerNormEps: json['layer_norm_epsilon'], gated: json['is_gated_act'], act: json['dense_act_fn'],
    });
    // google/t5-v1_1-xxl's config.json numbers.
    expect(t5ConfigFromJson({
      d_ff: 10240, d_kv: 64, d_model: 4096, num_heads: 64, num_layers: 24, vocab_size: 32128,
      feed_forward_proj: 'gated-gelu', layer_norm_epsilon: 1e-6, relative_attention_num_buckets: 32,
    })).toEqual(FULL_T5);
    expect(t5ConfigFromJson({ feed_forward_proj: 'relu' })).toMatchObject({ gated: false, act: 'relu' });
    expect(t5ConfigFromJson({ feed_forward_proj: 'gelu' })).toMatchObject({ gated: false, act: 'gelu' });
    expect(() => t5ConfigFromJson({ feed_forward_proj: 'gated-swish' })).toThrow(/feed_forward_proj/);
    expect(() => t5ConfigFromJson({ d_model: '32' })).toThrow(/d_model/);
  });

  it('lists exactly the checkpoint keys and shapes', () => {
    expectGoldenShapes(CASE, t5WeightShapes(cfg));
  });

  it('computes transformers relative position buckets (32 buckets, max distance 128)', () => {
    // Hand-derived from _relative_position_bucket: exact for |d| < 8, log-spaced to 16 per side, clamped.
    const cases: [number, number][] = [
      [0, 0], [1, 17], [-1, 1], [7, 23], [-7, 7], [8, 24], [-8, 8], [15, 25], [16, 26], [-16, 10],
      [31, 27], [32, 28], [63, 29], [64, 30], [127, 31], [128, 31], [-159, 15], [500, 31],
    ];
    for (const [rel, bucket] of cases) expect(relativePositionBucket(rel, 32, 128), `rel ${rel}`).toBe(bucket);
  });

  it('matches the golden last_hidden_state', async () => {
    const w = goldenWeights(CASE);
    try {
      const out = await runOnce(build(w), { input_ids: inputIds });
      const d = expectClose(out.last_hidden_state, need(outputs, 'last_hidden_state'), TOL, 'last_hidden_state');
      console.log(`t5_encoder last_hidden_state max abs diff ${d.toExponential(3)}`);
    } finally {
      w.close();
    }
  });

  it('builds an fp16 graph from the same code (loose tolerance: half precision)', async () => {
    const w = goldenWeights(CASE);
    const g = new Graph({ name: 't5_encoder_fp16', dtype: 'float16' });
    try {
      buildT5({ g, w }, cfg, { seqLen });
    } finally {
      w.close();
    }
    const out = await runOnce(g.toBytes(), { input_ids: inputIds });
    expect(out.last_hidden_state?.dtype).toBe('float16');
    const d = expectClose(out.last_hidden_state, need(outputs, 'last_hidden_state'), 5e-2, 'last_hidden_state (fp16)');
    console.log(`t5_encoder fp16 last_hidden_state max abs diff ${d.toExponential(3)}`);
  });

  it('builds the original (non-gated ReLU) feed-forward from wi/wo', async () => {
    // Golden weights with wi_0 renamed to wi and wi_1 dropped: no reference, but it must build and run.
    const w = goldenMemory((k) => k.replace('.wi_0.', '.wi.'), undefined);
    const keys = w.keys().filter((k) => !k.includes('.wi_1.'));
    const relu = { ...cfg, gated: false, act: 'relu' as const };
    expect(Object.keys(t5WeightShapes(relu)).sort()).toEqual(keys.sort());
    const g = new Graph({ name: 't5_relu' });
    buildT5({ g, w }, relu, { seqLen });
    const out = await runOnce(g.toBytes(), { input_ids: inputIds });
    expect(out.last_hidden_state?.dims).toEqual([inputIds.dims[0], seqLen, cfg.dModel]);
    expect(Array.from(out.last_hidden_state!.data as Float32Array).every(Number.isFinite)).toBe(true);
  });

  it('accepts encoder.embed_tokens.weight in place of shared.weight', async () => {
    const w = goldenMemory((k) => (k === 'shared.weight' ? 'encoder.embed_tokens.weight' : k));
    const out = await runOnce(build(w), { input_ids: inputIds });
    expectClose(out.last_hidden_state, need(outputs, 'last_hidden_state'), TOL, 'last_hidden_state');
  });

  it('names the tensor when a weight is missing or has the wrong shape', () => {
    const lastFf = `encoder.block.${cfg.numLayers - 1}.layer.1.DenseReluDense.${cfg.gated ? 'wi_1' : 'wi'}.weight`;
    for (const missing of [lastFf, 'shared.weight', REL_BIAS]) {
      expect(() => build(goldenMemory(undefined, missing))).toThrow(`missing tensor '${missing}'`);
    }
    const wrong = 'encoder.block.0.layer.1.DenseReluDense.wo.weight'; // [d_model, d_ff] stored as [d_ff, d_model]
    expect(() => build(goldenMemory(undefined, undefined, wrong))).toThrow(`tensor '${wrong}' has shape [${cfg.dFf},${cfg.dModel}]`);
  });

  it('counts the parameters of google/t5-v1_1-xxl encoder', () => {
    expect(countParameters(t5WeightShapes(FULL_T5))).toBe(4_762_310_656);
  });
});
