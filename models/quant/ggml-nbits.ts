// GGML block types as ONNX Runtime MatMulNBits weights, exactly: no value is rounded a second time.
//
// MatMulNBits computes with w = (code - zero point) * scale per block of `block` values along K. Every GGML
// type used here is, per block, a float scale times a small integer, plus (for some types) a float offset:
//   type    bits block  code                      zero point    scale            offset (per block)
//   Q8_0     8    32    q + 128                   128 (default) d                -
//   Q4_0     4    32    q (nibble)                8 (default)   d                -
//   Q5_0     8    32    q - 16 + 128              128 (default) d                -
//   IQ4_NL   8    32    KVALUES[q] + 128          128 (default) d                -
//   IQ4_XS   8    32    KVALUES[q] + 128          128 (default) d * (ls - 32)    -
//   Q3_K     4    16    q + 8 (q in -4..3)        8 (default)   d * (sc - 32)    -
//   Q6_K     8    16    q - 32 + 128              128 (default) d * sc           -
//   Q4_1     4    32    q                         0 (explicit)  d                + m
//   Q5_1     8    32    q + 128                   128 (default) d                + m
//   Q2_K     4    16    q + 8 (q in 0..3)         8 (default)   d * (sc & 15)    - dmin * (sc >> 4)
//   Q4_K     4    32    q                         0 (explicit)  d * sc           - dmin * mn
//   Q5_K     8    32    q + 128                   128 (default) d * sc           - dmin * mn
// Sub-block scales are formed in float32 exactly as ComfyUI-GGUF forms them (d * sc, one rounding), so
// (code - zero point) * scale is the very float32 product it computes. The offsets are not a zero point:
// a float zero point would be offset / scale, which rounds. They become a correction term instead:
//   y = x W^T = MatMulNBits(x) + blockSums(x) O^T,  blockSums(x)[..., j] = sum of x over block j,
// with O [N, K / block] the offsets (float). The weights are the GGUF's values; only the sums' order differs.
import type { GgmlBlocks, GgmlTypeName } from '../weights/ggml.ts';
import { IQ4_KVALUES, scaleIq4Xs, scaleMinK4, scaleQ3K } from '../weights/ggml.ts';
import { halfToFloat } from '../tensor.ts';
import { type QuantBits, type QuantizedMatrix, blobBytes, kBlocksOf, zeroPointBytesPerRow } from './quantize.ts';

export interface NBitsLayout {
  bits: QuantBits;
  block: number;
  /** An explicit zero-point input (all zero) is needed: the codes start at 0. */
  zeroPoint: boolean;
  /** A per-block offset (correction term). */
  offset: boolean;
}

export const GGML_NBITS: Partial<Record<GgmlTypeName, NBitsLayout>> = {
  Q8_0: { bits: 8, block: 32, zeroPoint: false, offset: false },
  Q4_0: { bits: 4, block: 32, zeroPoint: false, offset: false },
  Q5_0: { bits: 8, block: 32, zeroPoint: false, offset: false },
  IQ4_NL: { bits: 8, block: 32, zeroPoint: false, offset: false },
  IQ4_XS: { bits: 8, block: 32, zeroPoint: false, offset: false },
  Q3_K: { bits: 4, block: 16, zeroPoint: false, offset: false },
  Q6_K: { bits: 8, block: 16, zeroPoint: false, offset: false },
  Q4_1: { bits: 4, block: 32, zeroPoint: true, offset: true },
  Q5_1: { bits: 8, block: 32, zeroPoint: false, offset: true },
  Q2_K: { bits: 4, block: 16, zeroPoint: false, offset: true },
  Q4_K: { bits: 4, block: 32, zeroPoint: true, offset: true },
  Q5_K: { bits: 8, block: 32, zeroPoint: false, offset: true },
};

export interface NBitsWeight {
  q: QuantizedMatrix;
  /** float32 [N, K / q.block]: added to block j's weights of row n (w = (code - zp) * scale + offset). */
  offsets?: Float32Array;
}

/** Bytes of the MatMulNBits form of an [N, K] weight of `type`, with `scaleBytes` per scale and per offset. */
export function ggmlNBitsBytes(type: GgmlTypeName, N: number, K: number, scaleBytes: number): number {
  const l = GGML_NBITS[type];
  if (!l) throw new Error(`no MatMulNBits form for ${type}`);
  const kb = kBlocksOf(K, l.block);
  return N * kb * blobBytes(l.bits, l.block) + N * kb * scaleBytes + (l.zeroPoint ? N * zeroPointBytesPerRow(l.bits, kb) : 0) + (l.offset ? N * kb * scaleBytes : 0);
}

const f = Math.fround;

/** Rewrites GGML blocks as MatMulNBits codes, scales, zero points and offsets (see the table above). */
export function ggmlToNBits(b: GgmlBlocks): NBitsWeight {
  const l = GGML_NBITS[b.type.name];
  if (!l) throw new Error(`GGML type ${b.type.name} has no MatMulNBits form`);
  const N = b.rows;
  const K = b.cols;
  const kb = K / l.block;
  const blob = blobBytes(l.bits, l.block);
  const packed = new Uint8Array(N * kb * blob);
  const scales = new Float32Array(N * kb);
  const offsets = l.offset ? new Float32Array(N * kb) : undefined;
  const zeroPoints = l.zeroPoint ? new Uint8Array(N * zeroPointBytesPerRow(l.bits, kb)) : undefined; // all 0
  const codes = new Uint8Array(256); // one GGML block's codes, in element order
  const perGgml = b.type.blockSize / l.block; // MatMulNBits blocks per GGML block
  const ggmlPerRow = K / b.type.blockSize;
  const src = b.data;
  const ts = b.type.typeSize;
  const h = (at: number) => halfToFloat(src[at]! | (src[at + 1]! << 8));
  for (let n = 0; n < N; n++) {
    for (let g = 0; g < ggmlPerRow; g++) {
      const o = (n * ggmlPerRow + g) * ts;
      const s0 = n * kb + g * perGgml; // first MatMulNBits block of this GGML block
      fillBlock(b.type.name, src, o, codes, scales, offsets, s0, h);
      // Pack this GGML block's codes into its MatMulNBits blocks (4-bit: element 2i low nibble, 2i+1 high).
      const dst = s0 * blob;
      const count = b.type.blockSize;
      if (l.bits === 8) packed.set(codes.subarray(0, count), dst);
      else for (let i = 0; i < count / 2; i++) packed[dst + i] = codes[2 * i]! | (codes[2 * i + 1]! << 4);
    }
  }
  return { q: { N, K, bits: l.bits, block: l.block, packed, scales, zeroPoints }, offsets };
}

/**
 * One GGML block at src[o..]: its codes (element order) into `codes`, its MatMulNBits scales (and offsets)
 * from index s0 on.
 */
function fillBlock(
  type: GgmlTypeName, src: Uint8Array, o: number, codes: Uint8Array, scales: Float32Array, offsets: Float32Array | undefined,
  s0: number, h: (at: number) => number,
): void {
  switch (type) {
    case 'Q8_0': {
      scales[s0] = h(o);
      for (let e = 0; e < 32; e++) codes[e] = src[o + 2 + e]! ^ 0x80; // int8 + 128
      return;
    }
    case 'Q4_0': case 'Q4_1': {
      scales[s0] = h(o);
      if (type === 'Q4_1') offsets![s0] = h(o + 2);
      const qs = o + (type === 'Q4_0' ? 2 : 4);
      for (let i = 0; i < 16; i++) {
        codes[i] = src[qs + i]! & 15;
        codes[i + 16] = src[qs + i]! >> 4;
      }
      return;
    }
    case 'Q5_0': case 'Q5_1': {
      scales[s0] = h(o);
      if (type === 'Q5_1') offsets![s0] = h(o + 2);
      const at = o + (type === 'Q5_0' ? 2 : 4);
      const qh = (src[at]! | (src[at + 1]! << 8) | (src[at + 2]! << 16) | (src[at + 3]! << 24)) >>> 0;
      const bias = type === 'Q5_0' ? 112 : 128; // q - 16 + 128, or q + 128
      for (let i = 0; i < 16; i++) {
        const q = src[at + 4 + i]!;
        codes[i] = ((q & 15) | (((qh >>> i) & 1) << 4)) + bias;
        codes[i + 16] = ((q >> 4) | (((qh >>> (i + 16)) & 1) << 4)) + bias;
      }
      return;
    }
    case 'IQ4_NL': {
      scales[s0] = h(o);
      for (let i = 0; i < 16; i++) {
        codes[i] = IQ4_KVALUES[src[o + 2 + i]! & 15]! + 128;
        codes[i + 16] = IQ4_KVALUES[src[o + 2 + i]! >> 4]! + 128;
      }
      return;
    }
    case 'IQ4_XS': {
      const d = h(o);
      for (let ib = 0; ib < 8; ib++) {
        scales[s0 + ib] = f(d * scaleIq4Xs(src, o, ib));
        for (let i = 0; i < 16; i++) {
          const q = src[o + 8 + 16 * ib + i]!;
          codes[32 * ib + i] = IQ4_KVALUES[q & 15]! + 128;
          codes[32 * ib + i + 16] = IQ4_KVALUES[q >> 4]! + 128;
        }
      }
      return;
    }
    case 'Q2_K': {
      const d = h(o + 80);
      const dmin = h(o + 82);
      for (let j = 0; j < 16; j++) {
        const s = src[o + j]!;
        scales[s0 + j] = f(d * (s & 15));
        offsets![s0 + j] = -f(dmin * (s >> 4));
      }
      for (let e = 0; e < 256; e++) codes[e] = ((src[o + 16 + 32 * (e >> 7) + (e & 31)]! >> (2 * ((e >> 5) & 3))) & 3) + 8;
      return;
    }
    case 'Q3_K': {
      const d = h(o + 108);
      for (let j = 0; j < 16; j++) scales[s0 + j] = f(d * scaleQ3K(src, o + 96, j));
      for (let e = 0; e < 256; e++) {
        const low = (src[o + 32 + 32 * (e >> 7) + (e & 31)]! >> (2 * ((e >> 5) & 3))) & 3;
        const high = (src[o + (e & 31)]! >> (e >> 5)) & 1;
        codes[e] = low - (high ? 0 : 4) + 8;
      }
      return;
    }
    case 'Q4_K': case 'Q5_K': {
      const d = h(o);
      const dmin = h(o + 2);
      const five = type === 'Q5_K';
      const qs = o + (five ? 48 : 16);
      for (let j = 0; j < 8; j++) {
        const [sc, mn] = scaleMinK4(src, o + 4, j);
        scales[s0 + j] = f(d * sc);
        offsets![s0 + j] = -f(dmin * mn);
        for (let l = 0; l < 32; l++) {
          const low = (src[qs + 32 * (j >> 1) + l]! >> (4 * (j & 1))) & 15;
          codes[32 * j + l] = five ? (low | (((src[o + 16 + l]! >> j) & 1) << 4)) + 128 : low;
        }
      }
      return;
    }
    case 'Q6_K': {
      const d = h(o + 208);
      for (let j = 0; j < 16; j++) scales[s0 + j] = f(d * ((src[o + 192 + j]! << 24) >> 24));
      for (let e = 0; e < 256; e++) {
        const hh = e >> 7;
        const r = e & 127;
        const low = (src[o + 64 * hh + (r & 63)]! >> (4 * (r >> 6))) & 15;
        const high = (src[o + 128 + 32 * hh + (r & 31)]! >> (2 * (r >> 5))) & 3;
        codes[e] = (low | (high << 4)) - 32 + 128;
      }
      return;
    }
    default:
      throw new Error(`GGML type ${type} has no MatMulNBits form`);
  }
}

/** float32 [N, K] the MatMulNBits form stands for, folded as ComfyUI-GGUF folds it: ((code - zp) * scale) + offset. */
export function nbitsValues(w: NBitsWeight): Float32Array {
  const { N, K, bits, block, packed, scales } = w.q;
  const kb = K / block;
  const blob = blobBytes(bits, block);
  const zpDefault = 1 << (bits - 1);
  const out = new Float32Array(N * K);
  for (let n = 0; n < N; n++) {
    for (let j = 0; j < kb; j++) {
      const s = scales[n * kb + j]!;
      const zp = w.q.zeroPoints ? 0 : zpDefault;
      const off = w.offsets?.[n * kb + j];
      for (let i = 0; i < block; i++) {
        const byte = packed[(n * kb + j) * blob + (bits === 8 ? i : i >> 1)]!;
        const code = bits === 8 ? byte : i % 2 === 0 ? byte & 15 : byte >> 4;
        const v = f((code - zp) * s);
        out[n * K + j * block + i] = off === undefined ? v : f(v + off);
      }
    }
  }
  return out;
}
