// Section 8 (cold start) and the peak-RSS half of section 9. Each measurement is a child process,
// so each start is a real one: node, tsx, imports, device probe, session loads, encoders, then the
// first DiTSample step. Run as a child:
//   node --import tsx bench/cold-start.ts --data DIR --models DIR --mode first-step|demo
//        --width W --height H --steps S [--spawned EPOCH_MS]
// prints one line `RESULT {json}`. The parent side is benchColdStart().
import { spawn } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { performance } from 'node:perf_hooks';
import type { BenchContext } from './lib/context.ts';
import { type Figure, info } from './lib/report.ts';
import { median } from './lib/stats.ts';

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
  /** Peak and current resident set of the whole process (all threads), KiB, from /proc/self/status. */
  vmHwmKiB?: number;
  vmRssKiB?: number;
  rssAfterServicesKiB?: number;
  maxRssKiB: number;
}

function statusKiB(field: 'VmHWM' | 'VmRSS'): number | undefined {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync('/proc/self/status', 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
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
  const services = await createServices(resolvePaths({ data: arg('data'), models: arg('models') }), { device: 'cpu', log: () => {} });
  const servicesReady = epoch();
  const rssAfterServicesKiB = statusKiB('VmRSS');
  const registry = nodeRegistry();
  const ex = new Executor({ registry, services, logger: { info: () => {}, warn: () => {} } });
  let firstStep = 0;
  const report = (extra: Partial<ChildResult>): void => {
    const s = services.pool.stats();
    const r: ChildResult = {
      mode, spawned, processStart: performance.timeOrigin, importsDone, servicesReady, firstStep,
      loads: s.loads, cacheHits: s.cacheHits, maxRssKiB: process.resourceUsage().maxRSS, rssAfterServicesKiB, ...extra,
    };
    process.stdout.write(`RESULT ${JSON.stringify(r)}\n`);
  };
  const r = await ex.run(workflow(registry, { 7: size }), {
    onEvent: (e) => {
      if (e.type === 'node_progress' && e.nodeId === '7' && e.step === 1 && !firstStep) {
        firstStep = epoch();
        if (mode === 'first-step') {
          report({});
          process.exit(0);
        }
      }
    },
  });
  if (r.status !== 'done') throw new Error(`run ${r.status}: ${JSON.stringify(r.nodes)}`);
  report({ done: epoch(), vmHwmKiB: statusKiB('VmHWM'), vmRssKiB: statusKiB('VmRSS') });
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

/** The demo's size: the default workflow on the tiny set. */
export const DEMO = { width: 256, height: 256, steps: 4 };
/** First-step runs use the small pipeline size: the first step's wait does not depend on it much. */
const FIRST_STEP = { width: 96, height: 64, steps: 3 };

const phases = (r: ChildResult): string =>
  `node+tsx ${(r.processStart - r.spawned).toFixed(0)} ms, imports ${(r.importsDone - r.processStart).toFixed(0)} ms, `
  + `pool+probe ${(r.servicesReady - r.importsDone).toFixed(0)} ms, loads+encoders+step ${(r.firstStep - r.servicesReady).toFixed(0)} ms`;

export async function benchColdStart(ctx: BenchContext, modelsRoot: string, root: string): Promise<Figure[]> {
  const cold: ChildResult[] = [];
  const warm: ChildResult[] = [];
  const reps = ctx.quick ? 1 : 2;
  const dirs: string[] = [];
  for (let i = 0; i < reps; i++) {
    const data = join(root, `cold-${process.pid}-${i}`);
    dirs.push(data);
    rmSync(data, { recursive: true, force: true });
    cold.push(await runChild({ data, models: modelsRoot, mode: 'first-step', ...FIRST_STEP }));
    warm.push(await runChild({ data, models: modelsRoot, mode: 'first-step', ...FIRST_STEP }));
    ctx.log(`  cold cache ${(cold[i]!.firstStep - cold[i]!.spawned).toFixed(0)} ms (${phases(cold[i]!)}); warm cache ${(warm[i]!.firstStep - warm[i]!.spawned).toFixed(0)} ms (${phases(warm[i]!)})`);
  }
  const toFirst = (rs: ChildResult[]) => rs.map((r) => r.firstStep - r.spawned);
  const coldMs = toFirst(cold);
  const warmMs = toFirst(warm);
  const mid = (rs: ChildResult[]) => rs[rs.length >> 1]!;

  ctx.log(`  demo run (${DEMO.width}x${DEMO.height}, ${DEMO.steps} steps) for peak RSS`);
  const demoData = join(root, `demo-${process.pid}`);
  dirs.push(demoData);
  rmSync(demoData, { recursive: true, force: true });
  const demo = await runChild({ data: demoData, models: modelsRoot, mode: 'demo', ...DEMO });
  for (const d of dirs) rmSync(d, { recursive: true, force: true });

  const hwm = (demo.vmHwmKiB ?? demo.maxRssKiB) / 1024;
  ctx.details.coldStart = { firstStepSize: FIRST_STEP, cold, warm, demo };
  return [
    info(8, 'process start to first DiT step, empty session cache', median(coldMs), 'ms', {
      samples: coldMs,
      note: `child processes, median of ${coldMs.length}; ${phases(mid(cold))}; ${mid(cold).loads} sessions optimised and written to the cache (OS file cache warm)`,
    }),
    info(8, 'process start to first DiT step, warm session cache', median(warmMs), 'ms', {
      samples: warmMs,
      note: `${phases(mid(warm))}; ${mid(warm).cacheHits}/${mid(warm).loads} sessions loaded from the optimised copies (cacheDir); warm/cold = ${(median(warmMs) / median(coldMs)).toFixed(2)}`,
    }),
    info(9, `peak RSS of the demo (tiny set, ${DEMO.width}x${DEMO.height}, ${DEMO.steps} steps)`, hwm, 'MiB', {
      note: `VmHWM of the child (main thread + ${demo.loads} model workers + spare worker); RSS after pool creation ${((demo.rssAfterServicesKiB ?? 0) / 1024).toFixed(0)} MiB, at the end ${((demo.vmRssKiB ?? 0) / 1024).toFixed(0)} MiB; whole run ${((demo.done ?? 0) - demo.spawned).toFixed(0)} ms. No target in the issue.`,
    }),
  ];
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await child();
}
