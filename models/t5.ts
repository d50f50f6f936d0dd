// T5 encoder (transformers T5EncoderModel), the long-prompt text encoder of FLUX (google/t5-v1_1-xxl).
// Pre-norm transformer with T5's RMS "layer norm" (no mean, no bias), attention WITHOUT 1/sqrt(d) scaling,
// and a learned relative position bias: layer 0 owns a [num_buckets, H] table that every layer adds to
// its scores. The graph is built for one sequence length, so the bucket of every (query, key) pair is
// computed here in TypeScript and only the table lookup (Gather) runs in the graph.
// float16 graphs follow transformers' T5 run in float16: every feed-forward output projection `wo` stays
// float32 (`_keep_in_fp32_modules = ["wo"]`), which makes the residual stream float32 from block 0's
// feed-forward on; norms take their mean square in float32 and emit float16 for the next matmuls, and the
// attention softmax runs in float32. Costs 2 extra bytes per `wo` weight (about 2 GB for T5-XXL).
import type { Value } from './onnx/graph.ts';
import {
  type Module, gelu, linear, multiHeadAttention, param, rmsNorm, transpose, transposeMatrix,
} from './layers.ts';
import type { Tensor } from './tensor.ts';
import { takeWeight } from './weights/source.ts';

/** Activation of the feed-forward block: `gelu_new` is the tanh approximation (T5 v1.1 "gated-gelu"). */
export type T5Activation = 'relu' | 'gelu_new' | 'gelu';

export interface T5Config {
  vocabSize: number;
  dModel: number;
  /** Per-head width; heads * dKv is the attention inner width (not necessarily dModel). */
  dKv: number;
  dFf: number;
  numLayers: number;
  numHeads: number;
  numBuckets: number;
  maxDistance: number;
  layerNormEps: number;
  /** Gated FFN (v1.1): act(wi_0 x) * wi_1 x -> wo. Otherwise (original T5): act(wi x) -> wo. */
  gated: boolean;
  act: T5Activation;
}

/** google/t5-v1_1-xxl encoder, as used by FLUX.1 (text_encoder_2). */
export const FULL_T5: T5Config = {
  vocabSize: 32128,
  dModel: 4096,
  dKv: 64,
  dFf: 10240,
  numLayers: 24,
  numHeads: 64,
  numBuckets: 32,
  maxDistance: 128,
  layerNormEps: 1e-6,
  gated: true,
  act: 'gelu_new',
};

/** The FLUX pipeline pads and truncates T5 prompts to this length. */
export const T5_FLUX_SEQ_LEN = 512;

function numberField(json: Record<string, unknown>, key: string, fallback: number): number {
  const v = json[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`t5 config: ${key} must be a number, got ${JSON.stringify(v)}`);
  return v;
}

/** transformers' feed_forward_proj: "[gated-]<act>", where gated-gelu means gelu_new. */
function parseFeedForward(proj: unknown): { gated: boolean; act: T5Activation } {
  if (typeof proj !== 'string') throw new Error(`t5 config: feed_forward_proj must be a string, got ${JSON.stringify(proj)}`);
  const parts = proj.split('-');
  const gated = parts[0] === 'gated';
  if (parts.length > 2 || (parts.length === 2 && !gated)) throw new Error(`t5 config: unsupported feed_forward_proj ${JSON.stringify(proj)}`);
  const name = parts[parts.length - 1];
  const act: T5Activation | undefined = name === 'relu' ? 'relu' : name === 'gelu_new' || (name === 'gelu' && gated) ? 'gelu_new' : name === 'gelu' ? 'gelu' : undefined;
  if (!act) throw new Error(`t5 config: unsupported feed_forward_proj activation ${JSON.stringify(name)}`);
  return { gated, act };
}

/** Parses a transformers T5Config config.json; missing fields take T5Config's defaults. */
export function t5ConfigFromJson(json: Record<string, unknown>): T5Config {
  return {
    vocabSize: numberField(json, 'vocab_size', 32128),
    dModel: numberField(json, 'd_model', 512),
    dKv: numberField(json, 'd_kv', 64),
    dFf: numberField(json, 'd_ff', 2048),
    numLayers: numberField(json, 'num_layers', 6),
    numHeads: numberField(json, 'num_heads', 8),
    numBuckets: numberField(json, 'relative_attention_num_buckets', 32),
    maxDistance: numberField(json, 'relative_attention_max_distance', 128),
    layerNormEps: numberField(json, 'layer_norm_epsilon', 1e-6),
    ...parseFeedForward(json['feed_forward_proj'] ?? 'relu'),
  };
}

const EMBEDDING = 'shared.weight';
/** Older / non-tied checkpoints store the encoder's own copy of the embedding under this key. */
const EMBEDDING_ALT = 'encoder.embed_tokens.weight';
const REL_BIAS = 'encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight';

/** Every checkpoint key the builder reads, with its shape (the embedding counted once, as `shared.weight`). */
export function t5WeightShapes(cfg: T5Config): Record<string, number[]> {
  const D = cfg.dModel;
  const inner = cfg.numHeads * cfg.dKv;
  const shapes: Record<string, number[]> = {
    [EMBEDDING]: [cfg.vocabSize, D],
    [REL_BIAS]: [cfg.numBuckets, cfg.numHeads],
  };
  for (let i = 0; i < cfg.numLayers; i++) {
    const p = `encoder.block.${i}.layer`;
    for (const proj of ['q', 'k', 'v']) shapes[`${p}.0.SelfAttention.${proj}.weight`] = [inner, D];
    shapes[`${p}.0.SelfAttention.o.weight`] = [D, inner];
    shapes[`${p}.0.layer_norm.weight`] = [D];
    for (const wi of cfg.gated ? ['wi_0', 'wi_1'] : ['wi']) shapes[`${p}.1.DenseReluDense.${wi}.weight`] = [cfg.dFf, D];
    shapes[`${p}.1.DenseReluDense.wo.weight`] = [D, cfg.dFf];
    shapes[`${p}.1.layer_norm.weight`] = [D];
  }
  shapes['encoder.final_layer_norm.weight'] = [D];
  return shapes;
}

/**
 * transformers' bidirectional `_relative_position_bucket` for relative position `rel` = key - query:
 * half the buckets for keys after the query; within a half, exact buckets for |rel| < half/2 and
 * log-spaced ones up to maxDistance (clamped beyond). The log branch is evaluated in float32 steps,
 * as torch does, so exact boundaries (|rel| = 16, 32, 64 for 32/128) land in the same bucket.
 */
export function relativePositionBucket(rel: number, numBuckets: number, maxDistance: number): number {
  const half = Math.floor(numBuckets / 2);
  const maxExact = Math.floor(half / 2);
  const offset = rel > 0 ? half : 0;
  const n = Math.abs(rel);
  if (n < maxExact) return offset + n;
  const f = Math.fround;
  const logRatio = f(Math.log(f(n / maxExact)));
  const scaled = f(f(logRatio / f(Math.log(maxDistance / maxExact))) * (half - maxExact));
  return offset + Math.min(maxExact + Math.trunc(scaled), half - 1);
}

/** Bucket index of every (query i, key j) pair: int64 [T, T]. */
export function relativeBucketTable(seqLen: number, numBuckets: number, maxDistance: number): Tensor {
  const data = new BigInt64Array(seqLen * seqLen);
  for (let i = 0; i < seqLen; i++) {
    for (let j = 0; j < seqLen; j++) data[i * seqLen + j] = BigInt(relativePositionBucket(j - i, numBuckets, maxDistance));
  }
  return { dtype: 'int64', dims: [seqLen, seqLen], data };
}

/** Layer 0's bias table looked up for this sequence length: [1, H, T, T], shared by all layers. */
function positionBias(m: Module, cfg: T5Config, seqLen: number): Value {
  const { g } = m;
  const table = param(m, REL_BIAS, [cfg.numBuckets, cfg.numHeads]); // [buckets, H]
  const buckets = g.constant(relativeBucketTable(seqLen, cfg.numBuckets, cfg.maxDistance), 'relative_buckets'); // [T, T]
  const bias = g.node('Gather', [table, buckets], { axis: 0 }); // [T, T, H]
  return g.node('Unsqueeze', [transpose(g, bias, [2, 0, 1]), g.ints([0])]); // [1, H, T, T]
}

function embedTokens(m: Module, ids: Value, cfg: T5Config): Value {
  const key = m.w.shape(EMBEDDING) || !m.w.shape(EMBEDDING_ALT) ? EMBEDDING : EMBEDDING_ALT;
  return m.g.node('Gather', [param(m, key, [cfg.vocabSize, cfg.dModel]), ids], { axis: 0 }); // [B, T, D]
}

/** Unscaled multi-head self-attention with the additive position bias: [B, T, D] -> [B, T, D]. */
function selfAttention(m: Module, x: Value, p: string, cfg: T5Config, bias: Value): Value {
  const D = cfg.dModel;
  const inner = cfg.numHeads * cfg.dKv;
  const q = linear(m, x, `${p}.q`, D, inner, false); // [B, T, H*Dk]
  const k = linear(m, x, `${p}.k`, D, inner, false);
  const v = linear(m, x, `${p}.v`, D, inner, false);
  const o = multiHeadAttention(m.g, q, k, v, cfg.numHeads, cfg.dKv, { scale: 1, bias, softmaxFloat32: true }); // [B, T, H*Dk]
  return linear(m, o, `${p}.o`, inner, D, false); // [B, T, D]
}

function activation(m: Module, x: Value, act: T5Activation): Value {
  switch (act) {
    case 'relu': return m.g.node('Relu', [x]);
    case 'gelu_new': return gelu(m.g, x, 'tanh');
    case 'gelu': return gelu(m.g, x, 'none');
  }
}

/** ONNX element types for Cast's `to`. */
const FLOAT = 1;
const FLOAT16 = 10;

/** A bias-free Linear whose weight is stored, and computed, in float32 whatever the graph's dtype. */
function linearFloat32(m: Module, x: Value, prefix: string, inFeatures: number, outFeatures: number): Value {
  const key = `${prefix}.weight`;
  const wt = m.g.weight(key, transposeMatrix(takeWeight(m.w, key, [outFeatures, inFeatures])), 'float32'); // [in, out]
  return m.g.node('MatMul', [x, wt]); // [..., out]
}

/**
 * DenseReluDense: wo(act(wi_0 x) * wi_1 x) when gated, else wo(act(wi x)). [B, T, D] -> [B, T, D].
 * In float16 graphs wo is float32, its input cast up as transformers does: the output is float32.
 */
function feedForward(m: Module, x: Value, p: string, cfg: T5Config): Value {
  const D = cfg.dModel;
  const F = cfg.dFf;
  const h = cfg.gated
    ? m.g.node('Mul', [activation(m, linear(m, x, `${p}.wi_0`, D, F, false), cfg.act), linear(m, x, `${p}.wi_1`, D, F, false)]) // [B, T, F]
    : activation(m, linear(m, x, `${p}.wi`, D, F, false), cfg.act); // [B, T, F]
  if (m.g.dtype !== 'float16') return linear(m, h, `${p}.wo`, F, D, false); // [B, T, D]
  return linearFloat32(m, m.g.node('Cast', [h], { to: FLOAT }), `${p}.wo`, F, D); // [B, T, D] float32
}

/**
 * The residual stream and whether it is float32 inside a float16 graph (`wide`). As in torch, adding
 * wo's float32 output to a float16 stream promotes the sum, so the stream turns float32 at block 0's
 * feed-forward residual and stays so. Always false in float32 graphs.
 */
interface Stream {
  x: Value;
  wide: boolean;
}

/** stream + y, where y is float32 in a float16 graph when `yWide`; the narrower side is cast up. */
function residual(m: Module, s: Stream, y: Value, yWide: boolean): Stream {
  const wide = s.wide || yWide;
  const up = (v: Value, isWide: boolean): Value => (wide && !isWide ? m.g.node('Cast', [v], { to: FLOAT }) : v);
  return { x: m.g.node('Add', [up(s.x, s.wide), up(y, yWide)]), wide }; // [B, T, D]
}

/** Largest float16 value minus 1000, transformers' T5 clamp bound. */
const HALF_CLAMP = 65504 - 1000;

/**
 * fp16 graphs only: transformers' T5Block clamps the residual stream after each residual add while it is
 * float16, to finfo(fp16).max - 1000 when it holds an inf, else to finfo.max (a no-op for finite values);
 * a plain Clip to +-64504 is the graph form, which differs only for finite values in (64504, 65504].
 * With wo in float32 the stream is float16 only up to block 0's attention residual, so that is the one
 * clamp left, as in transformers; a float32 stream needs none. float32 graphs get no node.
 */
function clampHalf(m: Module, s: Stream, on: boolean): Stream {
  if (m.g.dtype !== 'float16' || !on || s.wide) return s;
  return { x: m.g.node('Clip', [s.x, m.g.scalar(-HALF_CLAMP), m.g.scalar(HALF_CLAMP)]), wide: false };
}

/**
 * T5's RMS "layer norm". In fp16 graphs it works as transformers' T5LayerNorm: the mean square in float32
 * (squaring in half precision overflows once |x| > 256), the normalised stream cast to float16 before the
 * float16 weight, so the following matmuls (and the final output) are float16 whatever the stream's dtype.
 */
function t5LayerNorm(m: Module, s: Stream, key: string, cfg: T5Config): Value {
  const { g } = m;
  if (g.dtype !== 'float16') return rmsNorm(m, s.x, key, cfg.dModel, cfg.layerNormEps);
  const x32 = s.wide ? s.x : g.node('Cast', [s.x], { to: FLOAT }); // [B, T, D] float32
  const ms = g.node('ReduceMean', [g.node('Mul', [x32, x32]), g.ints([-1])], { keepdims: 1 }); // [B, T, 1]
  const eps = g.constant({ dtype: 'float32', dims: [], data: Float32Array.of(cfg.layerNormEps) }, 'eps');
  const y = g.node('Cast', [g.node('Div', [x32, g.node('Sqrt', [g.node('Add', [ms, eps])])])], { to: FLOAT16 }); // [B, T, D] float16
  return g.node('Mul', [y, param(m, key, [cfg.dModel])]);
}

/** One T5 block: pre-norm attention and feed-forward, each with a residual. */
function encoderBlock(m: Module, x: Stream, i: number, cfg: T5Config, bias: Value, clamp: boolean): Stream {
  const half = m.g.dtype === 'float16';
  const p = `encoder.block.${i}.layer`;
  const attn = selfAttention(m, t5LayerNorm(m, x, `${p}.0.layer_norm.weight`, cfg), `${p}.0.SelfAttention`, cfg, bias);
  const h = clampHalf(m, residual(m, x, attn, false), clamp); // [B, T, D]
  const ff = feedForward(m, t5LayerNorm(m, h, `${p}.1.layer_norm.weight`, cfg), `${p}.1.DenseReluDense`, cfg);
  return clampHalf(m, residual(m, h, ff, half), clamp); // [B, T, D], float32 from here on in fp16 graphs
}

export interface T5Options {
  /** Fixed sequence length of the graph (the bias table is baked for it); default 512, FLUX's T5 length. */
  seqLen?: number;
  /** fp16 graphs: clamp the residual stream as transformers does (default true; false shows what it prevents). */
  clampHalf?: boolean;
}

/**
 * Graph input `input_ids` int64 [B, seqLen]; output `last_hidden_state` [B, seqLen, d_model]
 * (after the final RMS norm). No attention mask, as in the FLUX pipeline.
 */
export function buildT5(m: Module, cfg: T5Config, opts: T5Options = {}): void {
  const { g } = m;
  const T = opts.seqLen ?? T5_FLUX_SEQ_LEN;
  const ids = g.input('input_ids', 'int64', ['batch', T]);
  let x: Stream = { x: embedTokens(m, ids, cfg), wide: false }; // [B, T, D]
  const bias = positionBias(m, cfg, T); // [1, H, T, T]
  const clamp = opts.clampHalf ?? true;
  for (let i = 0; i < cfg.numLayers; i++) x = encoderBlock(m, x, i, cfg, bias, clamp);
  const out = t5LayerNorm(m, x, 'encoder.final_layer_norm.weight', cfg); // [B, T, D] in the graph's dtype
  g.output(out, 'last_hidden_state', g.dtype, ['batch', T, cfg.dModel]);
}
