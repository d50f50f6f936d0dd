// The durable queue and its runner with the small test nodes (no models): order, restart
// recovery, cancel and interrupt, graceful stop, limits, history, and refused database files.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { JobQueue, QueueDatabaseError, QueueLimitError, QueueRunner, type Job } from '../../engine/queue/index.ts';
import type { RunEvent } from '../../engine/executor/index.ts';
import { validateWorkflow } from '../../engine/workflow/index.ts';
import type { ValidWorkflow } from '../../engine/workflow/types.ts';
import { createTestServices, link, testRegistry, wf, type TestServices } from '../helpers/testnodes.ts';

const registry = testRegistry();
const quiet = { info: () => {}, warn: () => {} };

let dir: string;
let file: string;
const open: JobQueue[] = [];

function openQueue(opts: Parameters<typeof JobQueue.open>[1] = {}): JobQueue {
  const q = JobQueue.open(file, opts);
  open.push(q);
  return q;
}

function valid(raw: unknown): ValidWorkflow {
  const v = validateWorkflow(raw, registry);
  if (!v.ok) throw new Error(v.errors.map((e) => e.message).join('\n'));
  return v.workflow!;
}

/** Const -> Delay (ms) -> Collect. */
function delayed(value: number, ms = 1, steps = 1): ValidWorkflow {
  return valid(wf({ 1: ['Const', { value }], 2: ['Delay', { value: link('1', 'value'), ms, steps }], 3: ['Collect', { value: link('2', 'value') }] }));
}

function runner(queue: JobQueue, services: TestServices = createTestServices()): QueueRunner<TestServices> {
  return new QueueRunner({ queue, registry, services, logger: quiet });
}

function waitFor<T>(fn: () => T | undefined, ms = 10_000): Promise<T> {
  const t0 = Date.now();
  return new Promise((resolve, reject) => {
    const tick = (): void => {
      const v = fn();
      if (v !== undefined && v !== false) return resolve(v);
      if (Date.now() - t0 > ms) return reject(new Error('timed out'));
      setTimeout(tick, 5);
    };
    tick();
  });
}

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'charflow-queue-'));
  file = join(dir, 'queue.db');
});

afterEach(() => {
  for (const q of open.splice(0)) q.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('JobQueue', () => {
  it('stores jobs durably, in order, with monotonic numbers; front jobs go first', () => {
    const q = openQueue();
    const a = q.enqueue({ workflow: delayed(1), source: 'editor', clientId: 'tab-a' });
    const b = q.enqueue({ workflow: delayed(2), source: 'api', clientId: null, extra: { prompt: { x: 1 }, extra_data: {} } });
    const c = q.enqueue({ workflow: delayed(3), source: 'api', front: true });
    expect([a.number, b.number, c.number]).toEqual([1, 2, 3]);
    expect(a.status).toBe('pending');
    expect(q.pending().map((j) => j.id)).toEqual([c.id, a.id, b.id]);
    expect([q.position(c.id), q.position(a.id), q.position(b.id)]).toEqual([0, 1, 2]);
    // Another connection to the file sees it at once: the insert was committed before enqueue returned.
    q.close();
    const raw = new Database(file, { readonly: true });
    expect(raw.prepare('select count(*) as n from jobs').get()).toEqual({ n: 3 });
    raw.close();
    const again = openQueue();
    const got = again.get(b.id)!;
    expect(got.extra).toEqual({ prompt: { x: 1 }, extra_data: {} });
    expect(got.workflow.nodes['2']!.type).toBe('Delay');
    expect(again.pending().map((j) => j.id)).toEqual([c.id, a.id, b.id]);
    // Numbers are never reused, even after deleting the newest job.
    expect(again.delete([b.id])).toBe(1);
    expect(again.enqueue({ workflow: delayed(4), source: 'editor' }).number).toBe(4);
  });

  it('re-queues a job left running at its old place; one being cancelled ends cancelled', () => {
    const q = openQueue();
    const a = q.enqueue({ workflow: delayed(1), source: 'editor' });
    const b = q.enqueue({ workflow: delayed(2), source: 'editor' });
    const c = q.enqueue({ workflow: delayed(3), source: 'editor' });
    expect(q.takeNext()!.id).toBe(a.id);
    q.close(); // as if the process died with a running
    const q2 = openQueue();
    expect(q2.recovered.requeued).toEqual([a.id]);
    expect(q2.pending().map((j) => j.id)).toEqual([a.id, b.id, c.id]);
    expect(q2.takeNext()!.attempts).toBe(2);
    expect(q2.cancel(a.id)).toBe('cancelling');
    q2.close(); // died while cancelling
    const q3 = openQueue();
    expect(q3.recovered.cancelled).toEqual([a.id]);
    expect(q3.get(a.id)!.status).toBe('cancelled');
    expect(q3.pending().map((j) => j.id)).toEqual([b.id, c.id]);
    expect(q3.history().map((j) => j.id)).toEqual([a.id]);
  });

  it('fails a job that the server died on too many times instead of looping', () => {
    const q = openQueue({ maxAttempts: 2 });
    const a = q.enqueue({ workflow: delayed(1), source: 'editor' });
    q.takeNext();
    q.close();
    const q2 = openQueue({ maxAttempts: 2 });
    expect(q2.recovered.requeued).toEqual([a.id]);
    q2.takeNext();
    q2.close();
    const q3 = openQueue({ maxAttempts: 2 });
    expect(q3.recovered.failed).toEqual([a.id]);
    expect(q3.get(a.id)!.error).toMatch(/stopped 2 times/);
  });

  it('limits pending jobs per client with a clear error', () => {
    const q = openQueue({ maxPendingPerClient: 2 });
    q.enqueue({ workflow: delayed(1), source: 'editor', clientId: 'a' });
    q.enqueue({ workflow: delayed(1), source: 'editor', clientId: 'a' });
    expect(() => q.enqueue({ workflow: delayed(1), source: 'editor', clientId: 'a' })).toThrow(QueueLimitError);
    expect(() => q.enqueue({ workflow: delayed(1), source: 'editor', clientId: 'a' })).toThrow(/already has 2 waiting \(limit 2\)/);
    expect(q.enqueue({ workflow: delayed(1), source: 'editor', clientId: 'b' }).status).toBe('pending');
    expect(q.counts()).toEqual({ pending: 3, running: 0, history: 0 });
  });

  it('cancels pending jobs, deletes, clears, lists and prunes the history', () => {
    const q = openQueue();
    const jobs = [1, 2, 3, 4].map((v) => q.enqueue({ workflow: delayed(v), source: 'api' }));
    const events: string[] = [];
    q.on('finished', (j) => events.push(`finished:${j.status}`));
    expect(q.cancel(jobs[0]!.id)).toBe('cancelled');
    expect(q.cancel(jobs[0]!.id)).toBe('finished');
    expect(q.cancel('nope')).toBe('not_found');
    expect(events).toEqual(['finished:cancelled']);
    const run = q.takeNext()!;
    expect(run.id).toBe(jobs[1]!.id);
    expect(q.delete([run.id])).toBe(0); // running jobs are not deleted
    q.finish(run.id, { status: 'done', outputs: { 3: { images: [{ filename: 'a.png', subfolder: '', type: 'output' }] } }, nodes: {}, messages: [['run_finished', { status: 'done' }]] });
    expect(q.get(run.id)!.outputs['3']!.images![0]!.filename).toBe('a.png');
    expect(q.history().map((j) => j.id)).toEqual([run.id, jobs[0]!.id]);
    expect(q.history({ order: 'oldest', limit: 1 }).map((j) => j.id)).toEqual([jobs[0]!.id]);
    expect(q.history({ offset: 1 }).map((j) => j.id)).toEqual([jobs[0]!.id]);
    expect(q.clearPending()).toBe(2);
    expect(q.pending()).toEqual([]);
    expect(q.prune({ maxCount: 1 })).toBe(1);
    expect(q.history().map((j) => j.id)).toEqual([run.id]);
    expect(q.prune({ maxAge: -1 })).toBe(1);
    expect(q.counts()).toEqual({ pending: 0, running: 0, history: 0 });
  });

  it('refuses a corrupt file, a foreign SQLite file and a file locked by another process, naming the file', () => {
    writeFileSync(file, 'this is not a database, just some text that happens to be here\n'.repeat(20));
    expect(() => JobQueue.open(file)).toThrow(QueueDatabaseError);
    expect(() => JobQueue.open(file)).toThrow(new RegExp(`${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: the queue database is corrupt`));
    rmSync(file);

    const other = new Database(file);
    other.exec('create table notes (x text)');
    other.close();
    expect(() => JobQueue.open(file)).toThrow(/not a charflow queue database/);
    rmSync(file);

    openQueue(); // holds the lock
    const script = `import('${join(process.cwd(), 'engine/queue/index.ts')}').then((m) => {
      try { m.JobQueue.open(${JSON.stringify(file)}, { busyTimeoutMs: 200 }); console.log('opened'); }
      catch (e) { console.log(e.code + ': ' + e.message); } })`;
    const out = execFileSync(process.execPath, ['--import', 'tsx', '-e', script], { encoding: 'utf8' });
    expect(out).toContain(`locked: ${file}: the queue database is locked by another process`);
  });
});

describe('QueueRunner', () => {
  it('runs jobs oldest first, one at a time, sharing one executor cache; records outputs and messages', async () => {
    const q = openQueue();
    const services = createTestServices();
    const r = runner(q, services);
    const started: string[] = [];
    const events: [string, RunEvent['type']][] = [];
    r.on('job_started', (j) => started.push(j.id));
    r.on('event', (j, e) => events.push([j.id, e.type]));
    const a = q.enqueue({ workflow: delayed(1, 20), source: 'editor' });
    const b = q.enqueue({ workflow: delayed(1, 20), source: 'editor' }); // same graph: cached
    r.start();
    await waitFor(() => q.get(b.id)!.status === 'done');
    expect(started).toEqual([a.id, b.id]);
    expect(services.calls['2']).toBe(1); // the second job reused the first job's outputs
    const done = q.get(b.id)!;
    expect(done.nodes).toEqual({ 3: { status: 'cached' } }); // the target was cached: nothing upstream needed
    expect(done.messages.map(([name]) => name)).toEqual(['run_started', 'node_cached', 'run_finished']);
    expect(events.filter(([id]) => id === a.id).map(([, t]) => t)).toContain('node_progress');
    expect(q.get(a.id)!.messages.some(([name]) => name === 'node_progress')).toBe(false);
    await r.stop();
  });

  it('cancels the running job (interrupted) and a pending one (cancelled); failures are recorded', async () => {
    const q = openQueue();
    const r = runner(q);
    const long = q.enqueue({ workflow: delayed(1, 60_000, 600), source: 'editor' });
    const waiting = q.enqueue({ workflow: delayed(2), source: 'editor' });
    const failing = q.enqueue({ workflow: valid(wf({ 1: ['Fail', { message: 'kaput' }], 2: ['Collect', { value: link('1', 'value') }] })), source: 'api' });
    r.start();
    await waitFor(() => r.runningJob?.id === long.id);
    expect(q.cancel(waiting.id)).toBe('cancelled');
    expect(q.cancel(long.id)).toBe('cancelling');
    await waitFor(() => q.get(failing.id)!.finishedAt !== null);
    await r.whenIdle();
    expect(q.get(long.id)!.status).toBe('interrupted');
    expect(q.get(waiting.id)!.status).toBe('cancelled');
    const f = q.get(failing.id)!;
    expect(f.status).toBe('failed');
    expect(f.error).toMatch(/node 1 \(Fail\) failed: kaput/);
    expect(f.nodes['2']!.status).toBe('skipped');
    await r.stop();
  });

  it('graceful stop puts the running job back to pending; a new runner finishes it exactly once', async () => {
    const q = openQueue();
    const r = runner(q);
    const a = q.enqueue({ workflow: delayed(1, 60_000, 600), source: 'editor' });
    const b = q.enqueue({ workflow: delayed(2), source: 'editor' });
    const requeued: Job[] = [];
    r.on('job_requeued', (j) => requeued.push(j));
    r.start();
    await waitFor(() => r.runningJob?.id === a.id);
    await r.stop();
    expect(requeued.map((j) => j.id)).toEqual([a.id]);
    expect(q.pending().map((j) => j.id)).toEqual([a.id, b.id]);
    q.close();

    const q2 = openQueue();
    const finished: string[] = [];
    const r2 = runner(q2);
    r2.on('job_finished', (j) => finished.push(`${j.id}:${j.status}`));
    q2.cancel(b.id);
    r2.start();
    // Job a takes 60 s; interrupt it to keep the test short, it must still appear once.
    await waitFor(() => r2.runningJob?.id === a.id);
    r2.interrupt();
    await r2.whenIdle();
    expect(finished).toEqual([`${a.id}:interrupted`]);
    expect(q2.history().filter((j) => j.id === a.id)).toHaveLength(1);
    expect(q2.get(a.id)!.attempts).toBe(2);
    await r2.stop();
  });

  it('a runner started on a reopened queue runs the recovered jobs in their order', async () => {
    const q = openQueue();
    const ids = [1, 2, 3].map((v) => q.enqueue({ workflow: delayed(v), source: 'editor' }).id);
    q.takeNext(); // the first one "running" when the process died
    q.close();
    const q2 = openQueue();
    const r = runner(q2);
    const order: string[] = [];
    r.on('job_finished', (j) => order.push(j.id));
    r.start();
    await waitFor(() => order.length === 3);
    expect(order).toEqual(ids);
    expect(q2.history({ order: 'oldest' }).map((j) => j.status)).toEqual(['done', 'done', 'done']);
    await r.stop();
  });
});
