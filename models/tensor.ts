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

/** float -> IEEE half bits, round to nearest even (overflow -> inf, NaN -> quiet NaN, sign kept). */
export function floatToHalf(value: number): number {
  f32Scratch[0] = value;
  return halfBits(u32Scratch[0]! | 0);
}

/** A caller-supplied output must hold every result. */
function checkOut(out: { length: number }, n: number): void {
  if (out.length < n) throw new Error(`output has ${out.length} elements, ${n} needed`);
}

// float32 -> float16 by integer arithmetic on the float's bits, driven by two tables indexed by the
// float's 8-bit exponent (the base/shift idea of van der Zijp's "Fast Half Float Conversions", with
// round-to-nearest-even added). The mantissa always carries its implicit 1 (bit 23): for a normal
// half, the base holds (exponent - 1) << 10 and that bit, shifted down 13, adds the missing 1; for a
// subnormal half the base is 0 and the shift grows with the distance below 2^-14. Rounding adds
// (half a unit - 1 + the kept lowest bit) before shifting: that rounds up above a tie, and at a tie
// only when the kept value is odd; a carry out of the mantissa lands in the exponent, which is
// exactly the next binade (or infinity after 65504). Exponents whose result is +-0 or +-inf use
// shift 25, which discards the whole 24-bit mantissa with no rounding carry.
const HALF_BASE = new Int32Array(256);
const HALF_SHIFT = new Int32Array(256);
const HALF_ROUND = new Int32Array(256); // (1 << (shift - 1)) - 1
for (let exp = 0; exp < 256; exp++) {
  const e = exp - 127 + 15; // the half's biased exponent
  let base = 0;
  let shift = 25;
  if (e >= 31) base = 0x7c00; // overflow (NaN is handled apart)
  else if (e >= 1) { base = (e - 1) << 10; shift = 13; }
  else if (e >= -10 && exp !== 0) shift = 14 - e; // subnormal half (float subnormals are far below)
  HALF_BASE[exp] = base;
  HALF_SHIFT[exp] = shift;
  HALF_ROUND[exp] = (1 << (shift - 1)) - 1;
}

/** float32 bits (as int32) -> half bits. */
function halfBits(x: number): number {
  const exp = (x >>> 23) & 0xff;
  const sign = (x >>> 16) & 0x8000;
  if (exp === 0xff && (x & 0x7fffff) !== 0) return sign | 0x7e00;
  const m = (x & 0x7fffff) | 0x800000;
  const s = HALF_SHIFT[exp]!;
  return sign | (HALF_BASE[exp]! + ((m + HALF_ROUND[exp]! + ((m >>> s) & 1)) >>> s));
}

/** `out` may be given to reuse a buffer (first writes to fresh memory cost page faults). */
export function float32ToFloat16(src: Float32Array, out: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  const n = src.length;
  checkOut(out, n);
  const bits = new Int32Array(src.buffer, src.byteOffset, n); // the floats' bits, no float loads
  for (let i = 0; i < n; i++) {
    const x = bits[i]!;
    const a = x & 0x7fffffff;
    // Nearly every weight lands on a normal half (2^-14 <= |x| < 2^16): rebias the exponent by 112 and
    // round the mantissa in one add (a carry out of 65504 correctly gives infinity). The rest use the tables.
    if (a >= 0x38800000 && a < 0x47800000) out[i] = ((x >>> 16) & 0x8000) | ((a - 0x38000000 + 0xfff + ((a >>> 13) & 1)) >>> 13);
    else out[i] = halfBits(x);
  }
  return out;
}

export function bf16ToFloat32(src: Uint16Array, out: Float32Array = new Float32Array(src.length)): Float32Array {
  const n = src.length;
  checkOut(out, n);
  const bits = new Int32Array(out.buffer, out.byteOffset, n);
  for (let i = 0; i < n; i++) bits[i] = src[i]! << 16; // bf16 is the top half of a float32
  return out;
}

let bf16HalfTable: Uint16Array | undefined;

/** Every bf16 pattern's half bits (bf16 -> float32 -> half), built on first use. */
function bf16ToHalfTable(): Uint16Array {
  if (!bf16HalfTable) {
    const t = new Uint16Array(65536);
    for (let b = 0; b < 65536; b++) t[b] = halfBits(b << 16);
    bf16HalfTable = t;
  }
  return bf16HalfTable;
}

/** bf16 bits -> half bits, identical to float32ToFloat16(bf16ToFloat32(src)) without the float32 copy. */
export function bf16ToFloat16(src: Uint16Array, out: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  const table = bf16ToHalfTable();
  const n = src.length;
  checkOut(out, n);
  for (let i = 0; i < n; i++) {
    const x = src[i]!;
    const a = x & 0x7fff;
    // A normal half (exponent 113..142) is exact: rebias the exponent, widen the 7-bit mantissa to 10.
    out[i] = ((a - 0x3880) >>> 0) < 0xf00 ? (x & 0x8000) | ((a - 0x3800) << 3) : table[x]!;
  }
  return out;
}

let halfFloatTable: Int32Array | undefined;

/** Every half pattern's float32 bits (exactly what storing halfToFloat into a Float32Array gives). */
function halfToFloatTable(): Int32Array {
  if (!halfFloatTable) {
    const f = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) f[h] = halfToFloat(h);
    halfFloatTable = new Int32Array(f.buffer);
  }
  return halfFloatTable;
}

export function float16ToFloat32(src: Uint16Array, out: Float32Array = new Float32Array(src.length)): Float32Array {
  const table = halfToFloatTable();
  const n = src.length;
  checkOut(out, n);
  const bits = new Int32Array(out.buffer, out.byteOffset, n);
  for (let i = 0; i < n; i++) bits[i] = table[src[i]!]!;
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

/**
 * A floating tensor in float32 or float16 (others returned as they are), by the shortest path:
 * bf16 -> fp16 by table, without a float32 copy. Same bits as toFloat32 followed by float32ToFloat16.
 * `inPlace`: t.data is the caller's own scratch (e.g. a fresh transposeMatrix result) and may be
 * overwritten, so fp16 results are written over it instead of into new memory (f32 -> f16 writes
 * each half behind the float it reads). t must not be used afterwards.
 */
export function castFloatTensor(t: Tensor, dtype: 'float32' | 'float16', opts: { inPlace?: boolean } = {}): Tensor {
  if (t.dtype === dtype || !['float32', 'float16', 'bfloat16', 'float64'].includes(t.dtype)) return t;
  if (dtype === 'float32') return { dtype, dims: t.dims, data: toFloat32(t) };
  const n = t.data.length;
  const out = opts.inPlace && (t.dtype === 'bfloat16' || t.dtype === 'float32')
    ? new Uint16Array(t.data.buffer, t.data.byteOffset, n)
    : new Uint16Array(n);
  const data = t.dtype === 'bfloat16' ? bf16ToFloat16(t.data as Uint16Array, out) : float32ToFloat16(toFloat32(t), out);
  return { dtype, dims: t.dims, data };
}

// ---------------------------------------------------------------------------------------------
// float8 (safetensors F8_E4M3 / F8_E5M2, as torch's float8_e4m3fn / float8_e5m2). Every fp8 value is
// exactly a float16 value, so fp8 checkpoints are read as float16 without loss.

export type Fp8Kind = 'e4m3fn' | 'e5m2';

/** The value of an fp8 byte. e4m3fn: bias 7, no infinities, S.1111.111 is NaN; e5m2: IEEE-like, bias 15. */
export function fp8ToFloat(byte: number, kind: Fp8Kind): number {
  const sign = byte & 0x80 ? -1 : 1;
  if (kind === 'e5m2') return halfToFloat(byte << 8); // the top byte of a half
  const exp = (byte >> 3) & 0x0f;
  const mant = byte & 0x07;
  if (exp === 15 && mant === 7) return NaN;
  if (exp === 0) return sign * mant * 2 ** -9; // subnormal: m/8 * 2^(1-7)
  return sign * (1 + mant / 8) * 2 ** (exp - 7);
}

const fp8Tables = new Map<Fp8Kind, Uint16Array>();

/** fp8 byte -> half bits, 256 entries (exact: fp8 values are half values). */
function fp8HalfTable(kind: Fp8Kind): Uint16Array {
  let t = fp8Tables.get(kind);
  if (!t) {
    t = new Uint16Array(256);
    for (let b = 0; b < 256; b++) t[b] = kind === 'e5m2' ? b << 8 : floatToHalf(fp8ToFloat(b, kind));
    fp8Tables.set(kind, t);
  }
  return t;
}

/** fp8 bytes -> float16 bits. */
export function fp8ToFloat16(src: Uint8Array, kind: Fp8Kind, out: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  checkOut(out, src.length);
  const table = fp8HalfTable(kind);
  for (let i = 0; i < src.length; i++) out[i] = table[src[i]!]!;
  return out;
}
