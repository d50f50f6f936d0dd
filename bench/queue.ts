// Scale-out on BullMQ (section 12): throughput of two `charflow worker` processes against one, and
// the queue latency from "accepted" (the server's SQLite commit) to "started" (a worker reported
// it), with idle warm workers. Real processes: a redis-server of its own, the server in this
// process, the workers as children, tiny set, one intra-op thread per worker.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startServer, type RunningServer } from '../editor/server/server.ts';
import { resolvePaths } from '../engine/paths.ts';
import { ROOT, startRedis, startWorker, tempDir, waitFor, type WorkerProcess } from '../test/distributed/harness.ts';
import { MODELS_ROOT, ensureTinySet } from './lib/fixtures.ts';
import { info, judged, type Figure } from './lib/report.ts';
import { quantile } from './lib/stats.ts';

type Wf = { nodes: Record<string, { type: string; inputs: Record<string, unknown> }> };
const BASE = JSON.parse(readFileSync(join(ROOT, 'workflows/instantcharacter.json'), 'utf8')) as Wf;

function workflow(seed: number, steps: number, size = 64): Wf {
  const wf = structuredClone(BASE);
  const s = Object.values(wf.nodes).find((n) => n.type === 'DiTSample')!;
  Object.assign(s.inputs, { seed, steps, width: size, height: size });
  return wf;
}

async function submit(server: RunningServer, wf: Wf): Promise<string> {
  const res = await fetch(`${server.url}prompt`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt: wf }) });
  if (!res.ok) throw new Error(`POST /prompt: ${res.status} ${await res.text()}`);
  return ((await res.json()) as { prompt_id: string }).prompt_id;
}

async function done(server: RunningServer, ids: readonly string[], timeoutMs = 300_000): Promise<void> {
  await waitFor(`${ids.length} jobs`, () => ids.every((id) => server.queue.get(id)?.finishedAt != null), timeoutMs, 20);
  const bad = ids.map((id) => server.queue.get(id)!).filter((j) => j.status !== 'done');
  if (bad.length) throw new Error(`${bad.length} job(s) did not finish: ${bad[0]!.error}`);
}

/** Seconds for `n` distinct jobs (nothing cached) submitted at once. */
async function batch(server: RunningServer, n: number, seed0: number, steps: number): Promise<number> {
  const t = performance.now();
  const ids: string[] = [];
  for (let i = 0; i < n; i++) ids.push(await submit(server, workflow(seed0 + i, steps)));
  await done(server, ids);
  if (process.env.CHARFLOW_BENCH_DEBUG) {
    for (const id of ids) {
      const j = server.queue.get(id)!;
      console.log(`  ${j.worker} ${j.startedAt! - j.createdAt} ms wait, ${j.finishedAt! - j.startedAt!} ms run`);
    }
  }
  return (performance.now() - t) / 1000;
}

export async function benchQueue(): Promise<Figure[]> {
  await ensureTinySet();
  const redis = await startRedis();
  const workers: WorkerProcess[] = [];
  let server: RunningServer | undefined;
  try {
    server = await startServer({ paths: resolvePaths({ data: tempDir('bench-queue'), models: MODELS_ROOT }), port: 0, staticDir: null, queueUrl: redis.url, device: 'cpu', log: () => {} });
    const s = server;
    let seed = 1;
    const start = async (name: string): Promise<void> => {
      workers.push(startWorker(name, { queue: redis.url, server: s.url, models: MODELS_ROOT, threads: 1 }));
      await waitFor(`worker ${name}`, () => s.dispatcher.workers().some((w) => w.name === name), 60_000);
      // Warm every worker (its models loaded) before timing: pairs of long jobs, so a warm worker is
      // busy past the cold delay and the cold one takes the second (affinity would keep it idle).
      for (let i = 0; i < 10 && !s.dispatcher.workers().every((w) => w.loaded.length > 0); i++) {
        await done(s, [await submit(s, workflow(seed++, 60)), await submit(s, workflow(seed++, 60))]);
      }
    };
    const JOBS = 10;
    const STEPS = 12;
    const cpu = (): number[] => workers.map((w) => {
      const f = readFileSync(`/proc/${w.child.pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
      return (Number(f[11]) + Number(f[12])) / 100; // utime + stime, clock ticks
    });
    const used = (c0: number[]): number => cpu().reduce((sum, c, i) => sum + c - (c0[i] ?? 0), 0);
    await start('b1');
    let c0 = cpu();
    const one = await batch(s, JOBS, 100, STEPS);
    const cpuOne = used(c0);
    await start('b2');
    c0 = cpu();
    const two = await batch(s, JOBS, 200, STEPS);
    const cpuTwo = used(c0);
    // The workers' CPU seconds per wall second: how many cores they actually got (others share the machine).
    const cores = `workers got ${(cpuOne / one).toFixed(2)} cores with one, ${(cpuTwo / two).toFixed(2)} with two; CPU per job ${((cpuOne / JOBS) * 1000).toFixed(0)} / ${((cpuTwo / JOBS) * 1000).toFixed(0)} ms`;

    // Latency: one job at a time to idle warm workers; the run itself is cached apart from SaveImage.
    const lat: number[] = [];
    const wf = workflow(7, 2);
    await done(s, [await submit(s, wf)]);
    for (let i = 0; i < 40; i++) {
      const id = await submit(s, wf);
      await done(s, [id]);
      const j = s.queue.get(id)!;
      lat.push(j.startedAt! - j.createdAt);
      await new Promise((r) => setTimeout(r, 20));
    }
    lat.sort((a, b) => a - b);
    const note = `${JOBS} jobs of ${STEPS} steps at 64x64 (tiny set), 1 intra-op thread per worker; bench/queue.ts`;
    return [
      judged(12, 'scale-out throughput, 2 workers / 1 worker', one / two, 'x', '>=', 1.6, { note: `${one.toFixed(1)} s with one worker, ${two.toFixed(1)} s with two (${cores}); ${note}` }),
      judged(12, 'queue latency accepted -> started, p50', quantile(lat, 0.5), 'ms', '<=', 20, { note: `40 jobs to idle warm workers; server timestamps (SQLite commit to the worker's "started")` }),
      judged(12, 'queue latency accepted -> started, p99', quantile(lat, 0.99), 'ms', '<=', 100, { note: `max ${lat[lat.length - 1]} ms` }),
      info(12, 'scale-out: one worker, jobs per second', JOBS / one, 'jobs/s'),
      info(12, 'scale-out: cores the two workers got', cpuTwo / two, 'cores', { note: cores }),
    ];
  } finally {
    await Promise.all(workers.map((w) => w.stop()));
    await server?.close();
    await redis.stop();
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  for (const f of await benchQueue()) console.log(`${f.name}: ${typeof f.value === 'number' ? f.value.toFixed(2) : f.value} ${f.unit} (${f.target}) ${f.status}${f.note ? ` - ${f.note}` : ''}`);
}
