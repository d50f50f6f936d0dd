// Block-wise round-to-nearest weight quantization for ONNX Runtime's com.microsoft MatMulNBits.
//
// The rule (ONNX Runtime's reference quantizer, MLAS q4_dq / the n-bit blockwise quantizer), per block
// of `block` consecutive values along K of one output row n:
//   asymmetric (default): min' = min(min, 0), max' = max(max, 0), scale = (max' - min') / (2^bits - 1),
//     zero point = clamp(round(-min' / scale), 0, 2^bits - 1) (0 when scale is 0),
//     q = clamp(round(v / scale + zero point), 0, 2^bits - 1);
//   symmetric: the value of largest magnitude m (its sign kept), scale = m / -2^(bits-1), zero point
//     2^(bits-1) (which is what MatMulNBits assumes when no zero_points input is given), q as above.
// round() is half away from zero (C's roundf). All arithmetic is float32, as in MLAS.
// Where we depart from ONNX Runtime:
//   - q uses v / scale; MLAS multiplies by a float32 reciprocal 1 / scale, which can move a value
//     sitting exactly on a rounding boundary by one code. We follow the rule as written.
//   - a scale of 0 gives q = zero point (MLAS: reciprocal 0, the same codes).
// Layout (ContribOperators.md, MatMulNBits): a torch Linear weight [N = out, K = in] is quantized row by
// row; B is uint8 [N, ceil(K/block), block*bits/8], 4-bit codes low nibble first; scales [N * kBlocks];
// zero points uint8 [N * ceil(kBlocks * bits / 8)], 4-bit ones two per byte, low nibble first, the
// unused high nibble of a row with an odd block count holding 8 (ORT's default 4-bit zero point).
// Padding past K inside the last block is quantized as the value 0 (its code is the zero point).

export type QuantBits = 4 | 8;

export interface QuantSpec {
  bits: QuantBits;
  /** Values per block along K: a power of two, at least 16 (MatMulNBits' smallest). */
  block: number;
  /** Symmetric (no zero points) instead of asymmetric with zero points. */
  symmetric?: boolean;
  /** MatMulNBits accuracy_level: 0 unset (float compute), 4 int8 compute of A on the CPU. Default 4. */
  accuracyLevel?: number;
}

/** The block sizes MatMulNBits accepts: powers of two from 16 to 256. */
export const QUANT_BLOCKS: readonly number[] = [16, 32, 64, 128, 256];

/** Throws a clear message unless `block` is one of QUANT_BLOCKS. */
export function checkBlock(block: number): void {
  if (!QUANT_BLOCKS.includes(block)) {
    throw new Error(`block size ${block} is not a power of two between 16 and 256 (MatMulNBits needs one; 32, 64 or 128 are usual)`);
  }
}

export interface QuantizedMatrix {
  N: number;
  K: number;
  bits: QuantBits;
  block: number;
  /** uint8 [N, kBlocks, block*bits/8]. */
  packed: Uint8Array;
  /** float32 [N * kBlocks]. */
  scales: Float32Array;
  /** uint8 [N * ceil(kBlocks*bits/8)]; absent when symmetric. */
  zeroPoints?: Uint8Array;
}

/**
 * The block used for a row of K values: the asked block, or for a row shorter than it, K rounded up to a
 * power of two (at least 16). One block covers such a row either way, so the codes and scales are the same
 * and only the padding shrinks (a 16-wide row in blocks of 128 would store 8x its codes). Our addition:
 * ONNX Runtime's quantizer pads to the full block.
 */
export function blockFor(block: number, K: number): number {
  let b = 16;
  while (b < K && b < block) b *= 2;
  return Math.min(block, b);
}

export const kBlocksOf = (K: number, block: number): number => Math.ceil(K / block);
export const blobBytes = (bits: QuantBits, block: number): number => (block * bits) / 8;
export const zeroPointBytesPerRow = (bits: QuantBits, kBlocks: number): number => Math.ceil((kBlocks * bits) / 8);

/** Bytes of the packed codes, scales (at `scaleBytes` each) and zero points of an [N, K] weight. */
export function quantizedBytes(N: number, K: number, spec: QuantSpec, scaleBytes = 4): number {
  const kb = kBlocksOf(K, spec.block);
  return N * kb * blobBytes(spec.bits, spec.block) + N * kb * scaleBytes + (spec.symmetric ? 0 : N * zeroPointBytesPerRow(spec.bits, kb));
}

const f = Math.fround;

/** C roundf: half away from zero. */
export function roundHalfAway(x: number): number {
  return x < 0 ? -Math.round(-x) : Math.round(x);
}

/**
 * Quantizes `rows` (float32 [N, K], row n = output n, i.e. a torch Linear weight as stored) block-wise
 * along K. `out` buffers may be passed to reuse memory (they must have the sizes of QuantizedMatrix).
 */
export function quantizeRows(rows: Float32Array, N: number, K: number, spec: QuantSpec, out?: ArrayBuffer): QuantizedMatrix {
  checkBlock(spec.block);
  if (rows.length < N * K) throw new Error(`quantizeRows: ${rows.length} values, [${N}, ${K}] needs ${N * K}`);
  const { bits, block } = spec;
  const kb = kBlocksOf(K, block);
  const blob = blobBytes(bits, block);
  const qmax = (1 << bits) - 1;
  const mid = 1 << (bits - 1);
  const zpRow = zeroPointBytesPerRow(bits, kb);
  // `out` (at least quantizedBytes(N, K, spec)) holds the scales, codes and zero points: a converter reuses
  // one buffer for every weight instead of fresh memory per weight.
  const scaleBytes = 4 * N * kb;
  if (out && out.byteLength < quantizedBytes(N, K, spec)) throw new Error(`quantizeRows: out has ${out.byteLength} bytes, ${quantizedBytes(N, K, spec)} needed`);
  const buf = out ?? new ArrayBuffer(quantizedBytes(N, K, spec));
  const scales = new Float32Array(buf, 0, N * kb);
  const packed = new Uint8Array(buf, scaleBytes, N * kb * blob);
  const zeroPoints = spec.symmetric ? undefined : new Uint8Array(buf, scaleBytes + N * kb * blob, N * zpRow);
  zeroPoints?.fill(0);
  const codes = new Uint8Array(block);
  for (let n = 0; n < N; n++) {
    const rowOff = n * K;
    if (zeroPoints && bits === 4 && kb % 2 === 1) zeroPoints[n * zpRow + zpRow - 1] = 0x80; // unused high nibble = 8
    for (let b = 0; b < kb; b++) {
      const k0 = b * block;
      const k1 = Math.min(K, k0 + block);
      let scale: number;
      let zp: number;
      if (spec.symmetric) {
        let m = 0;
        let am = 0;
        for (let k = k0; k < k1; k++) {
          const v = rows[rowOff + k]!;
          const a = Math.abs(v);
          if (a > am) { am = a; m = v; }
        }
        scale = f(m / -mid);
        zp = mid;
      } else {
        let lo = 0; // min' = min(min, 0)
        let hi = 0; // max' = max(max, 0)
        for (let k = k0; k < k1; k++) {
          const v = rows[rowOff + k]!;
          if (v < lo) lo = v;
          if (v > hi) hi = v;
        }
        scale = f(f(hi - lo) / qmax);
        zp = scale === 0 ? 0 : Math.min(qmax, Math.max(0, roundHalfAway(f(-lo / scale))));
      }
      scales[n * kb + b] = scale;
      encodeBlock(rows, rowOff + k0, k1 - k0, scale, zp, qmax, codes);
      const dst = (n * kb + b) * blob;
      if (bits === 8) packed.set(codes, dst);
      else for (let i = 0; i < blob; i++) packed[dst + i] = codes[2 * i]! | (codes[2 * i + 1]! << 4);
      if (zeroPoints) {
        if (bits === 8) zeroPoints[n * zpRow + b] = zp;
        else {
          const at = n * zpRow + (b >> 1);
          zeroPoints[at] = b % 2 === 0 ? (zeroPoints[at]! & 0xf0) | zp : (zeroPoints[at]! & 0x0f) | (zp << 4);
        }
      }
    }
  }
  return { N, K, bits, block, packed, scales, zeroPoints };
}

/**
 * codes[i] = clamp(round(v / scale + zp)) for the `len` values at rows[start..], then the zero point for
 * the padding up to the block (the code of 0). A small monomorphic loop: the conversion's hot spot.
 */
function encodeBlock(rows: Float32Array, start: number, len: number, scale: number, zp: number, qmax: number, codes: Uint8Array): void {
  if (scale === 0) {
    codes.fill(zp);
    return;
  }
  for (let i = 0; i < len; i++) {
    const x = f(f(rows[start + i]! / scale) + zp);
    const q = x < 0 ? -Math.round(-x) : Math.round(x); // half away from zero
    codes[i] = q < 0 ? 0 : q > qmax ? qmax : q;
  }
  codes.fill(zp, len); // padding past K: the value 0 quantizes to the zero point
}

/** The code of weight (n, k). */
export function codeAt(q: QuantizedMatrix, n: number, k: number): number {
  const kb = kBlocksOf(q.K, q.block);
  const b = Math.floor(k / q.block);
  const i = k % q.block;
  const base = (n * kb + b) * blobBytes(q.bits, q.block);
  if (q.bits === 8) return q.packed[base + i]!;
  const byte = q.packed[base + (i >> 1)]!;
  return i % 2 === 0 ? byte & 0x0f : byte >> 4;
}

/** The zero point of block b of row n (2^(bits-1) when symmetric, as MatMulNBits assumes). */
export function zeroPointAt(q: QuantizedMatrix, n: number, b: number): number {
  if (!q.zeroPoints) return 1 << (q.bits - 1);
  const kb = kBlocksOf(q.K, q.block);
  const row = zeroPointBytesPerRow(q.bits, kb);
  if (q.bits === 8) return q.zeroPoints[n * row + b]!;
  const byte = q.zeroPoints[n * row + (b >> 1)]!;
  return b % 2 === 0 ? byte & 0x0f : byte >> 4;
}

/** float32 [N, K]: (code - zero point) * scale, as MatMulNBits dequantizes. */
export function dequantize(q: QuantizedMatrix): Float32Array {
  const { N, K, block } = q;
  const kb = kBlocksOf(K, block);
  const out = new Float32Array(N * K);
  for (let n = 0; n < N; n++) {
    for (let b = 0; b < kb; b++) {
      const s = q.scales[n * kb + b]!;
      const zp = zeroPointAt(q, n, b);
      for (let k = b * block; k < Math.min(K, (b + 1) * block); k++) out[n * K + k] = f((codeAt(q, n, k) - zp) * s);
    }
  }
  return out;
}
