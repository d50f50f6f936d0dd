// A Linear whose weight is stored in GGML blocks (a GGUF checkpoint), written as MatMulNBits with the
// file's own codes and scales (models/quant/ggml-nbits.ts), plus, for the types with a per-block minimum,
// the correction x's block sums times the offsets: y = MatMulNBits(x) + blockSums(x) O^T.
import type { Graph, Value } from './onnx/graph.ts';
import type { GgmlBlocks } from './weights/ggml.ts';
import { GGML_NBITS, ggmlToNBits } from './quant/ggml-nbits.ts';

/** Whether a weight in these blocks can be written as MatMulNBits without rounding. */
export function hasNBitsForm(b: GgmlBlocks | undefined): b is GgmlBlocks {
  return b !== undefined && GGML_NBITS[b.type.name] !== undefined;
}

/** x [..., K] times the weight^T -> [..., N]. `name` names the initializers, as quantizedMatMul does. */
export function ggmlMatMul(g: Graph, x: Value, name: string, blocks: GgmlBlocks): Value {
  const { q, offsets } = ggmlToNBits(blocks);
  const y = g.matMulNBits(x, name, q); // [..., N]
  if (!offsets) return y;
  const kb = q.K / q.block;
  // [..., K] -> [..., kb, block] -> sum over the block -> [..., kb]
  const lead = g.node('Slice', [g.node('Shape', [x]), g.ints([0]), g.ints([-1])]); // [rank - 1]
  const split = g.node('Reshape', [x, g.node('Concat', [lead, g.ints([kb, q.block])], { axis: 0 })]); // [..., kb, block]
  const sums = g.node('ReduceSum', [split, g.ints([-1])], { keepdims: 0 }); // [..., kb]
  // O^T [kb, N]: offsets are stored [N, kb] row by row.
  const ot = new Float32Array(kb * q.N);
  for (let n = 0; n < q.N; n++) for (let j = 0; j < kb; j++) ot[j * q.N + n] = offsets[n * kb + j]!;
  const o = g.weight(`${name}.block_offsets`, { dtype: 'float32', dims: [kb, q.N], data: ot });
  // One Gemm adds the correction into y (beta = 1): no separate pass over the [..., N] output.
  const flat = (v: Value, cols: number) => g.node('Reshape', [v, g.ints([-1, cols])]);
  const z = g.node('Gemm', [flat(sums, kb), o, flat(y, q.N)], { alpha: 1, beta: 1 }); // [rows, N]
  return g.node('Reshape', [z, g.node('Concat', [lead, g.ints([q.N])], { axis: 0 })]); // [..., N]
}
