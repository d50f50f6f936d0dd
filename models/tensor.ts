// Plain host tensors: a dtype, dims and a typed array. Half-precision values are kept as raw
// 16-bit patterns (Uint16Array) because JavaScript has no native f16/bf16 arrays on Node 20.

export type DType = 'float32' | 'float16' | 'bfloat16' | 'float64' | 'int64' | 'int32' | 'uint8' | 'bool';

export type TensorData = Float32Array | Float64Array | Uint16Array | BigInt64Array | Int32Array | Uint8Array;

/** A typed array of `dtype` over raw little-endian bytes (16-bit floats as Uint16Array). */
export function typedArrayOf(dtype: DType, buf: ArrayBuffer): TensorData {
  switch (dtype) {
    case 'float32': return new Float32Array(buf);
    case 'float64': return new Float64Array(buf);
    case 'float16': case 'bfloat16': return new Uint16Array(buf);
    case 'int64': return new BigInt64Array(buf);
    case 'int32': return new Int32Array(buf);
    case 'uint8': case 'bool': return new Uint8Array(buf);
  }
}

export interface Tensor {
  dtype: DType;
  dims: number[];
  data: TensorData;
}

export const BYTES_PER_ELEMENT: Record<DType, number> = {
  float32: 4, float16: 2, bfloat16: 2, float64: 8, int64: 8, int32: 4, uint8: 1, bool: 1,
};

export function numel(dims: readonly number[]): number {
  let n = 1;
  for (const d of dims) n *= d;
  return n;
}

export function f32(dims: number[], data?: Float32Array | number[]): Tensor {
  const n = numel(dims);
  const arr = data ? Float32Array.from(data) : new Float32Array(n);
  if (arr.length !== n) throw new Error(`tensor data has ${arr.length} values, dims [${dims}] need ${n}`);
  return { dtype: 'float32', dims, data: arr };
}

export function i64(dims: number[], data: readonly (number | bigint)[]): Tensor {
  return { dtype: 'int64', dims, data: BigInt64Array.from(data, (v) => BigInt(v)) };
}

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** IEEE half bits -> float. */
export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** float -> IEEE half bits, round to nearest even. */
export function floatToHalf(value: number): number {
  f32Scratch[0] = value;
  const x = u32Scratch[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && half & 1)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++;
  return sign | half;
}

export function bf16ToFloat32(src: Uint16Array): Float32Array {
  const out = new Uint32Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = src[i]! << 16;
  return new Float32Array(out.buffer);
}

export function float32ToFloat16(src: Float32Array): Uint16Array {
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = floatToHalf(src[i]!);
  return out;
}

export function float16ToFloat32(src: Uint16Array): Float32Array {
  const out = new Float32Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = halfToFloat(src[i]!);
  return out;
}

/** Any floating tensor as float32 values (copy unless it already is float32). */
export function toFloat32(t: Tensor): Float32Array {
  switch (t.dtype) {
    case 'float32': return t.data as Float32Array;
    case 'float16': return float16ToFloat32(t.data as Uint16Array);
    case 'bfloat16': return bf16ToFloat32(t.data as Uint16Array);
    case 'float64': return Float32Array.from(t.data as Float64Array);
    default: throw new Error(`expected a floating tensor, got ${t.dtype}`);
  }
}
