// Section 21: run-time LoRAs on the mid-size transformer (FLUX's head dim and block kinds at 1/6 of its width).
// Side by side in one run, ORT time inside the worker:
// - a step with one rank-R LoRA on every FLUX Linear (the LoRA-capable graph, factors bound) against the plain
//   graph. A LoRA branch costs r (in + out) per token against the Linear's in * out, so its share shrinks with the
//   width: at 1/6 of FLUX's width, rank 32 weighs what rank 192 would on FLUX.1. The judged figure uses the rank
//   with FLUX.1's rank-32 share (32 / 6 -> 5); rank 32 itself is reported beside it.
// - a step of a set with no LoRA node against today's graph: the very same file (checked by hash), so this
//   measures only the LoRA plumbing on the no-LoRA path.
// - a strength change and a swap between two runs of the loaded model (LoraLoader + the next step, minus a
//   steady step) against that model's load time (a fresh load of the LoRA-capable graph from disk).
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { NodeContext } from '../engine/node.ts';
import type { ModelSet } from '../models/modelset.ts';
import type { Tensor } from '../models/tensor.ts';
import { writeSafetensors } from '../models/weights/safetensors.ts';
import { syntheticKohyaLora } from '../models/lora/synthetic.ts';
import { LoraLoaderModelOnly } from '../nodes/lora_loader.ts';
import { loraRunOptions, lorasDir } from '../nodes/lib/lora.ts';
import type { Services } from '../nodes/services.ts';
import { MID_FLUX, MID_SET_NAME } from './lib/fixtures.ts';
import type { BenchContext } from './lib/context.ts';
import { silentLogger } from './lib/context.ts';
import { type Figure, info, judged } from './lib/report.ts';
import { median } from './lib/stats.ts';
import { cpuMeter } from './lib/cpuload.ts';
import { stepFeeds } from './dit-efficiency.ts';

const FLUX1_WIDTH = 3072;

export async function benchLora(ctx: BenchContext): Promise<Figure[]> {
  const pool = ctx.services.pool;
  const set = ctx.services.modelSet(MID_SET_NAME);
  const width = MID_FLUX.numHeads * MID_FLUX.headDim;
  const scaledRank = Math.max(1, Math.round((32 * width) / FLUX1_WIDTH));
  const dir = lorasDir(ctx.paths);
  mkdirSync(dir, { recursive: true });
  for (const [name, rank, seed] of [['bench-r32-a', 32, 1], ['bench-r32-b', 32, 2], [`bench-r${scaledRank}`, scaledRank, 3]] as const) {
    writeSafetensors(join(dir, `${name}.safetensors`), syntheticKohyaLora(MID_FLUX, undefined, rank, seed, 0.1));
  }
  const nodeCtx: NodeContext<Services> = {
    nodeId: 'lora', signal: new AbortController().signal, progress: () => {}, log: silentLogger, services: ctx.services, workflow: {},
  };
  const withLora = async (file: string, strength: number): Promise<ModelSet> =>
    (await LoraLoaderModelOnly.run(nodeCtx, { models: set, lora_name: `${file}.safetensors`, strength_model: strength })).models as ModelSet;
  const feeds = stepFeeds(set.manifest.t5.seqLen);
  const step = async (m: ModelSet, f: Record<string, Tensor> = feeds): Promise<number> => {
    const r = await pool.runWithInfo(m.path('flux'), f, loraRunOptions(m, 'flux'));
    return r.info.endedAt - r.info.startedAt;
  };

  // Per-step cost, alternating plain / scaled-rank / rank 32 / no-LoRA-node runs.
  const scaled = await withLora(`bench-r${scaledRank}`, 1);
  const r32 = await withLora('bench-r32-a', 1);
  const none = await withLora('bench-r32-a', 0); // a LoRA node that applies nothing: the set's plain graphs
  const sha = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');
  const sameFile = none.path('flux') === set.path('flux') && sha(none.path('flux')) === sha(set.path('flux'));
  for (const m of [set, scaled, r32, none]) for (let i = 0; i < 2; i++) await step(m); // load, warm the arenas
  const t: Record<'plain' | 'scaled' | 'r32' | 'none', number[]> = { plain: [], scaled: [], r32: [], none: [] };
  const meter = cpuMeter();
  const reps = ctx.quick ? 3 : 6;
  for (let i = 0; i < reps; i++) {
    t.plain.push(await step(set));
    t.scaled.push(await step(scaled));
    t.r32.push(await step(r32));
    t.none.push(await step(none));
  }
  const otherCores = meter().otherCores;
  const plain = median(t.plain);

  // Strength change and swap on the loaded model, against a fresh load of the same (LoRA-capable) graph.
  // The cost of a change: the LoraLoader node, plus how much longer the next step takes (the factors are sent
  // to the model's worker once) than the step after it.
  const change = async (file: string, strength: number): Promise<{ ms: number; node: number; first: number; second: number }> => {
    const s = performance.now();
    const m = await withLora(file, strength);
    const node = performance.now() - s;
    const f0 = performance.now();
    await step(m);
    const first = performance.now() - f0;
    const s0 = performance.now();
    await step(m);
    const second = performance.now() - s0;
    return { ms: node + Math.max(0, first - second), node, first, second };
  };
  const loads = pool.stats().loads;
  const strengthChange = await change('bench-r32-a', 0.5);
  const swap = await change('bench-r32-b', 1);
  const reloaded = pool.stats().loads - loads;
  await pool.unload(r32.path('flux'));
  const l0 = performance.now();
  await pool.load(r32.path('flux'));
  const loadMs = performance.now() - l0;
  ctx.details.lora = { width, scaledRank, samples: t, strengthChange, swap, loadMs, reloaded, sameFile };
  const note = `mid-size FLUX (width ${width}, 1 double + 2 single blocks), ORT time in the worker, medians of ${reps}`;
  const loadNote = `a fresh load of the LoRA-capable flux graph took ${loadMs.toFixed(0)} ms; ${reloaded} reloads while changing`;
  return [
    judged(21, `step with one rank-${scaledRank} LoRA on every Linear (FLUX.1's rank-32 share) / without`, median(t.scaled) / plain, 'x', '<=', 1.1, { otherCores, note }),
    info(21, 'step with one rank-32 LoRA on every Linear / without (6x FLUX.1\'s share at this width)', median(t.r32) / plain, 'x', { otherCores, note }),
    judged(21, 'step with no LoRA applied / today\'s graph', median(t.none) / plain, 'x', '<=', 1.02, {
      otherCores, note: `${sameFile ? 'the same graph file (sha256 equal)' : 'A DIFFERENT GRAPH FILE'}; ${note}`,
    }),
    judged(21, 'strength change between two runs / model load', strengthChange.ms / loadMs, 'x', '<=', 0.2, {
      note: `${strengthChange.ms.toFixed(0)} ms (LoraLoader ${strengthChange.node.toFixed(0)} ms + next step ${strengthChange.first.toFixed(0)} ms - the one after ${strengthChange.second.toFixed(0)} ms); ${loadNote}`,
    }),
    judged(21, 'LoRA swap between two runs / model load', swap.ms / loadMs, 'x', '<=', 0.2, {
      note: `${swap.ms.toFixed(0)} ms (LoraLoader ${swap.node.toFixed(0)} ms + next step ${swap.first.toFixed(0)} ms - the one after ${swap.second.toFixed(0)} ms); ${loadNote}`,
    }),
  ];
}
