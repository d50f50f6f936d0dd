// MatMulNBits graphs through the real onnxruntime-node: the operator's output equals a float32 MatMul on
// the dequantized weights (accuracy_level 0), for 4 and 8 bits, asymmetric and symmetric, K not a
// multiple of the block; and a quantized Linear (layers.linear) matches its float reference.
import { describe, expect, it } from 'vitest';
import { Graph, MS_DOMAIN } from '../../models/onnx/graph.ts';
import { runOnce } from '../../models/onnx/ort.ts';
import { dequantize, quantizeRows } from '../../models/quant/quantize.ts';
import { linear } from '../../models/layers.ts';
import { memorySource } from '../../models/weights/source.ts';
import { type Tensor, f32 } from '../../models/tensor.ts';

function normals(n: number, seed: number): Float32Array {
  let s = seed;
  const u = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) + 0.5) / 2 ** 32;
  return Float32Array.from({ length: n }, () => Math.sqrt(-2 * Math.log(u())) * Math.cos(2 * Math.PI * u()));
}

/** max |a - b| / max |b|. */
function relErr(a: Float32Array, b: Float32Array): number {
  let d = 0;
  let m = 0;
  for (let i = 0; i < b.length; i++) {
    d = Math.max(d, Math.abs(a[i]! - b[i]!));
    m = Math.max(m, Math.abs(b[i]!));
  }
  return d / m;
}

/** W^T as a float32 [K, N] initializer. */
function transposed(w: Float32Array, N: number, K: number): Tensor {
  const t = new Float32Array(K * N);
  for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) t[k * N + n] = w[n * K + k]!;
  return f32([K, N], t);
}

describe('MatMulNBits through onnxruntime-node', () => {
  const M = 5;
  const N = 48;
  for (const bits of [4, 8] as const) {
    for (const [block, K] of [[32, 100], [64, 128], [128, 200], [16, 33]] as const) {
      for (const symmetric of [false, true]) {
        it(`${bits} bits, block ${block}, K ${K}${symmetric ? ', symmetric' : ''}: equals fp32 MatMul on the dequantized weights`, async () => {
          const w = normals(N * K, bits * 1000 + block + K);
          const q = quantizeRows(w, N, K, { bits, block, symmetric });
          const x = f32([1, M, K], normals(M * K, 99));

          const gq = new Graph({ name: 'nbits', quant: { bits, block, symmetric, accuracyLevel: 0 } });
          gq.output(gq.matMulNBits(gq.input('x', 'float32', [1, M, K]), 'w', q), 'y', 'float32', [1, M, N]);
          const gf = new Graph({ name: 'float' });
          gf.output(gf.node('MatMul', [gf.input('x', 'float32', [1, M, K]), gf.weight('w', transposed(dequantize(q), N, K))]), 'y', 'float32', [1, M, N]);

          const yq = (await runOnce(gq.toBytes(), { x })).y!;
          const yf = (await runOnce(gf.toBytes(), { x })).y!;
          expect(yq.dims).toEqual([1, M, N]);
          const err = relErr(yq.data as Float32Array, yf.data as Float32Array);
          expect(err).toBeLessThanOrEqual(1e-5);
          // and the quantization itself is visible: against the original weights the error is far larger
          const yo = (await runOnce((() => {
            const g = new Graph({ name: 'orig' });
            g.output(g.node('MatMul', [g.input('x', 'float32', [1, M, K]), g.weight('w', transposed(w, N, K))]), 'y', 'float32', [1, M, N]);
            return g.toBytes();
          })(), { x })).y!;
          expect(relErr(yq.data as Float32Array, yo.data as Float32Array)).toBeGreaterThan(10 * err);
        });
      }
    }
  }

  it('writes the com.microsoft opset import, uint8 initializers and the attributes ORT checks', async () => {
    const K = 64;
    const g = new Graph({ name: 'attrs', quant: { bits: 4, block: 32 } });
    const w = normals(N * K, 5);
    g.output(g.matMulNBits(g.input('x', 'float32', [1, 2, K]), 'w', quantizeRows(w, N, K, { bits: 4, block: 32 })), 'y', 'float32', [1, 2, N]);
    const bytes = g.toBytes();
    expect(Buffer.from(bytes).includes(Buffer.from(MS_DOMAIN))).toBe(true);
    // 4 bits, block 32, K 64: B is [48, 2, 16] uint8 = 1536 bytes, scales 96 float32, zero points 48 bytes
    expect(g.weightBytes).toBe(N * 2 * 16 + N * 2 * 4 + N);
    // accuracy_level 4 (the CPU's int8 compute path) runs too, within quantization noise of level 0
    const x = f32([1, 2, K], normals(2 * K, 6));
    const y4 = (await runOnce(bytes, { x })).y!;
    const g0 = new Graph({ name: 'attrs0', quant: { bits: 4, block: 32, accuracyLevel: 0 } });
    g0.output(g0.matMulNBits(g0.input('x', 'float32', [1, 2, K]), 'w', quantizeRows(w, N, K, { bits: 4, block: 32 })), 'y', 'float32', [1, 2, N]);
    const y0 = (await runOnce(g0.toBytes(), { x })).y!;
    const e = relErr(y4.data as Float32Array, y0.data as Float32Array);
    console.log(`accuracy_level 4 vs 0, 4 bits: relative ${e.toExponential(2)}`);
    expect(e).toBeLessThan(2e-2);
  });

  it('layers.linear becomes MatMulNBits + bias in a quantized graph and stays a float MatMul otherwise', async () => {
    const inF = 96;
    const outF = 40;
    const weights = new Map<string, Tensor>([
      ['fc.weight', f32([outF, inF], normals(outF * inF, 11))],
      ['fc.bias', f32([outF], normals(outF, 12))],
      ['tiny.weight', f32([8, inF], normals(8 * inF, 13))],
    ]);
    const build = (quant?: { bits: 4 | 8; block: number; accuracyLevel: number }) => {
      const g = new Graph({ name: 'lin', quant });
      const m = { g, w: memorySource(weights) };
      const x = g.input('x', 'float32', [1, 3, inF]);
      g.output(linear(m, x, 'fc', inF, outF), 'y', 'float32', [1, 3, outF]);
      g.output(linear(m, x, 'tiny', inF, 8, false), 'z', 'float32', [1, 3, 8]);
      return g;
    };
    const x = f32([1, 3, inF], normals(3 * inF, 14));
    const ref = await runOnce(build().toBytes(), { x });
    const g8 = build({ bits: 8, block: 32, accuracyLevel: 0 });
    const out8 = await runOnce(g8.toBytes(), { x });
    // the 8-wide layer stays float: bit-identical
    expect(Array.from(out8.z!.data as Float32Array)).toEqual(Array.from(ref.z!.data as Float32Array));
    // the quantized one: exactly the dequantized weights' product plus the bias
    const q = quantizeRows(weights.get('fc.weight')!.data as Float32Array, outF, inF, { bits: 8, block: 32 });
    const gd = new Graph({ name: 'deq' });
    const xd = gd.input('x', 'float32', [1, 3, inF]);
    gd.output(gd.node('Add', [gd.node('MatMul', [xd, gd.weight('w', transposed(dequantize(q), outF, inF))]), gd.weight('b', weights.get('fc.bias')!)]), 'y', 'float32', [1, 3, outF]);
    const deq = await runOnce(gd.toBytes(), { x });
    expect(relErr(out8.y!.data as Float32Array, deq.y!.data as Float32Array)).toBeLessThanOrEqual(1e-5);
    const e8 = relErr(out8.y!.data as Float32Array, ref.y!.data as Float32Array);
    expect(e8).toBeGreaterThan(0);
    expect(e8).toBeLessThan(1e-2);
  });
});
