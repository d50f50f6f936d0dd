// Section 3: SigLIPEncode and DINOv2Encode on the mid-size set (each >= 200 ms alone on CPU), run
// by the executor concurrently (concurrency 2) against one after the other (concurrency 1), with
// the same pool settings on both sides. The figure is the time from the first encoder starting to
// the last one finishing, so LoadModels and LoadCharacter (common to both) are left out.
import { availableParallelism } from 'node:os';
import { performance } from 'node:perf_hooks';
import { Executor, type RunEvent } from '../engine/executor/index.ts';
import { createServices, type Services } from '../nodes/services.ts';
import { MID_SET_NAME, workflow } from './lib/fixtures.ts';
import { type BenchContext, silentLogger } from './lib/context.ts';
import { type Figure, info, judged } from './lib/report.ts';
import { median, repeatUntilSteady } from './lib/stats.ts';

interface Window { ms: number; solo: Record<string, number> }

const ENCODERS = ['3', '4'];

async function encoderWindow(ex: Executor<Services>, wf: Parameters<Executor<Services>['run']>[0]): Promise<Window> {
  let first = Infinity;
  let last = -Infinity;
  const solo: Record<string, number> = {};
  const onEvent = (e: RunEvent): void => {
    if (!('nodeId' in e) || !ENCODERS.includes(e.nodeId)) return;
    if (e.type === 'node_started') first = Math.min(first, performance.now());
    if (e.type === 'node_finished') {
      last = Math.max(last, performance.now());
      solo[e.nodeId] = e.ms;
    }
  };
  const r = await ex.run(wf, { targets: ENCODERS, onEvent });
  if (r.status !== 'done') throw new Error(`encoder run ${r.status}: ${JSON.stringify(r.nodes)}`);
  return { ms: last - first, solo };
}

interface Measured { threads: number; ratios: number[]; seq: number[]; par: number[]; siglip: number[]; dinov2: number[] }

async function measure(ctx: BenchContext, threads: number | undefined, reps: { min: number; max: number }): Promise<Measured> {
  const services = await createServices(ctx.paths, { device: 'cpu', intraOpThreads: threads, log: () => {} });
  try {
    const wf = workflow(ctx.registry, { 1: { set: MID_SET_NAME } }, ['1', '2', '3', '4']);
    const fresh = (concurrency: number) => new Executor({ registry: ctx.registry, services, concurrency, logger: silentLogger, cacheBudgetBytes: 0 });
    await encoderWindow(fresh(2), wf); // loads both sessions
    await encoderWindow(fresh(1), wf);
    const m: Measured = { threads: services.pool.intraOpThreads, ratios: [], seq: [], par: [], siglip: [], dinov2: [] };
    m.ratios = await repeatUntilSteady(async (i) => {
      const order = i % 2 === 0 ? [1, 2] : [2, 1];
      const w: Record<number, Window> = {};
      for (const c of order) w[c] = await encoderWindow(fresh(c), wf);
      m.seq.push(w[1]!.ms);
      m.par.push(w[2]!.ms);
      m.siglip.push(w[1]!.solo['3']!);
      m.dinov2.push(w[1]!.solo['4']!);
      ctx.log(`  ${m.threads} thread(s): sequential ${w[1]!.ms.toFixed(0)} ms, parallel ${w[2]!.ms.toFixed(0)} ms, ratio ${(w[2]!.ms / w[1]!.ms).toFixed(3)}`);
      return w[2]!.ms / w[1]!.ms;
    }, { ...reps, tolerance: 0.04, mayExtend: ctx.mayExtend });
    return m;
  } finally {
    await services.close();
  }
}

function describe(m: Measured): string {
  return `median of ${m.ratios.length} side-by-side pairs: parallel ${median(m.par).toFixed(0)} ms vs sequential ${median(m.seq).toFixed(0)} ms `
    + `(SigLIP ${median(m.siglip).toFixed(0)} ms, DINOv2 ${median(m.dinov2).toFixed(0)} ms alone); ${m.threads} intra-op thread(s) per session`;
}

export async function benchParallel(ctx: BenchContext): Promise<Figure[]> {
  const reps = ctx.quick ? { min: 2, max: 3 } : { min: 3, max: 6 };
  const cores = availableParallelism();
  const defaultThreads = ctx.services.pool.intraOpThreads;
  const figures: Figure[] = [];

  const one = await measure(ctx, 1, reps);
  const slowest = Math.min(median(one.siglip), median(one.dinov2));
  figures.push(judged(3, 'parallel / sequential, 1 intra-op thread each', median(one.ratios), 'x', '<=', 0.65, {
    samples: one.ratios,
    note: `${describe(one)}; mid-size set (SigLIP and DINOv2 width 128, 6 layers, head dim 64, 5 views of 729 tokens)`,
  }));
  figures.push(judged(3, 'each encoder alone (mid-size set, 1 thread)', slowest, 'ms', '>=', 200, {
    note: `the faster of the two; SigLIP ${median(one.siglip).toFixed(0)} ms, DINOv2 ${median(one.dinov2).toFixed(0)} ms (node times in the sequential runs)`,
  }));

  const byDefault = defaultThreads === 1 ? one : await measure(ctx, undefined, reps);
  figures.push(judged(3, `parallel / sequential, default threads (${defaultThreads} per session)`, median(byDefault.ratios), 'x', '<=', 1, {
    samples: byDefault.ratios,
    note: defaultThreads === 1
      ? `charflow's default here is max(1, floor(${cores} cores / 2 expected concurrent sessions)) = 1 thread, the same setting as the row above: the same runs`
      : describe(byDefault),
  }));

  // What the default protects against: as many threads per session as cores, two sessions at once.
  if (cores > 1 && ctx.mayExtend()) {
    const all = await measure(ctx, cores, { min: 2, max: 3 });
    figures.push(info(3, `parallel / sequential, ${cores} threads per session (oversubscribed)`, median(all.ratios), 'x', {
      samples: all.ratios,
      note: `${describe(all)}; not charflow's default, shown for comparison`,
    }));
    ctx.details.parallelAllCores = all;
  }
  ctx.details.parallel = { oneThread: one, defaultThreads: byDefault };
  return figures;
}
