// Section 6 through the real server (editor/server startServer): a WebSocket client queues runs of
// the default workflow like the editor does, and while they compute the bench records the server
// process's event-loop delay (monitorEventLoopDelay) and how long the server takes to answer a
// small request (`queue`) sent every 25 ms on the same socket, which is what a user feels in the
// editor. Inference runs on the pool's worker threads; the event loop only coordinates. Without a
// server, the same runs go through an executor in this process.
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { resolvePaths } from '../engine/paths.ts';
import type { Services } from '../nodes/services.ts';
import { Executor } from '../engine/executor/index.ts';
import { validateWorkflow } from '../engine/workflow/index.ts';
import { BENCH_ROOT, MODELS_ROOT, rawWorkflow } from './lib/fixtures.ts';
import { type BenchContext, silentLogger } from './lib/context.ts';
import { cpuMeter, describeShare } from './lib/cpuload.ts';
import { profileMainThread } from './lib/profile.ts';
import { timeEncoderPreprocessing } from './lib/preprocess.ts';
import { type Figure, info, judged } from './lib/report.ts';
import { quantile } from './lib/stats.ts';

export interface LagResult {
  via: string;
  runs: number;
  runMs: number[];
  lag: { p50: number; p99: number; max: number; mean: number };
  /** Round trips of `queue` requests sent during the runs, ms. */
  reply?: { count: number; p50: number; p99: number; max: number };
}

interface StartedServer { port: number; close(): Promise<void> }
type StartServer = (o: Record<string, unknown>) => Promise<StartedServer>;

const PING_MS = 25;

/** Runs `workflows` one after the other through startServer + a WebSocket client; undefined (and why) if the server cannot be used. */
export async function lagThroughServer(services: Services, workflows: unknown[]): Promise<LagResult | { unavailable: string }> {
  let startServer: StartServer;
  let WebSocketCtor: typeof import('ws').WebSocket;
  try {
    const mod = (await import('../editor/server/index.ts')) as unknown as { startServer?: StartServer };
    if (typeof mod.startServer !== 'function') return { unavailable: 'editor/server exports no startServer' };
    startServer = mod.startServer;
    WebSocketCtor = (await import('ws')).WebSocket;
  } catch (err) {
    return { unavailable: `editor/server could not be loaded (${(err as Error).message.split('\n')[0]})` };
  }
  const paths = resolvePaths({ data: join(BENCH_ROOT, `server-${process.pid}`), models: MODELS_ROOT });
  rmSync(paths.root, { recursive: true, force: true });
  let server: StartedServer;
  try {
    server = await startServer({ paths, port: 0, services, staticDir: null, log: () => {} });
  } catch (err) {
    rmSync(paths.root, { recursive: true, force: true });
    return { unavailable: `startServer failed (${(err as Error).message.split('\n')[0]})` };
  }
  const ws = new WebSocketCtor(`ws://127.0.0.1:${server.port}/ws/editor`);
  const lag = monitorEventLoopDelay({ resolution: 1 });
  const replies: number[] = [];
  const runMs: number[] = [];
  try {
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    const sent = new Map<string, number>();
    let finished: ((status: string) => void) | undefined;
    let myRun: string | undefined;
    ws.on('message', (data) => {
      const msg = JSON.parse(String(data)) as { id?: string; ok?: boolean; type: string; runId?: string; message?: string; event?: { type: string; status?: string } };
      if (msg.id && sent.has(msg.id)) {
        replies.push(performance.now() - sent.get(msg.id)!);
        sent.delete(msg.id);
      }
      if (msg.type === 'queued' && msg.id?.startsWith('run')) myRun = msg.runId;
      if (msg.type === 'error' && msg.id?.startsWith('run')) finished?.(`refused: ${msg.message}`);
      if (msg.type === 'event' && msg.runId === myRun && (msg.event?.type === 'run_finished' || msg.event?.type === 'run_cancelled')) {
        finished?.(msg.event.status ?? msg.event.type);
      }
    });
    let n = 0;
    for (const [i, wf] of workflows.entries()) {
      myRun = undefined;
      const done = new Promise<string>((resolve) => (finished = resolve));
      const t = performance.now();
      lag.enable();
      ws.send(JSON.stringify({ id: `run${i}`, type: 'run', workflow: wf }));
      const pinger = setInterval(() => {
        const id = `q${n++}`;
        sent.set(id, performance.now());
        ws.send(JSON.stringify({ id, type: 'queue' }));
      }, PING_MS);
      const status = await done;
      clearInterval(pinger);
      lag.disable();
      runMs.push(performance.now() - t);
      if (status !== 'done') throw new Error(`server run ${i} ended ${status}`);
    }
  } finally {
    ws.close();
    await server.close();
    rmSync(paths.root, { recursive: true, force: true });
  }
  return {
    via: 'editor/server startServer + WebSocket client (/ws/editor), same process',
    runs: workflows.length,
    runMs,
    lag: { p50: lag.percentile(50) / 1e6, p99: lag.percentile(99) / 1e6, max: lag.max / 1e6, mean: lag.mean / 1e6 },
    reply: replies.length ? { count: replies.length, p50: quantile(replies, 0.5), p99: quantile(replies, 0.99), max: Math.max(...replies) } : undefined,
  };
}

/** The same runs through an executor in this process (no server). */
async function lagInProcess(ctx: BenchContext, workflows: unknown[]): Promise<LagResult> {
  const ex = new Executor({ registry: ctx.registry, services: ctx.services, logger: silentLogger });
  const lag = monitorEventLoopDelay({ resolution: 1 });
  const runMs: number[] = [];
  for (const raw of workflows) {
    const v = validateWorkflow(raw, ctx.registry);
    if (!v.ok) throw new Error(v.errors[0]!.message);
    const t = performance.now();
    lag.enable();
    const r = await ex.run(v.workflow!);
    lag.disable();
    runMs.push(performance.now() - t);
    if (r.status !== 'done') throw new Error(`run ${r.status}`);
  }
  return {
    via: 'executor + pool in this process',
    runs: workflows.length,
    runMs,
    lag: { p50: lag.percentile(50) / 1e6, p99: lag.percentile(99) / 1e6, max: lag.max / 1e6, mean: lag.mean / 1e6 },
  };
}

/**
 * Why the event loop stalls: the main thread's hottest functions during one more run (V8 sampling
 * profile), and the length of the largest synchronous preprocessing calls the nodes make.
 */
async function explainLag(ctx: BenchContext, raw: unknown): Promise<string> {
  const ex = new Executor({ registry: ctx.registry, services: ctx.services, logger: silentLogger });
  const wf = validateWorkflow(raw, ctx.registry).workflow!;
  const { hot, busyMs } = await profileMainThread(() => ex.run(wf), 6);
  const pre = await timeEncoderPreprocessing();
  ctx.details.lagProfile = { busyMs, hot, encoderPreprocessing: pre };
  return `Main-thread CPU in one full run: ${busyMs.toFixed(0)} ms; hottest: ${hot.slice(0, 4).map((h) => `${h.name} ${h.ms.toFixed(0)} ms`).join(', ')}. `
    + `Single synchronous calls, per encoder node: resize to 384 ${pre.resize384.toFixed(0)} ms, to 768 ${pre.resize768.toFixed(0)} ms, crops + pixelValues (5 views) ${pre.cropsAndPixels.toFixed(0)} ms`;
}

export async function benchLag(ctx: BenchContext): Promise<Figure[]> {
  // Two full runs (another padding colour makes another reference picture) and two partial ones.
  const workflows = [
    rawWorkflow(),
    rawWorkflow({ 7: { seed: 1111 } }),
    rawWorkflow({ 2: { background: '#f0f0f0' } }),
    rawWorkflow({ 2: { background: '#f0f0f0' }, 6: { prompt: 'the same character, reading in a library' } }),
  ];
  const meter = cpuMeter();
  const viaServer = await lagThroughServer(ctx.services, workflows);
  const r = 'lag' in viaServer ? viaServer : await lagInProcess(ctx, workflows);
  const share = meter();
  const why = 'unavailable' in viaServer ? ` (${viaServer.unavailable})` : '';
  let note = `${r.via}${why}: ${r.runs} runs of the default workflow on the tiny set (2 full, seed changed, prompt changed; ${r.runMs.map((v) => v.toFixed(0)).join(', ')} ms); `
    + `monitorEventLoopDelay (1 ms resolution): mean ${r.lag.mean.toFixed(1)} ms, max ${r.lag.max.toFixed(0)} ms`
    + (r.reply ? `; a \`queue\` request every ${PING_MS} ms was answered in p50 ${r.reply.p50.toFixed(1)} ms, p99 ${r.reply.p99.toFixed(1)} ms, max ${r.reply.max.toFixed(0)} ms (${r.reply.count} requests)` : '')
    + `; ${describeShare(share)}`;
  if (r.lag.p99 > 20 || r.lag.max > 50) note += `. ${await explainLag(ctx, workflows[0])}`;
  ctx.details.lag = r;
  const figures = [judged(6, 'event-loop delay p99 during runs', r.lag.p99, 'ms', '<=', 20, { note, otherCores: share.otherCores })];
  if (r.reply) {
    figures.push(info(6, 'editor request round trip during runs (p99)', r.reply.p99, 'ms', {
      note: `max ${r.reply.max.toFixed(0)} ms; the longest stalls come from the synchronous work named above`,
      otherCores: share.otherCores,
    }));
  }
  return figures;
}
