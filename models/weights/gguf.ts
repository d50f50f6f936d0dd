// GGUF (llama.cpp / ComfyUI-GGUF single-file models), versions 2 and 3, little-endian:
//   "GGUF", u32 version, u64 tensor count, u64 metadata count,
//   metadata: (string key, u32 value type, value)*, strings as u64 length + UTF-8 bytes, arrays as
//     u32 element type + u64 count + elements;
//   tensor infos: (string name, u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset)*;
//   padding to `general.alignment` (default 32), then the tensor data; offsets count from there.
// ne is innermost first: a torch [out, in] weight has ne = [in, out] and is stored as `out` rows of `in`
// values cut into blocks. ComfyUI-GGUF's converter records the torch shape of tensors it had to reshape
// as `comfy.gguf.orig_shape.<name>` (an int32 array); that shape wins when present.
//
// The whole table is checked when the file is opened (before anything is converted): every type must be
// one charflow decodes, every row whole blocks, every tensor inside the file and not overlapping the next
// one (which is how a tensor whose size does not match its type and shape shows). Tensors are read one at
// a time with positioned reads and decoded to float32 (F16 / BF16 kept as 16-bit patterns, exactly).
// The header is parsed here rather than with @huggingface/gguf: that package reads through fetch() and is
// asynchronous, while WeightSource (and the converter's opening of checkpoints) is synchronous.
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import type { WeightSource } from './source.ts';
import { type Tensor, numel } from '../tensor.ts';
import { DECODABLE, type GgmlBlocks, type GgmlType, type GgmlTypeName, canDecode, decodeBlocks, ggmlBytes, ggmlTypeById } from './ggml.ts';

export const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
const DEFAULT_ALIGNMENT = 32;

export type GgufValue = number | bigint | boolean | string | GgufValue[];

export interface GgufTensorInfo {
  name: string;
  /** ne, innermost first (as stored). */
  ne: number[];
  /** torch order (ne reversed, or the recorded original shape). */
  shape: number[];
  type: GgmlType;
  /** Absolute byte offset of the data in the file. */
  offset: number;
  bytes: number;
}

/** Sequential reads over a file through a window buffer (the header can hold megabytes of vocabulary). */
class Cursor {
  private buf = Buffer.alloc(0);
  private start = 0; // file offset of buf[0]
  pos = 0;
  constructor(private fd: number, private size: number, private path: string) {}

  private need(n: number, what: string): number {
    if (this.pos + n > this.size) throw new Error(`${this.path}: truncated GGUF header (${what} at byte ${this.pos} runs past the end, ${this.size} bytes)`);
    if (this.pos < this.start || this.pos + n > this.start + this.buf.length) {
      const len = Math.min(this.size - this.pos, Math.max(n, 1 << 20));
      this.buf = Buffer.alloc(len);
      let done = 0;
      while (done < len) {
        const r = readSync(this.fd, this.buf, done, len - done, this.pos + done);
        if (r <= 0) throw new Error(`${this.path}: read failed at byte ${this.pos + done}`);
        done += r;
      }
      this.start = this.pos;
    }
    const at = this.pos - this.start;
    this.pos += n;
    return at;
  }

  // need() may replace the window, so it runs before `this.buf` is read.
  u8(): number { const at = this.need(1, 'a u8'); return this.buf[at]!; }
  i8(): number { const at = this.need(1, 'an i8'); return this.buf.readInt8(at); }
  u16(): number { const at = this.need(2, 'a u16'); return this.buf.readUInt16LE(at); }
  i16(): number { const at = this.need(2, 'an i16'); return this.buf.readInt16LE(at); }
  u32(): number { const at = this.need(4, 'a u32'); return this.buf.readUInt32LE(at); }
  i32(): number { const at = this.need(4, 'an i32'); return this.buf.readInt32LE(at); }
  /** A float32 as the shortest decimal that is that float32 (1e-6, not 9.99999997e-7). */
  f32(): number { const at = this.need(4, 'an f32'); return shortestFloat32(this.buf.readFloatLE(at)); }
  f64(): number { const at = this.need(8, 'an f64'); return this.buf.readDoubleLE(at); }
  i64(): bigint { const at = this.need(8, 'an i64'); return this.buf.readBigInt64LE(at); }
  u64(): bigint { const at = this.need(8, 'a u64'); return this.buf.readBigUInt64LE(at); }
  /** A u64 that must be a safe count/size (at most `max`). */
  count(what: string, max: number): number {
    const v = this.u64();
    if (v > BigInt(max)) throw new Error(`${this.path}: ${what} ${v} is impossible for a ${this.size}-byte file (corrupt header?)`);
    return Number(v);
  }
  string(what: string): string {
    const n = this.count(`${what} length`, this.size);
    const at = this.need(n, what);
    return this.buf.toString('utf8', at, at + n);
  }
}

function shortestFloat32(v: number): number {
  if (!Number.isFinite(v)) return v;
  for (let p = 1; p < 9; p++) {
    const x = Number(v.toPrecision(p));
    if (Math.fround(x) === v) return x;
  }
  return v;
}

const VALUE_TYPES = ['u8', 'i8', 'u16', 'i16', 'u32', 'i32', 'f32', 'bool', 'string', 'array', 'u64', 'i64', 'f64'] as const;

function readValue(c: Cursor, type: number, key: string, path: string, size: number): GgufValue {
  switch (VALUE_TYPES[type]) {
    case 'u8': return c.u8();
    case 'i8': return c.i8();
    case 'u16': return c.u16();
    case 'i16': return c.i16();
    case 'u32': return c.u32();
    case 'i32': return c.i32();
    case 'f32': return c.f32();
    case 'bool': return c.u8() !== 0;
    case 'string': return c.string(`metadata '${key}'`);
    case 'u64': return c.u64();
    case 'i64': return c.i64();
    case 'f64': return c.f64();
    case 'array': {
      const inner = c.u32();
      const n = c.count(`metadata '${key}' array length`, size);
      const out: GgufValue[] = new Array(n);
      for (let i = 0; i < n; i++) out[i] = readValue(c, inner, key, path, size);
      return out;
    }
    default: throw new Error(`${path}: metadata '${key}' has unknown value type ${type} (corrupt header?)`);
  }
}

export class GgufFile implements WeightSource {
  private fd: number;
  readonly version: number;
  readonly metadata = new Map<string, GgufValue>();
  private tensors = new Map<string, GgufTensorInfo>();
  readonly dataStart: number;

  constructor(readonly path: string) {
    this.fd = openSync(path, 'r');
    try {
      const size = fstatSync(this.fd).size;
      const c = new Cursor(this.fd, size, path);
      if (size < 4 || c.u32() !== GGUF_MAGIC) throw new Error(`${path}: not a GGUF file (bad magic)`);
      this.version = c.u32();
      if (this.version !== 2 && this.version !== 3) {
        throw new Error(`${path}: GGUF version ${this.version} is not supported (versions 2 and 3 are; a byte-swapped version means a big-endian file)`);
      }
      const nTensors = c.count('tensor count', size);
      const nKv = c.count('metadata count', size);
      for (let i = 0; i < nKv; i++) {
        const key = c.string('a metadata key');
        this.metadata.set(key, readValue(c, c.u32(), key, path, size));
      }
      const alignment = this.number('general.alignment') ?? DEFAULT_ALIGNMENT;
      if (!(alignment > 0 && Number.isInteger(alignment))) throw new Error(`${path}: general.alignment ${alignment} is invalid`);
      const infos: { name: string; ne: number[]; typeId: number; rel: number }[] = [];
      for (let i = 0; i < nTensors; i++) {
        const name = c.string('a tensor name');
        const nDims = c.u32();
        if (nDims < 1 || nDims > 4) throw new Error(`${path}: tensor '${name}' has ${nDims} dimensions (1 to 4 allowed; corrupt header?)`);
        const ne: number[] = [];
        for (let d = 0; d < nDims; d++) ne.push(c.count(`tensor '${name}' dimension`, 2 ** 40));
        const typeId = c.u32();
        const rel = c.count(`tensor '${name}' offset`, 2 ** 52);
        infos.push({ name, ne, typeId, rel });
      }
      this.dataStart = Math.ceil(c.pos / alignment) * alignment;
      for (const { name, ne, typeId, rel } of infos) {
        const type = ggmlTypeById(typeId);
        if (!type) throw new Error(`${path}: tensor '${name}' has unknown GGML type id ${typeId}`);
        if (!canDecode(type.name)) {
          throw new Error(`${path}: tensor '${name}' has type ${type.name}, which charflow does not read (it reads ${DECODABLE.join(', ')}); use a GGUF made with one of those`);
        }
        if (ne.some((d) => d === 0)) throw new Error(`${path}: tensor '${name}' has an empty dimension [${ne}]`);
        if (ne[0]! % type.blockSize !== 0) {
          throw new Error(`${path}: tensor '${name}' (${type.name}) has rows of ${ne[0]} values, not whole blocks of ${type.blockSize}`);
        }
        if (rel % alignment !== 0) throw new Error(`${path}: tensor '${name}' starts at data offset ${rel}, not a multiple of the alignment ${alignment}`);
        const bytes = ggmlBytes(type, numel(ne));
        const offset = this.dataStart + rel;
        if (offset + bytes > size) {
          throw new Error(`${path}: tensor '${name}' (${type.name} [${ne}], ${bytes} bytes at ${offset}) runs past the end of the file (${size} bytes): truncated file?`);
        }
        if (this.tensors.has(name)) throw new Error(`${path}: tensor '${name}' appears twice`);
        this.tensors.set(name, { name, ne, shape: this.origShape(name) ?? [...ne].reverse(), type, offset, bytes });
      }
      // Sizes follow from type and shape; a tensor whose bytes reach into the next one's does not match them.
      const sorted = [...this.tensors.values()].sort((a, b) => a.offset - b.offset);
      for (let i = 0; i + 1 < sorted.length; i++) {
        const a = sorted[i]!;
        const b = sorted[i + 1]!;
        if (a.offset + a.bytes > b.offset) {
          throw new Error(`${path}: tensor '${a.name}' (${a.type.name} [${a.ne}], ${a.bytes} bytes) overlaps '${b.name}': its size does not match its type and shape (corrupt file?)`);
        }
      }
      for (const t of this.tensors.values()) {
        if (numel(t.shape) !== numel(t.ne)) throw new Error(`${path}: tensor '${t.name}': recorded original shape [${t.shape}] does not hold ${numel(t.ne)} values`);
      }
    } catch (err) {
      closeSync(this.fd);
      throw err;
    }
  }

  /** A numeric metadata value (undefined when absent or not a number). */
  number(key: string): number | undefined {
    const v = this.metadata.get(key);
    return typeof v === 'number' ? v : typeof v === 'bigint' ? Number(v) : undefined;
  }

  string(key: string): string | undefined {
    const v = this.metadata.get(key);
    return typeof v === 'string' ? v : undefined;
  }

  /** general.architecture ('flux', 't5', 't5encoder', ...). */
  get architecture(): string | undefined {
    return this.string('general.architecture');
  }

  private origShape(name: string): number[] | undefined {
    const v = this.metadata.get(`comfy.gguf.orig_shape.${name}`);
    if (v === undefined) return undefined;
    if (!Array.isArray(v) || v.some((d) => typeof d !== 'number' || d < 1)) throw new Error(`${this.path}: comfy.gguf.orig_shape.${name} is not a list of dimensions`);
    return v as number[];
  }

  keys(): string[] {
    return [...this.tensors.keys()];
  }

  shape(key: string): number[] | undefined {
    const t = this.tensors.get(key);
    return t && [...t.shape];
  }

  /** Table entry of a tensor (type, offsets), or undefined. */
  info(key: string): GgufTensorInfo | undefined {
    return this.tensors.get(key);
  }

  /** The stored bytes of a tensor (its blocks, as in the file). */
  raw(key: string): Uint8Array {
    const t = this.tensors.get(key);
    if (!t) throw new Error(`${this.path}: missing tensor '${key}'`);
    const buf = new Uint8Array(t.bytes);
    let done = 0;
    while (done < t.bytes) {
      const n = readSync(this.fd, buf, done, t.bytes - done, t.offset + done);
      if (n <= 0) throw new Error(`${this.path}: tensor '${key}' is truncated`);
      done += n;
    }
    return buf;
  }

  ggmlType(key: string): GgmlTypeName | undefined {
    return this.tensors.get(key)?.type.name;
  }

  /** A quantized 2-D tensor's blocks (rows = ne[1], cols = ne[0]); undefined for float types and other ranks. */
  blocks(key: string): GgmlBlocks | undefined {
    const t = this.tensors.get(key);
    if (!t || t.type.blockSize === 1 || t.ne.length !== 2 || t.shape.length !== 2 || t.shape[1] !== t.ne[0]) return undefined;
    return { type: t.type, rows: t.ne[1]!, cols: t.ne[0]!, data: this.raw(key) };
  }

  get(key: string): Tensor {
    const t = this.tensors.get(key);
    if (!t) throw new Error(`${this.path}: missing tensor '${key}'`);
    const bytes = this.raw(key);
    const dims = [...t.shape];
    if (t.type.name === 'F16' || t.type.name === 'BF16') {
      return { dtype: t.type.name === 'F16' ? 'float16' : 'bfloat16', dims, data: new Uint16Array(bytes.buffer, 0, bytes.length / 2) };
    }
    if (t.type.name === 'F32') return { dtype: 'float32', dims, data: new Float32Array(bytes.buffer, 0, bytes.length / 4) };
    return { dtype: 'float32', dims, data: decodeBlocks(t.type, bytes, numel(t.ne)) };
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}
