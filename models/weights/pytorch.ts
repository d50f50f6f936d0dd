// PyTorch checkpoints written by torch.save (the zip format, torch >= 1.6), read without Python.
// The archive holds `<prefix>/data.pkl` (the object tree, pickled) and one stored entry `<prefix>/data/<key>` per
// storage with its raw little-endian bytes. Only the pickle is parsed at open; tensor bytes are read per get().
//
// Security: a pickle is a program. This unpickler has no way to call anything but a short whitelist of pure
// constructors (OrderedDict, the torch tensor rebuilders, storage types); any other GLOBAL is refused before use.
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { inflateRawSync } from 'node:zlib';
import type { WeightSource } from './source.ts';
import { BYTES_PER_ELEMENT, type DType, type Tensor, numel, typedArrayOf } from '../tensor.ts';
import { type ReadAt, type ZipEntry, entryDataOffset, readZipEntries } from './zip.ts';

// ---------------------------------------------------------------------------------------------------------------
// Python values the unpickler can produce

export class PyTuple {
  constructor(readonly items: PyValue[]) {}
}
export class PyList {
  constructor(readonly items: PyValue[] = []) {}
}
export type PyKey = string | number | bigint | boolean | null;
export class PyDict {
  readonly map = new Map<PyKey, PyValue>();
  /** State given by BUILD (e.g. the `_metadata` of a state dict); kept, never interpreted. */
  state: PyValue = null;
}
/** A whitelisted global: either a pure constructor (`call`) or a storage type (`storageDtype`). */
export class PyGlobal {
  constructor(
    readonly name: string,
    readonly call?: (args: PyValue[]) => PyValue,
    readonly storageDtype?: DType,
  ) {}
}
/** A storage named by a persistent id: its bytes are the zip entry `data/<key>`. */
export class StorageRef {
  constructor(readonly key: string, readonly dtype: DType, readonly numel: number, readonly location: string) {}
}
/** A strided view of a storage, as `_rebuild_tensor_v2` describes it (offsets and strides in elements). */
export class TensorRef {
  constructor(readonly storage: StorageRef, readonly offset: number, readonly size: number[], readonly stride: number[]) {}
}
export type PyValue =
  | null | boolean | number | bigint | string | Uint8Array
  | PyTuple | PyList | PyDict | PyGlobal | StorageRef | TensorRef;

// ---------------------------------------------------------------------------------------------------------------
// The whitelist

const STORAGE_DTYPES: Record<string, DType> = {
  FloatStorage: 'float32', HalfStorage: 'float16', BFloat16Storage: 'bfloat16', DoubleStorage: 'float64',
  LongStorage: 'int64', IntStorage: 'int32', ByteStorage: 'uint8', BoolStorage: 'bool',
};

function intArg(v: PyValue | undefined, what: string): number {
  if (typeof v === 'number' && Number.isInteger(v)) return v;
  throw new Error(`${what} must be an integer, got ${describe(v)}`);
}

function intTuple(v: PyValue | undefined, what: string): number[] {
  if (!(v instanceof PyTuple)) throw new Error(`${what} must be a tuple, got ${describe(v)}`);
  return v.items.map((x, i) => intArg(x, `${what}[${i}]`));
}

function rebuildTensor(args: PyValue[]): TensorRef {
  const [storage, offset, size, stride] = args;
  if (!(storage instanceof StorageRef)) throw new Error(`_rebuild_tensor_v2: expected a storage, got ${describe(storage)}`);
  const t = new TensorRef(storage, intArg(offset, 'storage offset'), intTuple(size, 'size'), intTuple(stride, 'stride'));
  if (t.size.length !== t.stride.length || t.offset < 0 || t.stride.some((s) => s < 0) || t.size.some((d) => d < 0)) {
    throw new Error(`_rebuild_tensor_v2: invalid view size [${t.size}] stride [${t.stride}] offset ${t.offset}`);
  }
  if (numel(t.size) > 0 && t.offset + extent(t) >= storage.numel) {
    throw new Error(`_rebuild_tensor_v2: view [${t.size}] at offset ${t.offset} exceeds storage '${storage.key}' (${storage.numel} elements)`);
  }
  return t;
}

function rebuildParameter(args: PyValue[]): PyValue {
  if (!(args[0] instanceof TensorRef)) throw new Error(`_rebuild_parameter: expected a tensor, got ${describe(args[0])}`);
  return args[0];
}

function orderedDict(args: PyValue[]): PyDict {
  if (args.length !== 0) throw new Error('collections.OrderedDict: only the empty constructor is supported');
  return new PyDict();
}

const GLOBALS = new Map<string, PyGlobal>([
  ['collections.OrderedDict', new PyGlobal('collections.OrderedDict', orderedDict)],
  ['torch._utils._rebuild_tensor_v2', new PyGlobal('torch._utils._rebuild_tensor_v2', rebuildTensor)],
  ['torch._utils._rebuild_parameter', new PyGlobal('torch._utils._rebuild_parameter', rebuildParameter)],
  ['torch._utils._rebuild_parameter_with_state', new PyGlobal('torch._utils._rebuild_parameter_with_state', rebuildParameter)],
  ...Object.entries(STORAGE_DTYPES).map(([n, dt]) => [`torch.${n}`, new PyGlobal(`torch.${n}`, undefined, dt)] as [string, PyGlobal]),
]);

function resolveGlobal(module: string, name: string): PyGlobal {
  const g = GLOBALS.get(`${module}.${name}`);
  if (!g) {
    throw new Error(`pickle: refusing global '${module}.${name}': only tensor rebuilders, torch storage types and ` +
      'collections.OrderedDict are allowed (loading a checkpoint never runs code)');
  }
  return g;
}

function describe(v: PyValue | undefined): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'None';
  if (typeof v === 'object') return v.constructor.name;
  return `${typeof v} ${String(v).slice(0, 40)}`;
}

// ---------------------------------------------------------------------------------------------------------------
// The unpickler (protocols 2-4, the opcodes torch.save and CPython's pickler emit for state dicts)

/**
 * Unpickles `data`. `persistentLoad` turns each persistent id (BINPERSID) into a value. Globals come from the
 * whitelist only, so the result is plain data: no code from the pickle is ever run.
 */
export function unpickle(data: Uint8Array, persistentLoad: (pid: PyValue) => PyValue): PyValue {
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const stack: PyValue[] = [];
  const marks: number[] = [];
  const memo = new Map<number, PyValue>();
  let pos = 0;

  const need = (n: number): number => {
    if (pos + n > buf.length) throw new Error(`pickle: truncated at byte ${pos}`);
    const at = pos;
    pos += n;
    return at;
  };
  const pop = (): PyValue => {
    if (stack.length === 0 || (marks.length && stack.length <= marks[marks.length - 1]!)) throw new Error(`pickle: stack underflow at byte ${pos}`);
    return stack.pop()!;
  };
  const top = (): PyValue => {
    if (stack.length === 0) throw new Error(`pickle: empty stack at byte ${pos}`);
    return stack[stack.length - 1]!;
  };
  const popMark = (): PyValue[] => {
    const m = marks.pop();
    if (m === undefined) throw new Error(`pickle: missing MARK at byte ${pos}`);
    return stack.splice(m);
  };
  const str = (n: number): string => buf.toString('utf8', need(n), pos);
  const bytes = (n: number): Uint8Array => Uint8Array.from(buf.subarray(need(n), pos));
  const size8 = (): number => {
    const v = buf.readBigUInt64LE(need(8));
    if (v > BigInt(buf.length)) throw new Error(`pickle: length ${v} exceeds the data`);
    return Number(v);
  };
  const line = (): string => {
    const end = buf.indexOf(0x0a, pos);
    if (end < 0) throw new Error(`pickle: truncated at byte ${pos}`);
    const s = buf.toString('latin1', pos, end);
    pos = end + 1;
    return s;
  };
  const get = (i: number): PyValue => {
    if (!memo.has(i)) throw new Error(`pickle: memo entry ${i} not found`);
    return memo.get(i)!;
  };
  const setItems = (target: PyValue, items: PyValue[]): void => {
    if (!(target instanceof PyDict)) throw new Error(`pickle: SETITEM(S) on ${describe(target)}`);
    if (items.length % 2) throw new Error('pickle: odd number of items for SETITEMS');
    for (let i = 0; i < items.length; i += 2) target.map.set(dictKey(items[i]!), items[i + 1]!);
  };
  const append = (target: PyValue, items: PyValue[]): void => {
    if (!(target instanceof PyList)) throw new Error(`pickle: APPEND(S) on ${describe(target)}`);
    target.items.push(...items);
  };
  const call = (fn: PyValue, args: PyValue): PyValue => {
    if (!(fn instanceof PyGlobal) || !fn.call) {
      throw new Error(`pickle: ${fn instanceof PyGlobal ? `'${fn.name}'` : describe(fn)} is not callable`);
    }
    if (!(args instanceof PyTuple)) throw new Error(`pickle: arguments of ${fn.name} must be a tuple`);
    return fn.call(args.items);
  };

  for (;;) {
    const op = buf[need(1)]!;
    switch (op) {
      case 0x80: { // PROTO
        const v = buf[need(1)]!;
        if (v > 5) throw new Error(`pickle: unsupported protocol ${v}`);
        break;
      }
      case 0x95: need(8); break; // FRAME: a length hint only
      case 0x2e: { // STOP
        if (stack.length !== 1 || marks.length) throw new Error('pickle: STOP with an unbalanced stack');
        return stack[0]!;
      }
      case 0x28: marks.push(stack.length); break; // MARK
      case 0x30: pop(); break; // POP
      case 0x31: popMark(); break; // POP_MARK
      case 0x32: stack.push(top()); break; // DUP
      case 0x4e: stack.push(null); break; // NONE
      case 0x88: stack.push(true); break; // NEWTRUE
      case 0x89: stack.push(false); break; // NEWFALSE
      case 0x4a: stack.push(buf.readInt32LE(need(4))); break; // BININT
      case 0x4b: stack.push(buf[need(1)]!); break; // BININT1
      case 0x4d: stack.push(buf.readUInt16LE(need(2))); break; // BININT2
      case 0x8a: stack.push(readLong(buf.subarray(need(buf[need(1)]!), pos))); break; // LONG1
      case 0x8b: stack.push(readLong(buf.subarray(need(buf.readUInt32LE(need(4))), pos))); break; // LONG4
      case 0x47: stack.push(buf.readDoubleBE(need(8))); break; // BINFLOAT
      case 0x58: stack.push(str(buf.readUInt32LE(need(4)))); break; // BINUNICODE
      case 0x8c: stack.push(str(buf[need(1)]!)); break; // SHORT_BINUNICODE
      case 0x8d: stack.push(str(size8())); break; // BINUNICODE8
      case 0x54: stack.push(buf.toString('latin1', need(buf.readUInt32LE(need(4))), pos)); break; // BINSTRING
      case 0x55: stack.push(buf.toString('latin1', need(buf[need(1)]!), pos)); break; // SHORT_BINSTRING
      case 0x42: stack.push(bytes(buf.readUInt32LE(need(4)))); break; // BINBYTES
      case 0x43: stack.push(bytes(buf[need(1)]!)); break; // SHORT_BINBYTES
      case 0x8e: stack.push(bytes(size8())); break; // BINBYTES8
      case 0x29: stack.push(new PyTuple([])); break; // EMPTY_TUPLE
      case 0x74: stack.push(new PyTuple(popMark())); break; // TUPLE
      case 0x85: stack.push(new PyTuple([pop()])); break; // TUPLE1
      case 0x86: { const b = pop(); const a = pop(); stack.push(new PyTuple([a, b])); break; } // TUPLE2
      case 0x87: { const c = pop(); const b = pop(); const a = pop(); stack.push(new PyTuple([a, b, c])); break; } // TUPLE3
      case 0x5d: stack.push(new PyList()); break; // EMPTY_LIST
      case 0x6c: stack.push(new PyList(popMark())); break; // LIST
      case 0x61: { const v = pop(); append(top(), [v]); break; } // APPEND
      case 0x65: { const items = popMark(); append(top(), items); break; } // APPENDS
      case 0x7d: stack.push(new PyDict()); break; // EMPTY_DICT
      case 0x64: { const d = new PyDict(); setItems(d, popMark()); stack.push(d); break; } // DICT
      case 0x73: { const v = pop(); const k = pop(); setItems(top(), [k, v]); break; } // SETITEM
      case 0x75: { const items = popMark(); setItems(top(), items); break; } // SETITEMS
      case 0x68: stack.push(get(buf[need(1)]!)); break; // BINGET
      case 0x6a: stack.push(get(buf.readUInt32LE(need(4)))); break; // LONG_BINGET
      case 0x71: memo.set(buf[need(1)]!, top()); break; // BINPUT
      case 0x72: memo.set(buf.readUInt32LE(need(4)), top()); break; // LONG_BINPUT
      case 0x94: memo.set(memo.size, top()); break; // MEMOIZE
      case 0x63: { const module = line(); stack.push(resolveGlobal(module, line())); break; } // GLOBAL
      case 0x93: { // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== 'string' || typeof name !== 'string') throw new Error('pickle: STACK_GLOBAL needs two strings');
        stack.push(resolveGlobal(module, name));
        break;
      }
      case 0x52: case 0x81: { const args = pop(); stack.push(call(pop(), args)); break; } // REDUCE, NEWOBJ
      case 0x62: { // BUILD: only state-dict metadata and similar plain state, which is stored and never applied
        const state = pop();
        const target = top();
        if (target instanceof PyDict) target.state = state;
        else if (!(target instanceof TensorRef)) throw new Error(`pickle: BUILD on ${describe(target)} is not supported`);
        break;
      }
      case 0x51: stack.push(persistentLoad(pop())); break; // BINPERSID
      default:
        throw new Error(`pickle: unsupported opcode 0x${op.toString(16).padStart(2, '0')} at byte ${pos - 1}`);
    }
  }
}

/** Little-endian two's complement integer of any length (LONG1/LONG4). */
function readLong(b: Buffer): number | bigint {
  if (b.length === 0) return 0;
  let v = 0n;
  for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]!);
  if (b[b.length - 1]! & 0x80) v -= 1n << BigInt(8 * b.length);
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

function dictKey(k: PyValue): PyKey {
  if (k === null || typeof k !== 'object') return k;
  throw new Error(`pickle: unsupported dict key ${describe(k)}`);
}

/** torch's persistent id for storages: ('storage', StorageType, key, location, numel). */
function storageFromPid(pid: PyValue): StorageRef {
  const items = pid instanceof PyTuple ? pid.items : [];
  const [tag, type, key, location, count] = items;
  if (tag !== 'storage' || !(type instanceof PyGlobal) || !type.storageDtype || typeof key !== 'string') {
    throw new Error(`pickle: unsupported persistent id ${describe(pid)} (${items.map((x) => describe(x)).join(', ')})`);
  }
  return new StorageRef(key, type.storageDtype, intArg(count, `numel of storage '${key}'`), String(location));
}

/** Nested dicts (and lists) of tensors -> flat 'a.b.c' keys, in pickle order. */
export function flattenTensors(root: PyValue): Map<string, TensorRef> {
  const out = new Map<string, TensorRef>();
  const seen = new Set<object>();
  const walk = (v: PyValue, key: string): void => {
    if (v instanceof TensorRef) {
      if (out.has(key)) throw new Error(`checkpoint: duplicate tensor key '${key}'`);
      out.set(key, v);
      return;
    }
    const children: [PyKey, PyValue][] =
      v instanceof PyDict ? [...v.map] : v instanceof PyList || v instanceof PyTuple ? v.items.map((x, i) => [i, x]) : [];
    if (!children.length || seen.has(v as object)) return;
    seen.add(v as object);
    for (const [k, child] of children) walk(child, key ? `${key}.${String(k)}` : String(k));
  };
  walk(root, '');
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// The checkpoint

interface StorageEntry {
  entry: ZipEntry;
  /** File offset of the raw bytes, found from the local header on first use. */
  dataOffset?: number;
}

export class PytorchCheckpoint implements WeightSource {
  private fd: number;
  private readonly fileSize: number;
  private readonly tensors: Map<string, TensorRef>;
  private readonly storages = new Map<string, StorageEntry>();
  /** Bytes read from the file so far (the pickle and directory at open, then tensor data per get). */
  bytesRead = 0;
  /** The archive's folder prefix, e.g. 'archive/' (torch >= 1.6 uses the file's stem or 'archive'). */
  readonly prefix: string;

  constructor(readonly path: string) {
    this.fd = openSync(path, 'r');
    try {
      this.fileSize = fstatSync(this.fd).size;
      const readAt = this.readAt;
      const entries = readZipEntries(readAt, this.fileSize);
      const byName = new Map(entries.map((e) => [e.name, e]));
      const pkls = entries.filter((e) => e.name === 'data.pkl' || e.name.endsWith('/data.pkl'));
      if (pkls.length !== 1) throw new Error(`expected one '*/data.pkl' entry, found ${pkls.length}`);
      this.prefix = pkls[0]!.name.slice(0, -'data.pkl'.length);
      const order = byName.get(`${this.prefix}byteorder`);
      if (order && this.readEntry(order).toString('latin1') !== 'little') throw new Error('big-endian checkpoints are not supported');
      const root = unpickle(this.readEntry(pkls[0]!), storageFromPid);
      this.tensors = flattenTensors(root);
      for (const t of this.tensors.values()) this.checkStorage(t.storage, byName);
    } catch (err) {
      closeSync(this.fd);
      this.fd = -1;
      throw new Error(`${path}: cannot read PyTorch checkpoint: ${(err as Error).message}`);
    }
  }

  keys(): string[] {
    return [...this.tensors.keys()];
  }

  shape(key: string): number[] | undefined {
    const t = this.tensors.get(key);
    return t && [...t.size];
  }

  dtype(key: string): DType | undefined {
    return this.tensors.get(key)?.storage.dtype;
  }

  get(key: string): Tensor {
    const t = this.tensors.get(key);
    if (!t) throw new Error(`${this.path}: missing tensor '${key}'`);
    if (this.fd < 0) throw new Error(`${this.path}: checkpoint is closed`);
    const { dtype } = t.storage;
    const es = BYTES_PER_ELEMENT[dtype];
    const n = numel(t.size);
    if (n === 0) return { dtype, dims: [...t.size], data: typedArrayOf(dtype, new ArrayBuffer(0)) };
    const base = this.storageOffset(t.storage) + t.offset * es;
    if (isContiguous(t)) {
      return { dtype, dims: [...t.size], data: typedArrayOf(dtype, this.readInto(base, n * es)) };
    }
    // A strided view: read the span it covers, then gather its elements in row-major order.
    const span = this.readInto(base, (extent(t) + 1) * es);
    return { dtype, dims: [...t.size], data: typedArrayOf(dtype, gather(span, t, es)) };
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }

  private readonly readAt: ReadAt = (position, length) => {
    const buf = Buffer.alloc(length);
    this.readFully(buf, position);
    return buf;
  };

  private readInto(position: number, length: number): ArrayBuffer {
    const ab = new ArrayBuffer(length);
    this.readFully(new Uint8Array(ab), position);
    return ab;
  }

  private readFully(view: Uint8Array, position: number): void {
    const CHUNK = 1 << 30; // readSync takes int32 lengths
    for (let done = 0; done < view.length;) {
      const n = readSync(this.fd, view, done, Math.min(CHUNK, view.length - done), position + done);
      if (n <= 0) throw new Error(`${this.path}: unexpected end of file at byte ${position + done} (truncated?)`);
      done += n;
      this.bytesRead += n;
    }
  }

  /** The whole (small) entry, inflated if some re-zipping tool compressed it. */
  private readEntry(e: ZipEntry): Buffer {
    const raw = this.readAt(entryDataOffset(this.readAt, e, this.fileSize), e.compressedSize);
    if (e.method === 0) return raw;
    if (e.method === 8) return inflateRawSync(raw);
    throw new Error(`entry '${e.name}' uses unsupported compression method ${e.method}`);
  }

  private checkStorage(s: StorageRef, byName: Map<string, ZipEntry>): void {
    if (this.storages.has(s.key)) return;
    const name = `${this.prefix}data/${s.key}`;
    const entry = byName.get(name);
    if (!entry) throw new Error(`storage entry '${name}' is missing`);
    if (entry.method !== 0) {
      throw new Error(`storage entry '${name}' is compressed (method ${entry.method}); only stored entries, as torch.save writes them, can be read lazily`);
    }
    if (entry.size < s.numel * BYTES_PER_ELEMENT[s.dtype]) {
      throw new Error(`storage entry '${name}' has ${entry.size} bytes, ${s.numel} x ${s.dtype} need ${s.numel * BYTES_PER_ELEMENT[s.dtype]}`);
    }
    this.storages.set(s.key, { entry });
  }

  private storageOffset(s: StorageRef): number {
    const st = this.storages.get(s.key)!;
    st.dataOffset ??= entryDataOffset(this.readAt, st.entry, this.fileSize);
    return st.dataOffset;
  }
}

/** Largest element index a view touches, relative to its offset. */
function extent(t: TensorRef): number {
  return t.size.reduce((acc, d, i) => acc + (d - 1) * t.stride[i]!, 0);
}

function isContiguous(t: TensorRef): boolean {
  let expected = 1;
  for (let i = t.size.length - 1; i >= 0; i--) {
    if (t.size[i] !== 1 && t.stride[i] !== expected) return false;
    expected *= t.size[i]!;
  }
  return true;
}

/** Copies a strided view out of `span` (which starts at the view's first element) into a dense buffer. */
function gather(span: ArrayBuffer, t: TensorRef, es: number): ArrayBuffer {
  const Ctor = es === 1 ? Uint8Array : es === 2 ? Uint16Array : es === 4 ? Uint32Array : BigUint64Array;
  const src = new Ctor(span);
  const n = numel(t.size);
  const dst = new Ctor(n);
  const idx = new Array<number>(t.size.length).fill(0);
  let at = 0;
  for (let i = 0; i < n; i++) {
    dst[i] = src[at]!;
    // Odometer over the dims, last dim fastest.
    for (let d = t.size.length - 1; d >= 0; d--) {
      if (++idx[d]! < t.size[d]!) { at += t.stride[d]!; break; }
      at -= (t.size[d]! - 1) * t.stride[d]!;
      idx[d] = 0;
    }
  }
  return dst.buffer as ArrayBuffer;
}

