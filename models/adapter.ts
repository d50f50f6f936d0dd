// InstantCharacter adapter (`CrossLayerCrossScaleProjector`, InstantCharacter models/resampler.py), as two graphs:
// - static part, once per reference image: two stacks of diffusers BasicTransformerBlocks over the deep low-res
//   features (cross-attending to the shallow layers and to the high-res tiles), three timm Mlps, concatenated;
// - time part, once per denoising step: TimeResampler, a perceiver resampler whose LayerNorms are modulated by
//   the timestep embedding (AdaLN), giving the IP tokens the FLUX attention layers attend to.
// Shapes: B batch, N low-res tokens, C inner_dim, Q num_queries, D dim, H heads, Dh head dim.
import type { Graph, Value } from './onnx/graph.ts';
import {
  type Module, chunk, concat, gelu, layerNorm, linear, mergeHeads, multiHeadAttention, param, silu, splitHeads, transpose,
} from './layers.ts';

export interface AdapterConfig {
  // Static part: BasicTransformerBlock stacks and Mlps at width innerDim.
  innerDim: number;
  numAttentionHeads: number;
  attentionHeadDim: number;
  crossAttentionDim: number;
  numLayers: number;
  // Time part (TimeResampler).
  dim: number;
  depth: number;
  dimHead: number;
  heads: number;
  numQueries: number;
  embeddingDim: number;
  outputDim: number;
  ffMult: number;
  timestepInDim: number;
  timestepFlipSinToCos: boolean;
  timestepFreqShift: number;
}

/** The released checkpoint (pipeline.py `init_ccp_and_attn_processor`, also the constructor defaults). */
export const FULL_ADAPTER: AdapterConfig = {
  innerDim: 2688, numAttentionHeads: 42, attentionHeadDim: 64, crossAttentionDim: 2688, numLayers: 4,
  dim: 1280, depth: 4, dimHead: 64, heads: 20, numQueries: 1024, embeddingDim: 2688, outputDim: 4096, ffMult: 4,
  timestepInDim: 320, timestepFlipSinToCos: true, timestepFreqShift: 0,
};

/** pre-LayerNorm eps of the BasicTransformerBlocks (norm_eps=1e-6 in the constructor call). */
const BLOCK_NORM_EPS = 1e-6;
/** torch.nn.LayerNorm default, used by every resampler norm. */
const RESAMPLER_NORM_EPS = 1e-5;
/** diffusers FeedForward(activation_fn='geglu') default mult. */
const GEGLU_MULT = 4;
/** Timesteps max_period. */
const MAX_PERIOD = 10000;

/** Parses the constructor kwargs (snake_case, as in config.json); missing ones take the constructor defaults. */
export function adapterConfigFromJson(json: Record<string, unknown>): AdapterConfig {
  const num = (key: string, fallback: number): number => {
    const v = json[key];
    if (v === undefined) return fallback;
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`adapter config: ${key} must be a number, got ${JSON.stringify(v)}`);
    return v;
  };
  const bool = (key: string, fallback: boolean): boolean => {
    const v = json[key];
    if (v === undefined) return fallback;
    if (typeof v !== 'boolean') throw new Error(`adapter config: ${key} must be a boolean, got ${JSON.stringify(v)}`);
    return v;
  };
  const d = FULL_ADAPTER;
  return {
    innerDim: num('inner_dim', d.innerDim),
    numAttentionHeads: num('num_attention_heads', d.numAttentionHeads),
    attentionHeadDim: num('attention_head_dim', d.attentionHeadDim),
    crossAttentionDim: num('cross_attention_dim', d.crossAttentionDim),
    numLayers: num('num_layers', d.numLayers),
    dim: num('dim', d.dim),
    depth: num('depth', d.depth),
    dimHead: num('dim_head', d.dimHead),
    heads: num('heads', d.heads),
    numQueries: num('num_queries', d.numQueries),
    embeddingDim: num('embedding_dim', d.embeddingDim),
    outputDim: num('output_dim', d.outputDim),
    ffMult: num('ff_mult', d.ffMult),
    timestepInDim: num('timestep_in_dim', d.timestepInDim),
    timestepFlipSinToCos: bool('timestep_flip_sin_to_cos', d.timestepFlipSinToCos),
    timestepFreqShift: num('timestep_freq_shift', d.timestepFreqShift),
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Weight shapes (image_proj state dict keys, without the 'image_proj.' prefix)

function linearShapes(out: Record<string, number[]>, prefix: string, inF: number, outF: number, bias = true): void {
  out[`${prefix}.weight`] = [outF, inF];
  if (bias) out[`${prefix}.bias`] = [outF];
}

function normShapes(out: Record<string, number[]>, prefix: string, dim: number): void {
  out[`${prefix}.weight`] = [dim];
  out[`${prefix}.bias`] = [dim];
}

function blockShapes(out: Record<string, number[]>, p: string, cfg: AdapterConfig): void {
  const c = cfg.innerDim;
  const inner = cfg.numAttentionHeads * cfg.attentionHeadDim;
  const ff = c * GEGLU_MULT;
  for (const [attn, kvDim] of [['attn1', c], ['attn2', cfg.crossAttentionDim]] as const) {
    linearShapes(out, `${p}.${attn}.to_q`, c, inner, false);
    linearShapes(out, `${p}.${attn}.to_k`, kvDim, inner, false);
    linearShapes(out, `${p}.${attn}.to_v`, kvDim, inner, false);
    linearShapes(out, `${p}.${attn}.to_out.0`, inner, c);
  }
  for (const n of ['norm1', 'norm2', 'norm3']) normShapes(out, `${p}.${n}`, c);
  linearShapes(out, `${p}.ff.net.0.proj`, c, 2 * ff);
  linearShapes(out, `${p}.ff.net.2`, ff, c);
}

/** Every image_proj key the two builders read, with its shape. Allocates nothing. */
export function adapterWeightShapes(cfg: AdapterConfig): Record<string, number[]> {
  const out: Record<string, number[]> = {};
  const c = cfg.innerDim;
  for (let i = 0; i < cfg.numLayers; i++) {
    blockShapes(out, `cross_layer_blocks.${i}`, cfg);
    blockShapes(out, `cross_scale_blocks.${i}`, cfg);
  }
  for (const mlp of ['proj', 'proj_cross_layer', 'proj_cross_scale']) {
    linearShapes(out, `${mlp}.fc1`, c, 2 * c);
    linearShapes(out, `${mlp}.fc2`, 2 * c, c);
  }
  const d = cfg.dim;
  const inner = cfg.heads * cfg.dimHead;
  const r = 'resampler';
  out[`${r}.latents`] = [1, cfg.numQueries, d];
  linearShapes(out, `${r}.proj_in`, cfg.embeddingDim, d);
  linearShapes(out, `${r}.proj_out`, d, cfg.outputDim);
  normShapes(out, `${r}.norm_out`, cfg.outputDim);
  for (let l = 0; l < cfg.depth; l++) {
    const p = `${r}.layers.${l}`;
    normShapes(out, `${p}.0.norm1`, d);
    normShapes(out, `${p}.0.norm2`, d);
    linearShapes(out, `${p}.0.to_q`, d, inner, false);
    linearShapes(out, `${p}.0.to_kv`, d, 2 * inner, false);
    linearShapes(out, `${p}.0.to_out`, inner, d, false);
    normShapes(out, `${p}.1.0`, d);
    linearShapes(out, `${p}.1.1`, d, d * cfg.ffMult, false);
    linearShapes(out, `${p}.1.3`, d * cfg.ffMult, d, false);
    linearShapes(out, `${p}.2.1`, d, 4 * d);
  }
  linearShapes(out, `${r}.time_embedding.linear_1`, cfg.timestepInDim, d);
  linearShapes(out, `${r}.time_embedding.linear_2`, d, d);
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Static part

/** timm Mlp: fc1 -> tanh-GELU -> fc2. */
function mlp(m: Module, x: Value, prefix: string, dim: number): Value {
  const h = gelu(m.g, linear(m, x, `${prefix}.fc1`, dim, 2 * dim), 'tanh'); // [B, T, 2C]
  return linear(m, h, `${prefix}.fc2`, 2 * dim, dim); // [B, T, C]
}

/** diffusers Attention (AttnProcessor2_0): q/k/v without bias, to_out.0 with bias, scale 1/sqrt(Dh). */
function blockAttention(m: Module, x: Value, context: Value, prefix: string, contextDim: number, cfg: AdapterConfig): Value {
  const c = cfg.innerDim;
  const inner = cfg.numAttentionHeads * cfg.attentionHeadDim;
  const q = linear(m, x, `${prefix}.to_q`, c, inner, false); // [B, T, H*Dh]
  const k = linear(m, context, `${prefix}.to_k`, contextDim, inner, false); // [B, S, H*Dh]
  const v = linear(m, context, `${prefix}.to_v`, contextDim, inner, false); // [B, S, H*Dh]
  const o = multiHeadAttention(m.g, q, k, v, cfg.numAttentionHeads, cfg.attentionHeadDim); // [B, T, H*Dh]
  return linear(m, o, `${prefix}.to_out.0`, inner, c); // [B, T, C]
}

/** diffusers GEGLU feed-forward: proj gives [value | gate]; value * gelu_erf(gate), then net.2. */
function gegluFeedForward(m: Module, x: Value, prefix: string, dim: number): Value {
  const ff = dim * GEGLU_MULT;
  const [value, gate] = chunk(m.g, linear(m, x, `${prefix}.net.0.proj`, dim, 2 * ff), 2) as [Value, Value]; // [B, T, F] each
  const h = m.g.node('Mul', [value, gelu(m.g, gate, 'none')]); // [B, T, F]
  return linear(m, h, `${prefix}.net.2`, ff, dim); // [B, T, C]
}

/** diffusers BasicTransformerBlock (layer_norm): self-attention, cross-attention to `context`, GEGLU FF, all pre-norm. */
function transformerBlock(m: Module, x: Value, context: Value, prefix: string, cfg: AdapterConfig): Value {
  const { g } = m;
  const c = cfg.innerDim;
  const n1 = layerNorm(m, x, `${prefix}.norm1`, c, BLOCK_NORM_EPS);
  x = g.node('Add', [blockAttention(m, n1, n1, `${prefix}.attn1`, c, cfg), x]); // [B, N, C]
  const n2 = layerNorm(m, x, `${prefix}.norm2`, c, BLOCK_NORM_EPS);
  x = g.node('Add', [blockAttention(m, n2, context, `${prefix}.attn2`, cfg.crossAttentionDim, cfg), x]); // [B, N, C]
  const n3 = layerNorm(m, x, `${prefix}.norm3`, c, BLOCK_NORM_EPS);
  return g.node('Add', [gegluFeedForward(m, n3, `${prefix}.ff`, c), x]); // [B, N, C]
}

function blockStack(m: Module, x: Value, context: Value, prefix: string, cfg: AdapterConfig): Value {
  for (let i = 0; i < cfg.numLayers; i++) x = transformerBlock(m, x, context, `${prefix}.${i}`, cfg);
  return x;
}

/**
 * The t-independent part. Inputs `low_res_deep` [B, N, C], `low_res_shallow` [B, Ts, Cx] (3N: three shallow
 * layers), `high_res_deep` [B, Th, Cx] (4N: four tiles); output `resampler_input` [B, 2N, C].
 */
export function buildAdapterStatic(m: Module, cfg: AdapterConfig): void {
  const { g } = m;
  const c = cfg.innerDim;
  const deep = g.input('low_res_deep', g.dtype, ['batch', 'n_deep', c]);
  const shallow = g.input('low_res_shallow', g.dtype, ['batch', 'n_shallow', cfg.crossAttentionDim]);
  const high = g.input('high_res_deep', g.dtype, ['batch', 'n_high', cfg.crossAttentionDim]);

  const crossLayer = mlp(m, blockStack(m, deep, shallow, 'cross_layer_blocks', cfg), 'proj_cross_layer', c); // [B, N, C]
  const crossScale = mlp(m, blockStack(m, deep, high, 'cross_scale_blocks', cfg), 'proj_cross_scale', c); // [B, N, C]
  const h = g.node('Add', [mlp(m, deep, 'proj', c), crossScale]); // [B, N, C]
  g.output(concat(g, [h, crossLayer], 1), 'resampler_input', g.dtype, ['batch', 'n_tokens', c]); // [B, 2N, C]
}

// ---------------------------------------------------------------------------------------------------------------
// Time part

/**
 * diffusers get_timestep_embedding frequencies, rounded as torch computes them in float32:
 * exp(-ln(max_period) * i / (half - shift)).
 */
function timestepFrequencies(cfg: AdapterConfig): Float32Array {
  const half = cfg.timestepInDim / 2;
  const f = Math.fround;
  const negLog = f(-Math.log(MAX_PERIOD));
  return Float32Array.from({ length: half }, (_, i) => f(Math.exp(f(f(negLog * i) / f(half - cfg.timestepFreqShift)))));
}

/**
 * Sinusoidal embedding of t (0..1000 scale) in float32 whatever the graph dtype, as diffusers' Timesteps
 * always returns float32: [cos | sin] when flip_sin_to_cos, else [sin | cos]. t [B] -> [B, timestep_in_dim].
 */
function timestepSinusoid(g: Graph, t: Value, cfg: AdapterConfig): Value {
  if (cfg.timestepInDim % 2 !== 0) throw new Error('adapter: odd timestep_in_dim is not supported');
  const freqs = timestepFrequencies(cfg);
  const freqConst = g.constant({ dtype: 'float32', dims: [1, freqs.length], data: freqs }, 'timestep_freqs');
  const args = g.node('Mul', [g.node('Unsqueeze', [t, g.ints([1])]), freqConst]); // [B, half]
  const sin = g.node('Sin', [args]);
  const cos = g.node('Cos', [args]);
  return concat(g, cfg.timestepFlipSinToCos ? [cos, sin] : [sin, cos], -1); // [B, timestep_in_dim]
}

function toGraphDtype(g: Graph, x: Value): Value {
  return g.dtype === 'float32' ? x : g.node('Cast', [x], { to: 10 /* FLOAT16 */ });
}

/** x * (1 + scale) + shift, with scale and shift [B, D] broadcast over tokens. */
function modulate(g: Graph, x: Value, shift: Value, scale: Value): Value {
  const unsq = (v: Value) => g.node('Unsqueeze', [v, g.ints([1])]); // [B, 1, D]
  return g.node('Add', [g.node('Mul', [x, g.node('Add', [unsq(scale), g.scalar(1)])]), unsq(shift)]);
}

/** Softmax over the last axis in float32 (the resampler upcasts its attention weights). */
function softmaxF32(g: Graph, scores: Value): Value {
  if (g.dtype === 'float32') return g.node('Softmax', [scores], { axis: -1 });
  const p = g.node('Softmax', [g.node('Cast', [scores], { to: 1 /* FLOAT */ })], { axis: -1 });
  return toGraphDtype(g, p);
}

/**
 * PerceiverAttention: latents attend to [LN(x) ; modulated LN(latents)]. q and k are each scaled by Dh^-0.25
 * before the product (the official fp16-friendly form). x [B, T, D], latents [1 or B, Q, D] -> [B, Q, D].
 */
function perceiverAttention(m: Module, x: Value, latents: Value, shift: Value, scale: Value, prefix: string, cfg: AdapterConfig): Value {
  const { g } = m;
  const d = cfg.dim;
  const inner = cfg.heads * cfg.dimHead;
  const xn = layerNorm(m, x, `${prefix}.norm1`, d, RESAMPLER_NORM_EPS); // [B, T, D]
  const l = modulate(g, layerNorm(m, latents, `${prefix}.norm2`, d, RESAMPLER_NORM_EPS), shift, scale); // [B, Q, D]
  const q = linear(m, l, `${prefix}.to_q`, d, inner, false); // [B, Q, H*Dh]
  const kv = linear(m, concat(g, [xn, l], 1), `${prefix}.to_kv`, d, 2 * inner, false); // [B, T+Q, 2*H*Dh]
  const [k, v] = chunk(g, kv, 2) as [Value, Value]; // [B, T+Q, H*Dh] each
  const s = g.scalar(1 / Math.sqrt(Math.sqrt(cfg.dimHead)));
  const qh = g.node('Mul', [splitHeads(g, q, cfg.heads, cfg.dimHead), s]); // [B, H, Q, Dh]
  const kh = g.node('Mul', [splitHeads(g, k, cfg.heads, cfg.dimHead), s]); // [B, H, T+Q, Dh]
  const probs = softmaxF32(g, g.node('MatMul', [qh, transpose(g, kh, [0, 1, 3, 2])])); // [B, H, Q, T+Q]
  const o = g.node('MatMul', [probs, splitHeads(g, v, cfg.heads, cfg.dimHead)]); // [B, H, Q, Dh]
  return linear(m, mergeHeads(g, o, cfg.heads, cfg.dimHead), `${prefix}.to_out`, inner, d, false); // [B, Q, D]
}

/** Resampler FeedForward with the AdaLN modulation after its LayerNorm: LN, modulate, Linear, GELU(erf), Linear. */
function modulatedFeedForward(m: Module, x: Value, shift: Value, scale: Value, prefix: string, cfg: AdapterConfig): Value {
  const d = cfg.dim;
  const hidden = d * cfg.ffMult;
  const n = modulate(m.g, layerNorm(m, x, `${prefix}.0`, d, RESAMPLER_NORM_EPS), shift, scale); // [B, Q, D]
  const h = gelu(m.g, linear(m, n, `${prefix}.1`, d, hidden, false), 'none'); // [B, Q, F]
  return linear(m, h, `${prefix}.3`, hidden, d, false); // [B, Q, D]
}

export interface AdapterTimeOptions {
  /** Also output `timestep_sinusoid` [B, timestep_in_dim] (float32), for bisecting against references. */
  debugOutputs?: boolean;
}

/**
 * TimeResampler. Inputs `resampler_input` [B, 2N, C] and `timestep` [B] (float32 always, 0..1000 scale, not divided);
 * outputs `ip_hidden_states` [B, Q, output_dim] and `timestep_emb` [B, D].
 */
export function buildAdapterTime(m: Module, cfg: AdapterConfig, opts: AdapterTimeOptions = {}): void {
  const { g } = m;
  const d = cfg.dim;
  const r = 'resampler';
  const x0 = g.input('resampler_input', g.dtype, ['batch', 'n_tokens', cfg.embeddingDim]);
  const t = g.input('timestep', 'float32', ['batch']);

  // TimestepEmbedding: linear_1 -> SiLU -> linear_2.
  const sinusoid32 = timestepSinusoid(g, t, cfg); // [B, 320]
  if (opts.debugOutputs) g.output(sinusoid32, 'timestep_sinusoid', 'float32', ['batch', cfg.timestepInDim]);
  const sinusoid = toGraphDtype(g, sinusoid32);
  const temb1 = silu(g, linear(m, sinusoid, `${r}.time_embedding.linear_1`, cfg.timestepInDim, d)); // [B, D]
  const temb = linear(m, temb1, `${r}.time_embedding.linear_2`, d, d); // [B, D]

  const x = g.node('Add', [linear(m, x0, `${r}.proj_in`, cfg.embeddingDim, d), g.node('Unsqueeze', [temb, g.ints([1])])]); // [B, T, D]
  let latents = param(m, `${r}.latents`, [1, cfg.numQueries, d]); // [1, Q, D], broadcast to [B, Q, D] by the first layer
  const tembAct = silu(g, temb); // [B, D], shared by every layer's modulation
  for (let l = 0; l < cfg.depth; l++) {
    const p = `${r}.layers.${l}`;
    const mod = linear(m, tembAct, `${p}.2.1`, d, 4 * d); // [B, 4D]
    const [shiftA, scaleA, shiftF, scaleF] = chunk(g, mod, 4) as [Value, Value, Value, Value]; // [B, D] each
    latents = g.node('Add', [perceiverAttention(m, x, latents, shiftA, scaleA, `${p}.0`, cfg), latents]); // [B, Q, D]
    latents = g.node('Add', [modulatedFeedForward(m, latents, shiftF, scaleF, `${p}.1`, cfg), latents]); // [B, Q, D]
  }
  const out = layerNorm(m, linear(m, latents, `${r}.proj_out`, d, cfg.outputDim), `${r}.norm_out`, cfg.outputDim, RESAMPLER_NORM_EPS);
  g.output(out, 'ip_hidden_states', g.dtype, ['batch', cfg.numQueries, cfg.outputDim]); // [B, Q, output_dim]
  g.output(temb, 'timestep_emb', g.dtype, ['batch', d]); // [B, D]
}
