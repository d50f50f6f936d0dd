// `npm run bench`: what users feel, measured on this machine. Prints a table of every figure with
// its target and PASS / MISS, writes bench/results.json and bench/RESULTS.md.
// Options: --quick (fewer repetitions), --only 1,3,7 (sections), --no-write (print only).
// Generated model files stay in CHARFLOW_BENCH_DIR (default <tmp>/charflow-bench) between runs.
import { existsSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { resolvePaths } from '../engine/paths.ts';
import { createServices } from '../nodes/services.ts';
import { nodeRegistry } from '../nodes/registry.ts';
import { describeMachine } from './lib/machine.ts';
import { BENCH_ROOT, MODELS_ROOT, ensureMidSet, ensureTinySet } from './lib/fixtures.ts';
import type { BenchContext } from './lib/context.ts';
import { type Figure, failed, judged, markdown, terminalTable, writeResults } from './lib/report.ts';
import { benchPipeline } from './engine-overhead.ts';
import { benchParallel } from './parallel.ts';
import { benchAdapter } from './adapter-cost.ts';
import { benchDiT } from './dit-efficiency.ts';
import { benchColdStart } from './cold-start.ts';
import { benchLag } from './server-lag.ts';
import { cpuMeter, describeShare } from './lib/cpuload.ts';
import { benchQuant } from './quant.ts';
import { benchLora } from './lora.ts';

const HERE = fileURLToPath(new URL('.', import.meta.url));
/** Past this, sections stop adding repetitions for disturbed samples. */
const BUDGET_S = 170;
/** A section that misses while other processes keep this many cores busy is run again. */
const DISTURBED_CORES = 0.5;

function option(name: string): string | undefined {
  const i = process.argv.findIndex((a) => a === `--${name}` || a.startsWith(`--${name}=`));
  if (i < 0) return undefined;
  const a = process.argv[i]!;
  return a.includes('=') ? a.slice(a.indexOf('=') + 1) : process.argv[i + 1] ?? '';
}

const quick = process.argv.includes('--quick');
const only = option('only')?.split(',').map(Number);
const wanted = (s: number): boolean => !only || only.includes(s);
const t0 = performance.now();
const elapsedS = (): number => (performance.now() - t0) / 1000;
const log = (m: string): void => console.log(`[${elapsedS().toFixed(0).padStart(3)} s] ${m}`);

async function graphScale(): Promise<Figure[]> {
  if (!existsSync(join(HERE, 'graph-scale.ts'))) return [failed(5, 'graph scale', 'skipped', 'bench/graph-scale.ts is not there yet')];
  const mod = (await import('./graph-scale.ts')) as { benchGraphScale?: () => Promise<{ validateMs: number; scheduleMs: number; perNodeUs: number }> };
  if (!mod.benchGraphScale) return [failed(5, 'graph scale', 'skipped', 'bench/graph-scale.ts has no benchGraphScale() yet')];
  const meter = cpuMeter();
  const r = await mod.benchGraphScale();
  const otherCores = meter().otherCores;
  return [
    judged(5, 'validate + schedule 10,000 nodes', r.validateMs + r.scheduleMs, 'ms', '<=', 200, {
      otherCores,
      note: `validate ${r.validateMs.toFixed(1)} ms + plan ${r.scheduleMs.toFixed(1)} ms (best of 3, bench/graph-scale.ts)`,
    }),
    judged(5, 'executor overhead per node', r.perNodeUs, 'us', '<=', 50, { otherCores, note: 'a 10,000-node run of no-op nodes minus its planning, per node (best of 3)' }),
  ];
}

async function main(): Promise<void> {
  const machine = describeMachine();
  const startedAt = new Date().toISOString();
  log(`charflow bench on ${machine.cpuModel}, ${machine.cores} cores, load ${machine.loadStart.map((l) => l.toFixed(1)).join(' ')}${quick ? ' (quick)' : ''}`);
  const figures: Figure[] = [];
  const notes: string[] = [];
  const details: Record<string, unknown> = {};
  const shares: Record<string, string> = {};
  /** Runs one section; its figures, or error figures for its section numbers. */
  const attempt = async (numbers: number[], name: string, fn: () => Promise<Figure[]>, children = false): Promise<Figure[]> => {
    log(`${name}`);
    const s = performance.now();
    const meter = cpuMeter();
    let out: Figure[];
    try {
      out = await fn();
    } catch (err) {
      const e = err as Error;
      log(`  FAILED: ${e.stack ?? e.message}`);
      out = numbers.map((n) => failed(n, name, 'error', e.message));
    }
    const share = meter();
    const load = children ? `the CPU was ${((share.ownCores + share.otherCores) / share.cores * 100).toFixed(0)} % busy (its own child processes included)` : describeShare(share);
    shares[name] = `${name}: ${((performance.now() - s) / 1000).toFixed(1)} s; ${load}`;
    log(`  (${((performance.now() - s) / 1000).toFixed(1)} s; ${load})`);
    return out;
  };
  const retryable: { numbers: number[]; name: string; fn: () => Promise<Figure[]>; figures: Figure[] }[] = [];
  const section = async (numbers: number[], name: string, fn: () => Promise<Figure[]>, retry = false, children = false): Promise<void> => {
    if (!numbers.some(wanted)) return;
    const out = await attempt(numbers, name, fn, children);
    figures.push(...out);
    if (retry) retryable.push({ numbers, name, fn, figures: out });
  };
  /** A section that missed while other processes held the CPU runs once more if time allows; the calmer attempt counts. */
  const retryDisturbed = async (): Promise<void> => {
    for (const r of retryable) {
      const disturbance = Math.max(0, ...r.figures.filter((f) => f.status === 'miss').map((f) => f.otherCores ?? 0));
      if (disturbance < DISTURBED_CORES || elapsedS() > BUDGET_S) continue;
      log(`re-running "${r.name}": it missed while other processes kept ${disturbance.toFixed(2)} cores busy`);
      const again = await attempt(r.numbers, `${r.name} (again)`, r.fn);
      const calm = (fs: Figure[]) => Math.max(0, ...fs.map((f) => f.otherCores ?? 0));
      const keep = calm(again) < calm(r.figures) ? again : r.figures;
      notes.push(`"${r.name}" ran twice (the first attempt missed while other processes kept ${disturbance.toFixed(2)} cores busy); `
        + `the table shows the ${keep === again ? 'second' : 'first'} attempt, the calmer one (other processes: ${calm(r.figures).toFixed(2)} cores in the first, ${calm(again).toFixed(2)} in the second).`);
      if (keep === again) {
        for (const f of r.figures) figures.splice(figures.indexOf(f), 1);
        figures.push(...again);
      }
    }
  };

  // Graph scale first: it needs no models and is the most sensitive to a busy CPU.
  await section([5], 'graph scale (bench/graph-scale.ts)', graphScale, true);

  await section([12], 'scale-out on BullMQ: 2 workers / 1, queue latency (bench/queue.ts, child processes)', async () => (await import('./queue.ts')).benchQueue(), false, true);
  await section([13], 'GGUF FLUX as MatMulNBits: sizes, a Q4_K DiT step vs int4 (bench/gguf.ts)', async () => (await import('./gguf.ts')).benchGguf({ quick, log }), true);
  await section([16], 'scale-out under hostile load: honest jobs exactly once, queue latency (bench/hostile.ts, child processes)', async () => (await import('./hostile.ts')).benchHostile(), false, true);
  const needsModels = [1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 14, 15, 21].some(wanted);
  if (!needsModels) return finish();
  log('model sets');
  const [tinyMs, made] = await timedGen(ensureTinySet);
  const [midMs, madeMid] = await timedGen(ensureMidSet);
  log(`  tiny ${made ? `written in ${tinyMs.toFixed(0)} ms` : 'cached'}, mid-size ${madeMid ? `written in ${midMs.toFixed(0)} ms` : 'cached'} (${MODELS_ROOT})`);

  // A data folder kept between bench runs: its optimised-session cache makes the warm-up quick.
  const paths = resolvePaths({ data: join(BENCH_ROOT, 'work'), models: MODELS_ROOT });
  const services = await createServices(paths, { device: 'cpu', log: () => {} });
  const ctx: BenchContext = {
    services, registry: nodeRegistry(), paths, quick, details,
    log, mayExtend: () => elapsedS() < BUDGET_S,
  };
  notes.push(`Runtime: CPU provider, ${services.pool.intraOpThreads} intra-op thread(s) per session (charflow's default for ${machine.cores} cores), inter-op 1, sequential execution, graph optimisation 'all'.`);
  try {
    await section([1, 2, 4, 9], 'engine overhead, prompt re-run, cache budget (tiny set)', () => benchPipeline(ctx), true);
    await section([6], 'server responsiveness (event-loop delay during runs)', () => benchLag(ctx), true);
    await section([3], 'parallel branches (mid-size encoders)', () => benchParallel(ctx), true);
    await section([4], 'adapter cost per step (mid-size adapter)', () => benchAdapter(ctx));
    await section([7], 'model efficiency (mid-size DiT step vs MatMul peak)', () => benchDiT(ctx), true);
    await section([10], 'sampler options: batch 4 and true CFG as one call (mid-size DiT)', async () => (await import('./sampler-options.ts')).benchSamplerOptions(ctx), true);
    await section([11], 'int8 / int4 weights vs fp32 (mid-size set, bench/quant.ts)', () => benchQuant(ctx), true);
    await section([14], 'saved characters: first step and peak memory vs the picture (bench/saved-characters.ts)', async () => (await import('./saved-characters.ts')).benchSavedCharacters(ctx), true);
    await section([21], 'run-time LoRAs: per-step cost, strength change and swap (mid-size DiT, bench/lora.ts)', () => benchLora(ctx), true);
    await section([15], 'fused attention vs plain (FLUX-geometry blocks in child processes, mid-size step, tiny workflow at 1024)', async () => (await import('./attention-blocks.ts')).benchAttention(ctx), true);
    await retryDisturbed();
  } finally {
    await services.close();
    rmSync(paths.outputs, { recursive: true, force: true });
  }
  await section([8, 9], 'cold start and demo peak RSS (child processes)', () => benchColdStart(ctx, MODELS_ROOT, BENCH_ROOT), false, true);
  return finish();

  function finish(): void {
    machine.loadEnd = loadavg();
    figures.sort((a, b) => a.section - b.section);
    const totalS = elapsedS();
    console.log(`\n${terminalTable(figures)}\n`);
    const misses = figures.filter((f) => f.status === 'miss' || f.status === 'error');
    console.log(`${figures.filter((f) => f.status === 'pass').length} pass, ${misses.length} miss/error, in ${totalS.toFixed(0)} s; load average now ${machine.loadEnd.map((l) => l.toFixed(1)).join(' ')}`);
    for (const f of misses) console.log(`  ${f.status.toUpperCase()} ${f.section}. ${f.name}: ${f.note ?? ''}`);
    if (process.argv.includes('--no-write')) return;
    const partial = only ? ` (sections ${only.join(', ')} only)` : quick ? ' (quick run)' : '';
    notes.push(...Object.values(shares).map((v) => `Section timing: ${v}.`));
    writeResults(join(HERE, 'results.json'), { startedAt, totalS, quick, only: only ?? null, machine, figures, notes, details });
    writeFileSync(join(HERE, 'RESULTS.md'), markdown(figures, machine, { startedAt: startedAt + partial, totalS, notes }));
    console.log(`wrote bench/results.json and bench/RESULTS.md`);
  }
}

async function timedGen(fn: () => Promise<boolean>): Promise<[number, boolean]> {
  const s = performance.now();
  const made = await fn();
  return [performance.now() - s, made];
}

await main();
