// Scale-out under hostile load (section 16, issue 26): while one client floods the server (invalid
// prompts back to back, every WebSocket slot its address may hold, bogus worker frames with the
// worker token), two honest ComfyUI clients queue jobs one after another. Their jobs must finish
// exactly once (one history entry, one attempt, one terminal event each) and their queue latency
// (accepted -> a worker started it, server timestamps) stays low. Real processes: a redis-server of
// its own, the server in this process, two `charflow worker` children on the tiny set. The flooder
// and the honest clients connect from different loopback addresses (127.0.0.3 vs .2 / .4), as
// separate machines would.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import WebSocket from 'ws';
import { startServer, type RunningServer } from '../editor/server/server.ts';
import { resolvePaths } from '../engine/paths.ts';
import { ROOT, startRedis, startWorker, tempDir, waitFor, type WorkerProcess } from '../test/distributed/harness.ts';
import { MODELS_ROOT, ensureTinySet } from './lib/fixtures.ts';
import { info, judged, type Figure } from './lib/report.ts';
import { quantile } from './lib/stats.ts';

type Wf = { nodes: Record<string, { type: string; inputs: Record<string, unknown> }> };
const BASE = JSON.parse(readFileSync(join(ROOT, 'workflows/instantcharacter.json'), 'utf8')) as Wf;
const CLIENT = 'bench-client';
const WORKER = 'bench-worker';
const TERMINAL = new Set(['execution_success', 'execution_error', 'execution_interrupted']);

function workflow(seed: number, steps: number): Wf {
  const wf = structuredClone(BASE);
  Object.assign(Object.values(wf.nodes).find((n) => n.type === 'DiTSample')!.inputs, { seed, steps, width: 64, height: 64 });
  return wf;
}

/** A chain of `n` KeepBest nodes with invalid parameters: refused, with a large error body. */
function invalidChain(n: number): Record<string, unknown> {
  const p: Record<string, unknown> = { '1': { class_type: 'LoadImage', inputs: { path: 'x.png', width: 0, height: 0 } } };
  for (let i = 2; i < n; i++) p[String(i)] = { class_type: 'KeepBest', inputs: { images: [String(i - 1), 0], k: -5, by: 'nope' } };
  p[String(n)] = { class_type: 'SaveImage', inputs: { image: [String(n - 1), 0], filename_prefix: 'x' } };
  return p;
}

const headers = (token: string): Record<string, string> => ({ authorization: `Bearer ${token}`, 'content-type': 'application/json' });

function openWs(url: string, token: string, localAddress: string): Promise<WebSocket | undefined> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, { headers: { authorization: `Bearer ${token}` }, localAddress });
    ws.on('open', () => resolve(ws));
    ws.on('unexpected-response', () => resolve(undefined));
    ws.on('error', () => resolve(undefined));
  });
}

interface Honest {
  ids: string[];
  terminal: Map<string, string[]>;
}

/** One honest ComfyUI client: `n` jobs, each queued when the previous one ended. */
async function honest(server: RunningServer, name: string, localAddress: string, n: number, seed0: number): Promise<Honest> {
  const ws = await openWs(`ws://127.0.0.1:${server.port}/ws?clientId=${name}`, CLIENT, localAddress);
  if (!ws) throw new Error(`honest client ${name} could not connect`);
  const terminal = new Map<string, string[]>();
  ws.on('message', (d, binary) => {
    if (binary) return;
    const m = JSON.parse(d.toString()) as { type: string; data?: { prompt_id?: string } };
    const id = m.data?.prompt_id;
    if (id && TERMINAL.has(m.type)) terminal.set(id, [...(terminal.get(id) ?? []), m.type]);
  });
  const ids: string[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const res = await fetch(`http://127.0.0.1:${server.port}/prompt`, { method: 'POST', headers: headers(CLIENT), body: JSON.stringify({ prompt: workflow(seed0 + i, 2), client_id: name }) });
      if (!res.ok) throw new Error(`honest POST /prompt: ${res.status}`);
      const id = ((await res.json()) as { prompt_id: string }).prompt_id;
      ids.push(id);
      await waitFor(`job ${id}`, () => terminal.has(id), 120_000, 5);
    }
    await new Promise((r) => setTimeout(r, 1000)); // a late second terminal event would show up here
  } finally {
    ws.close();
  }
  return { ids, terminal };
}

export async function benchHostile(): Promise<Figure[]> {
  await ensureTinySet();
  const redis = await startRedis();
  const workers: WorkerProcess[] = [];
  let server: RunningServer | undefined;
  const held: WebSocket[] = [];
  let flooding = true;
  try {
    server = await startServer({
      paths: resolvePaths({ data: tempDir('bench-hostile'), models: MODELS_ROOT }),
      port: 0,
      staticDir: null,
      queueUrl: redis.url,
      device: 'cpu',
      token: CLIENT,
      workerToken: WORKER,
      log: () => {},
    });
    const s = server;
    for (const name of ['h1', 'h2']) workers.push(startWorker(name, { queue: redis.url, server: s.url, token: WORKER, models: MODELS_ROOT, threads: 1 }));
    await waitFor('workers', () => s.dispatcher.workers().length === 2, 60_000);
    // Warm both workers (models loaded) before anything is timed.
    const warm = await Promise.all([0, 1].map(async (i) => (await (await fetch(`${s.url}prompt`, { method: 'POST', headers: headers(CLIENT), body: JSON.stringify({ prompt: workflow(900 + i, 30) }) })).json()) as { prompt_id: string }));
    await waitFor('warm-up', () => warm.every((w) => s.queue.get(w.prompt_id)?.finishedAt != null), 120_000);

    // The same honest clients without the flood first: the machine's own latency, for comparison.
    const JOBS = 10;
    const calm = await Promise.all([honest(s, 'carol', '127.0.0.2', JOBS, 500), honest(s, 'dave', '127.0.0.4', JOBS, 600)]);
    const latencies = (ids: readonly string[]): number[] => ids.map((id) => s.queue.get(id)!).map((j) => j.startedAt! - j.createdAt).sort((x, y) => x - y);
    const calmLat = latencies([...calm[0].ids, ...calm[1].ids]);

    // The flooder, from 127.0.0.3: every socket its address may hold, invalid prompts, bogus worker frames.
    const flooder = '127.0.0.3';
    for (;;) {
      const ws = await openWs(`ws://127.0.0.1:${s.port}/ws/editor`, CLIENT, flooder);
      if (!ws) break;
      held.push(ws);
    }
    let invalid = 0;
    let rationed = 0;
    let frames = 0;
    const t0 = performance.now();
    const prompts = (async () => {
      const body = JSON.stringify({ prompt: invalidChain(2000) });
      while (flooding) {
        const r = await fetch(`http://127.0.0.1:${s.port}/prompt`, { method: 'POST', headers: headers(CLIENT), body }).catch(() => undefined);
        await r?.arrayBuffer();
        if (r?.status === 400) invalid++;
        if (r?.status === 429) rationed++;
      }
    })();
    const bogus = (async () => {
      const pending = [...s.queue.active()].map((j) => j.id);
      while (flooding) {
        const ws = await openWs(`ws://127.0.0.1:${s.port}/ws/worker`, WORKER, flooder);
        if (!ws) {
          await new Promise((r) => setTimeout(r, 20));
          continue;
        }
        ws.on('error', () => {});
        ws.send(JSON.stringify({ type: 'hello', name: `bogus-${frames}`, device: 'cpu', sets: ['tiny'], loaded: [] }));
        for (let i = 0; i < 20 && ws.readyState === ws.OPEN; i++, frames++) {
          const id = s.queue.running()[0]?.id ?? pending[0] ?? 'x';
          ws.send(JSON.stringify({ type: 'event', jobId: id, lock: 'forged', event: { type: 'run_finished', runId: id, time: Date.now(), status: 'done', ms: 1, counts: { done: 1, cached: 0, failed: 0, skipped: 0, cancelled: 0 } } }));
          await new Promise((r) => setTimeout(r, 5));
        }
        ws.send('{"type":"hello","sets":["../../bad set"]}');
        frames++;
        ws.close();
      }
    })();

    const [a, b] = await Promise.all([honest(s, 'alice', '127.0.0.2', JOBS, 100), honest(s, 'bob', '127.0.0.4', JOBS, 200)]);
    flooding = false;
    const seconds = (performance.now() - t0) / 1000;
    await Promise.all([prompts, bogus]);

    const ids = [...a.ids, ...b.ids];
    const terminal = new Map([...a.terminal, ...b.terminal]);
    const once = ids.filter((id) => {
      const j = s.queue.get(id);
      return j?.status === 'done' && j.attempts === 1 && terminal.get(id)?.length === 1 && terminal.get(id)![0] === 'execution_success';
    }).length;
    const lat = latencies(ids);
    const note = `${held.length} sockets held, ${invalid} invalid 2,000-node prompts refused (${rationed} more answered 429 unread) and ${frames} bogus worker frames during the run; 2 honest clients x ${JOBS} jobs of 2 steps (tiny set), 2 workers; bench/hostile.ts`;
    return [
      judged(16, 'hostile load: honest jobs finished exactly once', once, 'jobs', '>=', ids.length, { note }),
      judged(16, 'hostile load: honest queue latency accepted -> started, p99', quantile(lat, 0.99), 'ms', '<=', 250, { note: `p50 ${quantile(lat, 0.5).toFixed(0)} ms, max ${lat.at(-1)} ms; without the flood on the same run: p50 ${quantile(calmLat, 0.5).toFixed(0)} ms, p99 ${quantile(calmLat, 0.99).toFixed(0)} ms` }),
      info(16, 'hostile load: honest queue latency p99 without the flood (same run)', quantile(calmLat, 0.99), 'ms'),
      info(16, 'hostile load: invalid 2,000-node prompts refused per second', invalid / seconds, 'prompts/s', { note: `${invalid} in ${seconds.toFixed(1)} s` }),
    ];
  } finally {
    flooding = false;
    for (const ws of held) ws.close();
    await Promise.all(workers.map((w) => w.stop()));
    await server?.close();
    await redis.stop();
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  for (const f of await benchHostile()) console.log(`${f.name}: ${typeof f.value === 'number' ? f.value.toFixed(1) : f.value} ${f.unit} (${f.target}) ${f.status}${f.note ? ` - ${f.note}` : ''}`);
}
