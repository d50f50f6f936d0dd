// The ONNX graph writer round-trips through onnxruntime-node: inline and external-data weights,
// fp32 and fp16, attributes of every kind used by the architectures.
import { describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Graph, float } from '../../models/onnx/graph.ts';
import { runOnce } from '../../models/onnx/ort.ts';
import { f32, float16ToFloat32, floatToHalf, halfToFloat } from '../../models/tensor.ts';

describe('ONNX graph writer', () => {
  it('writes a graph with inline weights that runs exactly', async () => {
    const g = new Graph({ name: 'inline' });
    const x = g.input('x', 'float32', ['B', 3]);
    const w = g.weight('w', f32([3, 2], [1, 2, 3, 4, 5, 6]));
    g.output(g.node('Add', [g.node('MatMul', [x, w]), g.scalar(0.5)]), 'y', 'float32', ['B', 2]);
    const out = await runOnce(g.toBytes(), { x: f32([2, 3], [1, 0, 0, 0, 1, 1]) });
    expect(Array.from(out.y!.data as Float32Array)).toEqual([1.5, 2.5, 8.5, 10.5]);
  });

  it('encodes float, int, string and int-list attributes', async () => {
    const g = new Graph({ name: 'attrs' });
    const x = g.input('x', 'float32', [1, 1, 2, 2]);
    const up = g.node('Resize', [x, undefined, g.constant(f32([4], [1, 1, 2, 2]))], { mode: 'nearest', coordinate_transformation_mode: 'asymmetric', nearest_mode: 'floor' });
    const ln = g.node('LayerNormalization', [up, g.floats([1, 1, 1, 1]), g.floats([0, 0, 0, 0])], { axis: -1, epsilon: 1 });
    const t = g.node('Transpose', [ln], { perm: [0, 1, 3, 2] });
    const e = g.node('Elu', [g.node('Sub', [t, g.scalar(10)])], { alpha: float(2) });
    g.output(e, 'y');
    const out = await runOnce(g.toBytes(), { x: f32([1, 1, 2, 2], [0, 2, 4, 6]) });
    const y = out.y!.data as Float32Array;
    expect(out.y!.dims).toEqual([1, 1, 4, 4]);
    // Row [0,0,2,2] after nearest x2; LayerNorm with epsilon 1 (mean 1, var 1): (x-1)/sqrt(2);
    // minus 10 is negative everywhere, so Elu with alpha 2 gives 2 (e^v - 1).
    const elu = (v: number) => 2 * (Math.exp(v - 10) - 1);
    expect(y[0]).toBeCloseTo(elu(-1 / Math.sqrt(2)), 5);
    expect(y[4 * 2]).toBeCloseTo(elu(1 / Math.sqrt(2)), 5); // transposed: column 0 of row 2 is the old (0, 2)
  });

  it('streams weights to an external-data file and loads from the path', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'charflow-onnx-'));
    try {
      const g = new Graph({ name: 'ext', external: { dir, file: 'ext.onnx.data' } });
      const x = g.input('x', 'float32', [1, 1000]);
      const big = new Float32Array(1000 * 3).map((_, i) => (i % 7) - 3);
      const w = g.weight('big', f32([1000, 3], big));
      g.output(g.node('MatMul', [x, w]), 'y');
      g.save(join(dir, 'ext.onnx'));
      expect(statSync(join(dir, 'ext.onnx.data')).size).toBeGreaterThanOrEqual(12000);
      expect(statSync(join(dir, 'ext.onnx')).size).toBeLessThan(2000);
      expect(existsSync(join(dir, 'ext.onnx.data.partial'))).toBe(false);
      const ones = new Float32Array(1000).fill(1);
      const out = await runOnce(join(dir, 'ext.onnx'), { x: f32([1, 1000], ones) });
      const expected = [0, 1, 2].map((c) => big.filter((_, i) => i % 3 === c).reduce((a, b) => a + b, 0));
      expect(Array.from(out.y!.data as Float32Array)).toEqual(expected);
      expect(g.weightBytes).toBe(12000);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('converts weights to float16 for half-precision graphs', async () => {
    const g = new Graph({ name: 'half', dtype: 'float16' });
    const x = g.input('x', 'float16', [1, 2]);
    const w = g.weight('w', f32([2, 2], [0.1, 0.2, 0.3, 0.4]));
    g.output(g.node('Add', [g.node('MatMul', [x, w]), g.scalar(1)]), 'y', 'float16');
    const xs = Uint16Array.from([1, 2], floatToHalf);
    const out = await runOnce(g.toBytes(), { x: { dtype: 'float16', dims: [1, 2], data: xs } });
    expect(out.y!.dtype).toBe('float16');
    const y = float16ToFloat32(out.y!.data as Uint16Array);
    expect(y[0]).toBeCloseTo(1.7, 2);
    expect(y[1]).toBeCloseTo(2.0, 2);
  });

  it('rounds to half precision to nearest even, with subnormals and infinities', () => {
    for (const v of [0, 1, -2.5, 65504, 1e-7, 6.1e-5, 0.1, -0.333]) {
      const h = halfToFloat(floatToHalf(v));
      expect(Math.abs(h - v)).toBeLessThanOrEqual(Math.max(Math.abs(v) * 2 ** -11, 2 ** -25));
    }
    expect(halfToFloat(floatToHalf(1e6))).toBe(Infinity);
    expect(floatToHalf(1 + 2 ** -11)).toBe(0x3c00); // a tie rounds to even
  });

  it('refuses to save a model away from its external data', () => {
    const dir = mkdtempSync(join(tmpdir(), 'charflow-onnx-'));
    try {
      const g = new Graph({ name: 'ext', external: { dir, file: 'a.data' } });
      g.output(g.input('x', 'float32', [1]), 'x');
      expect(() => g.save(join(tmpdir(), 'elsewhere.onnx'))).toThrow(/beside its external data/);
      g.discard();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
