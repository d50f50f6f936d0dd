// Reads the op types of a serialised ONNX model, subgraphs included (an If's branches), without loading
// it: enough to tell how a graph writes attention (tests, and model-set checks).

/** One graph's nodes: op type, and for control-flow nodes their subgraphs by attribute name. */
export interface OpNode {
  op: string;
  subgraphs: Record<string, OpNode[]>;
}

/** Splits a protobuf message into (field, wire type, bytes or varint) entries. */
function* fields(buf: Uint8Array): Generator<{ field: number; bytes?: Uint8Array }> {
  let pos = 0;
  const varint = (): number => {
    let v = 0, shift = 0, b: number;
    do {
      b = buf[pos++]!;
      v += (b & 0x7f) * 2 ** shift;
      shift += 7;
    } while (b & 0x80);
    return v;
  };
  while (pos < buf.length) {
    const key = varint();
    const field = Math.floor(key / 8), wire = key & 7;
    if (wire === 0) varint();
    else if (wire === 1) pos += 8;
    else if (wire === 5) pos += 4;
    else if (wire === 2) {
      const n = varint();
      yield { field, bytes: buf.subarray(pos, pos + n) };
      pos += n;
      continue;
    } else throw new Error(`onnx: unsupported protobuf wire type ${wire}`);
    yield { field };
  }
}

const text = new TextDecoder();

function graphNodes(graph: Uint8Array): OpNode[] {
  const nodes: OpNode[] = [];
  for (const f of fields(graph)) {
    if (f.field !== 1 || !f.bytes) continue; // GraphProto.node
    const node: OpNode = { op: '', subgraphs: {} };
    for (const nf of fields(f.bytes)) {
      if (nf.field === 4 && nf.bytes) node.op = text.decode(nf.bytes); // NodeProto.op_type
      if (nf.field !== 5 || !nf.bytes) continue; // NodeProto.attribute
      let name = '';
      let sub: Uint8Array | undefined;
      for (const af of fields(nf.bytes)) {
        if (af.field === 1 && af.bytes) name = text.decode(af.bytes);
        if (af.field === 6) sub = af.bytes; // AttributeProto.g
      }
      if (sub) node.subgraphs[name] = graphNodes(sub);
    }
    nodes.push(node);
  }
  return nodes;
}

/** The main graph's nodes of a ModelProto. */
export function modelOps(model: Uint8Array): OpNode[] {
  for (const f of fields(model)) if (f.field === 7 && f.bytes) return graphNodes(f.bytes); // ModelProto.graph
  throw new Error('onnx: the model has no graph');
}

/** Op types counted over a node list and, when `deep`, every subgraph in it. */
export function countOps(nodes: readonly OpNode[], deep = true): Map<string, number> {
  const counts = new Map<string, number>();
  const walk = (list: readonly OpNode[]): void => {
    for (const n of list) {
      counts.set(n.op, (counts.get(n.op) ?? 0) + 1);
      if (deep) for (const sub of Object.values(n.subgraphs)) walk(sub);
    }
  };
  walk(nodes);
  return counts;
}
