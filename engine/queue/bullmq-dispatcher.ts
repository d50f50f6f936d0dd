// The server's side of scale-out: every accepted job (already on disk in the server's SQLite queue,
// which keeps listing and history) is added to BullMQ, one queue per model set; workers on any
// machine pull it. Workers relay their run events over a WebSocket (see editor/server/workers.ts);
// BullMQ's stored result is the truth about how a job ended, so a result is never lost or counted
// twice: the server records it when the worker says it finished, and a sweep reads Redis for the
// jobs it has not heard about (server restarts, dropped sockets, jobs failed by the stalled check).
import { Job as BullJob, Queue, Worker, type ConnectionOptions } from 'bullmq';
import type { ValidWorkflow } from '../workflow/types.ts';
import {
  checkRedis,
  fromWire,
  KEEP_FINISHED_S,
  MAX_STALLED_COUNT,
  queueName,
  redisOptions,
  type BullmqTiming,
  type InputRef,
  type QueueJobData,
  type QueueJobResult,
  type ServerToWorker,
  type WorkerMessage,
} from './bullmq.ts';
import type { FreeResult, JobDispatcher, WorkerInfo } from './dispatcher.ts';
import { Emitter } from './emitter.ts';
import type { JobQueue } from './queue.ts';
import { failedBeforeStart, Recorder, type RunnerEvents } from './runner.ts';
import type { Job, JobResult, PruneOptions } from './types.ts';

/** One connected worker's socket, as the transport gives it to the dispatcher. */
export interface WorkerLink {
  send(msg: ServerToWorker): void;
}

export interface BullmqDispatcherOptions {
  queue: JobQueue;
  /** redis:// or rediss:// URL. */
  url: string;
  timing: BullmqTiming;
  /** The model set a workflow needs (its queue). */
  modelSetOf: (workflow: ValidWorkflow) => string;
  /** The input images a workflow reads, by content hash (those the server cannot find are left out). */
  inputsOf: (workflow: ValidWorkflow) => Promise<InputRef[]>;
  keepHistory?: PruneOptions;
  /** How often Redis is asked about jobs the server has not heard from (default 2 s). */
  sweepMs?: number;
  log: (message: string) => void;
}

interface Live {
  job: Job;
  rec: Recorder;
}

interface Connected {
  info: WorkerInfo;
  link: WorkerLink;
}

/** BullMQ custom ids may not contain ':' (prompt ids may); '~' never appears in a job id. */
export function bullId(id: string): string {
  return `j.${id.replace(/:/g, '~')}`;
}

export class BullmqDispatcher extends Emitter<RunnerEvents> implements JobDispatcher {
  readonly kind = 'bullmq' as const;
  readonly queue: JobQueue;
  private readonly connection: ConnectionOptions;
  private readonly queues = new Map<string, Queue>();
  /** One per set: the server runs BullMQ's stalled check too, so a set whose workers all died still recovers. */
  private readonly checkers = new Map<string, Worker>();
  private readonly live = new Map<string, Live>();
  private readonly workersByLink = new Map<WorkerLink, Connected>();
  /** Accepted jobs not yet in Redis (Redis was down): the sweep tries again. */
  private readonly undispatched = new Set<string>();
  private readonly finishing = new Set<string>();
  private readonly unsubscribe: (() => void)[] = [];
  private sweepTimer: NodeJS.Timeout | undefined;
  private sweeping: Promise<void> | undefined;
  private started = false;
  private paused = false;
  private stopped = false;

  /** Checks Redis (throws RedisUnreachableError with what to do) and returns the warnings to print. */
  static async check(url: string): Promise<string[]> {
    return (await checkRedis(url)).warnings;
  }

  constructor(private readonly o: BullmqDispatcherOptions) {
    super();
    this.queue = o.queue;
    this.connection = { ...redisOptions(o.url), maxRetriesPerRequest: null };
  }

  // ---- JobDispatcher ----------------------------------------------------------------------

  runningJobs(): Job[] {
    return this.queue.isOpen ? this.queue.running() : [];
  }

  workers(): WorkerInfo[] {
    return [...this.workersByLink.values()].map((c) => ({ ...c.info, sets: [...c.info.sets], loaded: [...c.info.loaded] }));
  }

  start(): void {
    if (this.stopped) throw new Error('the dispatcher was stopped; make a new one');
    this.paused = false;
    if (!this.started) {
      this.started = true;
      this.unsubscribe.push(
        this.queue.on('queued', (job) => void this.dispatch(job)),
        this.queue.on('cancel', (job) => this.broadcast({ type: 'cancel', jobId: job.id })),
        this.queue.on('finished', (job) => {
          // A pending job cancelled here must not run elsewhere.
          if (job.status === 'cancelled' && !this.finishing.has(job.id)) void this.removeFromRedis(job.id);
        }),
        this.queue.on('deleted', (ids) => {
          for (const id of ids) void this.removeFromRedis(id);
        }),
      );
      // Jobs accepted before this start (or by a server that stopped): make sure Redis has each.
      for (const j of this.queue.active()) this.undispatched.add(j.id);
      for (const j of this.queue.running()) this.live.set(j.id, { job: j, rec: new Recorder() });
      this.sweepTimer = setInterval(() => void this.sweep(), this.o.sweepMs ?? 2000);
      this.sweepTimer.unref();
    }
    void this.sweep();
  }

  pause(): void {
    this.paused = true;
  }

  interrupt(): boolean {
    let any = false;
    for (const j of this.runningJobs()) if (this.queue.cancel(j.id) === 'cancelling') any = true;
    return any;
  }

  async free(opts: { unloadModels: boolean; clearCache: boolean }): Promise<FreeResult> {
    this.broadcast({ type: 'free', unloadModels: opts.unloadModels, clearCache: opts.clearCache });
    return { unloadedModels: 0, cacheCleared: opts.clearCache };
  }

  /** Closes the Redis connections; jobs go on running on the workers and stay in Redis. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    for (const u of this.unsubscribe.splice(0)) u();
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    await this.sweeping?.catch(() => {});
    const closing = [...this.checkers.values(), ...this.queues.values()].map((q) => q.close().catch(() => {}));
    await Promise.all(closing);
    this.emit('idle');
  }

  // ---- the worker side of the transport --------------------------------------------------

  workerConnected(link: WorkerLink, hello: Extract<WorkerMessage, { type: 'hello' }>): void {
    const info: WorkerInfo = { name: hello.name, device: hello.device, sets: [...hello.sets], loaded: [...hello.loaded], current: null, since: Date.now() };
    this.workersByLink.set(link, { info, link });
    for (const s of hello.sets) this.queueFor(s);
    link.send({ type: 'welcome', server: 'charflow' });
    this.emit('workers_changed');
    this.log(`charflow: worker ${hello.name} connected (${hello.device}; sets ${hello.sets.join(', ') || 'none'})`);
  }

  workerDisconnected(link: WorkerLink): void {
    const c = this.workersByLink.get(link);
    if (!c) return;
    this.workersByLink.delete(link);
    this.log(`charflow: worker ${c.info.name} disconnected`);
    this.emit('workers_changed');
  }

  /** A message from a connected worker (already parsed and shape-checked by the transport). */
  workerMessage(link: WorkerLink, msg: WorkerMessage): void {
    const c = this.workersByLink.get(link);
    if (!c || !this.queue.isOpen) return;
    switch (msg.type) {
      case 'hello':
        return;
      case 'status':
        c.info.loaded = [...msg.loaded];
        if (msg.current === null) c.info.current = null;
        this.emit('workers_changed');
        return;
      case 'started': {
        const job = this.queue.markStarted(msg.jobId, c.info.name);
        if (!job) {
          // Finished or deleted here (e.g. cancelled while it waited): the worker must not go on.
          link.send({ type: 'cancel', jobId: msg.jobId });
          return;
        }
        this.live.set(job.id, { job, rec: new Recorder() });
        c.info.current = { id: job.id, number: job.number };
        this.emit('job_started', job);
        this.emit('workers_changed');
        return;
      }
      case 'event': {
        let l = this.live.get(msg.jobId);
        if (!l) {
          const job = this.queue.get(msg.jobId);
          if (!job || job.status !== 'running') return;
          this.live.set(job.id, (l = { job, rec: new Recorder() }));
        }
        const e = fromWire(msg.event);
        if (e.runId !== l.job.id) return;
        l.rec.record(e);
        this.emit('event', l.job, e);
        return;
      }
      case 'finished':
        if (c.info.current?.id === msg.jobId) c.info.current = null;
        void this.settle(msg.jobId);
        return;
    }
  }

  // ---- internals -------------------------------------------------------------------------

  private log(m: string): void {
    this.o.log(m);
  }

  private broadcast(msg: ServerToWorker): void {
    for (const c of this.workersByLink.values()) {
      try {
        c.link.send(msg);
      } catch {
        /* a closing socket; it will be removed */
      }
    }
  }

  private queueFor(set: string): Queue {
    let q = this.queues.get(set);
    if (q) return q;
    const name = queueName(set);
    q = new Queue(name, { connection: this.connection });
    q.on('error', (err) => this.log(`warning: Redis queue ${name}: ${err.message}`));
    this.queues.set(set, q);
    const checker = new Worker(name, null, {
      connection: this.connection,
      autorun: false,
      lockDuration: this.o.timing.lockDurationMs,
      stalledInterval: this.o.timing.stalledIntervalMs,
      maxStalledCount: MAX_STALLED_COUNT,
    });
    checker.on('error', (err) => this.log(`warning: stalled-job check on ${name}: ${err.message}`));
    void checker.startStalledCheckTimer().catch((err: Error) => this.log(`warning: stalled-job check on ${name}: ${err.message}`));
    this.checkers.set(set, checker);
    return q;
  }

  private setOf(job: Job): string {
    return this.o.modelSetOf(job.workflow);
  }

  private async dispatch(job: Job): Promise<void> {
    if (this.paused || this.stopped) {
      this.undispatched.add(job.id);
      return;
    }
    try {
      const set = this.setOf(job);
      const data: QueueJobData & { id: string } = {
        id: job.id,
        workflow: job.workflow,
        targets: job.targets,
        number: job.number,
        set,
        inputs: await this.o.inputsOf(job.workflow),
      };
      await this.queueFor(set).add('run', data, {
        jobId: bullId(job.id),
        attempts: 1,
        removeOnComplete: { age: KEEP_FINISHED_S },
        removeOnFail: { age: KEEP_FINISHED_S },
        ...(this.isFront(job) ? { lifo: true } : {}),
      });
      this.undispatched.delete(job.id);
    } catch (err) {
      if (this.stopped) return;
      this.undispatched.add(job.id);
      this.log(`warning: could not put job ${job.id} on the Redis queue (${(err as Error).message}); retrying`);
    }
  }

  private isFront(job: Job): boolean {
    const pending = this.queue.isOpen ? this.queue.active().filter((j) => j.status === 'pending') : [];
    return pending.length > 1 && pending[0]?.id === job.id;
  }

  private async findBull(id: string, set?: string): Promise<BullJob | undefined> {
    const sets = set !== undefined ? [set] : [...this.queues.keys()];
    for (const s of sets) {
      const j = await BullJob.fromId(this.queueFor(s), bullId(id));
      if (j) return j;
    }
    return undefined;
  }

  private async removeFromRedis(id: string): Promise<void> {
    try {
      const j = await this.findBull(id);
      if (!j) return;
      const state = await j.getState();
      if (state !== 'active') await j.remove();
      // An active one is being started right now: its worker's 'started' gets a cancel back.
    } catch (err) {
      if (!this.stopped) this.log(`warning: could not remove job ${id} from Redis: ${(err as Error).message}`);
    }
  }

  /** Reads what Redis knows about a job the server still has as pending or running, and acts on it. */
  private async settle(id: string): Promise<void> {
    if (this.finishing.has(id) || this.stopped) return;
    const job = this.queue.isOpen ? this.queue.get(id) : undefined;
    if (!job || job.finishedAt !== null) return;
    this.finishing.add(id);
    try {
      const bull = await this.findBull(id, this.setOf(job));
      if (!bull) {
        // Never reached Redis (or Redis lost it): it runs from the start.
        if (job.status === 'running') this.requeue(job);
        await this.dispatch(this.queue.get(id) ?? job);
        return;
      }
      const state = await bull.getState();
      if (state === 'completed') this.finish(job, bull.returnvalue as QueueJobResult | null, null);
      else if (state === 'failed') this.finish(job, null, failureReason(bull.failedReason));
      else if (state !== 'active' && bull.deferredFailure) {
        // The stalled check gave up on it (BullMQ fails it only when a worker takes it next): fail it now.
        await bull.remove();
        this.finish(job, null, failureReason(bull.deferredFailure));
      } else if (state !== 'active' && job.status === 'running') this.requeue(job); // moved back by the stalled check
    } catch (err) {
      if (!this.stopped) this.log(`warning: could not read job ${id} from Redis: ${(err as Error).message}`);
    } finally {
      this.finishing.delete(id);
    }
  }

  private requeue(job: Job): void {
    const back = this.queue.requeue(job.id);
    this.live.delete(job.id);
    for (const c of this.workersByLink.values()) if (c.info.current?.id === job.id) c.info.current = null;
    if (back) this.emit('job_requeued', back);
  }

  private finish(job: Job, result: QueueJobResult | null, failure: string | null): void {
    const l = this.live.get(job.id) ?? { job, rec: new Recorder() };
    this.live.delete(job.id);
    if (!l.rec.ended) {
      const e = failedBeforeStart(job.id);
      if (result === null || result.status === 'failed') {
        l.rec.record(e);
        this.emit('event', l.job, e);
      }
    }
    const res: JobResult = result
      ? { status: result.status, outputs: result.outputs ?? {}, nodes: result.nodes ?? {}, messages: l.rec.messages, error: result.error }
      : { status: 'failed', outputs: {}, nodes: {}, messages: l.rec.messages, error: failure };
    const cancelled = job.cancelRequested && res.status !== 'done';
    if (cancelled && res.status === 'failed' && result === null) res.status = 'interrupted';
    let final: Job;
    try {
      final = this.queue.finish(job.id, res, { fromPending: true });
    } catch (err) {
      this.log(`warning: job ${job.id}: ${(err as Error).message}`);
      return;
    }
    for (const c of this.workersByLink.values()) if (c.info.current?.id === job.id) c.info.current = null;
    this.emit('job_finished', final);
    if (this.o.keepHistory) this.queue.prune(this.o.keepHistory);
    void this.removeFromRedis(job.id);
  }

  private sweep(): Promise<void> {
    if (this.sweeping || this.stopped || !this.queue.isOpen) return this.sweeping ?? Promise.resolve();
    this.sweeping = (async () => {
      await Promise.resolve(); // `sweeping` is set before the body (and its finally) runs
      try {
        for (const id of [...this.undispatched]) {
          if (this.paused || this.stopped) break;
          const job = this.queue.get(id);
          if (!job || job.finishedAt !== null) {
            this.undispatched.delete(id);
            continue;
          }
          this.undispatched.delete(id);
          await this.settle(id); // finishes it from Redis, or adds it when Redis lacks it
        }
        if (!this.queue.isOpen) return;
        for (const job of this.queue.running()) await this.settle(job.id);
      } finally {
        this.sweeping = undefined;
      }
    })();
    return this.sweeping;
  }
}

/** The reason BullMQ gave, in words a user can act on. */
function failureReason(why: string | undefined): string {
  why ??= '';
  if (/stalled more than allowable limit/i.test(why)) {
    return `the job stalled ${MAX_STALLED_COUNT + 1} times (the worker running it died or stopped renewing its lock each time); it is not retried again`;
  }
  return why ? `the worker failed: ${why}` : 'the worker failed without a reason';
}
