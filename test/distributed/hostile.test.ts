// Scale-out under a hostile peer (issue 26), with a real redis-server and real `charflow worker`
// processes: frames that used to end the server, a client token used as a worker's, fake workers
// speaking for jobs they do not hold, resource exhaustion, Redis losing or holding forged data,
// stale workers after SIGSTOP and a Redis restart, stopping without Redis, and worker paths in the history.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Queue, Worker as BullWorker } from 'bullmq';
import fc from 'fast-check';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { startServer, type RunningServer } from '../../editor/server/server.ts';
import { resolvePaths } from '../../engine/paths.ts';
import { bullId, queueName, redisOptions, STOP_GRACE_MS } from '../../engine/queue/bullmq.ts';
import type { BullmqDispatcher } from '../../engine/queue/bullmq-dispatcher.ts';
import type { Job } from '../../engine/queue/index.ts';
import { ROOT, startRedis, startWorker, tempDir, tinyModels, waitFor, type RedisProcess, type WorkerProcess } from './harness.ts';

type Wf = { nodes: Record<string, { type: string; inputs: Record<string, unknown> }> };
const BASE = JSON.parse(readFileSync(path.join(ROOT, 'workflows/instantcharacter.json'), 'utf8')) as Wf;
const CLIENT = 'client-secret';
const WORKER = 'worker-secret';
const auth = (t: string): Record<string, string> => ({ authorization: `Bearer ${t}` });

function workflow(seed: number, steps: number): Wf {
  const wf = structuredClone(BASE);
  Object.assign(Object.values(wf.nodes).find((n) => n.type === 'DiTSample')!.inputs, { seed, steps, width: 64, height: 64 });
  return wf;
}

let models: string;
const cleanup: (() => Promise<void> | void)[] = [];
beforeAll(async () => {
  models = await tinyModels(tempDir('models'));
});
afterAll(async () => {
  for (const f of cleanup.reverse()) await Promise.resolve(f()).catch(() => {});
});

interface Served {
  server: RunningServer;
  log: string[];
  data: string;
}

async function serve(redisUrl: string, extra: Partial<Parameters<typeof startServer>[0]> = {}): Promise<Served> {
  const log: string[] = [];
  const data = tempDir('hostile');
  const server = await startServer({
    paths: resolvePaths({ data, models }),
    port: 0,
    staticDir: null,
    queueUrl: redisUrl,
    device: 'cpu',
    token: CLIENT,
    workerToken: WORKER,
    log: (m) => void log.push(m),
    ...extra,
  });
  cleanup.push(() => server.close());
  return { server, log, data };
}

function worker(name: string, redisUrl: string, server: RunningServer, env?: Record<string, string>): WorkerProcess {
  const w = startWorker(name, { queue: redisUrl, server: server.url, token: WORKER, models, threads: 1, ...(env ? { env } : {}) });
  cleanup.push(() => w.stop());
  return w;
}

async function submit(server: RunningServer, wf: Wf, clientId?: string): Promise<string> {
  const res = await fetch(`${server.url}prompt`, { method: 'POST', headers: { 'content-type': 'application/json', ...auth(CLIENT) }, body: JSON.stringify({ prompt: wf, ...(clientId ? { client_id: clientId } : {}) }) });
  expect(res.status).toBe(200);
  return ((await res.json()) as { prompt_id: string }).prompt_id;
}

function finished(server: RunningServer, id: string): Job | undefined {
  const j = server.queue.get(id);
  return j && j.finishedAt !== null ? j : undefined;
}

const wsUrl = (server: RunningServer, p: string): string => `${server.url.replace('http', 'ws')}${p}`;

/** Opens a socket; resolves with it open, or with the refusal's HTTP status. */
function open(url: string, token: string): Promise<WebSocket | number> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, { headers: auth(token) });
    ws.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
    ws.on('open', () => {
      void closed(ws);
      resolve(ws);
    });
    ws.on('error', () => resolve(0));
  });
}

const closes = new WeakMap<WebSocket, Promise<{ code: number; reason: string }>>();

/** How the server closed a socket (recorded from the moment it opened). */
function closed(ws: WebSocket): Promise<{ code: number; reason: string }> {
  let p = closes.get(ws);
  if (!p) {
    p = new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
    closes.set(ws, p);
  }
  return p;
}

/** A fake worker: hello sent, every server frame kept. */
async function fakeWorker(server: RunningServer, name: string, sets = ['tiny']): Promise<{ ws: WebSocket; got: Record<string, unknown>[] }> {
  const ws = (await open(wsUrl(server, 'ws/worker'), WORKER)) as WebSocket;
  const got: Record<string, unknown>[] = [];
  ws.on('message', (d) => got.push(JSON.parse(d.toString()) as Record<string, unknown>));
  ws.send(JSON.stringify({ type: 'hello', name, device: 'cpu', sets, loaded: [] }));
  await waitFor('welcome', () => got.some((m) => m.type === 'welcome') || ws.readyState !== ws.OPEN);
  cleanup.push(() => ws.close());
  return { ws, got };
}

/** A ComfyUI WebSocket client: every JSON message, by prompt id. */
async function comfyClient(server: RunningServer, clientId: string): Promise<{ ws: WebSocket; byPrompt: Map<string, string[]> }> {
  const ws = (await open(wsUrl(server, `ws?clientId=${clientId}`), CLIENT)) as WebSocket;
  const byPrompt = new Map<string, string[]>();
  ws.on('message', (d, binary) => {
    if (binary) return;
    const m = JSON.parse(d.toString()) as { type: string; data?: { prompt_id?: string } };
    const id = m.data?.prompt_id;
    if (id) byPrompt.set(id, [...(byPrompt.get(id) ?? []), m.type]);
  });
  cleanup.push(() => ws.close());
  return { ws, byPrompt };
}

const TERMINAL = ['execution_success', 'execution_error', 'execution_interrupted'];

async function systemStats(server: RunningServer): Promise<number> {
  return (await fetch(`${server.url}system_stats`, { headers: auth(CLIENT) })).status;
}

async function lockOf(redis: Redis, id: string): Promise<string | null> {
  return redis.get(`bull:${queueName('tiny')}:${bullId(id)}:lock`);
}

describe('scale-out under a hostile peer', () => {
  let redis: RedisProcess;
  let raw: Redis;
  let s: Served;
  let w1: WorkerProcess;

  beforeAll(async () => {
    redis = await startRedis();
    cleanup.push(() => redis.stop());
    raw = new Redis(redisOptions(redis.url));
    cleanup.push(() => void raw.disconnect());
    s = await serve(redis.url, { limits: { maxConnections: 12, maxConnectionsPerClient: 6, maxWorkerConnections: 40 } });
  });

  it('no frame ends the process: the reported frames and thousands of generated ones on every WebSocket', async () => {
    const { server } = s;
    // The two frames that ended the server: a set name outside the charset, a preview whose base64 is a number.
    const a = await fakeWorker(server, 'evil-1', ['../../bad set']);
    expect(await closed(a.ws)).toEqual({ code: 1008, reason: 'invalid "hello": "sets.0" must match pattern "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"' });
    const id = await submit(server, workflow(1, 2));
    const b = await fakeWorker(server, 'evil-2');
    b.ws.send(JSON.stringify({ type: 'started', jobId: id, lock: 'forged' }));
    await waitFor('cancel for a job it does not hold', () => b.got.some((m) => m.type === 'cancel' && m.jobId === id));
    b.ws.send(JSON.stringify({ type: 'event', jobId: id, lock: 'forged', event: { type: 'node_progress', runId: id, time: 1, nodeId: '6', nodeType: 'DiTSample', step: 1, total: 2, preview: { format: 'png', base64: 5 } } }));
    expect(await closed(b.ws)).toEqual({ code: 1008, reason: 'invalid "event": event "preview.base64" must be string' });

    const jobIds = [id, 'x', ''];
    const str = fc.oneof(fc.string({ maxLength: 20 }), fc.constantFrom(...jobIds), fc.constant('../../bad set'));
    const anyValue = fc.oneof(fc.anything({ maxDepth: 2 }), str, fc.integer(), fc.constant(null));
    const event = fc.record(
      {
        type: fc.constantFrom('run_started', 'node_started', 'node_progress', 'node_finished', 'node_failed', 'run_finished', 'run_cancelled', 'bogus'),
        runId: fc.oneof(fc.constant(id), str),
        time: anyValue,
        nodeId: anyValue,
        nodeType: anyValue,
        step: anyValue,
        total: anyValue,
        preview: fc.record({ format: fc.oneof(fc.constantFrom('png', 'jpeg'), str), base64: anyValue }, { requiredKeys: [] }),
        outputs: fc.oneof(anyValue, fc.record({ images: fc.array(fc.record({ filename: str, subfolder: str, type: str }), { maxLength: 2 }) })),
        message: anyValue,
        status: anyValue,
      },
      { requiredKeys: ['type'] },
    );
    const workerFrame = fc.oneof(
      fc.record(
        {
          type: fc.constantFrom('hello', 'status', 'started', 'event', 'sync', 'finished', 'cancel', '__proto__', 'constructor'),
          jobId: fc.oneof(fc.constant(id), str),
          lock: str,
          name: str,
          device: anyValue,
          sets: fc.oneof(fc.array(str, { maxLength: 20 }), anyValue),
          loaded: fc.oneof(fc.array(str, { maxLength: 3 }), anyValue),
          current: anyValue,
          event: fc.oneof(event, anyValue),
        },
        { requiredKeys: ['type'] },
      ).map((m) => JSON.stringify(m)),
      fc.json(),
      fc.string({ maxLength: 50 }),
    );
    const clientFrame = fc.oneof(
      fc.record(
        { id: str, type: fc.constantFrom('catalog', 'run', 'cancel', 'queue', 'workflows.load', 'workflows.save', 'feature_flags', 'toString'), workflow: anyValue, runId: str, name: str, targets: anyValue, data: anyValue },
        { requiredKeys: ['type'] },
      ).map((m) => JSON.stringify(m)),
      fc.json(),
      fc.string({ maxLength: 50 }),
    );

    // /ws/worker: each connection says hello first, then gets frames until it is closed.
    const frames = fc.sample(workerFrame, { numRuns: 2000, seed: 26 });
    let ws: WebSocket | undefined;
    const ended: Promise<{ code: number; reason: string }>[] = [];
    for (const [i, f] of frames.entries()) {
      if (!ws || ws.readyState !== ws.OPEN) {
        if (ws) ended.push(closed(ws));
        ws = (await fakeWorker(server, `fuzz-${i}`)).ws;
      }
      ws.send(f);
      if (i % 50 === 0) await new Promise((r) => setTimeout(r, 5));
    }
    ws?.close();
    // Bad frames closed their connection, each with the policy code and a reason.
    expect(ended.length).toBeGreaterThan(10);
    for (const e of await Promise.all(ended)) expect(e.code === 1008 && e.reason.length > 0, JSON.stringify(e)).toBe(true);
    // The client sockets: the editor's and ComfyUI's.
    for (const p of ['ws/editor', 'ws?clientId=fuzz']) {
      let c: WebSocket | undefined;
      for (const f of fc.sample(clientFrame, { numRuns: 1000, seed: 27 })) {
        while (!c || c.readyState !== c.OPEN) {
          const o = await open(wsUrl(server, p), CLIENT);
          if (typeof o === 'number') await new Promise((r) => setTimeout(r, 50)); // the address's budget: a closed one frees up
          else c = o;
        }
        c.send(f);
      }
      c?.close();
    }
    await new Promise((r) => setTimeout(r, 500));
    expect(await systemStats(server)).toBe(200);
    expect(server.queue.get(id)!.status).toBe('pending'); // no fake worker moved it
    expect(s.log.some((l) => l.includes(`refused "started" for job ${id} from worker evil-2`))).toBe(true);
  }, 240_000);

  it('workers and clients have separate credentials: the client token opens no worker path, the worker token no client path', async () => {
    const { server } = s;
    expect(await open(wsUrl(server, 'ws/worker'), CLIENT)).toBe(401);
    for (const [method, p] of [['GET', 'api/worker/ping'], ['GET', `api/worker/inputs/${'0'.repeat(64)}?path=x.png`], ['PUT', 'api/worker/outputs?job=a&lock=b&node=1&index=0&type=output&name=x.png']] as const) {
      const r = await fetch(`${server.url}${p}`, { method, headers: auth(CLIENT), ...(method === 'PUT' ? { body: 'x' } : {}) });
      expect(r.status, p).toBe(401);
    }
    // ?token= with the client token does not help either, and sets no cookie there.
    const q = await fetch(`${server.url}api/worker/ping?token=${CLIENT}`);
    expect(q.status).toBe(401);
    expect(q.headers.get('set-cookie')).toBeNull();
    expect((await fetch(`${server.url}api/worker/ping`, { headers: auth(WORKER) })).status).toBe(200);
    expect((await fetch(`${server.url}prompt`, { method: 'POST', headers: { 'content-type': 'application/json', ...auth(WORKER) }, body: JSON.stringify({ prompt: workflow(1, 1) }) })).status).toBe(401);
    expect(await open(wsUrl(server, 'ws/editor'), WORKER)).toBe(401);
    await expect(startServer({ paths: resolvePaths({ data: tempDir('same'), models }), port: 0, staticDir: null, queueUrl: redis.url, token: 'same', workerToken: 'same', log: () => {} })).rejects.toThrow(
      /the worker token must differ from the client token/,
    );
    await expect(startServer({ paths: resolvePaths({ data: tempDir('open'), models }), host: '0.0.0.0', port: 0, staticDir: null, queueUrl: redis.url, token: 'c', log: () => {} })).rejects.toThrow(
      /without a worker token: pass --worker-token/,
    );
  });

  it('bounds what a worker may open: set names, shared Redis connections per set, separate socket budgets', async () => {
    const { server } = s;
    const dispatcher = server.dispatcher as BullmqDispatcher;
    const many = await fakeWorker(server, 'many', Array.from({ length: 100 }, (_, i) => `s${i}`));
    expect((await closed(many.ws)).reason).toBe('invalid "hello": "sets" must NOT have more than 16 items');
    const unknown = await fakeWorker(server, 'unknown', Array.from({ length: 16 }, (_, i) => `s${i}`));
    expect(dispatcher.workers().find((w) => w.name === 'unknown')!.sets).toEqual([]);
    unknown.ws.close();
    const clients = async (): Promise<number> => String(await raw.call('CLIENT', 'LIST')).trim().split('\n').length;
    const before = await clients();
    const fakes = [];
    for (let i = 0; i < 20; i++) fakes.push(await fakeWorker(server, `same-${i}`));
    expect(await clients()).toBeLessThanOrEqual(before + 1); // one set, one set of connections, however many workers
    expect(dispatcher.openSets()).toEqual(['tiny']);
    // Client sockets: at most 6 from this address; workers still register past the clients' budget.
    const held: WebSocket[] = [];
    for (let i = 0; i < 6; i++) held.push((await open(wsUrl(server, 'ws/editor'), CLIENT)) as WebSocket);
    expect(await open(wsUrl(server, 'ws/editor'), CLIENT)).toBe(429);
    const late = await fakeWorker(server, 'late');
    expect(late.got.some((m) => m.type === 'welcome')).toBe(true);
    for (const h of held) h.close();
    for (const f of [...fakes, late]) f.ws.close();
    // The last worker of a set gone and no job of it waiting (the pending one from the fuzz test is cancelled): its resources close.
    for (const j of server.queue.pending()) server.queue.cancel(j.id);
    await waitFor('set released', () => dispatcher.openSets().length === 0, 10_000);
    // Its Redis connections close asynchronously (QUIT): Redis lists them a moment longer.
    await waitFor(`fewer Redis clients than the ${before} before the workers came`, async () => (await clients()) < before, 10_000);
  }, 120_000);

  it('accepts started, events and outputs only from the worker holding the job\'s lock; nothing else reaches clients or history', async () => {
    const { server } = s;
    const comfy = await comfyClient(server, 'honest');
    w1 = worker('w1', redis.url, server);
    await waitFor('w1', () => server.dispatcher.workers().some((w) => w.name === 'w1'), 60_000);
    const id = await submit(server, workflow(50, 100), 'honest');
    await waitFor('running on w1', () => server.queue.get(id)?.worker === 'w1' && comfy.byPrompt.get(id)?.includes('progress'), 60_000, 10);
    const lock = await lockOf(raw, id);
    expect(lock).toMatch(/:\d+$/);
    const fake = await fakeWorker(server, 'intruder');
    const images = { images: [{ filename: `x_${id}_9_0.png`, subfolder: '', type: 'output' }] };
    fake.ws.send(JSON.stringify({ type: 'started', jobId: id, lock: 'forged:1' }));
    fake.ws.send(JSON.stringify({ type: 'event', jobId: id, lock: 'forged:1', event: { type: 'node_finished', runId: id, time: Date.now(), nodeId: '9', nodeType: 'SaveImage', ms: 1, outputs: images } }));
    fake.ws.send(JSON.stringify({ type: 'event', jobId: id, lock: 'forged:1', event: { type: 'run_finished', runId: id, time: Date.now(), status: 'done', ms: 1, counts: { done: 1, cached: 0, failed: 0, skipped: 0, cancelled: 0 } } }));
    // A forged output, then the real lock with bytes that are not the PNG they claim to be.
    const put = (l: string, body: Buffer | string, name = 'x.png'): Promise<Response> =>
      fetch(`${server.url}api/worker/outputs?job=${id}&lock=${encodeURIComponent(l)}&node=9&index=0&type=output&name=${name}`, {
        method: 'PUT',
        headers: auth(WORKER),
        body: typeof body === 'string' ? body : new Uint8Array(body),
      });
    expect((await put('forged:1', readFileSync(path.join(ROOT, 'workflows/assets/character.png')))).status).toBe(409);
    expect((await put(lock!, 'not a picture')).status).toBe(415);
    expect((await put(lock!, readFileSync(path.join(ROOT, 'workflows/assets/character.png')), 'x.jpg')).status).toBe(415);
    const job = await waitFor('done', () => finished(server, id), 90_000);
    expect(job).toMatchObject({ status: 'done', worker: 'w1', attempts: 1 });
    await new Promise((r) => setTimeout(r, 500));
    const seen = comfy.byPrompt.get(id)!;
    expect(seen.filter((t) => TERMINAL.includes(t))).toEqual(['execution_success']);
    expect(fake.got.some((m) => m.type === 'cancel' && m.jobId === id)).toBe(true);
    expect(s.log.filter((l) => l.includes(`for job ${id} from worker intruder`)).length).toBe(3);
    // The history's picture is the worker's own upload, a real PNG.
    const outs = Object.values(job.outputs).flatMap((o) => o.images ?? []);
    expect(outs).toHaveLength(1);
    expect(readFileSync(path.join(s.data, 'outputs', outs[0]!.filename)).subarray(1, 4).toString()).toBe('PNG');
    expect(job.messages.filter(([t]) => t === 'run_finished')).toHaveLength(1);
  }, 180_000);

  it('reconciles with Redis: pending jobs lost by FLUSHALL come back within 30 s; damaged, forged and duplicate entries fail once with a reason', async () => {
    const { server } = s;
    // w1 busy with a long job; three more wait.
    const long = await submit(server, workflow(60, 120));
    await waitFor('long running', () => server.queue.get(long)?.status === 'running', 60_000);
    const waiting = [await submit(server, workflow(61, 2)), await submit(server, workflow(62, 2)), await submit(server, workflow(63, 2))];
    const q = new Queue(queueName('tiny'), { connection: redisOptions(redis.url) });
    cleanup.push(() => q.close());
    await waitFor('in Redis', async () => (await q.getWaitingCount()) === 3);
    await raw.flushall();
    const flushed = Date.now();
    // Back means in Redis again, or already taken by a worker since (a re-added job can run and leave Redis between two looks).
    const back = new Set<string>();
    const states: string[] = [];
    await waitFor('re-added', async () => {
      const now = await Promise.all(waiting.map((id) => q.getJobState(bullId(id))));
      waiting.forEach((id, i) => {
        if (now[i] !== 'unknown' || server.queue.get(id)!.status !== 'pending') back.add(id);
      });
      states.push(`${Date.now() - flushed} ms: Redis ${now.join(' ')}; server ${[long, ...waiting].map((id) => server.queue.get(id)!.status).join(' ')}`);
      return back.size === waiting.length;
    }, 30_000, 200).catch((err: Error) => {
      throw new Error(`${err.message}\n${states.slice(-20).join('\n')}\nWORKER:\n${w1.output()}\nSERVER:\n${s.log.slice(-40).join('\n')}`);
    });
    expect(Date.now() - flushed).toBeLessThan(30_000);
    for (const id of [long, ...waiting]) expect((await waitFor('finished', () => finished(server, id), 120_000)).status).toBe('done');
    expect(server.queue.get(waiting[0]!)!.attempts).toBe(1);

    // No worker while the entries are changed.
    await w1.stop();
    // Someone with Redis access completes a job with a return value charflow never writes.
    const forgedResult = await submit(server, workflow(72, 2));
    await waitFor('in Redis', async () => (await q.getWaitingCount()) === 1);
    const thief = new BullWorker(queueName('tiny'), null, { connection: redisOptions(redis.url), autorun: false });
    cleanup.push(() => thief.close());
    const taken = await thief.getNextJob('thief-token', { block: false });
    expect(taken!.id).toBe(bullId(forgedResult));
    await taken!.moveToCompleted({ status: 'running', outputs: 'everything' }, 'thief-token', false);
    await thief.close();
    // Data that is not JSON, and a copy of a job under another id.
    const damaged = await submit(server, workflow(70, 2));
    const victim = await submit(server, workflow(71, 2));
    await waitFor('in Redis', async () => (await q.getWaitingCount()) === 2);
    await raw.hset(`bull:${queueName('tiny')}:${bullId(damaged)}`, 'data', '{not json');
    const victimData = JSON.parse((await raw.hget(`bull:${queueName('tiny')}:${bullId(victim)}`, 'data'))!) as Record<string, unknown>;
    await q.add('run', victimData, { jobId: 'j.forged-copy', attempts: 1 });

    w1 = worker('w1b', redis.url, server);
    const d = await waitFor('damaged failed', () => finished(server, damaged), 60_000).catch((err: Error) => {
      throw new Error(`${err.message}\nWORKER:\n${w1.output()}\nSERVER:\n${s.log.slice(-30).join('\n')}`);
    });
    expect(d.status).toBe('failed');
    expect(d.error).toMatch(/data (in Redis )?is not JSON/);
    const f = await waitFor('forged result failed', () => finished(server, forgedResult), 60_000);
    expect(f).toMatchObject({ status: 'failed', error: expect.stringMatching(/^the job's stored result is not valid/) });
    const v = await waitFor('victim', () => finished(server, victim), 60_000);
    expect(v).toMatchObject({ status: 'done', attempts: 1 });
    await waitFor('forged copy failed', async () => (await q.getJobState('j.forged-copy')) === 'failed', 30_000);
    expect((await q.getJob('j.forged-copy'))!.failedReason).toBe("the job's data names another job; it is not run");
    expect(server.queue.get(victim)!.attempts).toBe(1);
  }, 300_000);

  it('keeps worker file paths out of the history: failures name the node and the input', async () => {
    const { server } = s;
    const wf = workflow(80, 2);
    const load = Object.entries(wf.nodes).find(([, n]) => n.type === 'LoadCharacter')!;
    load[1].inputs.path = 'nowhere/missing.png';
    const id = await submit(server, wf);
    const job = await waitFor('failed', () => finished(server, id), 60_000);
    expect(job.status).toBe('failed');
    const text = JSON.stringify(job.messages) + String(job.error) + JSON.stringify(job.nodes);
    expect(text).toContain(`node ${load[0]} (LoadCharacter)`);
    expect(text).toContain('missing.png');
    expect(text).not.toMatch(/\/tmp\/|charflow-worker|by-hash|\.ts:\d+/);
    const hist = await (await fetch(`${server.url}history/${id}`, { headers: auth(CLIENT) })).text();
    expect(hist).not.toMatch(/\/tmp\/|charflow-worker/);
  }, 90_000);
});

describe('stale workers', () => {
  it('a worker that lost its lock (SIGSTOP, then a Redis restart) sends nothing more; clients see one terminal event per job; without Redis everything still stops', async () => {
    const redis = await startRedis();
    const timing = { lockDurationMs: 5000, stalledIntervalMs: 2500 };
    const env = { CHARFLOW_LOCK_DURATION_MS: '5000', CHARFLOW_STALLED_INTERVAL_MS: '2500' };
    const { server, log } = await serve(redis.url, { timing });
    const comfy = await comfyClient(server, 'watcher');
    const a = worker('a', redis.url, server, env);
    const b = worker('b', redis.url, server, env);
    await waitFor('a and b', () => ['a', 'b'].every((n) => server.dispatcher.workers().some((w) => w.name === n)), 60_000);

    // SIGSTOP the worker running the job until the job has moved to the other one, then SIGCONT.
    const id = await submit(server, workflow(90, 150), 'watcher');
    const first = await waitFor('sampling', () => (comfy.byPrompt.get(id)?.includes('progress') ? server.queue.get(id)?.worker : undefined), 60_000, 10);
    const stopped = first === 'a' ? a : b;
    stopped.child.kill('SIGSTOP');
    await waitFor('moved', () => server.queue.get(id)?.worker !== first && server.queue.get(id)?.status === 'running', 60_000, 50);
    stopped.child.kill('SIGCONT');
    const job = await waitFor('done', () => finished(server, id), 120_000);
    expect(job.status, `${job.error}\nA:\n${a.output()}\nB:\n${b.output()}\nSERVER:\n${log.join('\n')}`).toBe('done');
    await new Promise((r) => setTimeout(r, 3000)); // whatever the paused worker still had to say
    expect(comfy.byPrompt.get(id)!.filter((t) => TERMINAL.includes(t))).toEqual(['execution_success']);
    expect(stopped.output()).toMatch(/lost its lock/);

    // Redis restarts (AOF) while a job runs: still one terminal event.
    const id2 = await submit(server, workflow(91, 150), 'watcher');
    await waitFor('sampling 2', () => comfy.byPrompt.get(id2)?.includes('progress'), 60_000, 10);
    await redis.stop();
    await new Promise((r) => setTimeout(r, 1500));
    const again = await startRedis({ port: redis.port, dir: redis.dir });
    cleanup.push(() => again.stop());
    const job2 = await waitFor('done 2', () => finished(server, id2), 180_000);
    expect(['done', 'failed']).toContain(job2.status);
    await new Promise((r) => setTimeout(r, 3000));
    const terminal2 = comfy.byPrompt.get(id2)!.filter((t) => TERMINAL.includes(t));
    expect(terminal2).toHaveLength(1);
    expect(terminal2[0]).toBe(job2.status === 'done' ? 'execution_success' : 'execution_error');
    expect(log.join('\n')).not.toMatch(/request failed/);

    // Redis goes away for good: the workers (SIGTERM) and the server still stop, after the grace at most.
    await again.stop();
    await new Promise((r) => setTimeout(r, 1500)); // their connections notice
    const t0 = Date.now();
    await Promise.all([a.stop(), b.stop(), server.close()]);
    expect(Date.now() - t0).toBeLessThan(STOP_GRACE_MS + 10_000);
    for (const w of [a, b]) expect(await w.exited).toBe(0);
    // Their BullMQ connections wait for Redis to say goodbye: the grace ran out and they were dropped.
    expect([a, b].some((w) => /Redis did not answer within \d+ s while stopping/.test(w.output())), a.output() + b.output()).toBe(true);
  }, 400_000);
});
