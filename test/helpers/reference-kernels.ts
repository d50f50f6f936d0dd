// The plain scalar conversion kernels that models/tensor.ts and models/layers.ts replaced with fast
// ones: the reference the fast code must match bit for bit (test/models/fastconvert.test.ts) and the
// baseline it is timed against (bench/convert-speed.ts).

const scratch = new Float32Array(1);
const scratchBits = new Uint32Array(scratch.buffer);

/** float -> half bits, round to nearest even, one branch per case. */
export function refFloatToHalf(value: number): number {
  scratch[0] = value;
  const x = scratchBits[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
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

/** One float load per element. */
export function refFloat32ToFloat16(src: Float32Array): Uint16Array {
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = refFloatToHalf(src[i]!);
  return out;
}

export function refBf16ToFloat32(src: Uint16Array): Float32Array {
  const out = new Uint32Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = src[i]! << 16;
  return new Float32Array(out.buffer);
}

/** out[c, r] = src[r, c], element by element. */
export function refTranspose<T extends { length: number; [i: number]: number }>(src: T, out: T, rows: number, cols: number): T {
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) out[c * rows + r] = src[r * cols + c]!;
  }
  return out;
}
