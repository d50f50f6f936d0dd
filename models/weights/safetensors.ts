// safetensors: an 8-byte little-endian header length, a JSON header, then raw tensor bytes.
// Tensors are read one at a time with positioned reads, so a large file never sits in memory.
import { closeSync, fstatSync, openSync, readSync, writeFileSync, renameSync } from 'node:fs';
import type { WeightSource } from './source.ts';
import { BYTES_PER_ELEMENT, type DType, type Fp8Kind, type Tensor, fp8ToFloat16, numel, typedArrayOf } from '../tensor.ts';

const DTYPES: Record<string, DType> = {
  F32: 'float32', F16: 'float16', BF16: 'bfloat16', F64: 'float64', I64: 'int64', I32: 'int32', U8: 'uint8', BOOL: 'bool',
};
/**
 * float8 tensors (ComfyUI's flux1-dev-fp8 files): read as float16, which holds every fp8 value exactly,
 * so the rest of charflow (converter, quantizer) sees an ordinary half-precision checkpoint.
 */
const FP8: Record<string, Fp8Kind> = { F8_E4M3: 'e4m3fn', F8_E5M2: 'e5m2' };
const NAMES = Object.fromEntries(Object.entries(DTYPES).map(([k, v]) => [v, k])) as Record<DType, string>;

/** Header JSON above this size is refused: real checkpoints stay well under it. */
const MAX_HEADER = 100 * 1024 * 1024;

interface Entry {
  dtype: DType;
  /** Stored as fp8 (one byte a value), returned as float16. */
  fp8?: Fp8Kind;
  shape: number[];
  begin: number;
  end: number;
}

export class SafetensorsFile implements WeightSource {
  private fd: number;
  private entries = new Map<string, Entry>();
  readonly metadata: Record<string, string> = {};

  constructor(readonly path: string) {
    this.fd = openSync(path, 'r');
    try {
      const size = fstatSync(this.fd).size;
      const head = Buffer.alloc(8);
      if (size < 8 || readSync(this.fd, head, 0, 8, 0) !== 8) throw new Error('file is shorter than its header');
      const headerLen = Number(head.readBigUInt64LE(0));
      if (headerLen > MAX_HEADER || 8 + headerLen > size) throw new Error(`header length ${headerLen} is invalid`);
      const json = Buffer.alloc(headerLen);
      readSync(this.fd, json, 0, headerLen, 8);
      const header = JSON.parse(json.toString('utf8')) as Record<string, unknown>;
      const dataStart = 8 + headerLen;
      for (const [key, raw] of Object.entries(header)) {
        if (key === '__metadata__') {
          Object.assign(this.metadata, raw);
          continue;
        }
        const info = raw as { dtype: string; shape: number[]; data_offsets: [number, number] };
        const fp8 = FP8[info.dtype];
        const dtype = fp8 ? 'float16' : DTYPES[info.dtype];
        if (!dtype) throw new Error(`tensor '${key}' has unsupported dtype ${info.dtype}`);
        const [b, e] = info.data_offsets;
        if (e - b !== numel(info.shape) * (fp8 ? 1 : BYTES_PER_ELEMENT[dtype]) || dataStart + e > size) {
          throw new Error(`tensor '${key}' has inconsistent offsets`);
        }
        this.entries.set(key, { dtype, fp8, shape: info.shape, begin: dataStart + b, end: dataStart + e });
      }
    } catch (err) {
      closeSync(this.fd);
      throw new Error(`${path}: not a valid safetensors file: ${(err as Error).message}`);
    }
  }

  keys(): string[] {
    return [...this.entries.keys()];
  }

  shape(key: string): number[] | undefined {
    return this.entries.get(key)?.shape;
  }

  dtype(key: string): DType | undefined {
    return this.entries.get(key)?.dtype;
  }

  get(key: string): Tensor {
    const e = this.entries.get(key);
    if (!e) throw new Error(`${this.path}: missing tensor '${key}'`);
    const bytes = e.end - e.begin;
    const buf = new ArrayBuffer(bytes);
    const view = new Uint8Array(buf);
    let done = 0;
    while (done < bytes) {
      const n = readSync(this.fd, view, done, bytes - done, e.begin + done);
      if (n <= 0) throw new Error(`${this.path}: truncated tensor '${key}'`);
      done += n;
    }
    if (e.fp8) return { dtype: 'float16', dims: [...e.shape], data: fp8ToFloat16(view, e.fp8) };
    return { dtype: e.dtype, dims: [...e.shape], data: typedArrayOf(e.dtype, buf) };
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}


/** Reads a whole (small) safetensors file into a map. */
export function readSafetensors(path: string): Map<string, Tensor> {
  const f = new SafetensorsFile(path);
  try {
    return new Map(f.keys().map((k) => [k, f.get(k)]));
  } finally {
    f.close();
  }
}

/** Writes tensors as safetensors (sorted keys, 8-byte aligned header), atomically. */
export function writeSafetensors(path: string, tensors: Map<string, Tensor>, metadata: Record<string, string> = {}): void {
  const keys = [...tensors.keys()].sort();
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const k of keys) {
    const t = tensors.get(k)!;
    header[k] = { dtype: NAMES[t.dtype], shape: t.dims, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const head = Buffer.alloc(8);
  head.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  const parts = [head, Buffer.from(json), ...keys.map((k) => {
    const d = tensors.get(k)!.data;
    return new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
  })];
  writeFileSync(`${path}.partial`, Buffer.concat(parts));
  renameSync(`${path}.partial`, path);
}
