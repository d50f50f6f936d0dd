// Attention alone, plain against fused (com.microsoft MultiHeadAttention), one form per child process so
// each peak RSS is its own. `node --import tsx bench/attention-form.ts <form> <B> <Tq> <Tk> <heads> <headDim> [reps]`
// prints one JSON line {form, ms: [...], rssMiB}; benchAttentionForms (bench section) runs the pairs.
import * as ort from 'onnxruntime-node';
import { Graph } from '../models/onnx/graph.ts';
import { type AttentionForm, scaledDotAttention } from '../models/layers.ts';
import { noise } from './lib/tensors.ts';
import { toOrt } from '../models/onnx/ort.ts';

export function attentionGraph(form: AttentionForm, heads: number, headDim: number, fusedFrom?: number): Uint8Array {
  const g = new Graph({ name: `attention_${form}` });
  const C = heads * headDim;
  const q = g.input('q', 'float32', ['batch', 'tq', C]);
  const k = g.input('k', 'float32', ['batch', 'tk', C]);
  const v = g.input('v', 'float32', ['batch', 'tk', C]);
  g.output(scaledDotAttention(g, q, k, v, heads, headDim, form, undefined, fusedFrom), 'o', 'float32');
  return g.toBytes();
}

async function main(): Promise<void> {
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
  console.log(JSON.stringify({ form, ms: ms.map((x) => Math.round(x)), rssMiB: Math.round(process.resourceUsage().maxRSS / 1024) }));
}

if (process.argv[1]?.endsWith('attention-form.ts')) await main();
