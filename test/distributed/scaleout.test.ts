// Scale-out on BullMQ, with real processes: a redis-server of the test's own, the server (in this
// process, so its queue can be inspected) and `charflow worker` child processes on the tiny set.
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { Job as BullJob, Queue } from 'bullmq';
import { Client } from '@stable-canvas/comfyui-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { startServer, type RunningServer } from '../../editor/server/server.ts';
import { resolvePaths } from '../../engine/paths.ts';
import { bullId } from '../../engine/queue/bullmq-dispatcher.ts';
import { queueName, redisOptions } from '../../engine/queue/bullmq.ts';
import type { Job } from '../../engine/queue/index.ts';
import { validateWorkflow, WorkflowError } from '../../engine/workflow/index.ts';
import { main } from '../../cli/main.ts';
import { nodeRegistry } from '../../nodes/registry.ts';
import { freePort, ROOT, startRedis, startWorker, tempDir, tinyModels, waitFor, type RedisProcess, type WorkerProcess } from './harness.ts';

type Wf = { nodes: Record<string, { type: string; inputs: Record<string, unknown> }> };
const BASE = JSON.parse(readFileSync(path.join(ROOT, 'workflows/instantcharacter.json'), 'utf8')) as Wf;

/** The default workflow at 64x64 (fast on the tiny set), with its own seed so nothing comes from a cache. */
function workflow(seed: number, steps: number): Wf {
  const wf = structuredClone(BASE);
  const sample = Object.values(wf.nodes).find((n) => n.type === 'DiTSample')!;
  Object.assign(sample.inputs, { seed, steps, width: 64, height: 64 });
  return wf;
}

const registry = nodeRegistry();
let models: string;
const cleanup: (() => Promise<void> | void)[] = [];

beforeAll(async () => {
  models = await tinyModels(tempDir('models'));
});

afterAll(async () => {
  for (const f of cleanup.reverse()) await Promise.resolve(f()).catch(() => {});
});

function finished(server: RunningServer, id: string): Job | undefined {
  const j = server.queue.get(id);
  return j && j.finishedAt !== null ? j : undefined;
}

async function submit(server: RunningServer, wf: Wf): Promise<string> {
  const res = await fetch(`${server.url}prompt`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt: wf }) });
  expect(res.status).toBe(200);
  return ((await res.json()) as { prompt_id: string }).prompt_id;
}

async function serve(redisUrl: string, data: string, extra: { token?: string; workerToken?: string; timing?: { lockDurationMs: number; stalledIntervalMs: number } } = {}): Promise<{ server: RunningServer; log: string[] }> {
  const log: string[] = [];
  const server = await startServer({ paths: resolvePaths({ data, models }), port: 0, staticDir: null, queueUrl: redisUrl, device: 'cpu', log: (m) => void log.push(m), ...extra });
  cleanup.push(() => server.close());
  return { server, log };
}

function worker(name: string, redisUrl: string, server: RunningServer, env?: Record<string, string>, data?: string): WorkerProcess {
  const w = startWorker(name, { queue: redisUrl, server: server.url, models, threads: 1, ...(env ? { env } : {}), ...(data ? { data } : {}) });
  cleanup.push(() => w.stop());
  return w;
}

async function connected(server: RunningServer, ...names: string[]): Promise<void> {
  await waitFor(`workers ${names.join(', ')}`, () => names.every((n) => server.dispatcher.workers().some((w) => w.name === n)), 60_000);
}

describe('scale-out: one server, two worker processes, BullMQ on Redis', () => {
  let redis: RedisProcess;
  let server: RunningServer;
  let data: string;
  let w2: WorkerProcess;

  beforeAll(async () => {
    redis = await startRedis();
    cleanup.push(() => redis.stop());
    data = tempDir('server');
    ({ server } = await serve(redis.url, data));
  });

  it('runs 6 prompts exactly once while a worker is SIGKILLed mid-job; editor and ComfyUI clients see both workers', async () => {
    const w1 = worker('w1', redis.url, server);
    w2 = worker('w2', redis.url, server);
    await connected(server, 'w1', 'w2');

    // An editor tab and a stock ComfyUI client, both listening.
    const editorEvents: { runId: string; type: string }[] = [];
    const statusLines: { name: string; device: string; current: { id: string } | null }[][] = [];
    const editor = new WebSocket(`${server.url.replace('http', 'ws')}ws/editor`);
    editor.on('message', (d) => {
      const m = JSON.parse(d.toString()) as { type: string; runId?: string; event?: { type: string }; items?: [] };
      if (m.type === 'event' && m.runId && m.event) editorEvents.push({ runId: m.runId, type: m.event.type });
      if (m.type === 'workers') statusLines.push(m.items!);
    });
    await new Promise((r) => editor.once('open', r));
    cleanup.push(() => editor.close());
    const comfy = new Client({ api_host: `127.0.0.1:${server.port}`, WebSocket });
    await comfy.connect({ timeout_ms: 10_000 });
    cleanup.push(() => comfy.close());
    const comfyProgress = new Set<string>();
    comfy.on('progress', (p) => {
      if (p.prompt_id) comfyProgress.add(p.prompt_id);
    });

    // Each ComfyUI enqueue resolves when its prompt has succeeded (execution_success + history).
    const results = Array.from({ length: 6 }, (_, i) => comfy.enqueue(workflow(1000 + i, 30) as never, {}));
    const ids = await waitFor('6 accepted', () => {
      const all = [...server.queue.active(), ...server.queue.history()].map((j) => j.id);
      return all.length >= 6 ? all : undefined;
    });

    // Kill w1 while it runs its second job (so both workers have finished work to show), mid-sampling.
    await waitFor('w1 finished a job', () => server.queue.history().some((j) => j.worker === 'w1'), 90_000);
    const victim = await waitFor(
      'w1 sampling a job',
      () => server.queue.running().find((j) => j.worker === 'w1' && editorEvents.some((e) => e.runId === j.id && e.type === 'node_progress')),
      60_000,
      10,
    );
    w1.kill9();
    const killedAt = Date.now();
    await w1.exited;

    await Promise.all(results);
    const jobs = await waitFor('6 finished', () => {
      const h = server.queue.history({ limit: 100 });
      return h.length >= 6 ? h : undefined;
    });
    expect(jobs.map((j) => j.status), JSON.stringify(jobs.map((j) => [j.worker, j.error]))).toEqual(Array(6).fill('done'));
    expect(new Set(jobs.map((j) => j.id))).toEqual(new Set(ids));
    // The killed job moved to w2 within about 30 s and ran again from the start there.
    const moved = server.queue.get(victim.id)!;
    expect(moved.worker).toBe('w2');
    expect(moved.attempts).toBe(2);
    expect(moved.startedAt! - killedAt).toBeLessThan(30_000);
    // One image per job, in the server's data folder, and nothing else there.
    const files = readdirSync(resolvePaths({ data, models }).outputs).filter((f) => f.endsWith('.png'));
    const listed = jobs.flatMap((j) => Object.values(j.outputs).flatMap((o) => o.images ?? []).map((i) => i.filename));
    expect(listed).toHaveLength(6);
    expect(files.sort()).toEqual([...listed].sort());
    // Named as the embedded runner names them (Save Image's prefix, numbered).
    for (const f of listed) expect(f).toMatch(/^[A-Za-z0-9_-]+_\d{5}\.png$/);
    // Both clients saw progress from both workers.
    const byWorker = (w: string): string[] => jobs.filter((j) => j.worker === w).map((j) => j.id).concat(w === 'w1' ? [victim.id] : []);
    for (const w of ['w1', 'w2']) {
      expect(byWorker(w).some((id) => comfyProgress.has(id)), `ComfyUI progress from ${w}`).toBe(true);
      expect(byWorker(w).some((id) => editorEvents.some((e) => e.runId === id && e.type === 'node_progress')), `editor progress from ${w}`).toBe(true);
    }
    // The editor's status line heard of both workers, their device and their jobs.
    expect(statusLines[0]!.map((w) => w.name).sort()).toEqual(['w1', 'w2']);
    expect(statusLines.some((l) => l.some((w) => w.name === 'w1' && w.device === 'cpu' && w.current !== null))).toBe(true);
    expect(statusLines.at(-1)!.map((w) => w.name)).toEqual(['w2']);
    // /history names the worker.
    const hist = (await (await fetch(`${server.url}history/${victim.id}`)).json()) as Record<string, { worker?: string }>;
    expect(hist[victim.id]!.worker).toBe('w2');
  }, 150_000);

  it('shows connected workers in /system_stats with device, loaded sets and current job', async () => {
    const stats = (await (await fetch(`${server.url}system_stats`)).json()) as { queue: { kind: string; workers: { name: string; device: string; loaded: string[]; sets: string[] }[] } };
    expect(stats.queue.kind).toBe('bullmq');
    const w = stats.queue.workers.find((x) => x.name === 'w2')!;
    expect(w).toMatchObject({ device: 'cpu', sets: ['tiny'], loaded: ['tiny'] });
  });

  it('cancel reaches a job running in another process', async () => {
    const sampling = new Set<string>();
    server.dispatcher.on('event', (job, e) => void (e.type === 'node_progress' && sampling.add(job.id)));
    const id = await submit(server, workflow(77, 200));
    await waitFor('sampling on w2', () => server.queue.get(id)?.worker === 'w2' && sampling.has(id), 30_000, 10);
    const r = await fetch(`${server.url}interrupt`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt_id: id }) });
    expect(((await r.json()) as { interrupted: boolean }).interrupted).toBe(true);
    const job = await waitFor('interrupted', () => finished(server, id), 30_000);
    expect(job.status).toBe('interrupted');
    expect(job.worker).toBe('w2');
  }, 60_000);

  it('validates a job again on the worker: a poisoned Redis entry fails with the server\'s message', async () => {
    await w2.stop(); // nobody takes jobs while the entry is changed
    const id = await submit(server, workflow(5, 4));
    const q = new Queue(queueName('tiny'), { connection: redisOptions(redis.url) });
    cleanup.push(() => q.close());
    const bull = await waitFor('job in Redis', () => BullJob.fromId(q, bullId(id)));
    const poisoned = workflow(5, 4);
    Object.values(poisoned.nodes).find((n) => n.type === 'DiTSample')!.inputs.steps = 100_000;
    await bull.updateData({ ...bull.data, workflow: poisoned });
    const expected = new WorkflowError(validateWorkflow(poisoned, registry).errors).message;
    expect(expected).toMatch(/steps/);

    // And an image path outside the worker's folders, which validation cannot see.
    const id2 = await submit(server, workflow(6, 4));
    const bull2 = await waitFor('job in Redis', () => BullJob.fromId(q, bullId(id2)));
    const escape = workflow(6, 4);
    Object.values(escape.nodes).find((n) => n.type === 'LoadCharacter')!.inputs.path = '/etc/passwd';
    await bull2.updateData({ ...bull2.data, workflow: escape, inputs: [] });

    const w3Data = tempDir('w3');
    const w3 = worker('w3', redis.url, server, undefined, w3Data);
    await connected(server, 'w3');
    const job = await waitFor('failed', () => finished(server, id), 30_000);
    expect(job.status).toBe('failed');
    expect(job.error).toBe(expected);
    const job2 = await waitFor('failed', () => finished(server, id2), 30_000);
    expect(job2.status).toBe('failed');
    expect(job2.error).toMatch(/outside the folders images may be read from/);

    // Affinity: w3 is warm after one real job; a cold w4 joins; while w3 is free it gets the tiny jobs.
    const warmup = await submit(server, workflow(8, 4));
    expect((await waitFor('warm-up', () => finished(server, warmup), 60_000)).worker).toBe('w3');
    worker('w4', redis.url, server, { CHARFLOW_COLD_DELAY_MS: '3000' }); // a margin for a loaded CI machine
    await connected(server, 'w4');
    for (let i = 0; i < 3; i++) {
      const jid = await submit(server, workflow(20 + i, 4));
      const j = await waitFor('affinity job', () => finished(server, jid), 30_000);
      expect(j.status).toBe('done');
      expect(j.worker).toBe('w3');
    }

    // An uploaded input travels by content hash into the worker's own cache; nothing else is shared.
    const png = readFileSync(path.join(ROOT, 'workflows/assets/character.png'));
    const form = new FormData();
    form.append('image', new Blob([png], { type: 'image/png' }), 'hero.png');
    const up = (await (await fetch(`${server.url}upload/image`, { method: 'POST', body: form })).json()) as { name: string };
    const withUpload = workflow(40, 4);
    Object.values(withUpload.nodes).find((n) => n.type === 'LoadCharacter')!.inputs.path = up.name;
    const submitted = await submit(server, withUpload);
    const uj = await waitFor('uploaded-input job', () => finished(server, submitted), 30_000);
    expect(uj).toMatchObject({ status: 'done', worker: 'w3' });
    const sha = createHash('sha256').update(readFileSync(path.join(data, 'inputs', up.name))).digest('hex');
    expect(readFileSync(path.join(w3Data, 'inputs', 'by-hash', `${sha}.png`)).equals(readFileSync(path.join(data, 'inputs', up.name)))).toBe(true);
    await w3.stop();
  }, 120_000);
});

describe('scale-out: failures and restarts', () => {
  it('fails a job that stalls twice with a clear reason', async () => {
    const redis = await startRedis();
    cleanup.push(() => redis.stop());
    const timing = { lockDurationMs: 2000, stalledIntervalMs: 1000 };
    const env = { CHARFLOW_LOCK_DURATION_MS: '2000', CHARFLOW_STALLED_INTERVAL_MS: '1000' };
    const { server } = await serve(redis.url, tempDir('stall'), { timing });
    const id = await submit(server, workflow(9, 200));
    let progressOn: string | null = null;
    server.dispatcher.on('event', (job, e) => {
      if (job.id === id && e.type === 'node_progress') progressOn = server.queue.get(id)?.worker ?? null;
    });
    for (const name of ['s1', 's2']) {
      const w = worker(name, redis.url, server, env);
      await waitFor(`${name} sampling`, () => progressOn === name, 60_000, 10);
      w.kill9();
      await w.exited;
    }
    const job = await waitFor('failed', () => finished(server, id), 30_000);
    expect(job.status).toBe('failed');
    expect(job.error).toMatch(/stalled 2 times .*not retried again/);
  }, 120_000);

  it('loses and duplicates nothing when the server and Redis (AOF) restart with jobs pending', async () => {
    const redis = await startRedis();
    const data = tempDir('restart');
    let { server } = await serve(redis.url, data);
    const ids: string[] = [];
    for (let i = 0; i < 4; i++) ids.push(await submit(server, workflow(300 + i, 4)));
    const q = new Queue(queueName('tiny'), { connection: redisOptions(redis.url) });
    await waitFor('in Redis', async () => (await q.getWaitingCount()) === 4);
    await q.close();
    await server.close();
    await redis.stop();

    const again = await startRedis({ port: redis.port, dir: redis.dir });
    cleanup.push(() => again.stop());
    ({ server } = await serve(again.url, data));
    expect(server.queue.pending().map((j) => j.id)).toEqual(ids);
    worker('r1', again.url, server);
    for (const id of ids) expect((await waitFor('done', () => finished(server, id), 60_000)).status).toBe('done');
    const history = server.queue.history({ limit: 100 });
    expect(history.map((j) => j.id).sort()).toEqual([...ids].sort());
    expect(history.every((j) => j.attempts === 1)).toBe(true);
    const files = readdirSync(resolvePaths({ data, models }).outputs).filter((f) => f.endsWith('.png'));
    expect(files).toHaveLength(4);
  }, 120_000);

  it('refuses to start on an unreachable Redis, and warns about a Redis without noeviction/AOF', async () => {
    const port = await freePort();
    await expect(startServer({ paths: resolvePaths({ data: tempDir('nored'), models }), port: 0, staticDir: null, queueUrl: `redis://127.0.0.1:${port}`, log: () => {} })).rejects.toThrow(
      new RegExp(`cannot reach Redis at redis://127.0.0.1:${port}.*Start Redis`),
    );
    const stderr: string[] = [];
    const code = await main(['worker', '--queue', `redis://127.0.0.1:${port}`, '--server', 'http://127.0.0.1:1'], { stderr: { write: (s: string) => void stderr.push(s) } });
    expect(code).toBe(1);
    expect(stderr.join('')).toMatch(/cannot reach Redis/);
    const serveErr: string[] = [];
    const serveCode = await main(['serve', '--queue', `redis://127.0.0.1:${port}`, '--port', '0', '--data', tempDir('nored-cli'), '--models', models], {
      stderr: { write: (s: string) => void serveErr.push(s) },
    });
    expect(serveCode).toBe(1);
    expect(serveErr.join('')).toMatch(/cannot reach Redis at redis:\/\/127.0.0.1/);

    const plain = await startRedis({ aof: false });
    cleanup.push(() => plain.stop());
    const { log } = await serve(plain.url, tempDir('warn'));
    expect(log.join('\n')).toMatch(/no AOF persistence/);
  }, 60_000);

  it('refuses a worker with a wrong token, the client token included', async () => {
    const redis = await startRedis();
    cleanup.push(() => redis.stop());
    const { server } = await serve(redis.url, tempDir('token'), { token: 'right-token', workerToken: 'worker-token' });
    const clientToken: string[] = [];
    expect(await main(['worker', '--queue', redis.url, '--server', server.url, '--worker-token', 'right-token', '--models', models, '--data', tempDir('wt')], { stderr: { write: (s: string) => void clientToken.push(s) } })).toBe(1);
    expect(clientToken.join('')).toMatch(/refused the token \(wrong worker token\); pass the server's --worker-token/);
    const stderr: string[] = [];
    const code = await main(['worker', '--queue', redis.url, '--server', server.url, '--token', 'wrong-token', '--models', models, '--data', tempDir('wt')], {
      stderr: { write: (s: string) => void stderr.push(s) },
    });
    expect(code).toBe(1);
    expect(stderr.join('')).toMatch(/refused the token/);
    const status = await new Promise<number>((resolve) => {
      const ws = new WebSocket(`${server.url.replace('http', 'ws')}ws/worker`, { headers: { authorization: 'Bearer wrong-token' } });
      ws.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
      ws.on('open', () => resolve(101));
    });
    expect(status).toBe(401);
    const input = await fetch(`${server.url}api/worker/inputs/${'0'.repeat(64)}?path=x.png`, { headers: { authorization: 'Bearer wrong-token' } });
    expect(input.status).toBe(401);
    expect(existsSync(server.queue.file)).toBe(true);
  }, 60_000);
});
