// Streaming checkpoint writers: one tensor in memory at a time, so full-size test checkpoints (tens of GB)
// can be generated on a machine with little RAM. Used by scripts/fullsize-check.ts and the tests.
// - safetensors: the header (all shapes known up front), then each tensor's bytes in key order;
// - torch.save zip archive (ZIP64 when past 4 GB), e.g. the adapter's {"ip_adapter": ..., "image_proj": ...}
//   of bfloat16 tensors, laid out as torch writes it: <prefix>/data.pkl, <prefix>/data/<n>, byteorder, version.
import { closeSync, openSync, renameSync, writeSync } from 'node:fs';
import { crc32 } from 'node:zlib';
import { BYTES_PER_ELEMENT, type DType, type TensorData, numel } from '../tensor.ts';

export interface TensorSpec {
  key: string;
  dtype: DType;
  dims: number[];
}

/** Produces a tensor's data (its dtype's typed array, numel(dims) elements). */
export type Produce = (spec: TensorSpec) => TensorData;

const SAFETENSORS_DTYPE: Partial<Record<DType, string>> = {
  float32: 'F32', float16: 'F16', bfloat16: 'BF16', float64: 'F64', int64: 'I64', int32: 'I32', uint8: 'U8', bool: 'BOOL',
};

function writeAll(fd: number, bytes: Uint8Array, position: number): void {
  for (let done = 0; done < bytes.length;) done += writeSync(fd, bytes, done, bytes.length - done, position + done);
}

function bytesOf(spec: TensorSpec, data: TensorData): Uint8Array {
  const n = numel(spec.dims) * BYTES_PER_ELEMENT[spec.dtype];
  if (data.byteLength !== n) throw new Error(`tensor '${spec.key}': produced ${data.byteLength} bytes, [${spec.dims}] ${spec.dtype} needs ${n}`);
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

/** Writes a safetensors file tensor by tensor (atomically: a .partial file renamed at the end). */
export function writeSafetensorsStreaming(path: string, specs: readonly TensorSpec[], produce: Produce, metadata: Record<string, string> = { format: 'pt' }): void {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const s of specs) {
    const n = numel(s.dims) * BYTES_PER_ELEMENT[s.dtype];
    header[s.key] = { dtype: SAFETENSORS_DTYPE[s.dtype], shape: s.dims, data_offsets: [offset, offset + n] };
    offset += n;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const head = Buffer.alloc(8);
  head.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  const tmp = `${path}.partial`;
  const fd = openSync(tmp, 'w');
  try {
    let pos = 0;
    for (const b of [head, Buffer.from(json)]) {
      writeAll(fd, b, pos);
      pos += b.length;
    }
    for (const s of specs) {
      const b = bytesOf(s, produce(s));
      writeAll(fd, b, pos);
      pos += b.length;
    }
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
}

// ---------------------------------------------------------------------------------------------
// torch.save zip

/** A minimal protocol-2 pickler for nested OrderedDicts of tensors, as torch.save writes them. */
class Pickler {
  private parts: Buffer[] = [];
  private op(...bytes: number[]): void {
    this.parts.push(Buffer.from(bytes));
  }
  proto(): void { this.op(0x80, 2); }
  stop(): void { this.op(0x2e); }
  mark(): void { this.op(0x28); }
  emptyDict(): void { this.op(0x7d); }
  setItems(): void { this.op(0x75); }
  tuple(): void { this.op(0x74); }
  emptyTuple(): void { this.op(0x29); }
  reduce(): void { this.op(0x52); }
  persId(): void { this.op(0x51); }
  newFalse(): void { this.op(0x89); }
  str(s: string): void {
    const b = Buffer.from(s, 'utf8');
    const len = Buffer.alloc(4);
    len.writeUInt32LE(b.length);
    this.parts.push(Buffer.from([0x58]), len, b); // BINUNICODE
  }
  int(v: number): void {
    if (!Number.isInteger(v) || v < 0 || v > 0x7fffffff) throw new Error(`pickle: integer ${v} out of range`);
    const b = Buffer.alloc(5);
    b[0] = 0x4a; // BININT
    b.writeInt32LE(v, 1);
    this.parts.push(b);
  }
  global(module: string, name: string): void {
    this.parts.push(Buffer.from([0x63]), Buffer.from(`${module}\n${name}\n`, 'latin1'));
  }
  orderedDict(): void {
    this.global('collections', 'OrderedDict');
    this.emptyTuple();
    this.reduce();
  }
  ints(values: readonly number[]): void {
    this.mark();
    for (const v of values) this.int(v);
    this.tuple();
  }
  bytes(): Buffer {
    return Buffer.concat(this.parts);
  }
}

const STORAGE_TYPE: Partial<Record<DType, string>> = {
  float32: 'FloatStorage', float16: 'HalfStorage', bfloat16: 'BFloat16Storage', float64: 'DoubleStorage', int64: 'LongStorage',
};

function stridesOf(dims: readonly number[]): number[] {
  const s = new Array<number>(dims.length);
  let acc = 1;
  for (let i = dims.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= dims[i]!;
  }
  return s;
}

/** data.pkl of { group: OrderedDict(key: tensor) }, storage n = the n-th tensor overall. */
function statePickle(groups: Record<string, readonly TensorSpec[]>): Buffer {
  const p = new Pickler();
  p.proto();
  p.emptyDict();
  p.mark();
  let n = 0;
  for (const [group, specs] of Object.entries(groups)) {
    p.str(group);
    p.orderedDict();
    p.mark();
    for (const s of specs) {
      const storage = STORAGE_TYPE[s.dtype];
      if (!storage) throw new Error(`torch zip: dtype ${s.dtype} is not supported`);
      p.str(s.key);
      p.global('torch._utils', '_rebuild_tensor_v2');
      p.mark();
      p.mark(); // persistent id ('storage', type, key, location, numel)
      p.str('storage');
      p.global('torch', storage);
      p.str(String(n++));
      p.str('cpu');
      p.int(numel(s.dims));
      p.tuple();
      p.persId();
      p.int(0);
      p.ints(s.dims);
      p.ints(stridesOf(s.dims));
      p.newFalse();
      p.orderedDict();
      p.tuple();
      p.reduce();
    }
    p.setItems();
  }
  p.setItems();
  p.stop();
  return p.bytes();
}

interface CentralRecord {
  name: Buffer;
  crc: number;
  size: number;
  offset: number;
}

const U32_MAX = 0xffffffff;

/** Local file header of a stored (uncompressed) entry; sizes under 4 GB, so no ZIP64 extra is needed here. */
function localHeader(name: Buffer, crc: number, size: number): Buffer {
  if (size >= U32_MAX) throw new Error('torch zip: one entry over 4 GB is not supported');
  const h = Buffer.alloc(30);
  h.writeUInt32LE(0x04034b50, 0);
  h.writeUInt16LE(45, 4); // version needed: ZIP64
  h.writeUInt16LE(0x0800, 6); // UTF-8 names
  h.writeUInt16LE(0, 8); // stored
  h.writeUInt32LE(crc >>> 0, 14);
  h.writeUInt32LE(size, 18);
  h.writeUInt32LE(size, 22);
  h.writeUInt16LE(name.length, 26);
  h.writeUInt16LE(0, 28);
  return Buffer.concat([h, name]);
}

function centralHeader(r: CentralRecord): Buffer {
  const big = r.offset >= U32_MAX;
  const extra = big ? Buffer.alloc(12) : Buffer.alloc(0);
  if (big) {
    extra.writeUInt16LE(1, 0);
    extra.writeUInt16LE(8, 2);
    extra.writeBigUInt64LE(BigInt(r.offset), 4);
  }
  const h = Buffer.alloc(46);
  h.writeUInt32LE(0x02014b50, 0);
  h.writeUInt16LE(45, 4);
  h.writeUInt16LE(45, 6);
  h.writeUInt16LE(0x0800, 8);
  h.writeUInt32LE(r.crc >>> 0, 16);
  h.writeUInt32LE(r.size, 20);
  h.writeUInt32LE(r.size, 24);
  h.writeUInt16LE(r.name.length, 28);
  h.writeUInt16LE(extra.length, 30);
  h.writeUInt32LE(big ? U32_MAX : r.offset, 42);
  return Buffer.concat([h, r.name, extra]);
}

function endRecords(count: number, cdOffset: number, cdSize: number): Buffer {
  const zip64 = cdOffset >= U32_MAX || count >= 0xffff;
  const parts: Buffer[] = [];
  if (zip64) {
    const rec = Buffer.alloc(56);
    rec.writeUInt32LE(0x06064b50, 0);
    rec.writeBigUInt64LE(44n, 4);
    rec.writeUInt16LE(45, 12);
    rec.writeUInt16LE(45, 14);
    rec.writeBigUInt64LE(BigInt(count), 24);
    rec.writeBigUInt64LE(BigInt(count), 32);
    rec.writeBigUInt64LE(BigInt(cdSize), 40);
    rec.writeBigUInt64LE(BigInt(cdOffset), 48);
    const loc = Buffer.alloc(20);
    loc.writeUInt32LE(0x07064b50, 0);
    loc.writeBigUInt64LE(BigInt(cdOffset + cdSize), 8);
    loc.writeUInt32LE(1, 16);
    parts.push(rec, loc);
  }
  const eocd = Buffer.alloc(22);
  eocd.writeUInt32LE(0x06054b50, 0);
  eocd.writeUInt16LE(zip64 ? 0xffff : count, 8);
  eocd.writeUInt16LE(zip64 ? 0xffff : count, 10);
  eocd.writeUInt32LE(zip64 ? U32_MAX : cdSize, 12);
  eocd.writeUInt32LE(zip64 ? U32_MAX : cdOffset, 16);
  parts.push(eocd);
  return Buffer.concat(parts);
}

/** Writes torch.save({group: OrderedDict(...)}) as a zip archive, streaming each tensor's storage. */
export function writeTorchZipStreaming(path: string, groups: Record<string, readonly TensorSpec[]>, produce: Produce, prefix = 'archive'): void {
  const tmp = `${path}.partial`;
  const fd = openSync(tmp, 'w');
  const central: CentralRecord[] = [];
  let pos = 0;
  const entry = (name: string, data: Uint8Array) => {
    const nameBuf = Buffer.from(`${prefix}/${name}`, 'utf8');
    const crc = crc32(data);
    const head = localHeader(nameBuf, crc, data.length);
    central.push({ name: nameBuf, crc, size: data.length, offset: pos });
    writeAll(fd, head, pos);
    pos += head.length;
    writeAll(fd, data, pos);
    pos += data.length;
  };
  try {
    entry('data.pkl', statePickle(groups));
    entry('byteorder', Buffer.from('little'));
    let n = 0;
    for (const specs of Object.values(groups)) for (const s of specs) entry(`data/${n++}`, bytesOf(s, produce(s)));
    entry('version', Buffer.from('3\n'));
    const cd = Buffer.concat(central.map(centralHeader));
    writeAll(fd, cd, pos);
    writeAll(fd, endRecords(central.length, pos, cd.length), pos + cd.length);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
}
