// The durable job queue and its history, in one SQLite file (WAL, synchronous=FULL). Every call
// is synchronous: when enqueue() returns a job id, the job is on disk. One process owns the file
// (exclusive lock), so two servers on one data folder cannot run the same job twice.
import { randomUUID } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { Emitter } from './emitter.ts';
import {
  type CancelResult,
  type EnqueueRequest,
  type HistoryOptions,
  type Job,
  type JobResult,
  type JobStatus,
  type JobSummary,
  type JsonValue,
  type PruneOptions,
} from './types.ts';

/** Bumped when the table layout changes; older files are migrated in open(). */
const SCHEMA_VERSION = 2;
/** 'cflq' in PRAGMA application_id marks the file as a charflow queue. */
const APPLICATION_ID = 0x63666c71;

export const DEFAULT_MAX_PENDING_PER_CLIENT = 100;
export const DEFAULT_MAX_PENDING = 10_000;
/** A job the server died on this many times is failed instead of re-queued again. */
export const DEFAULT_MAX_ATTEMPTS = 3;

export type QueueDatabaseErrorCode = 'corrupt' | 'locked' | 'foreign' | 'newer' | 'io';

/** The database cannot be used; the message names the file and says what to do. */
export class QueueDatabaseError extends Error {
  constructor(
    readonly code: QueueDatabaseErrorCode,
    readonly file: string,
    message: string,
  ) {
    super(message);
    this.name = 'QueueDatabaseError';
  }
}

/** A pending-job limit was reached; nothing was queued. */
export class QueueLimitError extends Error {
  readonly code = 'limit';
  constructor(message: string) {
    super(message);
    this.name = 'QueueLimitError';
  }
}

export interface QueueOptions {
  /** Pending jobs one client id may have (default 100). */
  maxPendingPerClient?: number;
  /** Pending jobs in all (default 10,000). */
  maxPending?: number;
  /** Starts after which a job left running by a crash is failed, not re-queued (default 3). */
  maxAttempts?: number;
  /** How long to wait for another process's lock before giving up (default 2 s). */
  busyTimeoutMs?: number;
  /** Where listener errors go (default console.error). */
  onListenerError?: (err: unknown) => void;
  /**
   * What open() does with jobs a previous process left running. 'requeue' (default): this process
   * runs them, so they go back to pending. 'keep': remote workers run them (BullMQ), and the
   * dispatcher asks the shared queue what became of them.
   */
  running?: 'requeue' | 'keep';
}

/** What open() did to jobs that a previous process left running. */
export interface Recovery {
  requeued: string[];
  cancelled: string[];
  failed: string[];
}

export type QueueEvents = {
  /** A job was accepted. */
  queued: [job: Job];
  /** The runner took a job. */
  started: [job: Job];
  /** A job reached a final status (including a pending job being cancelled). */
  finished: [job: Job];
  /** A running job went back to pending (graceful stop). */
  requeued: [job: Job];
  /** A cancel was requested for a running job: whoever runs it must abort. */
  cancel: [job: Job];
  /** Jobs were deleted (from the queue or the history). */
  deleted: [ids: string[]];
  /** Pending or running jobs changed in any way: re-send queue listings. */
  changed: [];
};

interface Row {
  id: string;
  number: number;
  sort: number;
  client_id: string | null;
  source: string;
  status: string;
  workflow: string;
  targets: string | null;
  extra: string | null;
  outputs: string;
  nodes: string;
  messages: string;
  error: string | null;
  cancel_requested: number;
  attempts: number;
  created_at: number;
  started_at: number | null;
  finished_at: number | null;
  worker: string | null;
}

const SUMMARY_COLUMNS = 'id, number, client_id, source, status, created_at, started_at, worker';
type SummaryRow = Pick<Row, 'id' | 'number' | 'client_id' | 'source' | 'status' | 'created_at' | 'started_at' | 'worker'>;

const SCHEMA = `
CREATE TABLE jobs (
  number INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  sort INTEGER NOT NULL,
  client_id TEXT,
  source TEXT NOT NULL CHECK (source IN ('editor', 'api')),
  status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed', 'cancelled', 'interrupted')),
  workflow TEXT NOT NULL,
  targets TEXT,
  extra TEXT,
  outputs TEXT NOT NULL DEFAULT '{}',
  nodes TEXT NOT NULL DEFAULT '{}',
  messages TEXT NOT NULL DEFAULT '[]',
  error TEXT,
  cancel_requested INTEGER NOT NULL DEFAULT 0,
  attempts INTEGER NOT NULL DEFAULT 0,
  created_at INTEGER NOT NULL,
  started_at INTEGER,
  finished_at INTEGER,
  worker TEXT
);
CREATE INDEX jobs_queue ON jobs (status, sort, number);
CREATE INDEX jobs_client ON jobs (client_id, status);
CREATE INDEX jobs_history ON jobs (finished_at, number) WHERE finished_at IS NOT NULL;
`;

function sqliteCode(err: unknown): string {
  const code = (err as { code?: unknown })?.code;
  return typeof code === 'string' ? code : '';
}

/** Turns an SQLite failure at open time into a message a person can act on. */
function openError(file: string, err: unknown): Error {
  if (err instanceof QueueDatabaseError) return err;
  const code = sqliteCode(err);
  const why = (err as Error)?.message ?? String(err);
  if (code === 'SQLITE_NOTADB' || code.startsWith('SQLITE_CORRUPT')) {
    return new QueueDatabaseError(
      'corrupt',
      file,
      `${file}: the queue database is corrupt or not a database (${why}). Move the file away (and its -wal file) to start with an empty queue; its queued jobs and history would be lost.`,
    );
  }
  if (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED')) {
    return new QueueDatabaseError(
      'locked',
      file,
      `${file}: the queue database is locked by another process. Is another charflow server using this data folder? Stop it or use --data with another folder.`,
    );
  }
  return new QueueDatabaseError('io', file, `${file}: cannot open the queue database (${why})`);
}

function parseJson<T>(row: { id: string }, column: string, text: string | null, fallback: T): T {
  if (text === null) return fallback;
  try {
    return JSON.parse(text) as T;
  } catch {
    throw new Error(`queue database: job ${row.id} has unreadable ${column} (not JSON)`);
  }
}

function toJob(row: Row): Job {
  return {
    id: row.id,
    number: row.number,
    clientId: row.client_id,
    source: row.source as Job['source'],
    status: row.status as JobStatus,
    workflow: parseJson(row, 'workflow', row.workflow, {} as Job['workflow']),
    targets: parseJson<string[] | null>(row, 'targets', row.targets, null),
    extra: parseJson<JsonValue>(row, 'extra', row.extra, null),
    outputs: parseJson(row, 'outputs', row.outputs, {}),
    nodes: parseJson(row, 'nodes', row.nodes, {}),
    messages: parseJson(row, 'messages', row.messages, []),
    error: row.error,
    cancelRequested: row.cancel_requested !== 0,
    attempts: row.attempts,
    createdAt: row.created_at,
    startedAt: row.started_at,
    finishedAt: row.finished_at,
    worker: row.worker ?? null,
  };
}

function toSummary(row: SummaryRow): JobSummary {
  return {
    id: row.id,
    number: row.number,
    clientId: row.client_id,
    source: row.source as Job['source'],
    status: row.status as JobStatus,
    createdAt: row.created_at,
    startedAt: row.started_at,
    worker: row.worker ?? null,
  };
}

function checkCount(name: string, v: number | undefined, fallback: number): number {
  const n = v ?? fallback;
  if (!Number.isInteger(n) || n < 0) throw new RangeError(`${name} must be an integer >= 0, got ${n}`);
  return n;
}

export class JobQueue extends Emitter<QueueEvents> {
  readonly recovered: Recovery;
  private readonly db: Database.Database;
  private readonly maxPerClient: number;
  private readonly maxPending: number;
  private closed = false;

  /**
   * Opens (creating if needed) the queue database. Jobs a killed process left running go back to
   * pending at their old place, or to cancelled if a cancel was under way. Throws
   * QueueDatabaseError naming the file if it is corrupt, foreign, newer or locked.
   */
  static open(file: string, opts: QueueOptions = {}): JobQueue {
    const abs = path.resolve(file);
    let db: Database.Database;
    try {
      mkdirSync(path.dirname(abs), { recursive: true });
      db = new Database(abs, { timeout: opts.busyTimeoutMs ?? 2000 });
    } catch (err) {
      throw openError(abs, err);
    }
    try {
      db.pragma('locking_mode = EXCLUSIVE');
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = FULL');
      db.pragma('foreign_keys = ON');
      db.exec('BEGIN EXCLUSIVE; COMMIT'); // take the lock now: a second server fails here, not later
      const check = db.pragma('quick_check(1)', { simple: true });
      if (check !== 'ok') throw new QueueDatabaseError('corrupt', abs, `${abs}: the queue database is corrupt (${String(check)}). Move it away to start with an empty queue.`);
      migrate(db, abs);
      return new JobQueue(db, opts);
    } catch (err) {
      try {
        db.close();
      } catch {
        /* already unusable */
      }
      throw openError(abs, err);
    }
  }

  private constructor(db: Database.Database, opts: QueueOptions) {
    super(opts.onListenerError);
    this.db = db;
    this.maxPerClient = checkCount('maxPendingPerClient', opts.maxPendingPerClient, DEFAULT_MAX_PENDING_PER_CLIENT);
    this.maxPending = checkCount('maxPending', opts.maxPending, DEFAULT_MAX_PENDING);
    const maxAttempts = checkCount('maxAttempts', opts.maxAttempts, DEFAULT_MAX_ATTEMPTS);
    this.recovered = opts.running === 'keep' ? { requeued: [], cancelled: [], failed: [] } : this.recover(maxAttempts);
  }

  get file(): string {
    return this.db.name;
  }

  get isOpen(): boolean {
    return !this.closed;
  }

  /** Releases the lock; the queue cannot be used afterwards. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.db.close();
  }

  private assertOpen(): void {
    if (this.closed) throw new Error(`${this.db.name}: the job queue is closed`);
  }

  private recover(maxAttempts: number): Recovery {
    const now = Date.now();
    const rec: Recovery = { requeued: [], cancelled: [], failed: [] };
    this.db.transaction(() => {
      const rows = this.db.prepare<[], Pick<Row, 'id' | 'cancel_requested' | 'attempts'>>(
        `SELECT id, cancel_requested, attempts FROM jobs WHERE status = 'running' ORDER BY sort, number`,
      ).all();
      const cancel = this.db.prepare(
        `UPDATE jobs SET status = 'cancelled', finished_at = ?, error = ? WHERE id = ?`,
      );
      const fail = this.db.prepare(`UPDATE jobs SET status = 'failed', finished_at = ?, error = ? WHERE id = ?`);
      const requeue = this.db.prepare(
        `UPDATE jobs SET status = 'pending', started_at = NULL, outputs = '{}', nodes = '{}', messages = '[]', error = NULL WHERE id = ?`,
      );
      for (const r of rows) {
        if (r.cancel_requested) {
          cancel.run(now, 'cancelled: the server stopped while the job was being cancelled', r.id);
          rec.cancelled.push(r.id);
        } else if (r.attempts >= maxAttempts) {
          fail.run(now, `the server stopped ${r.attempts} times while running this job; it is not retried again`, r.id);
          rec.failed.push(r.id);
        } else {
          requeue.run(r.id);
          rec.requeued.push(r.id);
        }
      }
    })();
    return rec;
  }

  // ---- accepting ----------------------------------------------------------------------------

  /** Stores a job as pending; it is on disk when this returns. Throws QueueLimitError at a limit. */
  enqueue(req: EnqueueRequest): Job {
    this.assertOpen();
    const clientId = req.clientId ?? null;
    const id = req.id ?? randomUUID();
    const now = Date.now();
    const workflow = JSON.stringify(req.workflow);
    const targets = req.targets == null ? null : JSON.stringify([...req.targets]);
    const extra = req.extra === undefined ? null : JSON.stringify(req.extra);
    this.db.transaction(() => {
      const total = this.db.prepare<[], number>(`SELECT count(*) FROM jobs WHERE status = 'pending'`).pluck().get()!;
      if (total >= this.maxPending) {
        throw new QueueLimitError(`the queue is full: ${total} jobs are waiting (limit ${this.maxPending}); try again when some have run`);
      }
      const mine = this.db
        .prepare<[string | null], number>(`SELECT count(*) FROM jobs WHERE status = 'pending' AND client_id IS ?`)
        .pluck()
        .get(clientId)!;
      if (mine >= this.maxPerClient) {
        throw new QueueLimitError(
          `too many queued jobs: this client already has ${mine} waiting (limit ${this.maxPerClient}); wait for some to run or cancel them`,
        );
      }
      const { number } = this.db
        .prepare<unknown[], { number: number }>(
          `INSERT INTO jobs (id, sort, client_id, source, status, workflow, targets, extra, created_at)
           VALUES (?, 0, ?, ?, 'pending', ?, ?, ?, ?) RETURNING number`,
        )
        .get(id, clientId, req.source, workflow, targets, extra, now)!;
      let sort = number;
      if (req.front) {
        const first = this.db.prepare<[string], number | null>(`SELECT min(sort) FROM jobs WHERE status = 'pending' AND id != ?`).pluck().get(id);
        if (first !== null && first !== undefined) sort = Math.min(first - 1, number);
      }
      this.db.prepare(`UPDATE jobs SET sort = ? WHERE id = ?`).run(sort, id);
    })();
    const job = this.get(id)!;
    this.emit('queued', job);
    this.emit('changed');
    return job;
  }

  // ---- reading ------------------------------------------------------------------------------

  get(id: string): Job | undefined {
    this.assertOpen();
    const row = this.db.prepare<[string], Row>(`SELECT * FROM jobs WHERE id = ?`).get(id);
    return row ? toJob(row) : undefined;
  }

  /** Pending jobs in the order they will run. */
  pending(): Job[] {
    this.assertOpen();
    return this.db.prepare<[], Row>(`SELECT * FROM jobs WHERE status = 'pending' ORDER BY sort, number`).all().map(toJob);
  }

  /** The running job(s): at most one with one runner. */
  running(): Job[] {
    this.assertOpen();
    return this.db.prepare<[], Row>(`SELECT * FROM jobs WHERE status = 'running' ORDER BY started_at, number`).all().map(toJob);
  }

  /** Running then pending jobs, without their workflows: cheap enough to send on every change. */
  active(): JobSummary[] {
    this.assertOpen();
    return this.db
      .prepare<[], SummaryRow>(
        `SELECT ${SUMMARY_COLUMNS} FROM jobs WHERE status IN ('running', 'pending')
         ORDER BY status = 'pending', sort, number`,
      )
      .all()
      .map(toSummary);
  }

  /** How many jobs run before this pending one (running jobs included); undefined if not pending. */
  position(id: string): number | undefined {
    this.assertOpen();
    const row = this.db.prepare<[string], Pick<Row, 'sort' | 'number' | 'status'>>(`SELECT sort, number, status FROM jobs WHERE id = ?`).get(id);
    if (!row || row.status !== 'pending') return undefined;
    return this.db
      .prepare<[number, number, number], number>(
        `SELECT count(*) FROM jobs WHERE status = 'running'
           OR (status = 'pending' AND (sort < ? OR (sort = ? AND number < ?)))`,
      )
      .pluck()
      .get(row.sort, row.sort, row.number)!;
  }

  /** Finished jobs, newest first by default. */
  history(opts: HistoryOptions = {}): Job[] {
    this.assertOpen();
    const limit = Math.min(checkCount('limit', opts.limit, 100), 10_000);
    const offset = checkCount('offset', opts.offset, 0);
    const dir = opts.order === 'oldest' ? 'ASC' : 'DESC';
    const before = opts.before ?? Number.MAX_SAFE_INTEGER;
    return this.db
      .prepare<[number, number, number], Row>(
        `SELECT * FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?
         ORDER BY finished_at ${dir}, number ${dir} LIMIT ? OFFSET ?`,
      )
      .all(before, limit, offset)
      .map(toJob);
  }

  counts(): { pending: number; running: number; history: number } {
    this.assertOpen();
    const row = this.db
      .prepare<[], { pending: number; running: number; history: number }>(
        `SELECT coalesce(sum(status = 'pending'), 0) AS pending, coalesce(sum(status = 'running'), 0) AS running,
                coalesce(sum(finished_at IS NOT NULL), 0) AS history FROM jobs`,
      )
      .get()!;
    return row;
  }

  // ---- changing -----------------------------------------------------------------------------

  /** Pending: cancelled at once. Running: marked, and `cancel` tells the runner to abort it. */
  cancel(id: string): CancelResult {
    this.assertOpen();
    const row = this.db.prepare<[string], Pick<Row, 'status'>>(`SELECT status FROM jobs WHERE id = ?`).get(id);
    if (!row) return 'not_found';
    if (row.status === 'pending') {
      this.db
        .prepare(`UPDATE jobs SET status = 'cancelled', finished_at = ?, error = 'cancelled before it ran' WHERE id = ? AND status = 'pending'`)
        .run(Date.now(), id);
      const job = this.get(id)!;
      this.emit('finished', job);
      this.emit('changed');
      return 'cancelled';
    }
    if (row.status === 'running') {
      this.db.prepare(`UPDATE jobs SET cancel_requested = 1 WHERE id = ?`).run(id);
      this.emit('cancel', this.get(id)!);
      return 'cancelling';
    }
    return 'finished';
  }

  /** Deletes pending and finished jobs (running ones are left alone); returns how many went. */
  delete(ids: readonly string[]): number {
    this.assertOpen();
    const gone: string[] = [];
    let queueChanged = false;
    this.db.transaction(() => {
      const find = this.db.prepare<[string], Pick<Row, 'status'>>(`SELECT status FROM jobs WHERE id = ?`);
      const del = this.db.prepare(`DELETE FROM jobs WHERE id = ? AND status != 'running'`);
      for (const id of new Set(ids)) {
        const row = find.get(id);
        if (!row || row.status === 'running') continue;
        del.run(id);
        gone.push(id);
        if (row.status === 'pending') queueChanged = true;
      }
    })();
    if (gone.length) this.emit('deleted', gone);
    if (queueChanged) this.emit('changed');
    return gone.length;
  }

  /** Removes every pending job without a history entry (ComfyUI's queue `clear`). */
  clearPending(): number {
    this.assertOpen();
    const ids = this.db.prepare<[], string>(`SELECT id FROM jobs WHERE status = 'pending'`).pluck().all();
    return ids.length ? this.delete(ids) : 0;
  }

  /** Removes every finished job. */
  clearHistory(): number {
    this.assertOpen();
    const ids = this.db.prepare<[], string>(`SELECT id FROM jobs WHERE finished_at IS NOT NULL`).pluck().all();
    return ids.length ? this.delete(ids) : 0;
  }

  /** Deletes finished jobs older than maxAge ms and beyond the newest maxCount. */
  prune(opts: PruneOptions): number {
    this.assertOpen();
    const ids = new Set<string>();
    if (opts.maxAge !== undefined) {
      const cutoff = Date.now() - opts.maxAge;
      for (const id of this.db.prepare<[number], string>(`SELECT id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?`).pluck().all(cutoff)) {
        ids.add(id);
      }
    }
    if (opts.maxCount !== undefined) {
      const keep = checkCount('maxCount', opts.maxCount, 0);
      const old = this.db
        .prepare<[number], string>(`SELECT id FROM jobs WHERE finished_at IS NOT NULL ORDER BY finished_at DESC, number DESC LIMIT -1 OFFSET ?`)
        .pluck()
        .all(keep);
      for (const id of old) ids.add(id);
    }
    return ids.size ? this.delete([...ids]) : 0;
  }

  // ---- for the runner -------------------------------------------------------------------------

  /** Moves the first pending job to running and returns it (undefined when none waits). */
  takeNext(): Job | undefined {
    this.assertOpen();
    const id = this.db.transaction(() => {
      const next = this.db.prepare<[], string>(`SELECT id FROM jobs WHERE status = 'pending' ORDER BY sort, number LIMIT 1`).pluck().get();
      if (next === undefined) return undefined;
      this.db
        .prepare(
          `UPDATE jobs SET status = 'running', started_at = ?, attempts = attempts + 1, cancel_requested = 0,
             outputs = '{}', nodes = '{}', messages = '[]', error = NULL WHERE id = ?`,
        )
        .run(Date.now(), next);
      return next;
    })();
    if (id === undefined) return undefined;
    const job = this.get(id)!;
    this.emit('started', job);
    this.emit('changed');
    return job;
  }

  /**
   * A remote worker started (or, after a stall, restarted) a pending or running job: it becomes
   * running on `worker`, its outputs and log from an earlier attempt are dropped.
   * Returns undefined when the job is finished or unknown (nothing changes then).
   */
  markStarted(id: string, worker: string): Job | undefined {
    this.assertOpen();
    const info = this.db
      .prepare(
        `UPDATE jobs SET status = 'running', started_at = ?, attempts = attempts + 1, worker = ?,
           outputs = '{}', nodes = '{}', messages = '[]', error = NULL
         WHERE id = ? AND status IN ('pending', 'running')`,
      )
      .run(Date.now(), worker, id);
    if (info.changes === 0) return undefined;
    const job = this.get(id)!;
    this.emit('started', job);
    this.emit('changed');
    return job;
  }

  /** Records the end of a running job; returns it as stored. */
  finish(id: string, result: JobResult, opts: { fromPending?: boolean } = {}): Job {
    this.assertOpen();
    const info = this.db
      .prepare(
        `UPDATE jobs SET status = ?, outputs = ?, nodes = ?, messages = ?, error = ?, finished_at = ?
         WHERE id = ? AND (status = 'running'${opts.fromPending ? " OR status = 'pending'" : ''})`,
      )
      .run(
        result.status,
        JSON.stringify(result.outputs),
        JSON.stringify(result.nodes),
        JSON.stringify(result.messages),
        result.error ?? null,
        Date.now(),
        id,
      );
    const job = this.get(id);
    if (!job) throw new Error(`job ${id} does not exist`);
    if (info.changes === 0) throw new Error(`job ${id} is ${job.status}, not running`);
    this.emit('finished', job);
    this.emit('changed');
    return job;
  }

  /** A running job goes back to pending at its old place (graceful stop). */
  requeue(id: string): Job | undefined {
    this.assertOpen();
    const info = this.db
      .prepare(
        `UPDATE jobs SET status = 'pending', started_at = NULL, outputs = '{}', nodes = '{}', messages = '[]', error = NULL
         WHERE id = ? AND status = 'running'`,
      )
      .run(id);
    if (info.changes === 0) return undefined;
    const job = this.get(id)!;
    this.emit('requeued', job);
    this.emit('changed');
    return job;
  }
}

/** Creates or upgrades the tables, refusing files that are not ours or come from a newer charflow. */
function migrate(db: Database.Database, file: string): void {
  const version = db.pragma('user_version', { simple: true }) as number;
  const appId = db.pragma('application_id', { simple: true }) as number;
  const tables = db.prepare<[], number>(`SELECT count(*) FROM sqlite_master WHERE type = 'table'`).pluck().get()!;
  if ((appId !== 0 && appId !== APPLICATION_ID) || (appId === 0 && tables > 0)) {
    throw new QueueDatabaseError(
      'foreign',
      file,
      `${file}: this SQLite file is not a charflow queue database. Move it away or point --data at another folder.`,
    );
  }
  if (version > SCHEMA_VERSION) {
    throw new QueueDatabaseError(
      'newer',
      file,
      `${file}: the queue database was written by a newer charflow (schema ${version}, this one knows ${SCHEMA_VERSION}). Upgrade charflow or use another data folder.`,
    );
  }
  if (version === SCHEMA_VERSION) return;
  db.transaction(() => {
    if (version === 0) db.exec(SCHEMA);
    else if (version < 2) db.exec('ALTER TABLE jobs ADD COLUMN worker TEXT');
    db.pragma(`application_id = ${APPLICATION_ID}`);
    db.pragma(`user_version = ${SCHEMA_VERSION}`);
  })();
}
