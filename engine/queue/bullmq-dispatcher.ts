// The server's side of scale-out: every accepted job (already on disk in the server's SQLite queue,
// which keeps listing and history) is added to BullMQ, one queue per model set; workers on any
// machine pull it. Workers relay their run events over a WebSocket (see editor/server/workers.ts);
// BullMQ's stored result is the truth about how a job ended, so a result is never lost or counted
// twice: the server records it when the worker says it finished, and a sweep reads Redis for the
// jobs it has not heard about (server restarts, dropped sockets, jobs failed by the stalled check).
import { Queue, Worker, type ConnectionOptions } from 'bullmq';
import { Redis } from 'ioredis';
import type { RunEvent } from '../executor/events.ts';
import type { ValidWorkflow } from '../workflow/types.ts';
import {
  bullId,
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
  STOP_GRACE_MS,
} from './bullmq.ts';
import { settlesWithin } from './within.ts';
import type { FreeResult, JobDispatcher, WorkerInfo } from './dispatcher.ts';
import { Emitter } from './emitter.ts';
import type { JobQueue } from './queue.ts';
import { failedBeforeStart, Recorder, type RunnerEvents } from './runner.ts';
import type { Job, JobResult, PruneOptions } from './types.ts';
import { checkJobResult, MAX_SETS_PER_WORKER } from './wire.ts';

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
  /**
   * How often every pending job is checked against Redis, the SQLite queue being the record: one
   * Redis lost (FLUSHALL, a restart without AOF) is added again (default 10 s).
   */
  reconcileMs?: number;
  /** The model sets this server knows (its models folder); empty: any valid name is accepted. */
  knownSets?: () => readonly string[];
  log: (message: string) => void;
}

interface Live {
  job: Job;
  rec: Recorder;
  /** The lock token of the worker whose events are accepted (checked against Redis each time). */
  lock?: string;
}

/** At most this many model sets have Redis resources open at once (each: a queue and a stalled check). */
export const MAX_OPEN_SETS = 64;
/** A lock check that Redis does not answer in this long refuses the message (Redis is down). */
const LOCK_CHECK_MS = 5000;

/** What the server reads of a BullMQ job, without BullMQ parsing its data (forged entries may not be JSON). */
interface RawJob {
  state: string;
  dataOk: boolean;
  returnvalue: { ok: true; value: unknown } | { ok: false };
  failedReason?: string;
  deferredFailure?: string;
}

interface Connected {
  info: WorkerInfo;
  link: WorkerLink;
  /** Refused messages, for a log that a flood cannot fill (see refused()). */
  refused: number;
  loggedAt: number;
}

/** A worker's first refusals are logged one by one, later ones at most every 5 s with a count. */
const REFUSALS_LOGGED = 10;

export { bullId } from './bullmq.ts';

export class BullmqDispatcher extends Emitter<RunnerEvents> implements JobDispatcher {
  readonly kind = 'bullmq' as const;
  readonly queue: JobQueue;
  private readonly connection: ConnectionOptions;
  /** One connection shared by every set's Queue (the stalled checks need their own). */
  private shared: Redis | undefined;
  private readonly queues = new Map<string, Queue>();
  /** One per set: the server runs BullMQ's stalled check too, so a set whose workers all died still recovers. */
  private readonly checkers = new Map<string, Worker>();
  private readonly live = new Map<string, Live>();
  /** Per running job, the outputs its lock holder uploaded (`type/filename`): the only images its events and result may name. */
  private readonly uploads = new Map<string, Set<string>>();
  private readonly workersByLink = new Map<WorkerLink, Connected>();
  /** Accepted jobs not yet in Redis (Redis was down): the sweep tries again. */
  private readonly undispatched = new Set<string>();
  private readonly finishing = new Set<string>();
  private readonly unsubscribe: (() => void)[] = [];
  private sweepTimer: NodeJS.Timeout | undefined;
  private reconcileTimer: NodeJS.Timeout | undefined;
  private reconciling = false;
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
      this.reconcileTimer = setInterval(() => void this.reconcile(), this.o.reconcileMs ?? 10_000);
      this.reconcileTimer.unref();
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
    if (this.reconcileTimer) clearInterval(this.reconcileTimer);
    const open = [...this.checkers.values(), ...this.queues.values()];
    const graceful = (async () => {
      await this.sweeping?.catch(() => {});
      await Promise.all(open.map((q) => q.close().catch(() => {})));
    })();
    if (!(await settlesWithin(graceful, STOP_GRACE_MS))) {
      this.log(`warning: Redis did not answer within ${STOP_GRACE_MS / 1000} s while stopping; its connections are dropped (jobs stay in Redis)`);
      for (const q of open) void q.disconnect().catch(() => {});
    }
    this.shared?.disconnect();
    this.emit('idle');
  }

  // ---- the worker side of the transport --------------------------------------------------

  /**
   * A worker said hello (schema-checked). Its sets are kept only when this server knows them (when
   * it knows any) and within MAX_OPEN_SETS; a refusal is returned as the reason to close with.
   */
  workerConnected(link: WorkerLink, hello: Extract<WorkerMessage, { type: 'hello' }>): string | undefined {
    if (this.stopped) return 'the server is stopping';
    const known = new Set(this.o.knownSets?.() ?? []);
    const unknown = known.size ? hello.sets.filter((s) => !known.has(s)) : [];
    if (unknown.length) this.log(`warning: worker ${hello.name} names model sets this server does not have (${unknown.join(', ')}); ignoring them`);
    const sets = hello.sets.filter((s) => !unknown.includes(s)).slice(0, MAX_SETS_PER_WORKER);
    const opened = new Set([...this.queues.keys(), ...sets]);
    if (opened.size > MAX_OPEN_SETS) return `too many model sets in use (at most ${MAX_OPEN_SETS})`;
    const info: WorkerInfo = { name: hello.name, device: hello.device, sets, loaded: hello.loaded.filter((s) => sets.includes(s)), current: null, since: Date.now() };
    this.workersByLink.set(link, { info, link, refused: 0, loggedAt: 0 });
    for (const s of sets) this.queueFor(s);
    link.send({ type: 'welcome', server: 'charflow' });
    this.emit('workers_changed');
    this.log(`charflow: worker ${hello.name} connected (${hello.device}; sets ${sets.join(', ') || 'none'})`);
    return undefined;
  }

  workerDisconnected(link: WorkerLink): void {
    const c = this.workersByLink.get(link);
    if (!c) return;
    this.workersByLink.delete(link);
    this.log(`charflow: worker ${c.info.name} disconnected`);
    this.emit('workers_changed');
    for (const s of c.info.sets) void this.release(s);
  }

  /**
   * A message from a connected worker (already schema-checked by the transport, which hands them
   * over one at a time). Anything about a job counts only from the worker that holds the job's
   * BullMQ lock right now (its token, read from Redis); the rest is refused and logged.
   */
  async workerMessage(link: WorkerLink, msg: WorkerMessage): Promise<void> {
    const c = this.workersByLink.get(link);
    if (!c || !this.queue.isOpen) return;
    switch (msg.type) {
      case 'hello':
        return;
      case 'status':
        c.info.loaded = msg.loaded.filter((s) => c.info.sets.includes(s));
        if (msg.current === null) c.info.current = null;
        this.emit('workers_changed');
        return;
      case 'started': {
        const pending = this.queue.get(msg.jobId);
        if (!pending || pending.finishedAt !== null || !(await this.holdsLock(pending, msg.lock))) {
          if (pending && pending.finishedAt === null) this.refused(c, `refused "started" for job ${msg.jobId} from worker ${c.info.name}: it does not hold the job's lock`);
          // Finished or deleted here (e.g. cancelled while it waited), or not this worker's: it must not go on.
          link.send({ type: 'cancel', jobId: msg.jobId });
          return;
        }
        const job = this.queue.markStarted(msg.jobId, c.info.name);
        if (!job) return link.send({ type: 'cancel', jobId: msg.jobId });
        this.live.set(job.id, { job, rec: new Recorder(), lock: msg.lock });
        c.info.current = { id: job.id, number: job.number };
        this.emit('job_started', job);
        this.emit('workers_changed');
        return;
      }
      case 'event': {
        const job = this.queue.get(msg.jobId);
        const refuse = (why: string): void => this.refused(c, `refused an event for job ${msg.jobId} from worker ${c.info.name}: ${why}`);
        if (!job || job.status !== 'running') return refuse('the job is not running');
        const images = (msg.event.outputs as { images?: { filename: string; subfolder: string; type: string }[] } | undefined)?.images ?? [];
        if (!images.every((img) => this.ownsImage(job.id, img))) return refuse("it names images that are not this job's uploads");
        if (!(await this.holdsLock(job, msg.lock))) return refuse("the worker does not hold the job's lock");
        let l = this.live.get(job.id);
        // The server restarted while the job ran: the lock holder's events are adopted.
        if (!l || l.lock !== msg.lock) this.live.set(job.id, (l = { job: this.queue.get(job.id) ?? job, rec: l?.lock === undefined && l ? l.rec : new Recorder(), lock: msg.lock }));
        if (l.rec.ended) return refuse('the job has ended already');
        const e = fromWire(scrubEvent(msg.event));
        l.rec.record(e);
        this.emit('event', l.job, e);
        return;
      }
      case 'sync':
        // Messages are handled in order: everything this worker sent before has been dealt with.
        link.send({ type: 'synced', jobId: msg.jobId });
        return;
      case 'finished':
        if (c.info.current?.id === msg.jobId) c.info.current = null;
        await this.settle(msg.jobId);
        return;
    }
  }

  private refused(c: Connected, line: string): void {
    c.refused++;
    const now = Date.now();
    if (c.refused <= REFUSALS_LOGGED || now - c.loggedAt >= 5000) {
      c.loggedAt = now;
      this.log(`warning: ${line}${c.refused > REFUSALS_LOGGED ? ` (${c.refused} refused from this worker so far)` : ''}`);
    }
  }

  /** Records an output image the job's lock holder uploaded (the upload route checked the lock). */
  recordUpload(jobId: string, image: { filename: string; type: 'output' | 'temp' }): void {
    let set = this.uploads.get(jobId);
    if (!set) this.uploads.set(jobId, (set = new Set()));
    set.add(`${image.type}/${image.filename}`);
  }

  /** Whether `image` is one of the job's uploads (names come from the server, never from the worker's word). */
  private ownsImage(jobId: string, image: { filename: string; subfolder: string; type: string }): boolean {
    return image.subfolder === '' && (this.uploads.get(jobId)?.has(`${image.type}/${image.filename}`) ?? false);
  }

  /**
   * Whether `lock` is the BullMQ lock token of the job right now (an output upload, a `started`,
   * an event). Redis unreachable or slow counts as no: nothing unverified reaches clients.
   */
  async holdsLock(job: Job, lock: string): Promise<boolean> {
    if (this.stopped || job.finishedAt !== null) return false;
    try {
      const q = this.queueFor(this.setOf(job));
      const client = this.redis();
      const key = `${q.toKey(bullId(job.id))}:lock`;
      let timer: NodeJS.Timeout | undefined;
      const held = await Promise.race([
        client.get(key),
        new Promise<null>((resolve) => (timer = setTimeout(() => resolve(null), LOCK_CHECK_MS))),
      ]).finally(() => clearTimeout(timer));
      return held === lock;
    } catch {
      return false;
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
    if (this.stopped) throw new Error('the dispatcher is stopped'); // nothing opens Redis connections stop() would not close
    const name = queueName(set);
    q = new Queue(name, { connection: this.redis() });
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

  private redis(): Redis {
    if (!this.shared) {
      this.shared = new Redis({ ...redisOptions(this.o.url), maxRetriesPerRequest: null });
      this.shared.on('error', () => {}); // each Queue reports its own errors
    }
    return this.shared;
  }

  /** Closes a set's queue and stalled check once no worker serves it and no job of it is waiting or running. */
  private async release(set: string): Promise<void> {
    if (this.stopped || [...this.workersByLink.values()].some((c) => c.info.sets.includes(set))) return;
    if (this.queue.isOpen && [...this.queue.running(), ...this.queue.pending()].some((j) => this.setOf(j) === set)) return;
    const q = this.queues.get(set);
    const checker = this.checkers.get(set);
    this.queues.delete(set);
    this.checkers.delete(set);
    await Promise.all([checker?.close(), q?.close()].map((p) => p?.catch(() => {})));
  }

  /** Model sets with Redis resources open now (tests, /system_stats). */
  openSets(): string[] {
    return [...this.queues.keys()];
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

  /** The job's BullMQ entry as Redis has it, read without BullMQ's parsing; undefined when Redis has none. */
  private async readBull(id: string, set: string): Promise<RawJob | undefined> {
    const q = this.queueFor(set);
    const h = await this.redis().hgetall(q.toKey(bullId(id)));
    if (!h || Object.keys(h).length === 0) return undefined;
    const parse = (text: string | undefined): { ok: true; value: unknown } | { ok: false } => {
      if (text === undefined) return { ok: false };
      try {
        return { ok: true, value: JSON.parse(text) };
      } catch {
        return { ok: false };
      }
    };
    return {
      state: await q.getJobState(bullId(id)),
      dataOk: parse(h.data).ok,
      returnvalue: parse(h.returnvalue),
      ...(h.failedReason ? { failedReason: h.failedReason } : {}),
      ...(h.defa ? { deferredFailure: h.defa } : {}),
    };
  }

  private async removeFromRedis(id: string): Promise<void> {
    const job = this.queue.isOpen ? this.queue.get(id) : undefined;
    const sets = job ? [this.setOf(job)] : [...this.queues.keys()];
    try {
      for (const s of sets) {
        const q = this.queueFor(s);
        const state = await q.getJobState(bullId(id));
        // An active one is being started right now: its worker's 'started' gets a cancel back.
        if (state !== 'unknown' && state !== 'active') await q.remove(bullId(id));
      }
    } catch (err) {
      if (!this.stopped) this.log(`warning: could not remove job ${id} from Redis: ${(err as Error).message}`);
    }
    if (job) void this.release(this.setOf(job));
  }

  /** Reads what Redis knows about a job the server still has as pending or running, and acts on it. */
  private async settle(id: string): Promise<void> {
    if (this.finishing.has(id) || this.stopped) return;
    const job = this.queue.isOpen ? this.queue.get(id) : undefined;
    if (!job || job.finishedAt !== null) return;
    this.finishing.add(id);
    try {
      const bull = await this.readBull(id, this.setOf(job));
      if (!bull) {
        // Never reached Redis (or Redis lost it): it runs from the start.
        const wasRunning = job.status === 'running';
        if (wasRunning) this.requeue(job);
        await this.dispatch(this.queue.get(id) ?? job);
        // A running job gone from Redis means Redis lost its data: the waiting ones are likely gone too, so look now rather than at the next reconcile.
        if (wasRunning) void this.reconcile();
        return;
      }
      if (!bull.dataOk && bull.state !== 'active') {
        // Changed outside charflow: BullMQ cannot read it, so no worker may run it.
        await this.queueFor(this.setOf(job)).remove(bullId(id));
        this.finish(job, null, "its entry in Redis was damaged (the data is not JSON); it was not run");
        return;
      }
      if (bull.state === 'completed') {
        const r = bull.returnvalue.ok ? checkJobResult(bull.returnvalue.value) : ({ ok: false, reason: "the job's stored result is not JSON" } as const);
        const bad = r.ok ? Object.values(r.msg.outputs).flatMap((o) => o.images ?? []).find((img) => !this.ownsImage(job.id, img)) : undefined;
        if (!r.ok) this.finish(job, null, r.reason);
        else if (bad) this.finish(job, null, `the job's stored result names an image that is not its own (${bad.filename.slice(0, 80)})`);
        else this.finish(job, scrubResult(r.msg), null);
      } else if (bull.state === 'failed') this.finish(job, null, failureReason(bull.failedReason));
      else if (bull.state !== 'active' && bull.deferredFailure) {
        // The stalled check gave up on it (BullMQ fails it only when a worker takes it next): fail it now.
        await this.queueFor(this.setOf(job)).remove(bullId(id));
        this.finish(job, null, failureReason(bull.deferredFailure));
      } else if (bull.state !== 'active' && job.status === 'running') this.requeue(job); // moved back by the stalled check
    } catch (err) {
      if (!this.stopped) this.log(`warning: could not read job ${id} from Redis: ${(err as Error).message}`);
    } finally {
      this.finishing.delete(id);
    }
  }

  /**
   * The SQLite queue is the record: every pending job must have its Redis entry. One Redis lost
   * (FLUSHALL, a restart without AOF) is added again; one that ended in Redis without the server
   * hearing of it (a forged or damaged entry failed by a worker) is settled.
   */
  private async reconcile(): Promise<void> {
    if (this.reconciling || this.stopped || this.paused || !this.queue.isOpen) return;
    this.reconciling = true;
    try {
      for (const job of this.queue.pending()) {
        if (this.stopped || !this.queue.isOpen) return;
        if (this.undispatched.has(job.id) || this.finishing.has(job.id)) continue;
        const state = await this.queueFor(this.setOf(job)).getJobState(bullId(job.id));
        if (state === 'unknown') {
          this.log(`warning: job ${job.id} was missing from Redis; adding it again`);
          await this.dispatch(job);
        } else if (state === 'completed' || state === 'failed') await this.settle(job.id);
      }
    } catch (err) {
      if (!this.stopped) this.log(`warning: could not compare the queue with Redis: ${(err as Error).message}`);
    } finally {
      this.reconciling = false;
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
    this.uploads.delete(job.id);
    if (!l.rec.ended) {
      // Clients get exactly one terminal event: the worker's own when it was accepted, else this one
      // (its last events were refused, e.g. sent while Redis was away and the lock could not be checked).
      const zero = { done: 0, cached: 0, failed: 0, skipped: 0, cancelled: 0 };
      const e: RunEvent =
        result?.status === 'done'
          ? { type: 'run_finished', runId: job.id, time: Date.now(), status: 'done', ms: 0, counts: zero }
          : result?.status === 'interrupted'
            ? { type: 'run_cancelled', runId: job.id, time: Date.now(), ms: 0, counts: zero }
            : failedBeforeStart(job.id);
      l.rec.record(e);
      this.emit('event', l.job, e);
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

/**
 * Absolute file paths in a worker's words become their last part: the history names the node and
 * the input, never a worker's folders.
 */
export function scrubPaths(text: string): string {
  return text
    .replace(/(^|[\s'"(=\[])\/(?:[^\s'"`()\[\]/]+\/)+([^\s'"`()\[\]/]*)/g, '$1$2')
    .replace(/(^|[\s'"(=\[])[A-Za-z]:\\(?:[^\s'"`()\[\]\\]+\\)+([^\s'"`()\[\]\\]*)/g, '$1$2');
}

/** A worker's event without stacks or worker paths. */
function scrubEvent<E extends { type: string }>(e: E): E {
  if (e.type !== 'node_failed' && e.type !== 'node_skipped') return e;
  const { stack: _stack, ...rest } = e as E & { stack?: string; message?: string; error?: string };
  return {
    ...rest,
    ...(typeof rest.message === 'string' ? { message: scrubPaths(rest.message) } : {}),
    ...(typeof rest.error === 'string' ? { error: scrubPaths(rest.error) } : {}),
  } as unknown as E;
}

function scrubResult(r: QueueJobResult): QueueJobResult {
  const nodes: QueueJobResult['nodes'] = {};
  for (const [id, n] of Object.entries(r.nodes)) nodes[id] = n.status === 'failed' ? { ...n, message: scrubPaths(n.message), error: scrubPaths(n.error) } : n.status === 'skipped' ? { ...n, message: scrubPaths(n.message) } : n;
  return { ...r, error: r.error === null ? null : scrubPaths(r.error), nodes };
}

/** The reason BullMQ gave, in words a user can act on. */
function failureReason(why: string | undefined): string {
  why = scrubPaths(why ?? '');
  if (/stalled more than allowable limit/i.test(why)) {
    return `the job stalled ${MAX_STALLED_COUNT + 1} times (the worker running it died or stopped renewing its lock each time); it is not retried again`;
  }
  return why ? `the worker failed: ${why}` : 'the worker failed without a reason';
}
