// A small ONNX graph builder. Architectures call `op` and friends; the builder names values,
// stores initializers (inline, or streamed to an external-data file for graphs over 2 GB) and
// serialises the ModelProto. Opset 20, IR version 9.
import { closeSync, mkdirSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { ProtoWriter } from './proto.ts';
import {
  BYTES_PER_ELEMENT, type DType, type Tensor, castFloatTensor, numel,
} from '../tensor.ts';
import { type QuantSpec, type QuantizedMatrix, checkBlock, kBlocksOf } from '../quant/quantize.ts';

/** ONNX Runtime's contrib-op domain (MatMulNBits lives there, opset version 1). */
export const MS_DOMAIN = 'com.microsoft';

export const OPSET = 20;
const IR_VERSION = 9;

const ONNX_DTYPE: Record<DType, number> = {
  float32: 1, uint8: 2, int32: 6, int64: 7, bool: 9, float16: 10, float64: 11, bfloat16: 16,
};

/** A named value in the graph: an input, an initializer or an op output. */
export interface Value {
  readonly name: string;
}

/** Forces a float attribute (an integral number would otherwise be written as INT). */
export class FloatAttr {
  constructor(readonly value: number) {}
}
export const float = (value: number): FloatAttr => new FloatAttr(value);

/** A subgraph attribute (an If branch): its nodes and the values it returns, with their dtypes. */
export interface SubgraphAttr {
  readonly subgraph: { name: string; nodes: readonly NodeRecord[]; outputs: readonly ValueInfo[] };
}

export type AttrValue = number | FloatAttr | string | readonly number[] | readonly string[] | Tensor | SubgraphAttr;
export type Attrs = Record<string, AttrValue | undefined>;

/** Attributes that ONNX defines as floats even when the value is integral. */
const FLOAT_ATTRS = new Set(['epsilon', 'alpha', 'beta', 'gamma', 'value_float', 'cubic_coeff_a', 'extrapolation_value', 'lambd']);

export type Dim = number | string;

export interface GraphOptions {
  name: string;
  /** Dtype of floating weights and activations. Default float32. */
  dtype?: 'float32' | 'float16';
  /**
   * Stream initializers to `<dir>/<file>` as they are added (ONNX external data). Needed over 2 GB,
   * where a protobuf cannot hold the weights. Without it, weights are kept inline.
   */
  external?: { dir: string; file: string };
  /** Linear weights as com.microsoft MatMulNBits (see models/quant). Undefined: float MatMul. */
  quant?: QuantSpec;
  /**
   * Replaces the block quantizer (default models/quant quantizeRows). Only for synthetic full-size checks
   * (scripts/quant-gpu.ts), which need real shapes and random codes, not the minutes of a real conversion.
   */
  quantizer?: (rows: Float32Array, N: number, K: number, spec: QuantSpec) => QuantizedMatrix;
}

interface InitializerRecord {
  name: string;
  dtype: DType;
  dims: number[];
  /** Inline bytes, or the location of the bytes in the external-data file. */
  data?: Uint8Array;
  offset?: number;
  length?: number;
}

interface NodeRecord {
  type: string;
  domain: string;
  inputs: string[];
  outputs: string[];
  attrs: Attrs;
  name: string;
}

interface ValueInfo {
  name: string;
  dtype: DType;
  dims?: Dim[];
}

const EXTERNAL_ALIGN = 64;
/** Constants at or below this size stay inline even in external mode. */
const INLINE_LIMIT = 1024;

export class Graph {
  readonly name: string;
  readonly dtype: 'float32' | 'float16';
  readonly quant: QuantSpec | undefined;
  readonly quantizer: GraphOptions['quantizer'];
  private nodes: NodeRecord[] = [];
  /** Nodes emitted so far in the graph and its subgraphs (node and value names stay unique across both). */
  private emitted = 0;
  private inputs: ValueInfo[] = [];
  private outputs: ValueInfo[] = [];
  private initializers: InitializerRecord[] = [];
  private names = new Set<string>();
  private counter = 0;
  private constCache = new Map<string, Value>();
  private domains = new Map<string, number>();
  private external?: { dir: string; file: string; fd: number; offset: number; tmpPath: string };
  /** Total bytes of initializers, inline and external. */
  weightBytes = 0;

  constructor(opts: GraphOptions) {
    this.name = opts.name;
    this.dtype = opts.dtype ?? 'float32';
    if (opts.quant) checkBlock(opts.quant.block);
    this.quant = opts.quant;
    this.quantizer = opts.quantizer;
    if (opts.external) {
      mkdirSync(opts.external.dir, { recursive: true });
      const tmpPath = join(opts.external.dir, `${opts.external.file}.partial`);
      this.external = { ...opts.external, fd: openSync(tmpPath, 'w'), offset: 0, tmpPath };
    }
  }

  private scratchBuffer: ArrayBuffer | undefined;
  private quantBuffer: ArrayBuffer | undefined;

  /** A second reused buffer, for a weight's packed codes (see scratch); g.matMulNBits writes or copies them at once. */
  quantScratch(bytes: number): ArrayBuffer {
    if (!this.quantBuffer || this.quantBuffer.byteLength < bytes) this.quantBuffer = new ArrayBuffer(bytes);
    return this.quantBuffer;
  }

  private fresh(base: string): string {
    let name = base;
    while (this.names.has(name)) name = `${base}_${++this.counter}`;
    this.names.add(name);
    return name;
  }

  input(name: string, dtype: DType, dims: Dim[]): Value {
    if (this.names.has(name)) throw new Error(`graph ${this.name}: duplicate name ${name}`);
    this.names.add(name);
    this.inputs.push({ name, dtype, dims });
    return { name };
  }

  /** Marks `value` as a graph output called `name` (adds an Identity when the names differ). */
  output(value: Value, name: string, dtype: DType = this.dtype, dims?: Dim[]): void {
    let v = value;
    if (v.name !== name) {
      if (this.names.has(name)) throw new Error(`graph ${this.name}: duplicate name ${name}`);
      this.names.add(name);
      this.nodes.push({ type: 'Identity', domain: '', inputs: [value.name], outputs: [name], attrs: {}, name: `out_${name}` });
      this.emitted++;
      v = { name };
    }
    this.outputs.push({ name: v.name, dtype, dims });
  }

  /** Adds one op; returns its outputs. `undefined` inputs become ONNX's empty optional input. */
  op(type: string, inputs: readonly (Value | undefined)[], attrs: Attrs = {}, outputCount = 1, domain = ''): Value[] {
    if (domain) this.domains.set(domain, 1);
    const outputs = Array.from({ length: outputCount }, () => this.fresh(`${type}_${this.emitted}`));
    this.nodes.push({
      type, domain, attrs, name: `n${this.emitted}_${type}`,
      inputs: inputs.map((v) => v?.name ?? ''),
      outputs,
    });
    this.emitted++;
    return outputs.map((name) => ({ name }));
  }

  /**
   * ONNX If: runs `then` when the bool scalar `cond` is true, else `otherwise`; each branch builds its nodes
   * here (reading any value built before) and returns `dtypes.length` values. Constants the branches create
   * are initializers of the main graph, shared with it.
   */
  ifElse(cond: Value, then: () => Value[], otherwise: () => Value[], dtypes: DType[]): Value[] {
    const branch = (name: string, body: () => Value[]): SubgraphAttr => {
      const outer = this.nodes;
      this.nodes = [];
      try {
        const results = body();
        if (results.length !== dtypes.length) throw new Error(`graph ${this.name}: If branch ${name} returns ${results.length} values, not ${dtypes.length}`);
        // A branch output must be produced inside the branch: an outer value passes through an Identity.
        const own = new Set(this.nodes.flatMap((n) => n.outputs));
        const outs = results.map((v) => (own.has(v.name) ? v : this.node('Identity', [v])));
        return { subgraph: { name: this.fresh(name), nodes: this.nodes, outputs: outs.map((v, i) => ({ name: v.name, dtype: dtypes[i]! })) } };
      } finally {
        this.nodes = outer;
      }
    };
    return this.op('If', [cond], { then_branch: branch('then', then), else_branch: branch('else', otherwise) }, dtypes.length);
  }

  /** A single-output op. */
  node(type: string, inputs: readonly (Value | undefined)[], attrs: Attrs = {}): Value {
    return this.op(type, inputs, attrs, 1)[0]!;
  }

  /**
   * A buffer of at least `bytes` for preparing one weight at a time (a transposed Linear, say), reused
   * by every weight of this graph: fresh memory costs a page fault per 4 KiB on first write, which on
   * some machines dominates a conversion. Its contents last until the next call; g.weight copies or
   * writes a weight before returning, so passing a view of it to g.weight is safe.
   */
  scratch(bytes: number): ArrayBuffer {
    if (!this.scratchBuffer || this.scratchBuffer.byteLength < bytes) this.scratchBuffer = new ArrayBuffer(bytes);
    return this.scratchBuffer;
  }

  private addInitializer(name: string, t: Tensor): Value {
    const bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, numel(t.dims) * BYTES_PER_ELEMENT[t.dtype]);
    if (bytes.byteLength !== t.data.byteLength) throw new Error(`initializer ${name}: data does not match dims [${t.dims}]`);
    this.weightBytes += bytes.byteLength;
    const rec: InitializerRecord = { name, dtype: t.dtype, dims: [...t.dims] };
    const ext = this.external;
    if (ext && bytes.byteLength > INLINE_LIMIT) {
      const pad = (EXTERNAL_ALIGN - (ext.offset % EXTERNAL_ALIGN)) % EXTERNAL_ALIGN;
      if (pad) writeSync(ext.fd, new Uint8Array(pad), 0, pad, ext.offset);
      ext.offset += pad;
      let written = 0;
      while (written < bytes.byteLength) {
        written += writeSync(ext.fd, bytes, written, bytes.byteLength - written, ext.offset + written);
      }
      rec.offset = ext.offset;
      rec.length = bytes.byteLength;
      ext.offset += bytes.byteLength;
    } else {
      rec.data = new Uint8Array(bytes); // copy: the caller may reuse its buffer
    }
    this.initializers.push(rec);
    return { name };
  }

  /**
   * A weight, converted to the graph's dtype when it is floating (or to `dtype`, for the few weights a
   * float16 graph keeps in float32). `name` should be the checkpoint key, so the graph stays readable
   * and debuggable.
   */
  weight(name: string, t: Tensor, dtype: 'float32' | 'float16' = this.dtype): Value {
    if (this.names.has(name)) throw new Error(`graph ${this.name}: weight ${name} added twice`);
    this.names.add(name);
    return this.addInitializer(name, this.castFloat(t, dtype));
  }

  private castFloat(t: Tensor, dtype: 'float32' | 'float16' = this.dtype): Tensor {
    return castFloatTensor(t, dtype); // bfloat16 goes straight to float16
  }

  /**
   * x [..., K] times the dequantized weight^T -> [..., N], as com.microsoft MatMulNBits with the packed
   * weight `q` (row n = output n). The initializers are `<name>.qweight` (uint8 [N, kBlocks, blob]),
   * `<name>.scales` (the graph's dtype, [N * kBlocks]) and `<name>.zero_points` (uint8, when asymmetric).
   */
  matMulNBits(x: Value, name: string, q: QuantizedMatrix, accuracyLevel = this.quant?.accuracyLevel ?? 4): Value {
    const kb = kBlocksOf(q.K, q.block);
    for (const suffix of ['qweight', 'scales', 'zero_points']) {
      if (this.names.has(`${name}.${suffix}`)) throw new Error(`graph ${this.name}: weight ${name} added twice`);
      this.names.add(`${name}.${suffix}`);
    }
    const b = this.addInitializer(`${name}.qweight`, { dtype: 'uint8', dims: [q.N, kb, q.packed.length / (q.N * kb)], data: q.packed });
    const scales = this.addInitializer(`${name}.scales`, this.castFloat({ dtype: 'float32', dims: [q.N * kb], data: q.scales }));
    const zp = q.zeroPoints && this.addInitializer(`${name}.zero_points`, { dtype: 'uint8', dims: [q.zeroPoints.length], data: q.zeroPoints });
    return this.op('MatMulNBits', zp ? [x, b, scales, zp] : [x, b, scales], {
      K: q.K, N: q.N, bits: q.bits, block_size: q.block, accuracy_level: accuracyLevel,
    }, 1, MS_DOMAIN)[0]!;
  }

  /** An initializer constant (exact dtype kept). Identical small constants are shared. */
  constant(t: Tensor, base = 'const'): Value {
    const key = t.data.byteLength <= 256 ? `${t.dtype}|${t.dims}|${Array.from(t.data as ArrayLike<number | bigint>).join(',')}` : '';
    const hit = key && this.constCache.get(key);
    if (hit) return hit;
    const v = this.addInitializer(this.fresh(base), t);
    if (key) this.constCache.set(key, v);
    return v;
  }

  /** A floating constant in the graph's dtype (a scalar unless dims are given). */
  floats(values: readonly number[] | Float32Array, dims: number[] = values.length === 1 ? [] : [values.length]): Value {
    return this.constant(this.castFloat({ dtype: 'float32', dims, data: Float32Array.from(values) }), 'f');
  }

  scalar(value: number): Value {
    return this.floats([value], []);
  }

  /** An int64 1-D constant (shapes, axes, indices). */
  ints(values: readonly number[]): Value {
    return this.constant({ dtype: 'int64', dims: [values.length], data: BigInt64Array.from(values, (v) => BigInt(v)) }, 'i');
  }

  private encodeTensor(rec: InitializerRecord): ProtoWriter {
    const w = new ProtoWriter();
    w.packedVarints(1, rec.dims);
    w.varint(2, ONNX_DTYPE[rec.dtype]);
    w.string(8, rec.name);
    if (rec.data) {
      w.bytes(9, rec.data);
    } else {
      const entry = (k: string, v: string) => new ProtoWriter().string(1, k).string(2, v);
      w.message(13, entry('location', this.external!.file));
      w.message(13, entry('offset', String(rec.offset)));
      w.message(13, entry('length', String(rec.length)));
      w.varint(14, 1);
    }
    return w;
  }

  private encodeAttr(name: string, value: AttrValue): ProtoWriter {
    const w = new ProtoWriter().string(1, name);
    if (value instanceof FloatAttr) return w.float(2, value.value).varint(20, 1);
    if (typeof value === 'number') {
      if (FLOAT_ATTRS.has(name) || !Number.isInteger(value)) return w.float(2, value).varint(20, 1);
      return w.varint(3, value).varint(20, 2);
    }
    if (typeof value === 'string') return w.string(4, value).varint(20, 3);
    if (Array.isArray(value)) {
      if (value.every((v) => typeof v === 'string')) {
        for (const s of value as string[]) w.string(9, s);
        return w.varint(20, 8);
      }
      const nums = value as number[];
      if (nums.every((v) => Number.isInteger(v))) return w.packedVarints(8, nums).varint(20, 7);
      return w.packedFloats(7, nums).varint(20, 6);
    }
    if ('subgraph' in value) return w.message(6, this.encodeGraph(value.subgraph)).varint(20, 5);
    const t = value as Tensor;
    const rec: InitializerRecord = {
      name: '', dtype: t.dtype, dims: t.dims,
      data: new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength),
    };
    return w.message(5, this.encodeTensor(rec)).varint(20, 4);
  }

  private encodeValueInfo(v: ValueInfo): ProtoWriter {
    const shape = new ProtoWriter();
    for (const d of v.dims ?? []) {
      shape.message(1, typeof d === 'number' ? new ProtoWriter().varint(1, d) : new ProtoWriter().string(2, d));
    }
    const tensorType = new ProtoWriter().varint(1, ONNX_DTYPE[v.dtype]);
    if (v.dims) tensorType.message(2, shape);
    const type = new ProtoWriter().message(1, tensorType);
    return new ProtoWriter().string(1, v.name).message(2, type);
  }

  private encodeNodes(g: ProtoWriter, nodes: readonly NodeRecord[]): void {
    for (const n of nodes) {
      const nw = new ProtoWriter();
      for (const i of n.inputs) nw.string(1, i);
      for (const o of n.outputs) nw.string(2, o);
      nw.string(3, n.name).string(4, n.type);
      if (n.domain) nw.string(7, n.domain);
      for (const [k, v] of Object.entries(n.attrs)) if (v !== undefined) nw.message(5, this.encodeAttr(k, v));
      g.message(1, nw);
    }
  }

  /** A subgraph's GraphProto: nodes, name and outputs (it reads the outer graph's values by name). */
  private encodeGraph(sub: SubgraphAttr['subgraph']): ProtoWriter {
    const g = new ProtoWriter();
    this.encodeNodes(g, sub.nodes);
    g.string(2, sub.name);
    for (const v of sub.outputs) g.message(12, this.encodeValueInfo(v));
    return g;
  }

  private encodeModel(): ProtoWriter {
    const g = new ProtoWriter();
    this.encodeNodes(g, this.nodes);
    g.string(2, this.name);
    for (const rec of this.initializers) g.message(5, this.encodeTensor(rec));
    for (const v of this.inputs) g.message(11, this.encodeValueInfo(v));
    for (const v of this.outputs) g.message(12, this.encodeValueInfo(v));

    const m = new ProtoWriter();
    m.varint(1, IR_VERSION);
    m.string(2, 'charflow');
    m.string(3, '0.1');
    m.message(7, g);
    m.message(8, new ProtoWriter().string(1, '').varint(2, OPSET));
    for (const [domain, version] of this.domains) m.message(8, new ProtoWriter().string(1, domain).varint(2, version));
    return m;
  }

  private closeExternal(): void {
    const ext = this.external;
    if (!ext || ext.fd < 0) return;
    closeSync(ext.fd);
    ext.fd = -1;
    renameSync(ext.tmpPath, join(ext.dir, ext.file));
  }

  /** The serialised model. In external mode, also completes the external-data file. */
  toBytes(): Uint8Array {
    this.scratchBuffer = undefined;
    this.quantBuffer = undefined;
    this.closeExternal();
    return this.encodeModel().finish();
  }

  /** Writes the model atomically (temporary name, then rename). */
  save(path: string): void {
    if (this.external && dirname(path) !== this.external.dir) {
      throw new Error(`graph ${this.name}: the model must sit beside its external data in ${this.external.dir}`);
    }
    this.scratchBuffer = undefined;
    this.quantBuffer = undefined;
    this.closeExternal();
    mkdirSync(dirname(path), { recursive: true });
    const tmp = `${path}.partial`;
    const fd = openSync(tmp, 'w');
    try {
      for (const chunk of this.encodeModel().finishChunks()) {
        let written = 0;
        while (written < chunk.length) written += writeSync(fd, chunk, written, chunk.length - written);
      }
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
  }

  /** Abandons an unfinished external-data file. */
  discard(): void {
    this.scratchBuffer = undefined;
    this.quantBuffer = undefined;
    const ext = this.external;
    if (ext && ext.fd >= 0) {
      closeSync(ext.fd);
      ext.fd = -1;
      rmSync(ext.tmpPath, { force: true });
    }
  }
}

