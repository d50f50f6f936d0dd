// GGML block types (the tensor encodings of GGUF files) and their float32 decoders.
//
// Each block of `blockSize` values takes `typeSize` bytes. The decoders follow the format as llama.cpp
// defines it, and fold scales in the order ComfyUI-GGUF's dequant.py does (float32 throughout: a super-block
// scale times a sub-block scale first, then times the code, then the minimum subtracted), so a value is the
// same float32 ComfyUI computes, bit for bit. All scales are IEEE half (`d`, `dmin`, `m`).
//
// Layouts (bytes in block order; "q" = code, "e" = element index in the block):
//   Q4_0  [d, qs 16]           e<16: qs[e]&15, else qs[e-16]>>4;             x = d * (q - 8)
//   Q4_1  [d, m, qs 16]        as Q4_0;                                       x = d * q + m
//   Q5_0  [d, qh u32, qs 16]   q = Q4_0 nibble | ((qh >> e) & 1) << 4;        x = d * (q - 16)
//   Q5_1  [d, m, qh u32, qs 16]                                               x = d * q + m
//   Q8_0  [d, qs int8 32]                                                     x = d * q
//   Q2_K  [scales 16, qs 64, d, dmin]  sub-block e>>4 (16 values): scale s&15, min s>>4;
//         q = (qs[32*(e>>7) + (e&31)] >> 2*((e>>5)&3)) & 3;                   x = (d*sc) * q - (dmin*mn)
//   Q3_K  [hmask 32, qs 64, scales 12, d]  16 six-bit scales (low 4 bits from bytes 0..7, high 2 from 8..11),
//         q = 2-bit code (as Q2_K) - 4 * !((hmask[e&31] >> (e>>5)) & 1);   x = (d * (sc - 32)) * q
//   Q4_K  [d, dmin, scales 12, qs 128]  8 sub-blocks of 32, six-bit scale and min (scaleMinK4);
//         q = (qs[32*(e>>6) + (e&31)] >> 4*((e>>5)&1)) & 15;                 x = (d*sc) * q - (dmin*mn)
//   Q5_K  [d, dmin, scales 12, qh 32, qs 128]  q = Q4_K code | ((qh[e&31] >> (e>>5)) & 1) << 4
//   Q6_K  [ql 128, qh 64, scales int8 16, d]  half h = e>>7, r = e&127:
//         q = ((ql[64h + (r&63)] >> 4*(r>>6)) & 15 | ((qh[32h + (r&31)] >> 2*(r>>5)) & 3) << 4) - 32;
//         x = (d * sc[e>>4]) * q
//   IQ4_NL [d, qs 16]          x = d * KVALUES[Q4_0 nibble]
//   IQ4_XS [d, scales_h u16, scales_l 4, qs 128]  8 sub-blocks of 32: ls = low nibble of scales_l[ib>>1]
//         (high nibble for odd ib) | ((scales_h >> 2ib) & 3) << 4;  x = (d * (ls - 32)) * KVALUES[nibble]
import { float16ToFloat32, halfToFloat } from '../tensor.ts';

export type GgmlTypeName =
  | 'F32' | 'F16' | 'Q4_0' | 'Q4_1' | 'Q5_0' | 'Q5_1' | 'Q8_0' | 'Q8_1' | 'Q2_K' | 'Q3_K' | 'Q4_K' | 'Q5_K' | 'Q6_K' | 'Q8_K'
  | 'IQ2_XXS' | 'IQ2_XS' | 'IQ3_XXS' | 'IQ1_S' | 'IQ4_NL' | 'IQ3_S' | 'IQ2_S' | 'IQ4_XS' | 'I8' | 'I16' | 'I32' | 'I64' | 'F64'
  | 'IQ1_M' | 'BF16' | 'TQ1_0' | 'TQ2_0' | 'MXFP4';

export interface GgmlType {
  id: number;
  name: GgmlTypeName;
  /** Values per block. */
  blockSize: number;
  /** Bytes per block. */
  typeSize: number;
}

/** ggml's type ids (gguf-py GGMLQuantizationType) and block sizes (GGML_QUANT_SIZES). Ids 4, 5, 31-33 are retired. */
const TYPES: readonly GgmlType[] = ([
  [0, 'F32', 1, 4], [1, 'F16', 1, 2], [2, 'Q4_0', 32, 18], [3, 'Q4_1', 32, 20], [6, 'Q5_0', 32, 22], [7, 'Q5_1', 32, 24],
  [8, 'Q8_0', 32, 34], [9, 'Q8_1', 32, 36], [10, 'Q2_K', 256, 84], [11, 'Q3_K', 256, 110], [12, 'Q4_K', 256, 144],
  [13, 'Q5_K', 256, 176], [14, 'Q6_K', 256, 210], [15, 'Q8_K', 256, 292], [16, 'IQ2_XXS', 256, 66], [17, 'IQ2_XS', 256, 74],
  [18, 'IQ3_XXS', 256, 98], [19, 'IQ1_S', 256, 50], [20, 'IQ4_NL', 32, 18], [21, 'IQ3_S', 256, 110], [22, 'IQ2_S', 256, 82],
  [23, 'IQ4_XS', 256, 136], [24, 'I8', 1, 1], [25, 'I16', 1, 2], [26, 'I32', 1, 4], [27, 'I64', 1, 8], [28, 'F64', 1, 8],
  [29, 'IQ1_M', 256, 56], [30, 'BF16', 1, 2], [34, 'TQ1_0', 256, 54], [35, 'TQ2_0', 256, 66], [39, 'MXFP4', 32, 17],
] as const).map(([id, name, blockSize, typeSize]) => ({ id, name, blockSize, typeSize }));

const BY_ID = new Map(TYPES.map((t) => [t.id, t]));
const BY_NAME = new Map(TYPES.map((t) => [t.name, t]));

export function ggmlTypeById(id: number): GgmlType | undefined {
  return BY_ID.get(id);
}

export function ggmlType(name: GgmlTypeName): GgmlType {
  return BY_NAME.get(name)!;
}

/** IQ4_NL / IQ4_XS's non-uniform 4-bit code book (ggml kvalues_iq4nl). */
export const IQ4_KVALUES: readonly number[] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/** Decodes `nBlocks` blocks of `src` (starting at byte 0) into out[0 .. nBlocks * blockSize). */
type Decoder = (src: Uint8Array, nBlocks: number, out: Float32Array) => void;

const f = Math.fround;

/** Half-precision bits -> float, by table (65536 entries, built on first use). */
let HALF: Float32Array | undefined;
function halfTable(): Float32Array {
  if (!HALF) {
    HALF = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) HALF[h] = halfToFloat(h);
  }
  return HALF;
}
const half = (src: Uint8Array, at: number): number => HALF![src[at]! | (src[at + 1]! << 8)]!;
const u32 = (src: Uint8Array, at: number): number => (src[at]! | (src[at + 1]! << 8) | (src[at + 2]! << 16) | (src[at + 3]! << 24)) >>> 0;

/** Q4_K / Q5_K: the six-bit scale and minimum of sub-block j (0..7) from the 12 scale bytes at `s`. */
export function scaleMinK4(src: Uint8Array, s: number, j: number): [number, number] {
  if (j < 4) return [src[s + j]! & 63, src[s + j + 4]! & 63];
  return [(src[s + j + 4]! & 0x0f) | ((src[s + j - 4]! >> 6) << 4), (src[s + j + 4]! >> 4) | ((src[s + j]! >> 6) << 4)];
}

/** Q3_K: the six-bit scale of sub-block j (0..15) from the 12 scale bytes at `s`, minus 32. */
export function scaleQ3K(src: Uint8Array, s: number, j: number): number {
  const lo = j < 8 ? src[s + j]! & 0x0f : src[s + j - 8]! >> 4;
  const hi = (src[s + 8 + (j & 3)]! >> (2 * (j >> 2))) & 3;
  return (lo | (hi << 4)) - 32;
}

/** IQ4_XS: the six-bit scale of sub-block ib (0..7), minus 32. */
export function scaleIq4Xs(src: Uint8Array, o: number, ib: number): number {
  const scalesH = src[o + 2]! | (src[o + 3]! << 8);
  const lo = (src[o + 4 + (ib >> 1)]! >> (4 * (ib & 1))) & 0x0f;
  return (lo | (((scalesH >> (2 * ib)) & 3) << 4)) - 32;
}

const DECODERS: Partial<Record<GgmlTypeName, Decoder>> = {
  F32: (src, n, out) => out.set(new Float32Array(src.buffer.slice(src.byteOffset, src.byteOffset + 4 * n))),
  F16: (src, n, out) => float16ToFloat32(new Uint16Array(src.buffer.slice(src.byteOffset, src.byteOffset + 2 * n)), out),
  BF16: (src, n, out) => {
    const bits = new Int32Array(out.buffer, out.byteOffset, n);
    for (let i = 0; i < n; i++) bits[i] = (src[2 * i]! << 16) | (src[2 * i + 1]! << 24);
  },
  Q8_0: (src, n, out) => {
    for (let b = 0; b < n; b++) {
      const o = 34 * b;
      const d = half(src, o);
      for (let e = 0; e < 32; e++) out[32 * b + e] = f(d * ((src[o + 2 + e]! << 24) >> 24));
    }
  },
  Q4_0: (src, n, out) => {
    for (let b = 0; b < n; b++) {
      const o = 18 * b;
      const d = half(src, o);
      for (let i = 0; i < 16; i++) {
        const q = src[o + 2 + i]!;
        out[32 * b + i] = f(d * ((q & 15) - 8));
        out[32 * b + i + 16] = f(d * ((q >> 4) - 8));
      }
    }
  },
  Q4_1: (src, n, out) => {
    for (let b = 0; b < n; b++) {
      const o = 20 * b;
      const d = half(src, o);
      const m = half(src, o + 2);
      for (let i = 0; i < 16; i++) {
        const q = src[o + 4 + i]!;
        out[32 * b + i] = f(f(d * (q & 15)) + m);
        out[32 * b + i + 16] = f(f(d * (q >> 4)) + m);
      }
    }
  },
  Q5_0: (src, n, out) => {
    for (let b = 0; b < n; b++) {
      const o = 22 * b;
      const d = half(src, o);
      const qh = u32(src, o + 2);
      for (let i = 0; i < 16; i++) {
        const q = src[o + 6 + i]!;
        out[32 * b + i] = f(d * (((q & 15) | (((qh >>> i) & 1) << 4)) - 16));
        out[32 * b + i + 16] = f(d * (((q >> 4) | (((qh >>> (i + 16)) & 1) << 4)) - 16));
      }
    }
  },
  Q5_1: (src, n, out) => {
    for (let b = 0; b < n; b++) {
      const o = 24 * b;
      const d = half(src, o);
      const m = half(src, o + 2);
      const qh = u32(src, o + 4);
      for (let i = 0; i < 16; i++) {
        const q = src[o + 8 + i]!;
        out[32 * b + i] = f(f(d * ((q & 15) | (((qh >>> i) & 1) << 4))) + m);
        out[32 * b + i + 16] = f(f(d * ((q >> 4) | (((qh >>> (i + 16)) & 1) << 4))) + m);
      }
    }
  },
  Q2_K: (src, n, out) => {
    for (let b = 0; b < n; b++) {
      const o = 84 * b;
      const d = half(src, o + 80);
      const dmin = half(src, o + 82);
      for (let j = 0; j < 16; j++) {
        const s = src[o + j]!;
        const dl = f(d * (s & 15));
        const ml = f(dmin * (s >> 4));
        for (let l = 0; l < 16; l++) {
          const e = 16 * j + l;
          const q = (src[o + 16 + 32 * (e >> 7) + (e & 31)]! >> (2 * ((e >> 5) & 3))) & 3;
          out[256 * b + e] = f(f(dl * q) - ml);
        }
      }
    }
  },
  Q3_K: (src, n, out) => {
    for (let b = 0; b < n; b++) {
      const o = 110 * b;
      const d = half(src, o + 108);
      for (let j = 0; j < 16; j++) {
        const dl = f(d * scaleQ3K(src, o + 96, j));
        for (let l = 0; l < 16; l++) {
          const e = 16 * j + l;
          const low = (src[o + 32 + 32 * (e >> 7) + (e & 31)]! >> (2 * ((e >> 5) & 3))) & 3;
          const high = (src[o + (e & 31)]! >> (e >> 5)) & 1;
          out[256 * b + e] = f(dl * (low - (high ? 0 : 4)));
        }
      }
    }
  },
  Q4_K: (src, n, out) => {
    for (let b = 0; b < n; b++) {
      const o = 144 * b;
      const d = half(src, o);
      const dmin = half(src, o + 2);
      for (let j = 0; j < 8; j++) {
        const [sc, mn] = scaleMinK4(src, o + 4, j);
        const dl = f(d * sc);
        const ml = f(dmin * mn);
        const qs = o + 16 + 32 * (j >> 1);
        const shift = 4 * (j & 1);
        for (let l = 0; l < 32; l++) out[256 * b + 32 * j + l] = f(f(dl * ((src[qs + l]! >> shift) & 15)) - ml);
      }
    }
  },
  Q5_K: (src, n, out) => {
    for (let b = 0; b < n; b++) {
      const o = 176 * b;
      const d = half(src, o);
      const dmin = half(src, o + 2);
      for (let j = 0; j < 8; j++) {
        const [sc, mn] = scaleMinK4(src, o + 4, j);
        const dl = f(d * sc);
        const ml = f(dmin * mn);
        const qs = o + 48 + 32 * (j >> 1);
        const shift = 4 * (j & 1);
        for (let l = 0; l < 32; l++) {
          const q = ((src[qs + l]! >> shift) & 15) | (((src[o + 16 + l]! >> j) & 1) << 4);
          out[256 * b + 32 * j + l] = f(f(dl * q) - ml);
        }
      }
    }
  },
  Q6_K: (src, n, out) => {
    for (let b = 0; b < n; b++) {
      const o = 210 * b;
      const d = half(src, o + 208);
      for (let j = 0; j < 16; j++) {
        const dl = f(d * ((src[o + 192 + j]! << 24) >> 24));
        for (let l = 0; l < 16; l++) {
          const e = 16 * j + l;
          const h = e >> 7;
          const r = e & 127;
          const low = (src[o + 64 * h + (r & 63)]! >> (4 * (r >> 6))) & 15;
          const high = (src[o + 128 + 32 * h + (r & 31)]! >> (2 * (r >> 5))) & 3;
          out[256 * b + e] = f(dl * ((low | (high << 4)) - 32));
        }
      }
    }
  },
  IQ4_NL: (src, n, out) => {
    for (let b = 0; b < n; b++) {
      const o = 18 * b;
      const d = half(src, o);
      for (let i = 0; i < 16; i++) {
        const q = src[o + 2 + i]!;
        out[32 * b + i] = f(d * IQ4_KVALUES[q & 15]!);
        out[32 * b + i + 16] = f(d * IQ4_KVALUES[q >> 4]!);
      }
    }
  },
  IQ4_XS: (src, n, out) => {
    for (let b = 0; b < n; b++) {
      const o = 136 * b;
      const d = half(src, o);
      for (let ib = 0; ib < 8; ib++) {
        const dl = f(d * scaleIq4Xs(src, o, ib));
        for (let i = 0; i < 16; i++) {
          const q = src[o + 8 + 16 * ib + i]!;
          out[256 * b + 32 * ib + i] = f(dl * IQ4_KVALUES[q & 15]!);
          out[256 * b + 32 * ib + i + 16] = f(dl * IQ4_KVALUES[q >> 4]!);
        }
      }
    }
  },
};

/** The block types charflow decodes (float types included). */
export const DECODABLE: readonly GgmlTypeName[] = Object.keys(DECODERS) as GgmlTypeName[];

export function canDecode(type: GgmlTypeName): boolean {
  return DECODERS[type] !== undefined;
}

/** float32 values of `count` elements stored as `type` in `bytes` (count a multiple of the block size). */
export function decodeBlocks(type: GgmlType, bytes: Uint8Array, count: number, out: Float32Array = new Float32Array(count)): Float32Array {
  const decode = DECODERS[type.name];
  if (!decode) throw new Error(`GGML type ${type.name} cannot be decoded`);
  if (count % type.blockSize !== 0) throw new Error(`${count} values are not whole ${type.name} blocks of ${type.blockSize}`);
  const nBlocks = count / type.blockSize;
  if (bytes.length < nBlocks * type.typeSize) throw new Error(`${type.name}: ${bytes.length} bytes, ${nBlocks * type.typeSize} needed`);
  halfTable();
  decode(bytes, type.blockSize === 1 ? count : nBlocks, out);
  return out;
}

/** Bytes of `count` values of `type`. */
export function ggmlBytes(type: GgmlType, count: number): number {
  return (count / type.blockSize) * type.typeSize;
}

/** A 2-D weight as stored in GGML blocks: `rows` rows (torch's out) of `cols` values (in), whole blocks per row. */
export interface GgmlBlocks {
  type: GgmlType;
  rows: number;
  cols: number;
  /** rows * cols / blockSize blocks, row after row. */
  data: Uint8Array;
}

/** Bytes of one row of `blocks`. */
export const ggmlRowBytes = (b: Pick<GgmlBlocks, 'type' | 'cols'>): number => ggmlBytes(b.type, b.cols);

/** Rows [start, end) of several block weights of one type and width, stacked (a fused or split Linear). */
export function stackGgmlRows(parts: readonly { blocks: GgmlBlocks; rows?: readonly [number, number] }[]): GgmlBlocks {
  const first = parts[0]!.blocks;
  const rowBytes = ggmlRowBytes(first);
  let rows = 0;
  for (const p of parts) {
    if (p.blocks.type !== first.type || p.blocks.cols !== first.cols) throw new Error('stackGgmlRows: parts differ in type or width');
    const [s, e] = p.rows ?? [0, p.blocks.rows];
    rows += e - s;
  }
  if (parts.length === 1 && !parts[0]!.rows) return first;
  const data = new Uint8Array(rows * rowBytes);
  let at = 0;
  for (const p of parts) {
    const [s, e] = p.rows ?? [0, p.blocks.rows];
    data.set(p.blocks.data.subarray(s * rowBytes, e * rowBytes), at);
    at += (e - s) * rowBytes;
  }
  return { type: first.type, rows, cols: first.cols, data };
}
