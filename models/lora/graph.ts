// The LoRA-capable variant of a built graph, made from the graph file itself (any weight format, any set,
// old or new): every Linear site y = x W (a MatMul on a '<module>.weight' initializer, or a MatMulNBits on
// '<module>.qweight') becomes
//   y = x W + (x A^T) B^T          A^T = lora_down.<site> [in, r], B^T = lora_up.<site> [r, out]
// with A and B as graph inputs, so strengths and LoRAs change per run without touching the base weights;
// a site no LoRA touches is fed zero factors. Stacked LoRAs are concatenated along r. Fused sites
// ('a+b+c.weight', FLUX's qkv and linear1) take one B over all their output columns.
// The branch is float (the graph's dtype), whatever the base's codes: a quantized base keeps its codes.
// Only the graph's node and input lists change; initializers are copied as they are (external-data
// entries keep pointing at the base's data file).
import { ProtoWriter } from '../onnx/proto.ts';

/** One Linear of a graph. */
export interface LinearSite {
  /** The weight's module name: 'transformer_blocks.0.attn.to_q+...+...' for fused ones. */
  name: string;
  /** The modules side by side in the output columns (one unless fused). */
  modules: string[];
  in: number;
  out: number;
  /** Precision of the activations at the site (the branch computes in it). */
  dtype: 'float32' | 'float16';
  quantized: boolean;
}

export const loraDownName = (site: string): string => `lora_down.${site}`;
export const loraUpName = (site: string): string => `lora_up.${site}`;

const decoder = new TextDecoder();
const ONNX_FLOAT = 1;
const ONNX_FLOAT16 = 10;

interface Field {
  field: number;
  wire: number;
  /** Payload span (length-delimited) or the varint's span. */
  start: number;
  end: number;
  value: number;
}

function varint(b: Uint8Array, pos: number): [number, number] {
  let value = 0;
  let scale = 1;
  for (let i = 0; i < 10; i++) {
    const byte = b[pos + i];
    if (byte === undefined) throw new Error('truncated protobuf');
    value += (byte & 0x7f) * scale;
    scale *= 128;
    if (!(byte & 0x80)) return [value, pos + i + 1];
  }
  throw new Error(`malformed varint at byte ${pos}`);
}

/** The fields of the message in b[start, end). */
function fields(b: Uint8Array, start = 0, end = b.length): Field[] {
  const out: Field[] = [];
  let pos = start;
  while (pos < end) {
    const [tag, p] = varint(b, pos);
    const field = Math.floor(tag / 8);
    const wire = tag & 7;
    if (wire === 0) {
      const [v, next] = varint(b, p);
      out.push({ field, wire, start: p, end: next, value: v });
      pos = next;
    } else if (wire === 2) {
      const [len, q] = varint(b, p);
      out.push({ field, wire, start: q, end: q + len, value: len });
      pos = q + len;
    } else if (wire === 5) {
      out.push({ field, wire, start: p, end: p + 4, value: 0 });
      pos = p + 4;
    } else if (wire === 1) {
      out.push({ field, wire, start: p, end: p + 8, value: 0 });
      pos = p + 8;
    } else {
      throw new Error(`unsupported protobuf wire type ${wire} at byte ${pos}`);
    }
  }
  return out;
}

const str = (b: Uint8Array, f: Field): string => decoder.decode(b.subarray(f.start, f.end));

interface NodeInfo {
  inputs: string[];
  outputs: string[];
  opType: string;
  attrs: Map<string, number>;
}

function nodeInfo(b: Uint8Array, f: Field): NodeInfo {
  const info: NodeInfo = { inputs: [], outputs: [], opType: '', attrs: new Map() };
  for (const x of fields(b, f.start, f.end)) {
    if (x.field === 1) info.inputs.push(str(b, x));
    else if (x.field === 2) info.outputs.push(str(b, x));
    else if (x.field === 4) info.opType = str(b, x);
    else if (x.field === 5) {
      let name = '';
      let i: number | undefined;
      for (const a of fields(b, x.start, x.end)) {
        if (a.field === 1) name = str(b, a);
        else if (a.field === 3 && a.wire === 0) i = a.value;
      }
      if (i !== undefined) info.attrs.set(name, i);
    }
  }
  return info;
}

interface InitInfo {
  dims: number[];
  dtype: number;
}

function initInfo(b: Uint8Array, f: Field): [string, InitInfo] {
  let name = '';
  const dims: number[] = [];
  let dtype = 0;
  for (const x of fields(b, f.start, f.end)) {
    if (x.field === 8) name = str(b, x);
    else if (x.field === 2) dtype = x.value;
    else if (x.field === 1) {
      if (x.wire === 0) dims.push(x.value);
      else for (let p = x.start; p < x.end;) {
        const [v, next] = varint(b, p);
        dims.push(v);
        p = next;
      }
    }
  }
  return [name, { dims, dtype }];
}

interface Parsed {
  model: Field[];
  graph: Field;
  graphFields: Field[];
  nodes: { field: Field; info: NodeInfo }[];
  inits: Map<string, InitInfo>;
}

function parse(b: Uint8Array): Parsed {
  const model = fields(b);
  const graph = model.find((f) => f.field === 7 && f.wire === 2);
  if (!graph) throw new Error('not an ONNX model (no graph)');
  const graphFields = fields(b, graph.start, graph.end);
  const nodes = graphFields.filter((f) => f.field === 1).map((field) => ({ field, info: nodeInfo(b, field) }));
  const inits = new Map(graphFields.filter((f) => f.field === 5).map((f) => initInfo(b, f)));
  return { model, graph, graphFields, nodes, inits };
}

function siteOf(n: NodeInfo, inits: Map<string, InitInfo>): LinearSite | undefined {
  const dtypeOf = (code: number | undefined): 'float32' | 'float16' | undefined =>
    code === ONNX_FLOAT ? 'float32' : code === ONNX_FLOAT16 ? 'float16' : undefined;
  if (n.opType === 'MatMul' && n.inputs[1]?.endsWith('.weight')) {
    const w = inits.get(n.inputs[1]);
    const dtype = dtypeOf(w?.dtype);
    if (!w || w.dims.length !== 2 || !dtype) return undefined;
    const name = n.inputs[1].slice(0, -'.weight'.length);
    return { name, modules: name.split('+'), in: w.dims[0]!, out: w.dims[1]!, dtype, quantized: false };
  }
  if (n.opType === 'MatMulNBits' && n.inputs[1]?.endsWith('.qweight')) {
    const K = n.attrs.get('K');
    const N = n.attrs.get('N');
    const dtype = dtypeOf(inits.get(n.inputs[2] ?? '')?.dtype);
    if (K === undefined || N === undefined || !dtype) return undefined;
    const name = n.inputs[1].slice(0, -'.qweight'.length);
    return { name, modules: name.split('+'), in: K, out: N, dtype, quantized: true };
  }
  return undefined;
}

/** The external-data files the initializers point to (their 'location' entries, each once). */
export function externalLocations(model: Uint8Array): string[] {
  const p = parse(model);
  const out = new Set<string>();
  for (const f of p.graphFields) {
    if (f.field !== 5) continue;
    for (const x of fields(model, f.start, f.end)) {
      if (x.field !== 13) continue;
      const kv = fields(model, x.start, x.end);
      const k = kv.find((e) => e.field === 1);
      const v = kv.find((e) => e.field === 2);
      if (k && v && str(model, k) === 'location') out.add(str(model, v));
    }
  }
  return [...out];
}

/** Every Linear site of a graph, in node order. */
export function linearSites(model: Uint8Array): LinearSite[] {
  const p = parse(model);
  return p.nodes.map((n) => siteOf(n.info, p.inits)).filter((s): s is LinearSite => s !== undefined);
}

function valueInfo(name: string, dtype: 'float32' | 'float16', dims: (number | string)[]): ProtoWriter {
  const shape = new ProtoWriter();
  for (const d of dims) shape.message(1, typeof d === 'number' ? new ProtoWriter().varint(1, d) : new ProtoWriter().string(2, d));
  const tensorType = new ProtoWriter().varint(1, dtype === 'float32' ? ONNX_FLOAT : ONNX_FLOAT16).message(2, shape);
  return new ProtoWriter().string(1, name).message(2, new ProtoWriter().message(1, tensorType));
}

function node(op: string, inputs: string[], outputs: string[], name: string): ProtoWriter {
  const w = new ProtoWriter();
  for (const i of inputs) w.string(1, i);
  for (const o of outputs) w.string(2, o);
  return w.string(3, name).string(4, op);
}

/** Copies a field as it was (length-delimited payloads are referenced, not copied). */
function copyField(w: ProtoWriter, b: Uint8Array, f: Field): void {
  if (f.wire === 2) w.bytes(f.field, b.subarray(f.start, f.end));
  else if (f.wire === 0) w.varint(f.field, f.value);
  else throw new Error(`cannot copy a fixed-width field ${f.field} of an ONNX model`);
}

/** Re-encodes a node with its first output renamed. */
function renameOutput(b: Uint8Array, f: Field, to: string): ProtoWriter {
  const w = new ProtoWriter();
  let done = false;
  for (const x of fields(b, f.start, f.end)) {
    if (x.field === 2 && !done) {
      w.string(2, to);
      done = true;
    } else {
      copyField(w, b, x);
    }
  }
  return w;
}

/**
 * The model with a LoRA branch on every site `accept` returns true for. Returns the encoded model as
 * chunks (they reference `model`'s bytes: write them out before changing it) and the sites patched.
 */
export function addLoraBranches(model: Uint8Array, accept: (site: LinearSite) => boolean): { chunks: Uint8Array[]; sites: LinearSite[] } {
  const p = parse(model);
  const g = new ProtoWriter();
  const sites: LinearSite[] = [];
  const newInputs: ProtoWriter[] = [];
  const nodes = new Map(p.nodes.map((n) => [n.field, n.info]));
  for (const f of p.graphFields) {
    const info = nodes.get(f);
    if (!info) {
      copyField(g, model, f);
      continue;
    }
    const n = { info };
    const site = siteOf(n.info, p.inits);
    if (!site || !accept(site)) {
      copyField(g, model, f);
      continue;
    }
    const i = sites.length;
    sites.push(site);
    const y = n.info.outputs[0]!;
    const base = `${y}__lora_base`;
    const down = loraDownName(site.name);
    const up = loraUpName(site.name);
    const rank = `lora_rank_${i}`;
    newInputs.push(valueInfo(down, site.dtype, [site.in, rank]), valueInfo(up, site.dtype, [rank, site.out]));
    g.message(1, renameOutput(model, f, base));
    g.message(1, node('MatMul', [n.info.inputs[0]!, down], [`${y}__lora_xa`], `lora_${i}_down`)); // [..., r]
    g.message(1, node('MatMul', [`${y}__lora_xa`, up], [`${y}__lora_delta`], `lora_${i}_up`)); // [..., out]
    g.message(1, node('Add', [base, `${y}__lora_delta`], [y], `lora_${i}_add`)); // [..., out]
  }
  for (const v of newInputs) g.message(11, v);
  const m = new ProtoWriter();
  for (const f of p.model) {
    if (f === p.graph) m.message(7, g);
    else copyField(m, model, f);
  }
  return { chunks: m.finishChunks(), sites };
}
