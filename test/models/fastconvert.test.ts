// The fast conversion kernels (models/tensor.ts) and the tiled transpose (models/layers.ts) must give
// the same bits as the plain scalar code they replaced, kept here as the reference.
import { describe, expect, it } from 'vitest';
import {
  type Tensor, bf16ToFloat16, bf16ToFloat32, castFloatTensor, float16ToFloat32, float32ToFloat16, floatToHalf,
  halfToFloat, toFloat32,
} from '../../models/tensor.ts';
import { transposeMatrix } from '../../models/layers.ts';
import { refFloat32ToFloat16, refFloatToHalf, refTranspose as naive } from '../helpers/reference-kernels.ts';

const scratch = new Float32Array(1);
const scratchBits = new Uint32Array(scratch.buffer);

const floatsOf = (bits: Uint32Array) => new Float32Array(bits.buffer, bits.byteOffset, bits.length);
const hex = (v: number) => `0x${v.toString(16)}`;

/** Indices where a and b differ (the first few), so a failure names the inputs. */
function mismatches(inputs: Uint32Array | Uint16Array, got: Uint16Array, want: Uint16Array): string[] {
  const out: string[] = [];
  for (let i = 0; i < got.length && out.length < 5; i++) {
    if (got[i] !== want[i]) out.push(`${hex(inputs[i]!)} -> ${hex(got[i]!)}, expected ${hex(want[i]!)}`);
  }
  return out;
}

/** Float bit patterns around every place the conversion changes behaviour. */
function edgeBits(): Uint32Array {
  const v: number[] = [];
  const mantissas = [0, 1, 2, 0xfff, 0x1000, 0x1001, 0x1fff, 0x2000, 0x3000, 0x3001, 0x7fe000, 0x7fefff, 0x7ff000, 0x7ff001, 0x7fffff];
  // Subnormal halves round at bit (shift - 1) of the 24-bit mantissa: ties, just above, just below.
  for (let shift = 14; shift <= 24; shift++) {
    for (const lsb of [0, 1 << shift, 3 << shift]) {
      const mid = 1 << (shift - 1);
      for (const rem of [mid - 1, mid, mid + 1]) mantissas.push((lsb + rem) & 0x7fffff);
    }
  }
  for (let exp = 0; exp < 256; exp++) {
    for (const m of mantissas) for (const sign of [0, 0x80000000]) v.push((sign | (exp << 23) | m) >>> 0);
  }
  return Uint32Array.from(v);
}

describe('float32ToFloat16', () => {
  it('matches the scalar reference at every exponent boundary and rounding tie', () => {
    const bits = edgeBits();
    const got = float32ToFloat16(floatsOf(bits));
    const want = refFloat32ToFloat16(floatsOf(bits));
    expect(mismatches(bits, got, want)).toEqual([]);
  });

  it('matches the scalar reference on 4 million random bit patterns', () => {
    const bits = new Uint32Array(1 << 22);
    let s = 0x9e3779b9;
    for (let i = 0; i < bits.length; i++) {
      s ^= s << 13; s ^= s >>> 17; s ^= s << 5; // xorshift32
      bits[i] = s >>> 0;
    }
    const got = float32ToFloat16(floatsOf(bits));
    const want = refFloat32ToFloat16(floatsOf(bits));
    expect(mismatches(bits, got, want)).toEqual([]);
  });

  it('gets the landmark values right', () => {
    const cases: [number, number][] = [
      [0, 0x0000], [-0, 0x8000], [1, 0x3c00], [-2, 0xc000],
      [65504, 0x7bff], [65519.99, 0x7bff], [65520, 0x7c00], [-65520, 0xfc00], [1e9, 0x7c00],
      [Infinity, 0x7c00], [-Infinity, 0xfc00],
      [2 ** -14, 0x0400], [2 ** -14 - 2 ** -24, 0x03ff], [2 ** -24, 0x0001],
      [2 ** -25, 0x0000], [2 ** -25 + 2 ** -40, 0x0001], [3 * 2 ** -25, 0x0002], [5 * 2 ** -25, 0x0002],
      [1 + 2 ** -11, 0x3c00], [1 + 3 * 2 ** -11, 0x3c02], [-(2 ** -26), 0x8000],
    ];
    const got = float32ToFloat16(Float32Array.from(cases, ([v]) => v));
    expect(Array.from(got, hex)).toEqual(cases.map(([, h]) => hex(h)));
    expect(cases.map(([v]) => hex(floatToHalf(v)))).toEqual(cases.map(([, h]) => hex(h)));
  });

  it('keeps NaN a NaN, with its sign', () => {
    const bits = Uint32Array.from([0x7fc00000, 0xffc00000, 0x7f800001, 0xff800001, 0x7fffffff]);
    const got = float32ToFloat16(floatsOf(bits));
    expect(Array.from(got, hex)).toEqual(['0x7e00', '0xfe00', '0x7e00', '0xfe00', '0x7e00']);
    expect(Number.isNaN(halfToFloat(got[0]!))).toBe(true);
    expect(floatToHalf(NaN) & 0x7fff).toBe(0x7e00);
  });

  it('floatToHalf agrees with the reference on numbers that are not float32 values', () => {
    const values = [0.1, -1 / 3, 65519.999999, 65520.0000001, 2 ** -25 * (1 + 2 ** -30), 1e-300, -1e300, Math.PI];
    expect(values.map(floatToHalf)).toEqual(values.map(refFloatToHalf));
  });

  it('writes into a given buffer and refuses one too short', () => {
    const out = new Uint16Array(4).fill(7);
    expect(float32ToFloat16(Float32Array.of(1, 2, 3), out)).toBe(out);
    expect(Array.from(out)).toEqual([0x3c00, 0x4000, 0x4200, 7]);
    expect(() => float32ToFloat16(Float32Array.of(1, 2, 3), new Uint16Array(2))).toThrow(/3 needed/);
  });

  it('reads a Float32Array that is a view into a larger buffer', () => {
    const all = Float32Array.of(9, 1, 2, 9);
    expect(Array.from(float32ToFloat16(all.subarray(1, 3)))).toEqual([0x3c00, 0x4000]);
  });
});

describe('bf16 conversions', () => {
  const every = Uint16Array.from({ length: 65536 }, (_, i) => i);

  it('bf16ToFloat16 equals bf16 -> float32 -> scalar floatToHalf for all 65536 inputs', () => {
    const viaFloat = new Uint16Array(65536);
    for (let b = 0; b < 65536; b++) {
      scratchBits[0] = b << 16;
      viaFloat[b] = refFloatToHalf(scratch[0]!);
    }
    expect(mismatches(every, bf16ToFloat16(every), viaFloat)).toEqual([]);
    expect(mismatches(every, float32ToFloat16(bf16ToFloat32(every)), viaFloat)).toEqual([]);
  });

  it('bf16ToFloat32 puts the 16 bits on top of a float32', () => {
    const got = new Uint32Array(bf16ToFloat32(every).buffer);
    for (let b = 0; b < 65536; b++) if (got[b] !== ((b << 16) >>> 0)) expect(hex(got[b]!)).toBe(hex((b << 16) >>> 0));
  });

  it('float16ToFloat32 equals halfToFloat for all 65536 inputs', () => {
    const want = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) want[h] = halfToFloat(h);
    const got = float16ToFloat32(every);
    expect(Buffer.compare(Buffer.from(got.buffer), Buffer.from(want.buffer))).toBe(0);
  });

  it('castFloatTensor gives the same bits as toFloat32 then float32ToFloat16', () => {
    const bf: Tensor = { dtype: 'bfloat16', dims: [256, 256], data: every };
    const f16: Tensor = { dtype: 'float16', dims: [2, 2], data: Uint16Array.of(0x3c00, 0x8001, 0x7c00, 0x7e01) };
    const f64: Tensor = { dtype: 'float64', dims: [3], data: Float64Array.of(0.1, 65520, -1e-8) };
    for (const t of [bf, f16, f64]) {
      expect(castFloatTensor(t, 'float16')).toEqual({ dtype: 'float16', dims: t.dims, data: f16 === t ? t.data : float32ToFloat16(toFloat32(t)) });
      expect(castFloatTensor(t, 'float32')).toEqual({ dtype: 'float32', dims: t.dims, data: toFloat32(t) });
    }
    // In place: over the source's own bytes, same bits.
    for (const t of [bf, { dtype: 'float32', dims: [65536], data: bf16ToFloat32(every) } as Tensor]) {
      const want = float32ToFloat16(toFloat32(t));
      const got = castFloatTensor({ ...t, data: t.data.slice() }, 'float16', { inPlace: true });
      expect(Array.from(got.data as Uint16Array)).toEqual(Array.from(want));
    }
    const own = Float32Array.of(1, 2, 3);
    expect(castFloatTensor({ dtype: 'float32', dims: [3], data: own }, 'float16', { inPlace: true }).data.buffer).toBe(own.buffer);
    const ints: Tensor = { dtype: 'int64', dims: [1], data: BigInt64Array.of(3n) };
    expect(castFloatTensor(ints, 'float16')).toBe(ints);
  });
});

describe('transposeMatrix', () => {
  const shapes: [number, number][] = [[1, 17], [17, 1], [33, 65], [100, 3], [3, 100], [64, 96], [1, 1]];

  it('matches a naive transpose for float32, keeping every bit pattern', () => {
    for (const [rows, cols] of shapes) {
      const bits = Uint32Array.from({ length: rows * cols }, (_, i) => (Math.imul(i + 1, 0x9e3779b1) >>> 0));
      bits[0] = 0x7fa00001; // a signalling NaN payload must come through unchanged
      const t = transposeMatrix({ dtype: 'float32', dims: [rows, cols], data: floatsOf(bits) });
      expect(t.dtype).toBe('float32');
      expect(t.dims).toEqual([cols, rows]);
      expect(t.data).toBeInstanceOf(Float32Array);
      const got = new Uint32Array(t.data.buffer, t.data.byteOffset, rows * cols);
      expect(Array.from(got)).toEqual(Array.from(naive(bits, new Uint32Array(rows * cols), rows, cols)));
    }
  });

  it('matches a naive transpose for 16-bit data (bf16 / fp16 patterns)', () => {
    for (const dtype of ['bfloat16', 'float16'] as const) {
      for (const [rows, cols] of shapes) {
        const data = Uint16Array.from({ length: rows * cols }, (_, i) => (i * 40503) & 0xffff);
        const t = transposeMatrix({ dtype, dims: [rows, cols], data });
        expect(t.dtype).toBe(dtype);
        expect(t.dims).toEqual([cols, rows]);
        expect(Array.from(t.data as Uint16Array)).toEqual(Array.from(naive(data, new Uint16Array(rows * cols), rows, cols)));
      }
    }
  });

  it('handles a source that is a view at an offset, and other dtypes', () => {
    const whole = Float32Array.from({ length: 40 }, (_, i) => i);
    const t = transposeMatrix({ dtype: 'float32', dims: [3, 4], data: whole.subarray(5, 17) });
    expect(Array.from(t.data as Float32Array)).toEqual([5, 9, 13, 6, 10, 14, 7, 11, 15, 8, 12, 16]);
    const f64 = transposeMatrix({ dtype: 'float64', dims: [2, 3], data: Float64Array.of(1, 2, 3, 4, 5, 6) });
    expect(f64).toEqual({ dtype: 'float64', dims: [3, 2], data: Float64Array.of(1, 4, 2, 5, 3, 6) });
    const i64 = transposeMatrix({ dtype: 'int64', dims: [1, 2], data: BigInt64Array.of(7n, 8n) });
    expect(i64).toEqual({ dtype: 'int64', dims: [2, 1], data: BigInt64Array.of(7n, 8n) });
  });

  it('writes into a given scratch buffer, and refuses a wrong one', () => {
    const scratchBuf = new Uint16Array(10).fill(9);
    const t = transposeMatrix({ dtype: 'float16', dims: [2, 3], data: Uint16Array.of(1, 2, 3, 4, 5, 6) }, scratchBuf);
    expect(t.data.buffer).toBe(scratchBuf.buffer);
    expect(Array.from(t.data as Uint16Array)).toEqual([1, 4, 2, 5, 3, 6]);
    const f = transposeMatrix({ dtype: 'float32', dims: [1, 2], data: Float32Array.of(1, 2) }, new Float32Array(4));
    expect(Array.from(f.data as Float32Array)).toEqual([1, 2]);
    expect(() => transposeMatrix({ dtype: 'float32', dims: [2, 2], data: new Float32Array(4) }, new Float32Array(3))).toThrow(/at least 4/);
    expect(() => transposeMatrix({ dtype: 'float32', dims: [2, 2], data: new Float32Array(4) }, new Uint16Array(8))).toThrow(/Float32Array/);
  });

  it('then converted to fp16 gives the bits of the former float32 path', () => {
    const [rows, cols] = [33, 65];
    const bf = Uint16Array.from({ length: rows * cols }, (_, i) => (i * 2654435761) & 0xffff);
    const before = refFloat32ToFloat16(naive(bf16ToFloat32(bf), new Float32Array(rows * cols), rows, cols));
    const after = castFloatTensor(transposeMatrix({ dtype: 'bfloat16', dims: [rows, cols], data: bf }), 'float16');
    expect(Array.from(after.data as Uint16Array)).toEqual(Array.from(before));
  });
});
