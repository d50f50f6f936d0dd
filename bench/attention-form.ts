// Attention alone, plain against fused (com.microsoft MultiHeadAttention).
// - one form per child process, so each peak RSS is its own:
//   `node --import tsx bench/attention-form.ts <form> <B> <Tq> <Tk> <heads> <headDim> [reps]` prints one JSON
//   line {form, ms: [...], rssMiB};
// - both forms in one process, alternating, for the crossover behind FUSED_FROM_SCORES (docs/attention.md):
//   `node --import tsx bench/attention-form.ts sweep <heads> <headDim> <reps> <T> [T ...]` prints the medians.
import * as ort from 'onnxruntime-node';
import { Graph } from '../models/onnx/graph.ts';
import { type AttentionForm, scaledDotAttention } from '../models/layers.ts';
import { noise } from './lib/tensors.ts';
import { toOrt } from '../models/onnx/ort.ts';
import { peakRssKiB } from './lib/rss.ts';

export function attentionGraph(form: AttentionForm, heads: number, headDim: number, fusedFrom?: number): Uint8Array {
  const g = new Graph({ name: `attention_${form}` });
  const C = heads * headDim;
  const q = g.input('q', 'float32', ['batch', 'tq', C]);
  const k = g.input('k', 'float32', ['batch', 'tk', C]);
  const v = g.input('v', 'float32', ['batch', 'tk', C]);
  g.output(scaledDotAttention(g, q, k, v, heads, headDim, form, undefined, fusedFrom), 'o', 'float32');
  return g.toBytes();
}

/** Both forms alternating in one process (the pool's session options), self-attention over each T: medians. */
async function sweep(heads: number, headDim: number, reps: number, sizes: number[]): Promise<void> {
  const opts: ort.InferenceSession.SessionOptions = { intraOpNumThreads: 2, interOpNumThreads: 1, extra: { session: { 'intra_op.allow_spinning': '0' } } };
  const plain = await ort.InferenceSession.create(attentionGraph('plain', heads, headDim), opts);
  const fused = await ort.InferenceSession.create(attentionGraph('fused', heads, headDim), opts);
  const median = (a: number[]): number => [...a].sort((x, y) => x - y)[a.length >> 1]!;
  for (const T of sizes) {
    const C = heads * headDim;
    const feeds = { q: toOrt(noise([1, T, C], 1)), k: toOrt(noise([1, T, C], 2)), v: toOrt(noise([1, T, C], 3)) };
    const ms = { plain: [] as number[], fused: [] as number[] };
    for (let i = 0; i <= reps; i++) {
      for (const [form, s] of [['plain', plain], ['fused', fused]] as const) {
        const t0 = performance.now();
        await s.run(feeds);
        if (i > 0) ms[form].push(performance.now() - t0); // the first round warms the arenas
      }
    }
    const [p, f] = [median(ms.plain), median(ms.fused)];
    console.log(`heads ${heads} x ${headDim}, T ${T} (scores ${heads * T * T}): plain ${p.toFixed(1)} ms, fused ${f.toFixed(1)} ms, fused / plain ${(f / p).toFixed(2)}`);
  }
}

async function main(): Promise<void> {
  if (process.argv[2] === 'sweep') {
    const [H, D, reps, ...sizes] = process.argv.slice(3).map(Number);
    return sweep(H!, D!, reps!, sizes);
  }
  const [form, B, Tq, Tk, H, D, reps = '3'] = process.argv.slice(2);
  const C = Number(H) * Number(D);
  const s = await ort.InferenceSession.create(attentionGraph(form as AttentionForm, Number(H), Number(D)), { intraOpNumThreads: 2, interOpNumThreads: 1 });
  const feeds = {
    q: toOrt(noise([Number(B), Number(Tq), C], 1)), k: toOrt(noise([Number(B), Number(Tk), C], 2)), v: toOrt(noise([Number(B), Number(Tk), C], 3)),
  };
  const ms: number[] = [];
  for (let i = 0; i < Number(reps); i++) {
    const t0 = performance.now();
    await s.run(feeds);
    ms.push(performance.now() - t0);
  }
  console.log(JSON.stringify({ form, ms: ms.map((x) => Math.round(x)), rssMiB: Math.round(peakRssKiB() / 1024) }));
}

if (process.argv[1]?.endsWith('attention-form.ts')) await main();
