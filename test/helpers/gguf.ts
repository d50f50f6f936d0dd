// A small GGUF writer for tests (version 2 or 3, little-endian), with test-side encoders for F32, F16 and Q8_0.
// It writes what llama.cpp's gguf-py writes: header, metadata, tensor infos, padding to the alignment, data.
import { writeFileSync } from 'node:fs';
import { type GgmlTypeName, ggmlType } from '../../models/weights/ggml.ts';
import { type Tensor, f32, floatToHalf, halfToFloat, toFloat32 } from '../../models/tensor.ts';
import { readFileSync, readdirSync } from 'node:fs';
import { goldenConfig, goldenPath, goldenWeights } from './goldens.ts';

const T5_CASE = 't5_encoder';

export type GgufMetaValue = string | number | boolean | number[];

export interface GgufTensorOut {
  name: string;
  /** The type written in the table (any id, so unsupported types can be tested). */
  type: GgmlTypeName;
  /** Innermost first: a torch [out, in] weight is [in, out]. */
  ne: number[];
  data: Uint8Array;
  /** Replaces the data offset the writer would give (to make corrupt files). */
  offset?: number;
}

export interface GgufOut {
  version?: number;
  alignment?: number;
  metadata?: Record<string, GgufMetaValue>;
  tensors: GgufTensorOut[];
}

const str = (s: string): Buffer => {
  const b = Buffer.from(s, 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(b.length));
  return Buffer.concat([len, b]);
};
const u32 = (v: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v);
  return b;
};
const u64 = (v: number): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(v));
  return b;
};

function metaValue(v: GgufMetaValue): Buffer {
  if (typeof v === 'string') return Buffer.concat([u32(8), str(v)]);
  if (typeof v === 'boolean') return Buffer.concat([u32(7), Buffer.from([v ? 1 : 0])]);
  if (Array.isArray(v)) {
    const items = v.map((x) => {
      const b = Buffer.alloc(4);
      b.writeInt32LE(x);
      return b;
    });
    return Buffer.concat([u32(9), u32(5), u64(v.length), ...items]); // array of int32
  }
  if (Number.isInteger(v) && v >= 0) return Buffer.concat([u32(4), u32(v)]);
  const b = Buffer.alloc(4);
  b.writeFloatLE(v);
  return Buffer.concat([u32(6), b]);
}

/** The bytes of a GGUF file. */
export function ggufBytes(out: GgufOut): Buffer {
  const alignment = out.alignment ?? 32;
  const meta = Object.entries(out.metadata ?? {});
  if (out.alignment !== undefined) meta.push(['general.alignment', alignment]);
  const head = [Buffer.from('GGUF', 'latin1'), u32(out.version ?? 3), u64(out.tensors.length), u64(meta.length)];
  for (const [k, v] of meta) head.push(str(k), metaValue(v));
  let offset = 0;
  const data: Buffer[] = [];
  for (const t of out.tensors) {
    head.push(str(t.name), u32(t.ne.length), ...t.ne.map(u64), u32(ggmlType(t.type).id), u64(t.offset ?? offset));
    const pad = (alignment - (t.data.length % alignment)) % alignment;
    data.push(Buffer.from(t.data.buffer, t.data.byteOffset, t.data.length), Buffer.alloc(pad));
    offset += t.data.length + pad;
  }
  const header = Buffer.concat(head);
  const headPad = Buffer.alloc((alignment - (header.length % alignment)) % alignment);
  return Buffer.concat([header, headPad, ...data]);
}

export function writeGguf(path: string, out: GgufOut): void {
  writeFileSync(path, ggufBytes(out));
}

/**
 * Encodes float32 values (torch row-major) as `type`, returning the bytes and the values they decode to
 * (what a reader must give back). Q8_0: d = max|x| / 127 stored as half, q = round(x / d), as llama.cpp quantizes.
 */
export function encodeGgml(type: 'F32' | 'F16' | 'Q8_0', values: Float32Array): { data: Uint8Array; decoded: Float32Array } {
  if (type === 'F32') return { data: new Uint8Array(values.slice().buffer), decoded: values.slice() };
  if (type === 'F16') {
    const h = Uint16Array.from(values, (v) => floatToHalf(v));
    return { data: new Uint8Array(h.buffer), decoded: Float32Array.from(h, (b) => halfToFloat(b)) };
  }
  if (values.length % 32 !== 0) throw new Error(`Q8_0 needs whole blocks of 32, got ${values.length} values`);
  const blocks = values.length / 32;
  const data = new Uint8Array(34 * blocks);
  const decoded = new Float32Array(values.length);
  for (let b = 0; b < blocks; b++) {
    let amax = 0;
    for (let i = 0; i < 32; i++) amax = Math.max(amax, Math.abs(values[32 * b + i]!));
    const dBits = floatToHalf(amax / 127);
    const d = halfToFloat(dBits);
    data[34 * b] = dBits & 0xff;
    data[34 * b + 1] = dBits >> 8;
    for (let i = 0; i < 32; i++) {
      const q = d === 0 ? 0 : Math.max(-127, Math.min(127, Math.round(values[32 * b + i]! / d)));
      data[34 * b + 2 + i] = q & 0xff;
      decoded[32 * b + i] = Math.fround(d * q);
    }
  }
  return { data, decoded };
}

// ---------------------------------------------------------------------------------------------
// The t5_encoder golden as a llama.cpp-named GGUF

/** Hugging Face T5 encoder names -> llama.cpp's (gguf-py tensor_mapping.py), written out independently of the reader. */
function llamaName(key: string): string {
  const fixed: Record<string, string> = { 'shared.weight': 'token_embd.weight', 'encoder.final_layer_norm.weight': 'enc.output_norm.weight' };
  if (fixed[key]) return fixed[key]!;
  const m = /^encoder\.block\.(\d+)\.layer\.(\d)\.(.+)\.weight$/.exec(key);
  if (!m) throw new Error(`no llama.cpp name for ${key}`);
  const part: Record<string, string> = {
    'SelfAttention.q': 'attn_q', 'SelfAttention.k': 'attn_k', 'SelfAttention.v': 'attn_v', 'SelfAttention.o': 'attn_o',
    'SelfAttention.relative_attention_bias': 'attn_rel_b', layer_norm: m[2] === '0' ? 'attn_norm' : 'ffn_norm',
    'DenseReluDense.wi_0': 'ffn_gate', 'DenseReluDense.wi_1': 'ffn_up', 'DenseReluDense.wo': 'ffn_down',
  };
  if (!part[m[3]!]) throw new Error(`no llama.cpp name for ${key}`);
  return `enc.blk.${m[1]}.${part[m[3]!]}.weight`;
}

export type Enc = 'F32' | 'F16' | 'Q8_0';

/**
 * The golden weights as a GGUF with 2-D weights in `enc` (rows that are not whole Q8_0 blocks fall back to
 * F16, as converters do; norms and the position bias stay F32). Returns the values the file holds.
 */
export function writeT5Gguf(path: string, enc: Enc, version = 3): Map<string, Tensor> {
  const src = goldenWeights(T5_CASE);
  const held = new Map<string, Tensor>();
  const tensors: GgufTensorOut[] = [];
  try {
    for (const key of src.keys()) {
      const t = src.get(key);
      const values = toFloat32(t);
      const matrix = t.dims.length === 2 && !key.includes('relative_attention_bias');
      const type: Enc = !matrix ? 'F32' : enc === 'Q8_0' && t.dims[1]! % 32 !== 0 ? 'F16' : enc;
      const { data, decoded } = encodeGgml(type, values);
      tensors.push({ name: llamaName(key), type, ne: [...t.dims].reverse(), data });
      held.set(key, f32([...t.dims], decoded));
    }
  } finally {
    src.close();
  }
  const json = goldenConfig(T5_CASE);
  writeGguf(path, {
    version,
    metadata: {
      'general.architecture': 't5encoder', 't5encoder.attention.layer_norm_epsilon': json['layer_norm_epsilon'] as number,
      't5encoder.block_count': json['num_layers'] as number,
    },
    tensors,
  });
  return held;
}


// ---------------------------------------------------------------------------------------------
// The flux_gguf case's files, found from its tensor_types.json (so another case set in the layout works too)

export const FLUX_GGUF_CASE = 'flux_gguf';

/** tensor_types.json: variant -> tensor -> GGML type name. */
export function fluxGgufTypes(): Record<string, Record<string, string>> {
  return JSON.parse(readFileSync(goldenPath(FLUX_GGUF_CASE, 'tensor_types.json'), 'utf8')) as Record<string, Record<string, string>>;
}

/** The case's GGUF file of a variant: the one .gguf whose name ends with it ('legacy' -> flux-legacy.gguf). */
export function fluxGgufFile(variant: string): string {
  const hits = readdirSync(goldenPath(FLUX_GGUF_CASE)).filter((f) => f.endsWith('.gguf') && f.slice(0, -5).split(/[-_]/).pop() === variant);
  if (hits.length !== 1) throw new Error(`expected one .gguf file for '${variant}' in ${FLUX_GGUF_CASE}, found ${hits.length}`);
  return goldenPath(FLUX_GGUF_CASE, hits[0]!);
}
