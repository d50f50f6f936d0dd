// Layer helpers shared by the architecture files. Each takes the module context (graph + weights),
// reads the checkpoint tensors it needs by their official key names, checks their shapes and
// emits the ONNX ops. Shapes in comments: B batch, T tokens, C channels, H heads, D head dim.
import { type Graph, type Value, MS_DOMAIN, float } from './onnx/graph.ts';
import { type WeightSource, storesBlocks, takeShape, takeWeight } from './weights/source.ts';
import { type Tensor, type TensorData, bf16ToFloat32, castFloatTensor, float16ToFloat32, numel, toFloat32 } from './tensor.ts';
import { blockFor, quantizeRows, quantizedBytes } from './quant/quantize.ts';
import { ggmlMatMul, hasNBitsForm } from './ggml_linear.ts';

/** What every architecture builder works with: the graph being built and the checkpoint. */
export interface Module {
  g: Graph;
  w: WeightSource;
}

/** A checkpoint tensor as a graph weight, with its shape checked. */
export function param(m: Module, key: string, dims: readonly number[]): Value {
  return m.g.weight(key, takeWeight(m.w, key, dims));
}

/**
 * [out, in] -> [in, out], so MatMul(x, W) computes x W^T as torch's Linear does. The dtype is kept
 * (bf16/fp16 move as 16-bit patterns, so a weight can be transposed after its fp16 conversion on half
 * the bytes); g.weight converts to the graph's dtype. Bits are copied through integer views, never
 * through float loads, so every pattern (NaN payloads included) survives. `out` (same typed array kind,
 * at least rows * cols long) lets a caller reuse a scratch buffer; the result is then a view of it.
 */
/** A view of the graph's scratch buffer with the kind and length of `data`. */
export function scratchLike(g: Graph, data: TensorData): TensorData {
  const Kind = data.constructor as new (buf: ArrayBuffer, offset: number, length: number) => TensorData;
  return new Kind(g.scratch(data.byteLength), 0, data.length);
}

export function transposeMatrix(t: Tensor, out?: TensorData): Tensor {
  const [rows, cols] = t.dims as [number, number];
  const n = rows * cols;
  const src = t.data;
  const Kind = src.constructor as new (n: number) => TensorData;
  if (out && (out.constructor !== Kind || out.length < n)) {
    throw new Error(`transposeMatrix: out must be a ${Kind.name} of at least ${n} elements, got a ${out.constructor.name} of ${out.length}`);
  }
  const dst = out ? (out.subarray as (begin: number, end: number) => TensorData).call(out, 0, n) : new Kind(n);
  if (src instanceof Uint16Array) transpose16(src, dst as Uint16Array, rows, cols);
  else if (src instanceof Float32Array || src instanceof Int32Array) transpose32(int32View(src), int32View(dst as Float32Array | Int32Array), rows, cols);
  else transposeAny(src, dst, rows, cols);
  return { dtype: t.dtype, dims: [cols, rows], data: dst };
}

function int32View(a: Float32Array | Int32Array): Int32Array {
  return new Int32Array(a.buffer, a.byteOffset, a.length);
}

// Tiled transposes: a block of TILE_ROWS source rows x 32 bytes of columns is read row by row and
// written column by column. Checkpoint dims are multiples of 1024, so destination rows sit a power-of-two
// stride apart and share few cache sets: a narrow block (8 or 16 destination rows live at once) avoids
// those conflict misses, 32 source rows fill each destination line. Measured on [3072, 12288]: about 3x
// faster than 64 x 64 tiles. One function per element width keeps V8's element accesses monomorphic.
const TILE_ROWS = 32;

function transpose32(src: Int32Array, out: Int32Array, rows: number, cols: number): void {
  const tileCols = 8; // 32 bytes
  for (let r0 = 0; r0 < rows; r0 += TILE_ROWS) {
    const r1 = Math.min(rows, r0 + TILE_ROWS);
    for (let c0 = 0; c0 < cols; c0 += tileCols) {
      const c1 = Math.min(cols, c0 + tileCols);
      for (let r = r0; r < r1; r++) {
        const rowStart = r * cols;
        for (let c = c0; c < c1; c++) out[c * rows + r] = src[rowStart + c]!;
      }
    }
  }
}

function transpose16(src: Uint16Array, out: Uint16Array, rows: number, cols: number): void {
  const tileCols = 16; // 32 bytes
  for (let r0 = 0; r0 < rows; r0 += TILE_ROWS) {
    const r1 = Math.min(rows, r0 + TILE_ROWS);
    for (let c0 = 0; c0 < cols; c0 += tileCols) {
      const c1 = Math.min(cols, c0 + tileCols);
      for (let r = r0; r < r1; r++) {
        const rowStart = r * cols;
        for (let c = c0; c < c1; c++) out[c * rows + r] = src[rowStart + c]!;
      }
    }
  }
}

/** Other dtypes (float64, int64, uint8): rare for Linear weights, a plain loop is enough. */
function transposeAny(src: TensorData, out: TensorData, rows: number, cols: number): void {
  const from = src as unknown as ArrayLike<unknown>;
  const to = out as unknown as unknown[];
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) to[c * rows + r] = from[r * cols + c];
  }
}

/** Linears narrower than this stay float in a quantized graph (below MatMulNBits' smallest block: nothing to gain). */
export const MIN_QUANT_DIM = 16;

/** Whether an [out, in] Linear of this graph becomes MatMulNBits (the graph is quantized and the layer not tiny). */
export function quantizes(g: Graph, inFeatures: number, outFeatures: number): boolean {
  return g.quant !== undefined && inFeatures >= MIN_QUANT_DIM && outFeatures >= MIN_QUANT_DIM;
}

/** A floating weight as float32 values, converted into `out` (a scratch view) when it is 16-bit. */
export function float32Into(t: Tensor, out: Float32Array): Float32Array {
  if (t.dtype === 'float32') return t.data as Float32Array;
  const dst = out.subarray(0, t.data.length);
  if (t.dtype === 'bfloat16') return bf16ToFloat32(t.data as Uint16Array, dst);
  if (t.dtype === 'float16') return float16ToFloat32(t.data as Uint16Array, dst);
  return toFloat32(t);
}

/**
 * x times rows^T as MatMulNBits, rows = float32 [N = out, K = in] (torch's Linear layout, quantized row by
 * row). `name` names the initializers (<name>.qweight, .scales, .zero_points).
 */
export function quantizedMatMul(g: Graph, x: Value, name: string, rows: Float32Array, N: number, K: number): Value {
  if (!g.quant) throw new Error(`graph ${g.name}: quantizedMatMul on a graph without a quantization spec`);
  const spec = { ...g.quant, block: blockFor(g.quant.block, K) };
  const q = g.quantizer ? g.quantizer(rows, N, K, spec) : quantizeRows(rows, N, K, spec, g.quantScratch(quantizedBytes(N, K, spec)));
  return g.matMulNBits(x, name, q); // [..., N]
}

/**
 * A weight that a quantized GGUF (one with block types) stores as float (F32 / F16 / BF16) stays a float MatMul
 * in a quantized graph: the file kept it unquantized on purpose (ComfyUI-GGUF's FLUX files keep the embedders
 * so). An all-float GGUF is quantized like any float checkpoint when a quantized format is asked for.
 */
export function storedFloat(w: WeightSource, key: string): boolean {
  const t = w.ggmlType?.(key);
  return (t === 'F32' || t === 'F16' || t === 'BF16') && storesBlocks(w);
}

/** torch.nn.Linear: y = x W^T + b. `prefix` is the module key, e.g. 'encoder.layers.0.fc1'. */
export function linear(m: Module, x: Value, prefix: string, inFeatures: number, outFeatures: number, bias = true): Value {
  const key = `${prefix}.weight`;
  if (quantizes(m.g, inFeatures, outFeatures) && !storedFloat(m.w, key)) {
    // A GGUF block weight keeps its own codes (no second rounding).
    const blocks = m.w.blocks?.(key);
    if (hasNBitsForm(blocks)) {
      takeShape(m.w, key, [outFeatures, inFeatures]);
      const y = ggmlMatMul(m.g, x, prefix, blocks); // [..., out]
      return bias ? m.g.node('Add', [y, param(m, `${prefix}.bias`, [outFeatures])]) : y;
    }
    const w = takeWeight(m.w, key, [outFeatures, inFeatures]); // [out, in]: MatMulNBits' own row order, no transpose
    const rows = float32Into(w, new Float32Array(m.g.scratch(4 * outFeatures * inFeatures), 0, outFeatures * inFeatures));
    const y = quantizedMatMul(m.g, x, prefix, rows, outFeatures, inFeatures); // [..., out]
    return bias ? m.g.node('Add', [y, param(m, `${prefix}.bias`, [outFeatures])]) : y;
  }
  // Transposed into the graph's scratch buffer, which the precision cast may then overwrite in place:
  // the only new memory per weight is the read itself.
  const w = takeWeight(m.w, key, [outFeatures, inFeatures]);
  const wt = m.g.weight(key, castFloatTensor(transposeMatrix(w, scratchLike(m.g, w.data)), m.g.dtype, { inPlace: true })); // [in, out]
  const y = m.g.node('MatMul', [x, wt]); // [..., out]
  return bias ? m.g.node('Add', [y, param(m, `${prefix}.bias`, [outFeatures])]) : y;
}

/** torch.nn.LayerNorm over the last axis; without affine weights when `prefix` is undefined. */
export function layerNorm(m: Module, x: Value, prefix: string | undefined, dim: number, eps: number): Value {
  const scale = prefix ? param(m, `${prefix}.weight`, [dim]) : m.g.floats(new Float32Array(dim).fill(1));
  const bias = prefix ? param(m, `${prefix}.bias`, [dim]) : m.g.floats(new Float32Array(dim));
  return m.g.node('LayerNormalization', [x, scale, bias], { axis: -1, epsilon: eps });
}

/** RMS norm over the last axis (T5 / FLUX q-k norm): x / sqrt(mean(x^2) + eps) * weight. */
export function rmsNorm(m: Module, x: Value, weightKey: string | undefined, dim: number, eps: number): Value {
  const { g } = m;
  const ms = g.node('ReduceMean', [g.node('Mul', [x, x]), g.ints([-1])], { keepdims: 1 }); // [..., 1]
  const y = g.node('Div', [x, g.node('Sqrt', [g.node('Add', [ms, g.scalar(eps)])])]);
  return weightKey ? g.node('Mul', [y, param(m, weightKey, [dim])]) : y;
}

export function gelu(g: Graph, x: Value, approximate: 'none' | 'tanh'): Value {
  return g.node('Gelu', [x], { approximate });
}

export function silu(g: Graph, x: Value): Value {
  return g.node('Mul', [x, g.node('Sigmoid', [x])]);
}

/** CLIP's quick_gelu: x * sigmoid(1.702 x). */
export function quickGelu(g: Graph, x: Value): Value {
  return g.node('Mul', [x, g.node('Sigmoid', [g.node('Mul', [x, g.scalar(1.702)])])]);
}

export function reshape(g: Graph, x: Value, dims: readonly number[]): Value {
  return g.node('Reshape', [x, g.ints(dims)]);
}

export function transpose(g: Graph, x: Value, perm: readonly number[]): Value {
  return g.node('Transpose', [x], { perm });
}

export function concat(g: Graph, xs: readonly Value[], axis: number): Value {
  return g.node('Concat', xs, { axis });
}

/** x[..., start:end] along `axis`. */
export function slice(g: Graph, x: Value, axis: number, start: number, end: number): Value {
  return g.node('Slice', [x, g.ints([start]), g.ints([end]), g.ints([axis])]);
}

/** Splits the last axis into equal chunks. */
export function chunk(g: Graph, x: Value, parts: number, axis = -1): Value[] {
  return g.op('Split', [x], { axis, num_outputs: parts }, parts);
}

/** [B, T, H*D] -> [B, H, T, D] */
export function splitHeads(g: Graph, x: Value, heads: number, headDim: number): Value {
  return transpose(g, reshape(g, x, [0, -1, heads, headDim]), [0, 2, 1, 3]);
}

/** [B, H, T, D] -> [B, T, H*D] */
export function mergeHeads(g: Graph, x: Value, heads: number, headDim: number): Value {
  return reshape(g, transpose(g, x, [0, 2, 1, 3]), [0, -1, heads * headDim]);
}

export interface AttentionOptions {
  /** Multiplies q k^T; default 1/sqrt(D). */
  scale?: number;
  /** Added to the scores, broadcast to [B, H, Tq, Tk]. */
  bias?: Value;
  /** float16 graphs: softmax in float32 (cast around it), as transformers' T5 attention does. */
  softmaxFloat32?: boolean;
}

/** softmax(q k^T * scale + bias) v on split heads: q [B, H, Tq, D], k and v [B, H, Tk, D] -> [B, H, Tq, D]. */
export function attention(g: Graph, q: Value, k: Value, v: Value, headDim: number, opts: AttentionOptions = {}): Value {
  const scale = opts.scale ?? 1 / Math.sqrt(headDim);
  let scores = g.node('MatMul', [q, transpose(g, k, [0, 1, 3, 2])]); // [B, H, Tq, Tk]
  if (scale !== 1) scores = g.node('Mul', [scores, g.scalar(scale)]);
  if (opts.bias) scores = g.node('Add', [scores, opts.bias]);
  const probs = opts.softmaxFloat32 && g.dtype === 'float16'
    ? g.node('Cast', [g.node('Softmax', [g.node('Cast', [scores], { to: 1 })], { axis: -1 })], { to: 10 }) // float32 -> float16
    : g.node('Softmax', [scores], { axis: -1 });
  return g.node('MatMul', [probs, v]); // [B, H, Tq, D]
}

/** Multi-head attention on [B, T, H*D] tensors (heads split and merged here). */
export function multiHeadAttention(g: Graph, q: Value, k: Value, v: Value, heads: number, headDim: number, opts: AttentionOptions = {}): Value {
  const o = attention(g, splitHeads(g, q, heads, headDim), splitHeads(g, k, heads, headDim), splitHeads(g, v, heads, headDim), headDim, opts);
  return mergeHeads(g, o, heads, headDim); // [B, Tq, H*D]
}

/**
 * How attention is written into a graph. 'plain': MatMul -> Softmax -> MatMul (materialises the [Tq, Tk]
 * scores per head). 'fused': com.microsoft MultiHeadAttention (flash kernels on CPU, CUDA and WebGPU; no
 * T-squared buffer). 'auto': both, behind an If that takes the fused op where the plain one would hold
 * `fusedFrom` or more score elements per image (heads x Tq x Tk; docs/attention.md has the rule and the
 * measurements behind it).
 */
export type AttentionForm = 'plain' | 'fused' | 'auto';

/**
 * Score elements per image (heads x Tq x Tk, 16 MiB in float32) from which 'auto' graphs take
 * MultiHeadAttention (docs/attention.md): measured on a quiet CPU, the fused op is faster from about 4M score
 * elements on, at every head count and width FLUX, the tiny set and the VAE use; below, with one narrow head
 * (the tiny VAE's mid block at 256x256), it can be several times slower. FLUX runs fused from 512x512 (24 heads:
 * from about 420 tokens). A constant in the graph: onnxruntime-node ignores a fed overridable initializer, so
 * it could not be set at run time.
 */
export const FUSED_FROM_SCORES = 2 ** 22;

/**
 * softmax(q k^T * scale) v on merged heads: q [B, Tq, H*D], k [B, Tk, H*D], v [B, Tk, H*D] -> [B, Tq, H*D],
 * written in `form` (see AttentionForm). The fused op takes unpacked q, k, v in [B, T, H*D], the layout the
 * CPU, CUDA and WebGPU (flash) kernels all accept.
 */
export function scaledDotAttention(
  g: Graph, q: Value, k: Value, v: Value, heads: number, headDim: number, form: AttentionForm, scale = 1 / Math.sqrt(headDim), fusedFrom = FUSED_FROM_SCORES,
): Value {
  return chooseAttention(g, form, q, k, heads, () => fusedAttention(g, q, k, v, heads, scale), () => multiHeadAttention(g, q, k, v, heads, headDim, { scale }), fusedFrom);
}

/** com.microsoft MultiHeadAttention on unpacked q [B, Tq, H*D], k and v [B, Tk, H*D] -> [B, Tq, H*D]. */
export function fusedAttention(g: Graph, q: Value, k: Value, v: Value, heads: number, scale: number): Value {
  return g.op('MultiHeadAttention', [q, k, v], { num_heads: heads, scale: float(scale) }, 1, MS_DOMAIN)[0]!;
}

/**
 * Builds `fused` or `plain` (both return one value of the graph's dtype) as `form` says; 'auto' writes both
 * behind an If on the size of the scores: heads x Tq x Tk >= fusedFrom takes the fused one (Tq and Tk are
 * axis 1 of `queries` and `keys`).
 */
export function chooseAttention(
  g: Graph, form: AttentionForm, queries: Value, keys: Value, heads: number, fused: () => Value, plain: () => Value, fusedFrom = FUSED_FROM_SCORES,
): Value {
  if (form === 'fused') return fused();
  if (form === 'plain') return plain();
  const tq = g.node('Shape', [queries], { start: 1, end: 2 }); // [1]
  const tk = g.node('Shape', [keys], { start: 1, end: 2 }); // [1]
  const scores = g.node('Mul', [g.node('Mul', [tq, tk]), g.ints([heads])]); // [1] = H Tq Tk
  const cond = g.node('Squeeze', [g.node('GreaterOrEqual', [scores, g.ints([fusedFrom])])]); // bool scalar
  return g.ifElse(cond, () => [fused()], () => [plain()], [g.dtype])[0]!;
}

/** Number of elements of a weight-shape table: parameter counting without allocating weights. */
export function countParameters(shapes: Record<string, readonly number[]>): number {
  let n = 0;
  for (const dims of Object.values(shapes)) n += numel(dims);
  return n;
}

/** The transformers `hidden_act` names these encoders use. */
export type HfActivation = 'gelu' | 'gelu_new' | 'gelu_pytorch_tanh' | 'quick_gelu' | 'silu';
export const HF_ACTIVATIONS: readonly HfActivation[] = ['gelu', 'gelu_new', 'gelu_pytorch_tanh', 'quick_gelu', 'silu'];

/** Parses a config's `hidden_act`, naming the model on an unsupported value. */
export function parseActivation(model: string, act: unknown): HfActivation {
  if (!HF_ACTIVATIONS.includes(act as HfActivation)) throw new Error(`${model} config: unsupported hidden_act ${JSON.stringify(act)}`);
  return act as HfActivation;
}

/** transformers' ACT2FN: 'gelu' is exact erf, 'gelu_new' and 'gelu_pytorch_tanh' the tanh form. */
export function activation(g: Graph, x: Value, act: HfActivation): Value {
  switch (act) {
    case 'gelu': return gelu(g, x, 'none');
    case 'gelu_new':
    case 'gelu_pytorch_tanh': return gelu(g, x, 'tanh');
    case 'quick_gelu': return quickGelu(g, x);
    case 'silu': return silu(g, x);
  }
}
