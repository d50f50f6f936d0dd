// The queue database records which worker ran a job (scale-out): files from before the column
// existed are upgraded in place, and 'keep' mode leaves running jobs to the BullMQ dispatcher.
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { JobQueue } from '../../engine/queue/index.ts';
import type { ValidWorkflow } from '../../engine/workflow/types.ts';
import { tempDir } from './harness.ts';

const wf = { nodes: {} } as unknown as ValidWorkflow;

describe('queue database: the worker column', () => {
  it('upgrades a schema-1 file and records the worker of a remotely started job', () => {
    const file = join(tempDir('qdb'), 'queue.db');
    let q = JobQueue.open(file);
    const job = q.enqueue({ workflow: wf, source: 'api' });
    q.close();
    // Make it a file from before the column: drop it and say schema 1.
    const raw = new Database(file);
    raw.exec('ALTER TABLE jobs DROP COLUMN worker');
    raw.pragma('user_version = 1');
    raw.close();

    q = JobQueue.open(file, { running: 'keep' });
    expect(q.get(job.id)).toMatchObject({ status: 'pending', worker: null });
    const started = q.markStarted(job.id, 'gpu-7')!;
    expect(started).toMatchObject({ status: 'running', worker: 'gpu-7', attempts: 1 });
    expect(q.active()[0]).toMatchObject({ id: job.id, worker: 'gpu-7' });
    q.close();

    // 'keep': a job left running stays running (its worker may still run it); 'requeue' takes it back.
    q = JobQueue.open(file, { running: 'keep' });
    expect(q.get(job.id)!.status).toBe('running');
    expect(q.recovered.requeued).toEqual([]);
    q.close();
    q = JobQueue.open(file);
    expect(q.get(job.id)!.status).toBe('pending');
    expect(q.recovered.requeued).toEqual([job.id]);
    // A finished job is not started again.
    q.finish(q.markStarted(job.id, 'gpu-8')!.id, { status: 'done', outputs: {}, nodes: {}, messages: [] });
    expect(q.markStarted(job.id, 'gpu-9')).toBeUndefined();
    expect(q.get(job.id)).toMatchObject({ status: 'done', worker: 'gpu-8', attempts: 2 });
    q.close();
  });
});
