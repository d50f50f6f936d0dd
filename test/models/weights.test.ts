// PyTorch zip checkpoints read in TypeScript (pickle + zip), the format sniffing of openWeights, and sharded
// indexes. Small archives are crafted here byte by byte (pickle opcodes, zip and ZIP64 records) so each path
// (protocol 4 opcodes, strided views, forbidden globals, compressed entries, ZIP64) is exercised without Python.
import { afterAll, describe, expect, it } from 'vitest';
import {
  closeSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync, writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { deflateRawSync } from 'node:zlib';
import { goldenPath } from '../helpers/goldens.ts';
import { PytorchCheckpoint, unpickle } from '../../models/weights/pytorch.ts';
import { openWeights } from '../../models/weights/open.ts';
import { SafetensorsFile, writeSafetensors } from '../../models/weights/safetensors.ts';
import { withPrefix } from '../../models/weights/source.ts';
import { type Tensor, f32, toFloat32 } from '../../models/tensor.ts';

const TMP = mkdtempSync(join(tmpdir(), 'charflow-weights-'));
afterAll(() => rmSync(TMP, { recursive: true, force: true }));

// ---------------------------------------------------------------------------------------------------------------
// A tiny pickle writer: each helper returns the bytes of one opcode (or a small, named sequence).

type Bytes = number[];
const le = (n: number | bigint, width: number): Bytes => {
  const b = Buffer.alloc(width);
  if (width === 8) b.writeBigInt64LE(BigInt(n));
  else b.writeUIntLE(Number(n), 0, width);
  return [...b];
};
const utf8 = (s: string): Bytes => [...Buffer.from(s, 'utf8')];
const op = {
  proto: (v: number): Bytes => [0x80, v],
  frame: (n: number): Bytes => [0x95, ...le(n, 8)],
  stop: [0x2e],
  mark: [0x28],
  none: [0x4e],
  true: [0x88],
  false: [0x89],
  int: (n: number): Bytes => (n >= 0 && n < 256 ? [0x4b, n] : n >= 0 && n < 65536 ? [0x4d, ...le(n, 2)] : [0x4a, ...le(n >>> 0, 4)]),
  float: (x: number): Bytes => { const b = Buffer.alloc(8); b.writeDoubleBE(x); return [0x47, ...b]; },
  str: (s: string): Bytes => (utf8(s).length < 256 ? [0x8c, utf8(s).length, ...utf8(s)] : [0x58, ...le(utf8(s).length, 4), ...utf8(s)]),
  binunicode: (s: string): Bytes => [0x58, ...le(utf8(s).length, 4), ...utf8(s)],
  bytes: (b: Bytes): Bytes => (b.length < 256 ? [0x43, b.length, ...b] : [0x42, ...le(b.length, 4), ...b]),
  binbytes: (b: Bytes): Bytes => [0x42, ...le(b.length, 4), ...b],
  global: (module: string, name: string): Bytes => [0x63, ...utf8(`${module}\n${name}\n`)],
  stackGlobal: (module: string, name: string): Bytes => [...op.str(module), ...op.str(name), 0x93],
  emptyTuple: [0x29],
  tuple: [0x74],
  tuple1: [0x85],
  tuple2: [0x86],
  tuple3: [0x87],
  emptyList: [0x5d],
  append: [0x61],
  appends: [0x65],
  emptyDict: [0x7d],
  setitem: [0x73],
  setitems: [0x75],
  reduce: [0x52],
  build: [0x62],
  binpersid: [0x51],
  memoize: [0x94],
  binput: (i: number): Bytes => [0x71, i],
  longBinput: (i: number): Bytes => [0x72, ...le(i, 4)],
  binget: (i: number): Bytes => [0x68, i],
  longBinget: (i: number): Bytes => [0x6a, ...le(i, 4)],
};
const cat = (...parts: Bytes[]): Bytes => parts.flat();
const ints = (xs: number[]): Bytes => cat(op.mark, ...xs.map(op.int), op.tuple);

/** `_rebuild_tensor_v2(<storage>, offset, size, stride, False, <orderedDict>())`. */
function tensorOps(storage: Bytes, offset: number, size: number[], stride: number[], orderedDict: Bytes): Bytes {
  return cat(op.global('torch._utils', '_rebuild_tensor_v2'), op.mark, storage, op.int(offset), ints(size), ints(stride),
    op.false, orderedDict, op.emptyTuple, op.reduce, op.tuple, op.reduce);
}
const persid = (type: string, key: string, n: number): Bytes =>
  cat(op.mark, op.str('storage'), op.stackGlobal('torch', type), op.str(key), op.str('cpu'), op.int(n), op.tuple, op.binpersid);

// ---------------------------------------------------------------------------------------------------------------
// A tiny zip writer in torch's layout (stored entries, padded local extra fields), optionally as ZIP64.

/** `gap`: bytes of hole (a sparse region) left before the entry, to put offsets past 4 GiB cheaply. */
interface ZipIn { name: string; data: Uint8Array; deflate?: boolean; gap?: number }
function writeZip(path: string, entries: ZipIn[], zip64 = false): void {
  const out: { at: number; bytes: Buffer }[] = [];
  const central: Buffer[] = [];
  let offset = 0;
  const SAT = 0xffffffff;
  for (const e of entries) {
    offset += e.gap ?? 0;
    const name = Buffer.from(e.name);
    const body = e.deflate ? deflateRawSync(e.data) : Buffer.from(e.data);
    // torch pads the local extra field so data is aligned; a reader must use the LOCAL extra length.
    const pad = Buffer.concat([le16(0x4246), le16(7), Buffer.alloc(7)]);
    const localExtra = zip64 ? Buffer.concat([le16(1), le16(16), b64(e.data.length), b64(body.length), pad]) : pad;
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(zip64 ? 45 : 20, 4);
    local.writeUInt16LE(e.deflate ? 8 : 0, 8);
    local.writeUInt32LE(crc32(e.data), 14);
    local.writeUInt32LE(zip64 ? SAT : body.length, 18);
    local.writeUInt32LE(zip64 ? SAT : e.data.length, 22);
    local.writeUInt16LE(name.length, 26);
    local.writeUInt16LE(localExtra.length, 28);
    const centralExtra = zip64 ? Buffer.concat([le16(1), le16(24), b64(e.data.length), b64(body.length), b64(offset)]) : Buffer.alloc(0);
    const c = Buffer.alloc(46);
    c.writeUInt32LE(0x02014b50, 0);
    c.writeUInt16LE(zip64 ? 45 : 20, 4);
    c.writeUInt16LE(zip64 ? 45 : 20, 6);
    c.writeUInt16LE(e.deflate ? 8 : 0, 10);
    c.writeUInt32LE(crc32(e.data), 16);
    c.writeUInt32LE(zip64 ? SAT : body.length, 20);
    c.writeUInt32LE(zip64 ? SAT : e.data.length, 24);
    c.writeUInt16LE(name.length, 28);
    c.writeUInt16LE(centralExtra.length, 30);
    c.writeUInt32LE(zip64 ? SAT : offset, 42);
    central.push(c, name, centralExtra);
    out.push({ at: offset, bytes: Buffer.concat([local, name, localExtra, body]) });
    offset += local.length + name.length + localExtra.length + body.length;
  }
  const cd = Buffer.concat(central);
  const eocd = Buffer.alloc(22);
  eocd.writeUInt32LE(0x06054b50, 0);
  if (zip64) {
    const rec = Buffer.alloc(56);
    rec.writeUInt32LE(0x06064b50, 0);
    rec.writeBigUInt64LE(44n, 4);
    rec.writeUInt16LE(45, 12);
    rec.writeUInt16LE(45, 14);
    rec.writeBigUInt64LE(BigInt(entries.length), 24);
    rec.writeBigUInt64LE(BigInt(entries.length), 32);
    rec.writeBigUInt64LE(BigInt(cd.length), 40);
    rec.writeBigUInt64LE(BigInt(offset), 48);
    const loc = Buffer.alloc(20);
    loc.writeUInt32LE(0x07064b50, 0);
    loc.writeBigUInt64LE(BigInt(offset + cd.length), 8);
    loc.writeUInt32LE(1, 16);
    eocd.writeUInt16LE(0xffff, 8);
    eocd.writeUInt16LE(0xffff, 10);
    eocd.writeUInt32LE(SAT, 12);
    eocd.writeUInt32LE(SAT, 16);
    out.push({ at: offset, bytes: Buffer.concat([cd, rec, loc, eocd]) });
  } else {
    eocd.writeUInt16LE(entries.length, 8);
    eocd.writeUInt16LE(entries.length, 10);
    eocd.writeUInt32LE(cd.length, 12);
    eocd.writeUInt32LE(offset, 16);
    out.push({ at: offset, bytes: Buffer.concat([cd, eocd]) });
  }
  const fd = openSync(path, 'w');
  try {
    for (const piece of out) writeSync(fd, piece.bytes, 0, piece.bytes.length, piece.at);
  } finally {
    closeSync(fd);
  }
}
/** CRC-32 (IEEE), so the crafted archives are valid for any zip tool (the reader itself does not check it). */
function crc32(data: Uint8Array): number {
  let c = ~0;
  for (const byte of data) {
    c ^= byte;
    for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1));
  }
  return ~c >>> 0;
}
function le16(n: number): Buffer { const b = Buffer.alloc(2); b.writeUInt16LE(n); return b; }
function b64(n: number): Buffer { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(n)); return b; }

const bytesOf = (a: Float32Array | BigInt64Array): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

/**
 * A protocol-4 checkpoint as newer torch writes it (FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL) with more
 * opcodes mixed in: {'model': OrderedDict{w: Parameter [2,3], wT: transposed view, row1: offset view, ids: int64},
 *  'extra': [tensor], 'epoch': 70000, 'lr': 0.5, 'notes': [None, b'ab', b'c', True], 'name': 'x'}.
 */
function craftedCheckpoint(): { pkl: Uint8Array; storages: ZipIn[] } {
  // memo: 0 root dict, 1 OrderedDict global, 2 storage '0' (a persistent id's result), 1000 storage '1'
  const od = op.longBinget(1);
  const s0 = op.binget(2);
  const body = cat(
    op.emptyDict, op.memoize,
    op.mark,
    op.str('model'),
    op.stackGlobal('collections', 'OrderedDict'), op.memoize, op.emptyTuple, op.reduce,
    op.mark,
    op.str('w'), op.stackGlobal('torch._utils', '_rebuild_parameter'),
    op.mark, tensorOps(cat(persid('FloatStorage', '0', 6), op.binput(2)), 0, [2, 3], [3, 1], od), op.true, od, op.emptyTuple, op.reduce, op.tuple, op.reduce,
    op.str('wT'), tensorOps(s0, 0, [3, 2], [1, 3], od),
    op.str('row1'), tensorOps(s0, 3, [3], [1], od),
    op.str('ids'), tensorOps(cat(persid('LongStorage', '1', 2), op.longBinput(1000)), 0, [2], [1], od),
    op.setitems,
    op.emptyDict, op.str('version'), op.int(1), op.setitem, op.build,
    op.binunicode('extra'), op.emptyList, tensorOps(op.longBinget(1000), 1, [1], [1], od), op.append,
    op.str('epoch'), op.int(70000),
    op.str('lr'), op.float(0.5),
    op.str('notes'), op.emptyList, op.mark, op.none, op.binbytes(utf8('ab')), op.bytes(utf8('c')), op.true, op.appends,
    op.setitems,
    op.str('name'), op.str('x'), op.setitem,
    op.stop,
  );
  const pkl = cat(op.proto(4), op.frame(body.length), body);
  return {
    pkl: Uint8Array.from(pkl),
    storages: [
      { name: 'data/0', data: bytesOf(Float32Array.from([0, 1, 2, 3, 4, 5])) },
      { name: 'data/1', data: bytesOf(BigInt64Array.from([-5n, 2n ** 40n])) },
    ],
  };
}

function writeCheckpoint(path: string, pkl: Uint8Array, storages: ZipIn[], opts: { zip64?: boolean; prefix?: string; deflatePkl?: boolean } = {}): string {
  const prefix = opts.prefix ?? 'archive/';
  writeZip(path, [
    { name: `${prefix}data.pkl`, data: pkl, deflate: opts.deflatePkl },
    ...storages.map((s) => ({ ...s, name: prefix + s.name })),
    { name: `${prefix}version`, data: Buffer.from('3\n') },
  ], opts.zip64);
  return path;
}

const values = (t: Tensor): number[] => [...(t.data as Float32Array)];

// ---------------------------------------------------------------------------------------------------------------

describe('PytorchCheckpoint on the golden adapter .bin', () => {
  const binPath = goldenPath('ic_adapter', 'ip-adapter.bin');
  const stPath = goldenPath('ic_adapter', 'ip-adapter.safetensors');

  it('gives the same keys, shapes and bit-identical values as the safetensors copy', () => {
    const bin = new PytorchCheckpoint(binPath);
    const st = new SafetensorsFile(stPath);
    try {
      expect([...bin.keys()].sort()).toEqual([...st.keys()].sort());
      for (const key of st.keys()) {
        expect(bin.dtype(key), key).toBe('bfloat16');
        expect(bin.shape(key), key).toEqual(st.shape(key));
        const a = bin.get(key);
        expect(a.data).toBeInstanceOf(Uint16Array);
        const got = new Uint32Array(toFloat32(a).buffer);
        const want = new Uint32Array(toFloat32(st.get(key)).buffer);
        expect(got, key).toEqual(want);
      }
      console.log(`ip-adapter.bin: ${bin.keys().length} tensors bit-identical to the safetensors copy`);
    } finally {
      bin.close();
      st.close();
    }
  });

  it('gives the ip_adapter and image_proj views through withPrefix', () => {
    const bin = new PytorchCheckpoint(binPath);
    const st = new SafetensorsFile(stPath);
    for (const name of ['ip_adapter', 'image_proj']) {
      const view = withPrefix(bin, `${name}.`);
      expect(view.keys()).toEqual(bin.keys().filter((k) => k.startsWith(`${name}.`)).map((k) => k.slice(name.length + 1)));
      expect(view.keys().length).toBe(st.keys().filter((k) => k.startsWith(`${name}.`)).length);
    }
    expect(withPrefix(bin, 'ip_adapter.').shape('0.to_k_ip.weight')).toEqual(st.shape('ip_adapter.0.to_k_ip.weight'));
    expect(bin.shape('image_proj.cross_layer_blocks.0.norm1.weight')).toEqual(st.shape('image_proj.cross_layer_blocks.0.norm1.weight'));
    expect(bin.prefix).toBe('ip-adapter/');
    bin.close();
    st.close();
  });

  it('reads only the directory and the pickle at open, and only the asked tensor per get', () => {
    const file = readFileSync(binPath);
    const eocd = file.length - 22;
    expect(file.readUInt32LE(eocd)).toBe(0x06054b50);
    const cdSize = file.readUInt32LE(eocd + 12);
    const cdStart = file.readUInt32LE(eocd + 16);
    // data.pkl is the first entry; its size from the central directory (torch's local headers carry 0).
    expect(file.toString('latin1', cdStart + 46, cdStart + 46 + file.readUInt16LE(cdStart + 28))).toBe('ip-adapter/data.pkl');
    const pklSize = file.readUInt32LE(cdStart + 20);
    // Newer torch versions also write a `byteorder` record, which the reader checks at open.
    let byteorder = 0;
    for (let at = cdStart; at < cdStart + cdSize;) {
      const nameLen = file.readUInt16LE(at + 28);
      if (file.toString('latin1', at + 46, at + 46 + nameLen).endsWith('/byteorder')) byteorder = 30 + file.readUInt32LE(at + 20);
      at += 46 + nameLen + file.readUInt16LE(at + 30) + file.readUInt16LE(at + 32);
    }
    const bin = new PytorchCheckpoint(binPath);
    // EOCD + central directory + data.pkl's local header + data.pkl (+ byteorder's): no storage byte.
    expect(bin.bytesRead).toBe(22 + cdSize + 30 + pklSize + byteorder);
    let before = bin.bytesRead;
    const key = 'image_proj.resampler.latents';
    const t = bin.get(key);
    const nbytes = t.data.byteLength;
    expect(bin.bytesRead - before).toBe(30 + nbytes); // its local header, then its bytes
    before = bin.bytesRead;
    bin.get(key);
    expect(bin.bytesRead - before).toBe(nbytes);
    bin.close();
    expect(() => bin.get(key)).toThrow(/closed/);
  });
});

describe('crafted torch.save archives', () => {
  const { pkl, storages } = craftedCheckpoint();

  const checkCrafted = (ck: PytorchCheckpoint): void => {
    expect(ck.keys()).toEqual(['model.w', 'model.wT', 'model.row1', 'model.ids', 'extra.0']);
    expect(values(ck.get('model.w'))).toEqual([0, 1, 2, 3, 4, 5]);
    expect(ck.shape('model.w')).toEqual([2, 3]);
    const wT = ck.get('model.wT'); // a non-contiguous view, gathered
    expect(wT.dims).toEqual([3, 2]);
    expect(values(wT)).toEqual([0, 3, 1, 4, 2, 5]);
    expect(values(ck.get('model.row1'))).toEqual([3, 4, 5]); // storage offset 3
    const ids = ck.get('model.ids');
    expect(ids.dtype).toBe('int64');
    expect([...(ids.data as BigInt64Array)]).toEqual([-5n, 2n ** 40n]);
    expect([...(ck.get('extra.0').data as BigInt64Array)]).toEqual([2n ** 40n]);
  };

  it('loads protocol 4 opcodes, parameters, strided and offset views, int64 storages', () => {
    const ck = new PytorchCheckpoint(writeCheckpoint(join(TMP, 'p4.pt'), pkl, storages));
    checkCrafted(ck);
    ck.close();
  });

  it('reads a ZIP64 archive (zip64 end records and extra fields)', () => {
    const path = writeCheckpoint(join(TMP, 'z64.pt'), pkl, storages, { zip64: true, prefix: 'some/dir-name/' });
    const raw = readFileSync(path);
    expect(raw.readUInt32LE(raw.length - 22 - 20)).toBe(0x07064b50); // really has the ZIP64 locator
    const ck = new PytorchCheckpoint(path);
    expect(ck.prefix).toBe('some/dir-name/');
    checkCrafted(ck);
    ck.close();
  });

  it('reads entries whose offsets lie past 4 GiB (a sparse ZIP64 file)', () => {
    const path = writeCheckpoint(join(TMP, 'big.pt'), pkl, [storages[0]!, { ...storages[1]!, gap: 2 ** 32 + 12345 }], { zip64: true });
    expect(statSync(path).size).toBeGreaterThan(2 ** 32);
    const ck = new PytorchCheckpoint(path);
    checkCrafted(ck);
    ck.close();
    rmSync(path);
  });

  it('accepts a deflated data.pkl but refuses compressed storage entries', () => {
    const ok = new PytorchCheckpoint(writeCheckpoint(join(TMP, 'dpkl.pt'), pkl, storages, { deflatePkl: true }));
    checkCrafted(ok);
    ok.close();
    const bad = writeCheckpoint(join(TMP, 'dstore.pt'), pkl, storages.map((s) => ({ ...s, deflate: true })));
    expect(() => new PytorchCheckpoint(bad)).toThrow(/storage entry 'archive\/data\/0' is compressed/);
  });

  it('refuses forbidden globals without running them', () => {
    const marker = join(TMP, 'pwned');
    const attack = (callable: Bytes): Uint8Array =>
      Uint8Array.from(cat(op.proto(2), callable, op.binunicode(`touch ${marker}`), op.tuple1, op.reduce, op.stop));
    const path = writeCheckpoint(join(TMP, 'evil.pt'), attack(op.global('os', 'system')), []);
    expect(() => new PytorchCheckpoint(path)).toThrow(/refusing global 'os\.system'/);
    expect(() => openWeights(path)).toThrow(/refusing global 'os\.system'/);
    expect(() => unpickle(attack(op.stackGlobal('builtins', 'eval')), () => null)).toThrow(/refusing global 'builtins\.eval'/);
    expect(() => unpickle(attack(op.global('torch.storage', '_load_from_bytes')), () => null)).toThrow(/refusing global/);
    // A whitelisted non-callable (a storage type) cannot be called either.
    expect(() => unpickle(attack(op.global('torch', 'FloatStorage')), () => null)).toThrow(/not callable/);
    expect(existsSync(marker)).toBe(false);
  });

  it('refuses malformed pickles with clear errors', () => {
    expect(() => unpickle(Uint8Array.from(cat(op.proto(2), op.mark, op.int(1))), () => null)).toThrow(/truncated/);
    expect(() => unpickle(Uint8Array.from(cat(op.proto(2), [0x69], op.stop)), () => null)).toThrow(/unsupported opcode 0x69/);
    expect(() => unpickle(Uint8Array.from(cat(op.proto(2), op.binget(5), op.stop)), () => null)).toThrow(/memo entry 5/);
    const badPid = Uint8Array.from(cat(op.proto(2), op.mark, op.str('module'), op.int(1), op.tuple, op.binpersid, op.stop));
    const path = writeCheckpoint(join(TMP, 'pid.pt'), badPid, []);
    expect(() => new PytorchCheckpoint(path)).toThrow(/unsupported persistent id/);
  });

  it('refuses a missing storage entry and a view past the end of its storage', () => {
    const missing = writeCheckpoint(join(TMP, 'missing.pt'), pkl, storages.slice(0, 1));
    expect(() => new PytorchCheckpoint(missing)).toThrow(/storage entry 'archive\/data\/1' is missing/);
    const od = op.global('collections', 'OrderedDict');
    const over = cat(op.proto(2), op.emptyDict, op.str('t'), tensorOps(persid('FloatStorage', '0', 6), 4, [3], [1], od), op.setitem, op.stop);
    const path = writeCheckpoint(join(TMP, 'over.pt'), Uint8Array.from(over), storages.slice(0, 1));
    expect(() => new PytorchCheckpoint(path)).toThrow(/exceeds storage '0'/);
  });
});

describe('openWeights', () => {
  const binPath = goldenPath('ic_adapter', 'ip-adapter.bin');
  const stPath = goldenPath('ic_adapter', 'ip-adapter.safetensors');

  it('chooses the reader by content, not by file name', () => {
    const disguised = join(TMP, 'weights.safetensors');
    copyFileSync(binPath, disguised);
    const a = openWeights(disguised);
    expect(a).toBeInstanceOf(PytorchCheckpoint);
    const renamed = join(TMP, 'weights.bin');
    copyFileSync(stPath, renamed);
    const b = openWeights(renamed);
    expect(b).toBeInstanceOf(SafetensorsFile);
    expect([...a.keys()].sort()).toEqual([...b.keys()].sort());
    a.close?.();
    b.close?.();
  });

  it('merges a sharded checkpoint from its index or its folder', () => {
    const dir = join(TMP, 'sharded');
    mkdirSync(dir);
    writeSafetensors(join(dir, 'model-00001-of-00002.safetensors'), new Map([['a.weight', f32([2], [1, 2])]]));
    writeSafetensors(join(dir, 'model-00002-of-00002.safetensors'), new Map([['b.weight', f32([1], [3])], ['b.bias', f32([1], [4])]]));
    const index = {
      metadata: { total_size: 16 },
      weight_map: { 'a.weight': 'model-00001-of-00002.safetensors', 'b.weight': 'model-00002-of-00002.safetensors', 'b.bias': 'model-00002-of-00002.safetensors' },
    };
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify(index));
    for (const src of [openWeights(dir), openWeights(join(dir, 'model.safetensors.index.json'))]) {
      expect([...src.keys()].sort()).toEqual(['a.weight', 'b.bias', 'b.weight']);
      expect(values(src.get('b.bias'))).toEqual([4]);
      expect(values(src.get('a.weight'))).toEqual([1, 2]);
      src.close?.();
    }
    // An index that promises a tensor its shard lacks is refused.
    writeFileSync(join(dir, 'bad.safetensors.index.json'), JSON.stringify({ weight_map: { ...index.weight_map, 'c.weight': 'model-00001-of-00002.safetensors' } }));
    expect(() => openWeights(join(dir, 'bad.safetensors.index.json'))).toThrow(/'c\.weight' is mapped to 'model-00001-of-00002\.safetensors'/);
    writeFileSync(join(dir, 'gone.safetensors.index.json'), JSON.stringify({ weight_map: { x: 'nope.safetensors' } }));
    expect(() => openWeights(join(dir, 'gone.safetensors.index.json'))).toThrow(/shard 'nope\.safetensors' is missing/);
  });

  it('gives clear errors for a missing file, an unknown format, truncated or corrupt files', () => {
    expect(() => openWeights(join(TMP, 'nothing-here.bin'))).toThrow(/no such file/);
    const text = join(TMP, 'notes.txt');
    writeFileSync(text, 'hello, these are not weights');
    expect(() => openWeights(text)).toThrow(/unknown weight format/);
    const empty = join(TMP, 'empty.bin');
    writeFileSync(empty, '');
    expect(() => openWeights(empty)).toThrow(/empty/);
    const legacy = join(TMP, 'legacy.pt');
    writeFileSync(legacy, Buffer.from([0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e]));
    expect(() => openWeights(legacy)).toThrow(/legacy/);

    const full = readFileSync(binPath);
    const cut = join(TMP, 'cut.bin');
    writeFileSync(cut, full.subarray(0, Math.floor(full.length * 0.6)));
    expect(() => openWeights(cut)).toThrow(/cut\.bin: cannot read PyTorch checkpoint: .*truncated/);
    // Central directory present but a storage entry cut: chop bytes out of the middle, keeping the directory.
    const chopped = join(TMP, 'chopped.bin');
    const cdStart = full.readUInt32LE(full.length - 22 + 16);
    writeFileSync(chopped, Buffer.concat([full.subarray(0, cdStart >> 1), full.subarray(cdStart)]));
    expect(() => openWeights(chopped)).toThrow(/truncated|past the end/);
    const corrupt = join(TMP, 'corrupt.bin');
    const bad = Buffer.from(full);
    bad.writeUInt32LE(0xdeadbeef, cdStart); // first central record signature
    writeFileSync(corrupt, bad);
    expect(() => openWeights(corrupt)).toThrow(/central directory entry 0 is corrupt/);

    const st = readFileSync(stPath);
    const stCut = join(TMP, 'cut.safetensors');
    writeFileSync(stCut, st.subarray(0, st.length - 100));
    expect(() => openWeights(stCut)).toThrow(/cut\.safetensors: not a valid safetensors file.*truncated or corrupt/);
    const stHead = join(TMP, 'head.safetensors');
    writeFileSync(stHead, st.subarray(0, 100));
    expect(() => openWeights(stHead)).toThrow(/head\.safetensors: truncated safetensors file/);
  });
});
