// FLUX.1 transformer (diffusers FluxTransformer2DModel 0.32.2) with InstantCharacter's IP attention
// (FluxIPAttnProcessor) in every double- and single-stream block.
// Shapes: B batch, T text tokens, L image tokens, N = T + L, C = heads * headDim, H heads, D head dim,
// P ip tokens. RoPE tables come in as graph inputs (see rope.ts), so T and L stay symbolic.
import type { Graph, Value } from './onnx/graph.ts';
import {
  type AttentionForm, type Module, chooseAttention, chunk, fusedAttention, concat, float32Into, gelu, layerNorm, linear, param, quantizedMatMul, quantizes, reshape, storedFloat, rmsNorm, silu, transpose,
} from './layers.ts';
import { type WeightSource, takeShape, takeWeight } from './weights/source.ts';
import { stackGgmlRows } from './weights/ggml.ts';
import { ggmlMatMul, hasNBitsForm } from './ggml_linear.ts';
import { castFloatTensor, toFloat32 } from './tensor.ts';

export interface FluxConfig {
  patchSize: number;
  inChannels: number;
  /** Output channels per patch (in_channels when the checkpoint config says null). */
  outChannels: number;
  /** Double-stream (joint) blocks. */
  numLayers: number;
  /** Single-stream (parallel attention + MLP) blocks. */
  numSingleLayers: number;
  numHeads: number;
  headDim: number;
  /** Width of the T5 features. */
  jointAttentionDim: number;
  /** Width of the CLIP pooled vector. */
  pooledProjectionDim: number;
  guidanceEmbeds: boolean;
  axesDimsRope: number[];
  ropeTheta: number;
}

export const FULL_FLUX: FluxConfig = {
  patchSize: 1,
  inChannels: 64,
  outChannels: 64,
  numLayers: 19,
  numSingleLayers: 38,
  numHeads: 24,
  headDim: 128,
  jointAttentionDim: 4096,
  pooledProjectionDim: 768,
  guidanceEmbeds: true,
  axesDimsRope: [16, 56, 56],
  ropeTheta: 10000,
};

/** Width of the sinusoidal timestep / guidance projection (diffusers Timesteps(256)). */
const TIME_PROJ_DIM = 256;
/** MLP hidden width = MLP_RATIO * C in both block kinds. */
const MLP_RATIO = 4;
/** LayerNorm eps of all AdaLN norms, and of the q/k RMS norms (FLUX's and the IP processor's). */
const NORM_EPS = 1e-6;

export function fluxConfigFromJson(json: Record<string, unknown>): FluxConfig {
  const num = (k: string, d?: number): number => {
    const v = json[k] ?? d;
    if (typeof v !== 'number') throw new Error(`flux config: '${k}' must be a number`);
    return v;
  };
  const inChannels = num('in_channels', 64);
  const out = json['out_channels'];
  return {
    patchSize: num('patch_size', 1),
    inChannels,
    outChannels: typeof out === 'number' ? out : inChannels,
    numLayers: num('num_layers', 19),
    numSingleLayers: num('num_single_layers', 38),
    numHeads: num('num_attention_heads', 24),
    headDim: num('attention_head_dim', 128),
    jointAttentionDim: num('joint_attention_dim', 4096),
    pooledProjectionDim: num('pooled_projection_dim', 768),
    guidanceEmbeds: json['guidance_embeds'] === undefined ? true : Boolean(json['guidance_embeds']),
    axesDimsRope: Array.isArray(json['axes_dims_rope']) ? (json['axes_dims_rope'] as number[]).map(Number) : [16, 56, 56],
    ropeTheta: 10000, // hard-coded by diffusers' FluxPosEmbed
  };
}

const width = (cfg: FluxConfig): number => cfg.numHeads * cfg.headDim;

// ---------------------------------------------------------------------------------------------
// Weight tables

function linearShapes(shapes: Record<string, number[]>, prefix: string, inF: number, outF: number): void {
  shapes[`${prefix}.weight`] = [outF, inF];
  shapes[`${prefix}.bias`] = [outF];
}

/** Every transformer checkpoint key the builder reads (diffusers names), with its shape. */
export function fluxWeightShapes(cfg: FluxConfig): Record<string, number[]> {
  const C = width(cfg);
  const D = cfg.headDim;
  const M = MLP_RATIO * C;
  const s: Record<string, number[]> = {};
  linearShapes(s, 'x_embedder', cfg.inChannels, C);
  const embedders = ['timestep_embedder', ...(cfg.guidanceEmbeds ? ['guidance_embedder'] : [])];
  for (const e of embedders) {
    linearShapes(s, `time_text_embed.${e}.linear_1`, TIME_PROJ_DIM, C);
    linearShapes(s, `time_text_embed.${e}.linear_2`, C, C);
  }
  linearShapes(s, 'time_text_embed.text_embedder.linear_1', cfg.pooledProjectionDim, C);
  linearShapes(s, 'time_text_embed.text_embedder.linear_2', C, C);
  linearShapes(s, 'context_embedder', cfg.jointAttentionDim, C);

  for (let i = 0; i < cfg.numLayers; i++) {
    const p = `transformer_blocks.${i}`;
    linearShapes(s, `${p}.norm1.linear`, C, 6 * C);
    linearShapes(s, `${p}.norm1_context.linear`, C, 6 * C);
    for (const n of ['to_q', 'to_k', 'to_v', 'add_q_proj', 'add_k_proj', 'add_v_proj', 'to_out.0', 'to_add_out']) {
      linearShapes(s, `${p}.attn.${n}`, C, C);
    }
    for (const n of ['norm_q', 'norm_k', 'norm_added_q', 'norm_added_k']) s[`${p}.attn.${n}.weight`] = [D];
    for (const ff of ['ff', 'ff_context']) {
      linearShapes(s, `${p}.${ff}.net.0.proj`, C, M);
      linearShapes(s, `${p}.${ff}.net.2`, M, C);
    }
  }
  for (let i = 0; i < cfg.numSingleLayers; i++) {
    const p = `single_transformer_blocks.${i}`;
    linearShapes(s, `${p}.norm.linear`, C, 3 * C);
    for (const n of ['to_q', 'to_k', 'to_v']) linearShapes(s, `${p}.attn.${n}`, C, C);
    for (const n of ['norm_q', 'norm_k']) s[`${p}.attn.${n}.weight`] = [D];
    linearShapes(s, `${p}.proj_mlp`, C, M);
    linearShapes(s, `${p}.proj_out`, C + M, C);
  }
  linearShapes(s, 'norm_out.linear', C, 2 * C);
  linearShapes(s, 'proj_out', C, cfg.patchSize * cfg.patchSize * cfg.outChannels);
  return s;
}

/** InstantCharacter ip_adapter keys for all numLayers + numSingleLayers blocks (double blocks first). */
export function ipAdapterWeightShapes(cfg: FluxConfig, ipDim: number): Record<string, number[]> {
  const C = width(cfg);
  const s: Record<string, number[]> = {};
  for (let i = 0; i < cfg.numLayers + cfg.numSingleLayers; i++) {
    linearShapes(s, `${i}.to_k_ip`, ipDim, C);
    linearShapes(s, `${i}.to_v_ip`, ipDim, C);
    s[`${i}.norm_ip_q.scale`] = [cfg.headDim];
    s[`${i}.norm_ip_k.scale`] = [cfg.headDim];
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// Weight helpers

/** Several torch Linears over the same input as one MatMul: W^T of each side by side, [in, sum(out)]. */
function fusedLinear(m: Module, x: Value, prefixes: readonly string[], inF: number, outs: readonly number[], w: WeightSource = m.w): Value {
  const total = outs.reduce((a, b) => a + b, 0);
  if (quantizes(m.g, inF, Math.min(...outs)) && !prefixes.every((p) => storedFloat(w, `${p}.weight`))) return fusedQuantizedLinear(m, x, prefixes, inF, outs, total, w);
  const wt = new Float32Array(m.g.scratch(4 * inF * total), 0, inF * total); // see Graph.scratch
  const bias = new Float32Array(total);
  let off = 0;
  prefixes.forEach((prefix, j) => {
    const outF = outs[j]!;
    const src = toFloat32(takeWeight(w, `${prefix}.weight`, [outF, inF])); // [out, in]
    transposeInto(src, outF, inF, wt, total, off);
    bias.set(toFloat32(takeWeight(w, `${prefix}.bias`, [outF])), off);
    off += outF;
  });
  const name = prefixes.join('+');
  const wv = m.g.weight(`${name}.weight`, castFloatTensor({ dtype: 'float32', dims: [inF, total], data: wt }, m.g.dtype, { inPlace: true }));
  const bv = m.g.weight(`${name}.bias`, { dtype: 'float32', dims: [total], data: bias });
  return m.g.node('Add', [m.g.node('MatMul', [x, wv]), bv]); // [..., sum(out)]
}

/** fusedLinear as one MatMulNBits: the torch weights' rows stacked ([sum(out), in], quantized row by row). */
function fusedQuantizedLinear(m: Module, x: Value, prefixes: readonly string[], inF: number, outs: readonly number[], total: number, w: WeightSource): Value {
  const name = prefixes.join('+');
  // GGUF blocks of one type keep their own codes: the parts' rows stacked as blocks (no second rounding).
  const blocks = prefixes.map((p) => w.blocks?.(`${p}.weight`));
  if (blocks.every(hasNBitsForm) && blocks.every((b) => b.type === blocks[0]!.type)) {
    prefixes.forEach((p, j) => takeShape(w, `${p}.weight`, [outs[j]!, inF]));
    const bias = new Float32Array(total);
    let at = 0;
    prefixes.forEach((p, j) => {
      bias.set(toFloat32(takeWeight(w, `${p}.bias`, [outs[j]!])), at);
      at += outs[j]!;
    });
    const y = ggmlMatMul(m.g, x, name, stackGgmlRows(blocks.map((b) => ({ blocks: b })))); // [..., sum(out)]
    return m.g.node('Add', [y, m.g.weight(`${name}.bias`, { dtype: 'float32', dims: [total], data: bias })]);
  }
  const rows = new Float32Array(m.g.scratch(4 * inF * total), 0, inF * total); // [sum(out), in]
  const bias = new Float32Array(total);
  let off = 0;
  prefixes.forEach((prefix, j) => {
    const outF = outs[j]!;
    const dst = rows.subarray(off * inF, (off + outF) * inF);
    dst.set(float32Into(takeWeight(w, `${prefix}.weight`, [outF, inF]), dst)); // [out, in] (16-bit ones converted in place)
    bias.set(toFloat32(takeWeight(w, `${prefix}.bias`, [outF])), off);
    off += outF;
  });
  const y = quantizedMatMul(m.g, x, name, rows, total, inF); // [..., sum(out)]
  return m.g.node('Add', [y, m.g.weight(`${name}.bias`, { dtype: 'float32', dims: [total], data: bias })]);
}

/** dst[c, off + r] = src[r, c] for src [rows, cols], dst rows of length `stride`; tiled for cache reuse. */
function transposeInto(src: Float32Array, rows: number, cols: number, dst: Float32Array, stride: number, off: number): void {
  const TILE = 64;
  for (let r0 = 0; r0 < rows; r0 += TILE) {
    const r1 = Math.min(rows, r0 + TILE);
    for (let c0 = 0; c0 < cols; c0 += TILE) {
      const c1 = Math.min(cols, c0 + TILE);
      for (let r = r0; r < r1; r++) {
        for (let c = c0; c < c1; c++) dst[c * stride + off + r] = src[r * cols + c]!;
      }
    }
  }
}

/** A norm weight from source `w`, multiplied by `factor` (folds the softmax scale 1/sqrt(D) into q's norm). */
function scaledParam(m: Module, key: string, dims: readonly number[], factor: number, w: WeightSource = m.w): Value {
  const src = toFloat32(takeWeight(w, key, dims));
  const data = Float32Array.from(src, (v) => v * factor);
  return m.g.weight(factor === 1 ? key : `${key}*${factor.toPrecision(6)}`, { dtype: 'float32', dims: [...dims], data });
}

// ---------------------------------------------------------------------------------------------
// Graph helpers

/** Size of `axis` of x as an int64 [1] tensor (dynamic token counts). */
function dimOf(g: Graph, x: Value, axis: number): Value {
  return g.node('Shape', [x], { start: axis, end: axis + 1 });
}

/**
 * float32 exp as torch computes it on CPU (SLEEF expf_u10: Cody-Waite reduction by ln 2, degree-5 polynomial,
 * fused multiply-adds). At t*1000 = 3500 one ulp of a frequency moves the angle by ~2e-4, so the frequency
 * table must be bit-identical to diffusers' float32 one, not merely accurate.
 */
function torchExpf(d: number): number {
  const f = Math.fround;
  const fma = (a: number, b: number, c: number) => f(a * b + c); // exact f32 product in f64, one rounding
  const q = Math.round(f(d * f(Math.LOG2E)));
  let s = fma(q, -f(0.693145751953125), d);
  s = fma(q, -f(1.428606765330187045e-6), s);
  let u = f(1.98527617612853646278381e-4);
  for (const c of [1.39304355252534151077271e-3, 8.33336077630519866943359e-3, 4.16664853692054748535156e-2, 1.66666671633720397949219e-1, 0.5]) {
    u = fma(u, s, f(c));
  }
  u = f(fma(f(s * s), u, s) + 1);
  return f(u * 2 ** q);
}

/** diffusers Timesteps(256, flip_sin_to_cos=True, shift 0): [cos(t f), sin(t f)], f_i = exp(-ln(10000) i / 128), float32. */
function timestepProjection(g: Graph, t: Value): Value {
  const half = TIME_PROJ_DIM / 2;
  const f = Math.fround;
  const freqs = new Float32Array(half);
  for (let i = 0; i < half; i++) freqs[i] = torchExpf(f(f(f(-Math.log(10000)) * i) / half));
  const t32 = g.dtype === 'float32' ? t : g.node('Cast', [t], { to: 1 }); // diffusers projects in float32
  const args = g.node('Mul', [g.node('Unsqueeze', [t32, g.ints([1])]), g.constant({ dtype: 'float32', dims: [half], data: freqs }, 'time_freqs')]); // [B, 128]
  const emb = concat(g, [g.node('Cos', [args]), g.node('Sin', [args])], -1); // [B, 256]
  return g.dtype === 'float32' ? emb : g.node('Cast', [emb], { to: 10 });
}

/** linear_1 -> SiLU -> linear_2 (TimestepEmbedding and PixArtAlphaTextProjection share this shape). */
function mlpEmbedder(m: Module, x: Value, prefix: string, inF: number, C: number): Value {
  return linear(m, silu(m.g, linear(m, x, `${prefix}.linear_1`, inF, C)), `${prefix}.linear_2`, C, C);
}

/** temb = timestep_embedder(proj(1000 t)) + guidance_embedder(proj(1000 g)) + text_embedder(pooled): [B, C]. */
function timeTextEmbed(m: Module, cfg: FluxConfig, timestep: Value, guidance: Value | undefined, pooled: Value): Value {
  const { g } = m;
  const C = width(cfg);
  const embed = (v: Value, name: string) =>
    mlpEmbedder(m, timestepProjection(g, g.node('Mul', [v, g.scalar(1000)])), `time_text_embed.${name}`, TIME_PROJ_DIM, C);
  let temb = embed(timestep, 'timestep_embedder');
  if (guidance) temb = g.node('Add', [temb, embed(guidance, 'guidance_embedder')]);
  return g.node('Add', [temb, mlpEmbedder(m, pooled, 'time_text_embed.text_embedder', cfg.pooledProjectionDim, C)]);
}

/** AdaLN parameters: Linear(SiLU(temb)) split into `n` chunks, each [B, 1, C] to broadcast over tokens. */
function modulation(m: Module, tembAct: Value, prefix: string, C: number, n: number): Value[] {
  const y = linear(m, tembAct, `${prefix}.linear`, C, n * C); // [B, n C]
  return chunk(m.g, reshape(m.g, y, [0, 1, n * C]), n); // n x [B, 1, C]
}

/** LayerNorm (no affine, eps 1e-6) * (1 + scale) + shift. */
function modulate(m: Module, x: Value, shift: Value, scale: Value, C: number): Value {
  const { g } = m;
  const xn = layerNorm(m, x, undefined, C, NORM_EPS);
  return g.node('Add', [g.node('Mul', [xn, g.node('Add', [scale, g.scalar(1)])]), shift]);
}

/** diffusers FeedForward(gelu-approximate): net.0.proj -> tanh GELU -> net.2. */
function feedForward(m: Module, x: Value, prefix: string, C: number): Value {
  const h = gelu(m.g, linear(m, x, `${prefix}.net.0.proj`, C, MLP_RATIO * C), 'tanh');
  return linear(m, h, `${prefix}.net.2`, MLP_RATIO * C, C);
}

/** [B, X, C] -> [B, X, H, D] */
function heads(g: Graph, x: Value, cfg: FluxConfig): Value {
  return reshape(g, x, [0, 0, cfg.numHeads, cfg.headDim]);
}

/** FLUX q/k RMSNorm over D (x * rsqrt(mean x^2 + eps) * w); `factor` folds a constant into w. */
function qkNorm(m: Module, x: Value, key: string, D: number, factor = 1): Value {
  const y = rmsNorm(m, x, undefined, D, NORM_EPS);
  return m.g.node('Mul', [y, factor === 1 ? param(m, key, [D]) : scaledParam(m, key, [D], factor)]);
}

/** The RoPE tables as used inside the graph: cos [N, 1, D], and sin with the pair sign folded in. */
interface Rope {
  cos: Value;
  sinSigned: Value;
}

/**
 * diffusers apply_rotary_emb (interleaved pairs): out = x cos + rot(x) sin with rot(x0, x1) = (-x1, x0).
 * rot(x) sin = swap(x) * sinSigned, where swap exchanges pair members and sinSigned negates even columns.
 * x: [B, N, H, D].
 */
function applyRope(g: Graph, x: Value, rope: Rope, D: number): Value {
  // Split + Concat swaps the members of each pair; on CPU this is ~2.4x faster than a reversing Slice.
  const [even, odd] = chunk(g, reshape(g, x, [0, 0, 0, D / 2, 2]), 2) as [Value, Value]; // [B, N, H, D/2, 1]
  const rot = reshape(g, concat(g, [odd, even], -1), [0, 0, 0, D]); // [B, N, H, D]
  return g.node('Add', [g.node('Mul', [x, rope.cos]), g.node('Mul', [rot, rope.sinSigned])]);
}

/**
 * softmax(q k^T) v with q already scaled by 1/sqrt(D) (folded into its norm weight), in `form`
 * (layers.ts AttentionForm: plain MatMul -> Softmax -> MatMul, fused MultiHeadAttention, or both behind an If).
 * q [B, Nq, H, D], k and v [B, Nk, H, D] -> [B, Nq, C].
 */
function attend(g: Graph, q: Value, k: Value, v: Value, cfg: FluxConfig, form: AttentionForm = 'plain', fusedFrom?: number): Value {
  const C = width(cfg);
  const plain = (): Value => {
    const qh = transpose(g, q, [0, 2, 1, 3]); // [B, H, Nq, D]
    const kt = transpose(g, k, [0, 2, 3, 1]); // [B, H, D, Nk]
    const vh = transpose(g, v, [0, 2, 1, 3]); // [B, H, Nk, D]
    const probs = g.node('Softmax', [g.node('MatMul', [qh, kt])], { axis: -1 }); // [B, H, Nq, Nk]
    const o = g.node('MatMul', [probs, vh]); // [B, H, Nq, D]
    return reshape(g, transpose(g, o, [0, 2, 1, 3]), [0, 0, C]); // [B, Nq, C]
  };
  if (form === 'plain') return plain();
  const qm = reshape(g, q, [0, 0, C]); // [B, Nq, C]
  const fused = (): Value => fusedAttention(g, qm, reshape(g, k, [0, 0, C]), reshape(g, v, [0, 0, C]), cfg.numHeads, 1); // [B, Nq, C]
  return chooseAttention(g, form, qm, k, cfg.numHeads, fused, plain, fusedFrom);
}

// ---------------------------------------------------------------------------------------------
// InstantCharacter IP attention

/** The IP processor's RMSNorm: scale * x / (||x||_2 / sqrt(D) + eps), eps outside the root. Over the last axis. */
function ipRmsNorm(m: Module, x: Value, key: string, D: number, w: WeightSource, factor = 1): Value {
  const { g } = m;
  const l2 = g.node('ReduceL2', [x, g.ints([-1])], { keepdims: 1 }); // [..., 1]
  const rms = g.node('Mul', [l2, g.scalar(D ** -0.5)]);
  const y = g.node('Div', [x, g.node('Add', [rms, g.scalar(NORM_EPS)])]);
  return g.node('Mul', [y, scaledParam(m, key, [D], factor, w)]);
}

interface IpContext {
  w: WeightSource;
  /** The characters' adapter tokens [R, P, ipDim], shared by every image of the batch. */
  tokens: Value;
  ipDim: number;
  /** ip_masks as [R, L, 1]: s_r * m_r[l], the weight of character r on image token l. */
  masks: Value;
  /** Ones [1, R]: the sum over characters as a MatMul (ORT's ReduceSum over a middle axis is ~5x slower). */
  sumOverR: Value;
  /** Per-processor IP attention per character before the masks [B, R, L, C], and the masked sums [B, L, C]. */
  debug?: { attn: Value[]; term: Value[] };
  /** How the image-to-character attention is written, and from how many score elements (as the joint attention). */
  form: AttentionForm;
  fusedFrom: number | undefined;
}

/**
 * Processor `index` for R characters: sum_r masks[r] * attention(norm_ip_q(q_img), norm_ip_k(to_k_ip(ip_r)), to_v_ip(ip_r)).
 * qImg: the image tokens of the block's to_q output before norm_q and RoPE, [B, L, H, D]. Returns [B, L, C].
 * The character axis rides along as a broadcast batch axis of the attention MatMuls, so R = 1 costs what a
 * single scaled character did (the masks' Mul replaces the scale's, the sum over R = 1 is a K = 1 MatMul).
 */
function ipAttention(m: Module, ip: IpContext, index: number, qImg: Value, cfg: FluxConfig): Value {
  const { g } = m;
  const C = width(cfg);
  const D = cfg.headDim;
  const kv = fusedLinear(m, ip.tokens, [`${index}.to_k_ip`, `${index}.to_v_ip`], ip.ipDim, [C, C], ip.w); // [R, P, 2C]
  const [k, v] = chunk(g, kv, 2).map((t) => heads(g, t, cfg)) as [Value, Value]; // [R, P, H, D]
  const q = ipRmsNorm(m, qImg, `${index}.norm_ip_q.scale`, D, ip.w, 1 / Math.sqrt(D)); // [B, L, H, D]
  const kn = ipRmsNorm(m, k, `${index}.norm_ip_k.scale`, D, ip.w); // [R, P, H, D]
  const plain = (): Value => {
    const qh = g.node('Unsqueeze', [transpose(g, q, [0, 2, 1, 3]), g.ints([1])]); // [B, 1, H, L, D]
    const kt = transpose(g, kn, [0, 2, 3, 1]); // [R, H, D, P]
    const vh = transpose(g, v, [0, 2, 1, 3]); // [R, H, P, D]
    const probs = g.node('Softmax', [g.node('MatMul', [qh, kt])], { axis: -1 }); // [B, R, H, L, P]
    const o = g.node('MatMul', [probs, vh]); // [B, R, H, L, D]
    return reshape(g, transpose(g, o, [0, 1, 3, 2, 4]), [0, 0, 0, C]); // [B, R, L, C]
  };
  if (ip.form === 'plain') return maskedSum(m, ip, plain(), C);
  const qm = reshape(g, q, [0, 0, C]); // [B, L, C]
  // The fused op has one batch axis: images x characters, q repeated per character, k and v per image.
  const fused = (): Value => {
    const R = dimOf(g, ip.tokens, 0); // [1]
    const qBR = g.node('Expand', [g.node('Unsqueeze', [qm, g.ints([1])]), concat(g, [g.ints([1]), R, g.ints([1, 1])], 0)]); // [B, R, L, C]
    const flat = (x: Value): Value => g.node('Reshape', [x, concat(g, [g.ints([-1]), g.node('Shape', [x], { start: 2 })], 0)]); // [B R, T, C]
    const kBR = (x: Value): Value => g.node('Expand', [g.node('Unsqueeze', [reshape(g, x, [0, 0, C]), g.ints([0])]), concat(g, [dimOf(g, qm, 0), g.ints([1, 1, 1])], 0)]); // [B, R, P, C]
    const o = fusedAttention(g, flat(qBR), flat(kBR(kn)), flat(kBR(v)), cfg.numHeads, 1); // [B R, L, C]
    return g.node('Reshape', [o, concat(g, [g.ints([-1]), R, g.node('Shape', [qm], { start: 1 })], 0)]); // [B, R, L, C]
  };
  return maskedSum(m, ip, chooseAttention(g, ip.form, qm, kn, cfg.numHeads, fused, plain, ip.fusedFrom), C);
}

/** sum_r masks[r] * perChar[:, r]: perChar [B, R, L, C] -> [B, L, C] (and the debug outputs). */
function maskedSum(m: Module, ip: IpContext, perChar: Value, C: number): Value {
  const { g } = m;
  const weighted = reshape(g, g.node('Mul', [perChar, ip.masks]), [0, 0, -1]); // [B, R, L C]
  const term = reshape(g, g.node('MatMul', [ip.sumOverR, weighted]), [0, -1, C]); // [B, 1, L C] -> [B, L, C]
  ip.debug?.attn.push(perChar);
  ip.debug?.term.push(term);
  return term;
}

// ---------------------------------------------------------------------------------------------
// Blocks

interface Stream {
  img: Value; // [B, L, C]
  txt: Value; // [B, T, C]
}

interface BlockContext {
  cfg: FluxConfig;
  tembAct: Value; // SiLU(temb) [B, C], shared by every AdaLN
  rope: Rope;
  splitTL: Value; // int64 [2] = (T, L)
  ip?: IpContext;
  attention: AttentionForm;
  fusedFrom: number | undefined;
}

/** FluxTransformerBlock: joint attention over concat(txt, img), separate weights per stream. */
function doubleBlock(m: Module, ctx: BlockContext, i: number, x: Stream): Stream {
  const { g } = m;
  const { cfg } = ctx;
  const C = width(cfg);
  const D = cfg.headDim;
  const p = `transformer_blocks.${i}`;
  const [shMsa, scMsa, gMsa, shMlp, scMlp, gMlp] = modulation(m, ctx.tembAct, `${p}.norm1`, C, 6) as Value[];
  const [cShMsa, cScMsa, cGMsa, cShMlp, cScMlp, cGMlp] = modulation(m, ctx.tembAct, `${p}.norm1_context`, C, 6) as Value[];

  const imgN = modulate(m, x.img, shMsa!, scMsa!, C);
  const txtN = modulate(m, x.txt, cShMsa!, cScMsa!, C);
  const qkvImg = fusedLinear(m, imgN, [`${p}.attn.to_q`, `${p}.attn.to_k`, `${p}.attn.to_v`], C, [C, C, C]); // [B, L, 3C]
  const qkvTxt = fusedLinear(m, txtN, [`${p}.attn.add_q_proj`, `${p}.attn.add_k_proj`, `${p}.attn.add_v_proj`], C, [C, C, C]); // [B, T, 3C]
  const [qI, kI, vI] = chunk(g, qkvImg, 3).map((t) => heads(g, t, cfg)) as [Value, Value, Value]; // [B, L, H, D]
  const [qT, kT, vT] = chunk(g, qkvTxt, 3).map((t) => heads(g, t, cfg)) as [Value, Value, Value]; // [B, T, H, D]

  const scale = 1 / Math.sqrt(D);
  const q = concat(g, [qkNorm(m, qT, `${p}.attn.norm_added_q.weight`, D, scale), qkNorm(m, qI, `${p}.attn.norm_q.weight`, D, scale)], 1); // [B, N, H, D]
  const k = concat(g, [qkNorm(m, kT, `${p}.attn.norm_added_k.weight`, D), qkNorm(m, kI, `${p}.attn.norm_k.weight`, D)], 1);
  const v = concat(g, [vT, vI], 1);
  const attn = attend(g, applyRope(g, q, ctx.rope, D), applyRope(g, k, ctx.rope, D), v, cfg, ctx.attention, ctx.fusedFrom); // [B, N, C]
  const [attnTxt, attnImg0] = g.op('Split', [attn, ctx.splitTL], { axis: 1 }, 2) as [Value, Value];
  const attnImg = ctx.ip ? g.node('Add', [attnImg0, ipAttention(m, ctx.ip, i, qI, cfg)]) : attnImg0; // [B, L, C]

  let img = g.node('Add', [x.img, g.node('Mul', [gMsa!, linear(m, attnImg, `${p}.attn.to_out.0`, C, C)])]);
  let txt = g.node('Add', [x.txt, g.node('Mul', [cGMsa!, linear(m, attnTxt, `${p}.attn.to_add_out`, C, C)])]);
  img = g.node('Add', [img, g.node('Mul', [gMlp!, feedForward(m, modulate(m, img, shMlp!, scMlp!, C), `${p}.ff`, C)])]);
  txt = g.node('Add', [txt, g.node('Mul', [cGMlp!, feedForward(m, modulate(m, txt, cShMlp!, cScMlp!, C), `${p}.ff_context`, C)])]);
  return { img, txt };
}

/**
 * FluxSingleTransformerBlock on x = concat(txt, img) [B, N, C]: attention and MLP in parallel from one
 * modulated input (q, k, v and proj_mlp fused into one MatMul), proj_out on concat(attn, mlp).
 */
function singleBlock(m: Module, ctx: BlockContext, i: number, x: Value, textTokens: Value): Value {
  const { g } = m;
  const { cfg } = ctx;
  const C = width(cfg);
  const D = cfg.headDim;
  const M = MLP_RATIO * C;
  const p = `single_transformer_blocks.${i}`;
  const [shift, scale, gate] = modulation(m, ctx.tembAct, `${p}.norm`, C, 3) as [Value, Value, Value];
  const xn = modulate(m, x, shift, scale, C);
  const fused = fusedLinear(m, xn, [`${p}.attn.to_q`, `${p}.attn.to_k`, `${p}.attn.to_v`, `${p}.proj_mlp`], C, [C, C, C, M]); // [B, N, 3C + M]
  const [q0, k0, v0, mlp] = g.op('Split', [fused, g.ints([C, C, C, M])], { axis: -1 }, 4) as [Value, Value, Value, Value];
  const qRaw = heads(g, q0, cfg); // [B, N, H, D]
  const q = qkNorm(m, qRaw, `${p}.attn.norm_q.weight`, D, 1 / Math.sqrt(D));
  const k = qkNorm(m, heads(g, k0, cfg), `${p}.attn.norm_k.weight`, D);
  let attn = attend(g, applyRope(g, q, ctx.rope, D), applyRope(g, k, ctx.rope, D), heads(g, v0, cfg), cfg, ctx.attention, ctx.fusedFrom); // [B, N, C]
  if (ctx.ip) {
    const qImg = g.node('Slice', [qRaw, textTokens, g.ints([2 ** 31 - 1]), g.ints([1])]); // [B, L, H, D]
    const ip = ipAttention(m, ctx.ip, cfg.numLayers + i, qImg, cfg); // [B, L, C]
    // Only image rows get the IP output: pad T zero rows in front.
    const pads = concat(g, [g.ints([0]), textTokens, g.ints([0, 0, 0, 0])], 0); // [6]
    attn = g.node('Add', [attn, g.node('Pad', [ip, pads])]);
  }
  const h = concat(g, [attn, gelu(g, mlp, 'tanh')], -1); // [B, N, C + M]
  return g.node('Add', [x, g.node('Mul', [gate, linear(m, h, `${p}.proj_out`, C + M, C)])]);
}

// ---------------------------------------------------------------------------------------------
// Model

export interface FluxBuildOptions {
  /** Width of the adapter tokens; default: read from the ip source ('0.to_k_ip.weight'). */
  ipDim?: number;
  /**
   * Adds outputs `debug.temb` [B, C], `debug.ip_attn.{i}` [B, R, L, C] (IP attention per character before the
   * masks) and `debug.ip_term.{i}` [B, L, C] (the masked sum added to the image tokens).
   */
  debugOutputs?: boolean;
  /** How attention is written (layers.ts AttentionForm); default 'plain', model sets write 'auto'. */
  attention?: AttentionForm;
  /** 'auto': score elements per image (heads x Tq x Tk) from which the fused op runs (default layers.ts FUSED_FROM_SCORES). */
  fusedFrom?: number;
}

/**
 * Declares inputs hidden_states [B, L, in], encoder_hidden_states [B, T, joint], pooled_projections [B, pooled],
 * timestep [B] (sigma), guidance [B] (when guidance_embeds), rope_cos / rope_sin [T + L, D], and with `ip`
 * ip_hidden_states [R, P, ipDim] (R characters' tokens, shared by the B images) and ip_masks [R, L] (s_r * m_r[l]:
 * subject scale times the character's mask on the packed latent grid). Output noise_pred [B, L, p*p*out].
 * `ip` is the ip_adapter state dict ('{i}.to_k_ip.weight', ...); undefined builds plain FLUX.
 */
export function buildFlux(m: Module, ip: WeightSource | undefined, cfg: FluxConfig, opts: FluxBuildOptions = {}): void {
  const { g } = m;
  const C = width(cfg);
  const D = cfg.headDim;
  const dt = g.dtype;
  const ropeWidth = cfg.axesDimsRope.reduce((a, b) => a + b, 0);
  if (ropeWidth !== D) throw new Error(`flux: axes_dims_rope sum ${ropeWidth} != attention_head_dim ${D}`);

  const hidden = g.input('hidden_states', dt, ['batch', 'image_tokens', cfg.inChannels]);
  const context = g.input('encoder_hidden_states', dt, ['batch', 'text_tokens', cfg.jointAttentionDim]);
  const pooled = g.input('pooled_projections', dt, ['batch', cfg.pooledProjectionDim]);
  const timestep = g.input('timestep', dt, ['batch']);
  const guidance = cfg.guidanceEmbeds ? g.input('guidance', dt, ['batch']) : undefined;
  const ropeCos = g.input('rope_cos', dt, ['tokens', D]);
  const ropeSin = g.input('rope_sin', dt, ['tokens', D]);

  let ipCtx: IpContext | undefined;
  if (ip) {
    const ipDim = opts.ipDim ?? takeIpDim(ip);
    const tokens = g.input('ip_hidden_states', dt, ['characters', 'ip_tokens', ipDim]);
    ipCtx = {
      w: ip,
      ipDim,
      tokens,
      masks: g.node('Unsqueeze', [g.input('ip_masks', dt, ['characters', 'image_tokens']), g.ints([2])]), // [R, L, 1]
      sumOverR: g.node('Expand', [g.floats([1], [1, 1]), concat(g, [g.ints([1]), dimOf(g, tokens, 0)], 0)]), // [1, R]
      debug: opts.debugOutputs ? { attn: [], term: [] } : undefined,
      form: opts.attention ?? 'plain',
      fusedFrom: opts.fusedFrom,
    };
  }

  const pairSign = Float32Array.from({ length: D }, (_, c) => (c % 2 === 0 ? -1 : 1));
  const rope: Rope = {
    cos: reshape(g, ropeCos, [-1, 1, D]), // [N, 1, D]
    sinSigned: reshape(g, g.node('Mul', [ropeSin, g.floats(pairSign)]), [-1, 1, D]),
  };
  const textTokens = dimOf(g, context, 1); // [1] = T
  const temb = timeTextEmbed(m, cfg, timestep, guidance, pooled); // [B, C]
  const ctx: BlockContext = {
    cfg,
    rope,
    splitTL: concat(g, [textTokens, dimOf(g, hidden, 1)], 0),
    tembAct: silu(g, temb),
    ip: ipCtx,
    attention: opts.attention ?? 'plain',
    fusedFrom: opts.fusedFrom,
  };
  let x: Stream = {
    img: linear(m, hidden, 'x_embedder', cfg.inChannels, C), // [B, L, C]
    txt: linear(m, context, 'context_embedder', cfg.jointAttentionDim, C), // [B, T, C]
  };
  for (let i = 0; i < cfg.numLayers; i++) x = doubleBlock(m, ctx, i, x);

  let joint = concat(g, [x.txt, x.img], 1); // [B, N, C]
  for (let i = 0; i < cfg.numSingleLayers; i++) joint = singleBlock(m, ctx, i, joint, textTokens);
  const img = g.node('Slice', [joint, textTokens, g.ints([2 ** 31 - 1]), g.ints([1])]); // [B, L, C]

  // AdaLayerNormContinuous: chunks are (scale, shift), unlike AdaLayerNormZero.
  const [scale, shift] = modulation(m, ctx.tembAct, 'norm_out', C, 2) as [Value, Value];
  const outC = cfg.patchSize * cfg.patchSize * cfg.outChannels;
  const out = linear(m, modulate(m, img, shift, scale, C), 'proj_out', C, outC); // [B, L, out]
  g.output(out, 'noise_pred', dt, ['batch', 'image_tokens', outC]);

  if (opts.debugOutputs) {
    g.output(temb, 'debug.temb', dt, ['batch', C]);
    ipCtx?.debug?.attn.forEach((v, i) => g.output(v, `debug.ip_attn.${i}`, dt, ['batch', 'characters', 'image_tokens', C]));
    ipCtx?.debug?.term.forEach((v, i) => g.output(v, `debug.ip_term.${i}`, dt, ['batch', 'image_tokens', C]));
  }
}

function takeIpDim(ip: WeightSource): number {
  const shape = ip.shape('0.to_k_ip.weight');
  if (!shape || shape.length !== 2) throw new Error(`missing tensor '0.to_k_ip.weight' in the ip_adapter weights`);
  return shape[1]!;
}
