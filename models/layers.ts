// Layer helpers shared by the architecture files. Each takes the module context (graph + weights),
// reads the checkpoint tensors it needs by their official key names, checks their shapes and
// emits the ONNX ops. Shapes in comments: B batch, T tokens, C channels, H heads, D head dim.
import type { Graph, Value } from './onnx/graph.ts';
import { type WeightSource, takeWeight } from './weights/source.ts';
import { type Tensor, numel, toFloat32 } from './tensor.ts';

/** What every architecture builder works with: the graph being built and the checkpoint. */
export interface Module {
  g: Graph;
  w: WeightSource;
}

/** A checkpoint tensor as a graph weight, with its shape checked. */
export function param(m: Module, key: string, dims: readonly number[]): Value {
  return m.g.weight(key, takeWeight(m.w, key, dims));
}

/** [out, in] -> [in, out], so MatMul(x, W) computes x W^T as torch's Linear does. */
export function transposeMatrix(t: Tensor): Tensor {
  const [rows, cols] = t.dims as [number, number];
  const src = toFloat32(t);
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) out[c * rows + r] = src[r * cols + c]!;
  }
  return { dtype: 'float32', dims: [cols, rows], data: out };
}

/** torch.nn.Linear: y = x W^T + b. `prefix` is the module key, e.g. 'encoder.layers.0.fc1'. */
export function linear(m: Module, x: Value, prefix: string, inFeatures: number, outFeatures: number, bias = true): Value {
  const key = `${prefix}.weight`;
  const wt = m.g.weight(key, transposeMatrix(takeWeight(m.w, key, [outFeatures, inFeatures]))); // [in, out]
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
}

/** softmax(q k^T * scale + bias) v on split heads: q [B, H, Tq, D], k and v [B, H, Tk, D] -> [B, H, Tq, D]. */
export function attention(g: Graph, q: Value, k: Value, v: Value, headDim: number, opts: AttentionOptions = {}): Value {
  const scale = opts.scale ?? 1 / Math.sqrt(headDim);
  let scores = g.node('MatMul', [q, transpose(g, k, [0, 1, 3, 2])]); // [B, H, Tq, Tk]
  if (scale !== 1) scores = g.node('Mul', [scores, g.scalar(scale)]);
  if (opts.bias) scores = g.node('Add', [scores, opts.bias]);
  const probs = g.node('Softmax', [scores], { axis: -1 });
  return g.node('MatMul', [probs, v]); // [B, H, Tq, D]
}

/** Multi-head attention on [B, T, H*D] tensors (heads split and merged here). */
export function multiHeadAttention(g: Graph, q: Value, k: Value, v: Value, heads: number, headDim: number, opts: AttentionOptions = {}): Value {
  const o = attention(g, splitHeads(g, q, heads, headDim), splitHeads(g, k, heads, headDim), splitHeads(g, v, heads, headDim), headDim, opts);
  return mergeHeads(g, o, heads, headDim); // [B, Tq, H*D]
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
