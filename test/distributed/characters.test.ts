// Saved characters in scale-out mode, with real processes: a redis-server of the test's own, the server in
// this process and one `charflow worker --sets tiny` child process that shares no folder with it. A job with
// a saved character fetches the character file by content hash into the worker's own inputs cache, and the
// worker loads neither vision encoder (its runtime log lists every model it loads).
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type RunningServer } from '../../editor/server/server.ts';
import { resolvePaths } from '../../engine/paths.ts';
import type { Job } from '../../engine/queue/index.ts';
import { main } from '../../cli/main.ts';
import { freePort, ROOT, startRedis, startWorker, tempDir, tinyModels, waitFor, type RedisProcess, type WorkerProcess } from './harness.ts';

type Wf = { nodes: Record<string, { type: string; inputs: Record<string, unknown> }> };

const cleanup: (() => Promise<void> | void)[] = [];
let models: string;
let redis: RedisProcess;
let server: RunningServer;
let data: string;
let workerData: string;
let w: WorkerProcess;

const quiet = { write: () => true };

beforeAll(async () => {
  models = await tinyModels(tempDir('models'));
  data = tempDir('server');
  // The character, saved on the server's side only.
  const code = await main(['characters', 'add', 'hero', path.join(ROOT, 'workflows/assets/character.png'), '--data', data, '--models', models, '--device', 'cpu'], { stdout: quiet, stderr: quiet });
  if (code !== 0) throw new Error(`characters add: exit ${code}`);
  redis = await startRedis();
  cleanup.push(() => redis.stop());
  server = await startServer({ paths: resolvePaths({ data, models }), port: await freePort(), staticDir: null, queueUrl: redis.url, device: 'cpu', log: () => {} });
  cleanup.push(() => server.close());
  workerData = tempDir('worker');
  // A worker started with --sets, serving saved characters only.
  w = startWorker('chars', { queue: redis.url, server: server.url, models, data: workerData, threads: 1, sets: 'tiny' });
  cleanup.push(() => w.stop());
  await waitFor('worker', () => server.dispatcher.workers().some((x) => x.name === 'chars'), 60_000);
}, 180_000);

afterAll(async () => {
  for (const f of cleanup.reverse()) await Promise.resolve(f()).catch(() => {});
});

function finished(id: string): Job | undefined {
  const j = server.queue.get(id);
  return j && j.finishedAt !== null ? j : undefined;
}

async function submit(wf: Wf): Promise<string> {
  const res = await fetch(`${server.url}prompt`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt: wf }) });
  expect(res.status, await res.clone().text()).toBe(200);
  return ((await res.json()) as { prompt_id: string }).prompt_id;
}

describe('saved characters on a worker', () => {
  it('runs the storyboard: the character file travels by hash, and the worker loads no vision encoder', async () => {
    const wf = JSON.parse(readFileSync(path.join(ROOT, 'workflows/storyboard.json'), 'utf8')) as Wf;
    for (const n of Object.values(wf.nodes)) if (n.type === 'DiTSample') Object.assign(n.inputs, { width: 64, height: 64, steps: 2 });
    const id = await submit(wf);
    const job = await waitFor('storyboard job', () => finished(id), 120_000);
    expect(job.status, job.error ?? '').toBe('done');
    expect(job.worker).toBe('chars');
    const images = Object.values(job.outputs).flatMap((o) => o.images ?? []);
    expect(images).toHaveLength(4);

    const file = path.join(data, 'characters', 'hero.safetensors');
    const sha = createHash('sha256').update(readFileSync(file)).digest('hex');
    expect(readFileSync(path.join(workerData, 'inputs', 'by-hash', `${sha}.safetensors`)).equals(readFileSync(file))).toBe(true);

    const loaded = [...w.output().matchAll(/runtime: loaded (\S+?)\.onnx/g)].map((m) => path.basename(m[1]!));
    expect(loaded).toEqual(expect.arrayContaining(['flux', 'adapter_time', 't5', 'clip', 'vae']));
    expect(loaded).not.toContain('siglip');
    expect(loaded).not.toContain('dinov2');
    expect(loaded).not.toContain('adapter_static');
  }, 180_000);

  it('a saved character the server does not have fails on the worker with the node\'s own message', async () => {
    const wf = JSON.parse(readFileSync(path.join(ROOT, 'workflows/storyboard.json'), 'utf8')) as Wf;
    for (const n of Object.values(wf.nodes)) if (n.type === 'SavedCharacter') n.inputs.name = 'nobody';
    const id = await submit(wf);
    const job = await waitFor('failing job', () => finished(id), 60_000);
    expect(job.status).toBe('failed');
    expect(job.error).toMatch(/no saved character named "nobody"/);
  }, 120_000);
});
