// Section 8 (cold start) and the peak-RSS half of section 9. Each measurement is a child process,
// so each start is a real one: node, tsx, imports, device probe, session loads, encoders, then the
// first DiTSample step. Run as a child:
//   node --import tsx bench/cold-start.ts --data DIR --models DIR --mode first-step|demo
//        --width W --height H --steps S [--spawned EPOCH_MS]
// prints one line `RESULT {json}`. The parent side is benchColdStart().
import { spawn } from 'node:child_process';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { performance } from 'node:perf_hooks';
import type { BenchContext } from './lib/context.ts';
import { type Figure, info } from './lib/report.ts';
import { median } from './lib/stats.ts';
import { peakRssKiB, statusKiB } from './lib/rss.ts';

const epoch = (): number => performance.timeOrigin + performance.now();

export interface ChildResult {
  mode: 'first-step' | 'demo';
  /** Epoch ms: the parent's spawn call, this process's start (performance.timeOrigin), and milestones. */
  spawned: number;
  processStart: number;
  importsDone: number;
  servicesReady: number;
  firstStep: number;
  done?: number;
  loads: number;
  cacheHits: number;
  /** Node id -> ms, for the nodes that finished before the first step (DiTSample: until its first step). */
  nodeMs: Record<string, number>;
  /** Model file name -> session load ms (from the pool's log), loads before the first step. */
  loadMs: Record<string, number>;
  /** Peak and current resident set of the whole process (all threads), KiB, from /proc/self/status. */
  vmHwmKiB?: number;
  vmRssKiB?: number;
  rssAfterServicesKiB?: number;
  /** Demo: VmRSS (KiB) when each node finished, in order. */
  rssByNode?: [string, number][];
  maxRssKiB: number;
}

function arg(name: string): string {
  const i = process.argv.indexOf(`--${name}`);
  const v = i >= 0 ? process.argv[i + 1] : undefined;
  if (v === undefined) throw new Error(`missing --${name}`);
  return v;
}

async function child(): Promise<void> {
  const mode = arg('mode') as ChildResult['mode'];
  const size = { width: Number(arg('width')), height: Number(arg('height')), steps: Number(arg('steps')) };
  const spawned = process.argv.includes('--spawned') ? Number(arg('spawned')) : performance.timeOrigin;
  const { resolvePaths } = await import('../engine/paths.ts');
  const { Executor } = await import('../engine/executor/index.ts');
  const { createServices } = await import('../nodes/services.ts');
  const { nodeRegistry } = await import('../nodes/registry.ts');
  const { workflow } = await import('./lib/fixtures.ts');
  const importsDone = epoch();
  const loadMs: Record<string, number> = {};
  const onLog = (m: string): void => {
    const hit = /loaded (\S+) \(.*?, (\d+) ms/.exec(m);
    if (hit) loadMs[hit[1]!.split('/').pop()!.replace(/\.onnx$/, '')] = Number(hit[2]);
  };
  const services = await createServices(resolvePaths({ data: arg('data'), models: arg('models') }), { device: 'cpu', log: onLog });
  const servicesReady = epoch();
  const rssAfterServicesKiB = statusKiB('VmRSS');
  const registry = nodeRegistry();
  const ex = new Executor({ registry, services, logger: { info: () => {}, warn: () => {} } });
  let firstStep = 0;
  const nodeMs: Record<string, number> = {};
  const rssByNode: [string, number][] = [];
  const startedAt: Record<string, number> = {};
  const report = (extra: Partial<ChildResult>): void => {
    const s = services.pool.stats();
    const r: ChildResult = {
      mode, spawned, processStart: performance.timeOrigin, importsDone, servicesReady, firstStep,
      loads: s.loads, cacheHits: s.cacheHits, nodeMs, loadMs: { ...loadMs }, maxRssKiB: peakRssKiB(), rssAfterServicesKiB, ...extra,
    };
    process.stdout.write(`RESULT ${JSON.stringify(r)}\n`);
  };
  const r = await ex.run(workflow(registry, { 7: size }), {
    onEvent: (e) => {
      if (e.type === 'node_started') startedAt[e.nodeId] = epoch();
      if (e.type === 'node_finished' && !firstStep) nodeMs[`${e.nodeId} ${e.nodeType}`] = e.ms;
      if (e.type === 'node_finished' && mode === 'demo') rssByNode.push([`${e.nodeId} ${e.nodeType}`, statusKiB('VmRSS') ?? 0]);
      if (e.type === 'node_progress' && e.nodeId === '7' && e.step === 1 && !firstStep) {
        firstStep = epoch();
        nodeMs['7 DiTSample (first step)'] = firstStep - (startedAt['7'] ?? firstStep);
        if (mode === 'first-step') {
          report({});
          process.exit(0);
        }
      }
    },
  });
  if (r.status !== 'done') throw new Error(`run ${r.status}: ${JSON.stringify(r.nodes)}`);
  report({ done: epoch(), vmHwmKiB: statusKiB('VmHWM'), vmRssKiB: statusKiB('VmRSS'), rssByNode });
  await services.close();
}

// ---- parent side --------------------------------------------------------------------------------

const HERE = fileURLToPath(new URL('.', import.meta.url));

/** Starts this file as a child and returns its RESULT. */
export function runChild(args: { data: string; models: string; mode: ChildResult['mode']; width: number; height: number; steps: number }, timeoutMs = 180_000): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    const spawned = Date.now();
    const argv = ['--import', 'tsx', join(HERE, 'cold-start.ts'), '--data', args.data, '--models', args.models, '--mode', args.mode,
      '--width', String(args.width), '--height', String(args.height), '--steps', String(args.steps), '--spawned', String(spawned)];
    const proc = spawn(process.execPath, argv, { cwd: join(HERE, '..'), stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    proc.stdout.on('data', (d: Buffer) => (out += d.toString()));
    proc.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const timer = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
    proc.on('error', reject);
    proc.on('close', (code) => {
      clearTimeout(timer);
      const line = out.split('\n').find((l) => l.startsWith('RESULT '));
      if (!line) return reject(new Error(`cold-start child (${args.mode}) exited with ${code} and no result: ${err.trim().split('\n').slice(-5).join(' | ')}`));
      resolve(JSON.parse(line.slice('RESULT '.length)) as ChildResult);
    });
  });
}

/** `charflow demo`'s defaults (cli/demo.ts): the default workflow on the tiny set. */
export const DEMO = { width: 512, height: 512, steps: 8 };

const phases = (r: ChildResult): string =>
  `node+tsx ${(r.processStart - r.spawned).toFixed(0)} ms, imports ${(r.importsDone - r.processStart).toFixed(0)} ms, `
  + `pool+probe ${(r.servicesReady - r.importsDone).toFixed(0)} ms, nodes until the first step ${(r.firstStep - r.servicesReady).toFixed(0)} ms`;

const loadSum = (r: ChildResult): number => Object.values(r.loadMs).reduce((a, b) => a + b, 0);

/** The nodes that took longest before the first step (each includes loading its sessions and their first run). */
const slowNodes = (r: ChildResult, warm: Record<string, number>): string =>
  `${Object.entries(r.nodeMs).sort((a, b) => b[1] - a[1]).slice(0, 4).map(([n, ms]) => {
    const steady = warm[n.split(' ')[0]!];
    return `${n} ${ms.toFixed(0)} ms${steady !== undefined && !n.includes('first step') ? ` (${steady.toFixed(0)} ms on warm sessions)` : ''}`;
  }).join(', ')}; `
  + `session loads ${Object.values(r.loadMs).reduce((a, b) => a + b, 0).toFixed(0)} ms in all (${Object.entries(r.loadMs).sort((a, b) => b[1] - a[1]).slice(0, 3).map(([n, ms]) => `${n} ${ms}`).join(', ')} ms)`;

export async function benchColdStart(ctx: BenchContext, modelsRoot: string, root: string): Promise<Figure[]> {
  const cold: ChildResult[] = [];
  const warm: ChildResult[] = [];
  const dirs = [join(root, `cold-${process.pid}-a`), join(root, `cold-${process.pid}-b`)];
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  const start = async (data: string, mode: ChildResult['mode']): Promise<ChildResult> => runChild({ data, models: modelsRoot, mode, ...DEMO });
  const show = (r: ChildResult) => `${(r.firstStep - r.spawned).toFixed(0)} ms (${phases(r)})`;
  let demo: ChildResult;
  try {
    // Two fresh data folders: the first start in each has an empty session cache, the next a warm one.
    // The second cold start runs the whole demo and gives the peak RSS.
    cold.push(await start(dirs[0]!, 'first-step'));
    ctx.log(`  empty cache: ${show(cold[0]!)}`);
    warm.push(await start(dirs[0]!, 'first-step'));
    ctx.log(`  warm cache: ${show(warm[0]!)}`);
    demo = await start(dirs[1]!, 'demo');
    cold.push(demo);
    ctx.log(`  empty cache, whole demo: ${show(demo)}; peak RSS ${((demo.vmHwmKiB ?? demo.maxRssKiB) / 1024).toFixed(0)} MiB`);
    if (!ctx.quick) {
      warm.push(await start(dirs[1]!, 'first-step'));
      ctx.log(`  warm cache: ${show(warm[1]!)}`);
    }
  } finally {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  }
  const toFirst = (rs: ChildResult[]) => rs.map((r) => r.firstStep - r.spawned);
  const coldMs = toFirst(cold);
  const warmMs = toFirst(warm);
  const hwm = (demo.vmHwmKiB ?? demo.maxRssKiB) / 1024;
  const { mib: perWorker, bootMs } = await idleWorker();
  const warmNodes = (ctx.details.warmNodeMs ?? {}) as Record<string, number>;
  ctx.details.coldStart = { size: DEMO, cold, warm, demo, idleWorkerMiB: perWorker, workerBootMs: bootMs };
  const size = `default workflow on the tiny set at the demo size (${DEMO.width}x${DEMO.height})`;
  return [
    info(8, 'process start to first DiT step, empty session cache', median(coldMs), 'ms', {
      samples: coldMs,
      note: `child processes (node --import tsx bench/cold-start.ts), ${size}, median of ${coldMs.length}; ${phases(cold[0]!)}; `
        + `${cold[0]!.loads} sessions optimised and written to the cache (cacheDir); OS file cache warm; slowest nodes (wall time including their sessions' loads, `
        + `worker start-up and waiting for the CPU; concurrency 2): ${slowNodes(cold[0]!, warmNodes)}. Each model gets its own worker thread, and starting one `
        + `(registering tsx, importing the runtime) took ${bootMs.toFixed(0)} ms here: ${cold[0]!.loads - 1} start while the first step is awaited (one spare is started ahead). No target in the issue.`,
    }),
    info(8, 'process start to first DiT step, warm session cache', median(warmMs), 'ms', {
      samples: warmMs,
      note: `median of ${warmMs.length}; ${phases(warm[0]!)}; ${warm[0]!.cacheHits}/${warm[0]!.loads} sessions loaded from the optimised copies; `
        + `warm / empty = ${(median(warmMs) / median(coldMs)).toFixed(2)}; slowest nodes: ${slowNodes(warm[0]!, warmNodes)}. No target in the issue.`,
    }),
    info(8, 'session loads before the first step, empty / warm cache', median(cold.map(loadSum)) / median(warm.map(loadSum)), 'x', {
      note: `sum of the pool's load times (ORT session creation, in the workers): empty cache ${median(cold.map(loadSum)).toFixed(0)} ms (graph optimisation + writing the copy), `
        + `warm cache ${median(warm.map(loadSum)).toFixed(0)} ms; the rest of the wait is the first runs of the sessions`,
    }),
    info(9, `peak RSS of the demo (tiny set, ${DEMO.width}x${DEMO.height}, ${DEMO.steps} steps)`, hwm, 'MiB', {
      note: `VmHWM of the child (main thread + ${demo.loads} model workers + spare worker); RSS after pool creation ${((demo.rssAfterServicesKiB ?? 0) / 1024).toFixed(0)} MiB, at the end ${((demo.vmRssKiB ?? 0) / 1024).toFixed(0)} MiB; `
        + `growth by node (sessions loaded and run, arenas kept): ${rssGrowth(demo)}; `
        + `one more idle runtime worker thread (V8 isolate, tsx) adds ~${perWorker.toFixed(0)} MiB, so ~${((demo.loads + 1) * perWorker).toFixed(0)} MiB of the peak is the ${demo.loads + 1} workers themselves and the rest ORT sessions (weights, activation arenas). `
        + `Whole demo ${(((demo.done ?? 0) - demo.spawned) / 1000).toFixed(1)} s. No target in the issue.`,
    }),
  ];
}

/** The nodes after which the resident set grew most (each node loads its sessions, then runs them). */
function rssGrowth(r: ChildResult): string {
  let prev = r.rssAfterServicesKiB ?? 0;
  const steps = (r.rssByNode ?? []).map(([node, kib]) => {
    const grown = kib - prev;
    prev = kib;
    return [node, grown] as const;
  });
  return steps.sort((a, b) => b[1] - a[1]).slice(0, 4).map(([n, k]) => `${n} +${(k / 1024).toFixed(0)} MiB`).join(', ');
}

/** One more idle runtime worker thread in this process: its resident cost and its start-up time (tsx registration, imports). */
async function idleWorker(): Promise<{ mib: number; bootMs: number }> {
  const { WorkerClient } = await import('../engine/runtime/client.ts');
  const rss = () => process.memoryUsage().rss / 1024 ** 2;
  const before = rss();
  const t = performance.now();
  const workers = [new WorkerClient('bench idle worker'), new WorkerClient('bench idle worker')];
  await workers[0]!.request({ type: 'release' });
  const bootMs = performance.now() - t;
  await workers[1]!.request({ type: 'release' });
  const mib = (rss() - before) / workers.length;
  await Promise.all(workers.map((w) => w.terminate()));
  return { mib, bootMs };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await child();
}
