// float16 T5 graphs follow transformers' T5 run in float16: `wo` kept in float32 (_keep_in_fp32_modules),
// hence a float32 residual stream from block 0's feed-forward on, float32 norm statistics and softmax, and
// the T5Block clamp only where the stream is still float16. float32 graphs are unchanged byte for byte.
import { describe, expect, it } from 'vitest';
import { buildT5, t5ConfigFromJson } from '../../models/t5.ts';
import { type Attrs, Graph, type Value } from '../../models/onnx/graph.ts';
import { runOnce } from '../../models/onnx/ort.ts';
import { type Tensor, float16ToFloat32, float32ToFloat16, toFloat32 } from '../../models/tensor.ts';
import { type WeightSource, memorySource } from '../../models/weights/source.ts';
import { expectClose, goldenConfig, goldenTensors, goldenWeights, maxAbs, need } from '../helpers/goldens.ts';

const CASE = 't5_encoder';
const cfg = t5ConfigFromJson(goldenConfig(CASE));
const inputIds = need(goldenTensors(CASE, 'inputs.safetensors'), 'input_ids');
const golden = need(goldenTensors(CASE, 'outputs.safetensors'), 'last_hidden_state');
const seqLen = inputIds.dims[1]!;

/** The golden weights after `f`, as float32 tensors in memory. */
function mapWeights(f: (key: string, values: Float32Array) => Float32Array): WeightSource {
  const file = goldenWeights(CASE);
  const map = new Map<string, Tensor>();
  try {
    for (const k of file.keys()) {
      const t = file.get(k);
      map.set(k, { dtype: 'float32', dims: t.dims, data: f(k, toFloat32(t)) });
    }
  } finally {
    file.close();
  }
  return memorySource(map);
}

const isWo = (key: string): boolean => key.endsWith('.DenseReluDense.wo.weight');
const roundHalf = (v: Float32Array): Float32Array => float16ToFloat32(float32ToFloat16(v));

function build(dtype: 'float32' | 'float16' | undefined, w?: WeightSource): Uint8Array {
  const g = new Graph(dtype ? { name: 't5_encoder', dtype } : { name: 't5_encoder' });
  const file = w ? undefined : goldenWeights(CASE);
  try {
    buildT5({ g, w: w ?? file! }, cfg, { seqLen });
  } finally {
    file?.close();
  }
  return g.toBytes();
}

async function run(model: Uint8Array): Promise<Tensor> {
  return need(new Map(Object.entries(await runOnce(model, { input_ids: inputIds }))), 'last_hidden_state');
}

// ---------------------------------------------------------------------------------------------
// A minimal protobuf walk over the ModelProto: initializer dtypes and the node list.

interface Field { no: number; wire: number; int: number; bytes?: Uint8Array }

function fields(buf: Uint8Array): Field[] {
  const out: Field[] = [];
  let pos = 0;
  const varint = (): number => {
    let v = 0;
    for (let shift = 1; ; shift *= 128) {
      const b = buf[pos++]!;
      v += (b & 0x7f) * shift;
      if (b < 0x80) return v;
    }
  };
  while (pos < buf.length) {
    const key = varint();
    const no = Math.floor(key / 8);
    const wire = key % 8;
    if (wire === 0) out.push({ no, wire, int: varint() });
    else if (wire === 2) {
      const len = varint();
      out.push({ no, wire, int: len, bytes: buf.subarray(pos, pos + len) });
      pos += len;
    } else if (wire === 1 || wire === 5) pos += wire === 1 ? 8 : 4;
    else throw new Error(`unsupported wire type ${wire}`);
  }
  return out;
}

const text = (f: Field): string => new TextDecoder().decode(f.bytes);
const sub = (fs: Field[], no: number): Field[] => fs.filter((f) => f.no === no);

interface OnnxNode { type: string; inputs: string[]; outputs: string[]; to?: number }

function parseModel(bytes: Uint8Array): { initializers: Map<string, number>; nodes: OnnxNode[] } {
  const graph = fields(sub(fields(bytes), 7)[0]!.bytes!);
  const initializers = new Map<string, number>();
  for (const t of sub(graph, 5)) {
    const tf = fields(t.bytes!);
    initializers.set(text(sub(tf, 8)[0]!), sub(tf, 2)[0]!.int);
  }
  const nodes = sub(graph, 1).map((n): OnnxNode => {
    const nf = fields(n.bytes!);
    const to = sub(nf, 5).map((a) => fields(a.bytes!)).find((af) => text(sub(af, 1)[0]!) === 'to');
    return { type: text(sub(nf, 4)[0]!), inputs: sub(nf, 1).map(text), outputs: sub(nf, 2).map(text), to: to && sub(to, 3)[0]!.int };
  });
  return { initializers, nodes };
}

/** A Graph that remembers the outputs of its Add nodes. */
class AddSpy extends Graph {
  sums: Value[] = [];
  override node(type: string, inputs: readonly (Value | undefined)[], attrs: Attrs = {}): Value {
    const v = super.node(type, inputs, attrs);
    if (type === 'Add') this.sums.push(v);
    return v;
  }
}

/**
 * Bounds follow the activations' scale: float16 keeps 11 significant bits, so its rounding error grows with the
 * magnitude of the values compared. A bound is a number of float16 epsilons (2^-10) times the reference's max |x|,
 * which holds on any case set in the same layout whatever its hidden states' range.
 */
const HALF_EPS = 2 ** -10;
const halfTol = (reference: Tensor, eps: number): number => eps * HALF_EPS * maxAbs(reference);

const ONNX_FLOAT = 1;
const ONNX_FLOAT16 = 10;

describe('T5 encoder in float16', () => {
  it('leaves float32 graphs byte-identical', () => {
    // The same bytes on every build, and the same as a graph built without any dtype option: the float16 path
    // adds nothing to a float32 graph.
    const bytes = build('float32');
    expect(Buffer.from(build('float32')).equals(Buffer.from(bytes))).toBe(true);
    expect(Buffer.from(build(undefined)).equals(Buffer.from(bytes))).toBe(true);
    const { initializers, nodes } = parseModel(bytes);
    expect(nodes.map((n) => n.type)).not.toContain('Cast');
    expect([...initializers.values()]).not.toContain(ONNX_FLOAT16);
  });

  it('stores every wo weight in float32 and the other weights in float16', () => {
    const { initializers } = parseModel(build('float16'));
    const file = goldenWeights(CASE);
    try {
      const keys = file.keys();
      expect(keys.filter(isWo)).toHaveLength(cfg.numLayers);
      for (const k of keys) expect(initializers.get(k), k).toBe(isWo(k) ? ONNX_FLOAT : ONNX_FLOAT16);
    } finally {
      file.close();
    }
  });

  it('runs softmax in float32 and clamps only while the residual stream is float16', () => {
    const { nodes } = parseModel(build('float16'));
    const producer = new Map(nodes.flatMap((n) => n.outputs.map((o) => [o, n] as const)));
    const consumers = (v: string): OnnxNode[] => nodes.filter((n) => n.inputs.includes(v));
    const softmaxes = nodes.filter((n) => n.type === 'Softmax');
    expect(softmaxes).toHaveLength(cfg.numLayers);
    for (const s of softmaxes) {
      expect(producer.get(s.inputs[0]!)).toMatchObject({ type: 'Cast', to: ONNX_FLOAT });
      expect(consumers(s.outputs[0]!)).toEqual([expect.objectContaining({ type: 'Cast', to: ONNX_FLOAT16 })]);
    }
    // Block 0's attention residual (embedding + attention, both float16) is the only float16 sum.
    expect(nodes.filter((n) => n.type === 'Clip')).toHaveLength(1);
    for (const n of nodes.filter((x) => x.type === 'MatMul' && x.inputs.some(isWo))) {
      expect(producer.get(n.inputs[0]!)).toMatchObject({ type: 'Cast', to: ONNX_FLOAT });
    }
  });

  it('matches the float32 golden within half-precision tolerance', async () => {
    const out = await run(build('float16'));
    expect(out.dtype).toBe('float16');
    // Weights and activations both rounded: on the shared case about 4 epsilons of max |x| (half of it the
    // weights' rounding alone, float32 graph on rounded weights).
    const d = expectClose(out, golden, halfTol(golden, 8), 'last_hidden_state (fp16)');
    console.log(`t5_encoder fp16 last_hidden_state max abs diff vs float32 golden ${d.toExponential(3)} (${(d / HALF_EPS / maxAbs(golden)).toFixed(2)} eps of max |x|)`);
  });

  it('computes what float32 does on the same float16-rounded weights (wo exact), to activation rounding', async () => {
    // transformers' fp16 model: weights rounded to float16 except wo. Left: the rounding of activations.
    const reference = await run(build('float32', mapWeights((k, v) => (isWo(k) ? v : roundHalf(v)))));
    // Activations only: on the shared case under 2 epsilons of max |x|.
    const d = expectClose(await run(build('float16')), reference, halfTol(reference, 4), 'last_hidden_state (fp16 vs rounded-weight fp32)');
    console.log(`t5_encoder fp16 vs fp32 on fp16-rounded weights max abs diff ${d.toExponential(3)} (${(d / HALF_EPS / maxAbs(reference)).toFixed(2)} eps of max |x|)`);
  });

  it('keeps a residual stream beyond float16 range exact enough (float32 stream, no clamp)', async () => {
    // Block 0's feed-forward scaled until its output passes 65504: a float16 stream would be clamped.
    const ff = 'encoder.block.0.layer.1.DenseReluDense';
    let woScale = 30_000;
    const loud = (): WeightSource => mapWeights((k, v) => {
      const s = k === `${ff}.${cfg.gated ? 'wi_1' : 'wi'}.weight` ? 100 : k === `${ff}.wo.weight` ? woScale : 1;
      return s === 1 ? v : v.map((x) => x * s);
    });
    // The float32 graph's residual sums, as outputs: they do pass float16's range (wo scaled up further if the
    // model's own numbers stay below it).
    const peakOfSums = async (): Promise<number> => {
      const g = new AddSpy({ name: 't5_loud' });
      buildT5({ g, w: loud() }, cfg, { seqLen });
      g.sums.forEach((v, i) => g.output(v, `sum_${i}`, 'float32'));
      const sums = await runOnce(g.toBytes(), { input_ids: inputIds });
      let peak = 0;
      for (const [k, t] of Object.entries(sums)) if (k.startsWith('sum_')) for (const x of toFloat32(t)) peak = Math.max(peak, Math.abs(x));
      return peak;
    };
    let peak = await peakOfSums();
    if (peak > 0 && peak <= 65504) {
      woScale *= Math.ceil((4 * 65504) / peak);
      peak = await peakOfSums();
    }
    expect(peak).toBeGreaterThan(65504);
    const reference = await run(build('float32', loud()));
    const out = await run(build('float16', loud()));
    expect(Array.from(toFloat32(out)).every(Number.isFinite)).toBe(true);
    const d = expectClose(out, reference, halfTol(reference, 8), 'last_hidden_state (loud, fp16 vs fp32)');
    console.log(`t5_encoder loud stream fp16 vs fp32 max abs diff ${d.toExponential(3)} (${(d / HALF_EPS / maxAbs(reference)).toFixed(2)} eps of max |x|)`);
  });
});
