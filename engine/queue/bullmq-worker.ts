// A worker's side of scale-out: pulls jobs from BullMQ (one queue per model set; sets whose models
// it holds first, others after DEFAULT_COLD_DELAY_MS so a warm worker gets them), validates each
// job again exactly as the server's runner does, fetches input images by content hash, runs the
// workflow in its own Executor (models run on worker threads, so this event loop stays free to renew
// the job's lock), uploads output images to the server, relays every run event, and stores a small
// result in Redis. One job at a time per worker process.
import { randomUUID } from 'node:crypto';
import { Job as BullJobClass, Queue, QueueEvents, Worker, type ConnectionOptions, type Job as BullJob } from 'bullmq';
import { Redis } from 'ioredis';
import type { Logger, NodeDef } from '../node.ts';
import { Executor, type RunEvent, type RunResult } from '../executor/index.ts';
import type { NodeOutcome } from '../executor/executor.ts';
import { validateWorkflow, WorkflowError } from '../workflow/index.ts';
import type { ValidWorkflow } from '../workflow/types.ts';
import {
  DEFAULT_COLD_DELAY_MS,
  jobIdOf,
  MAX_STALLED_COUNT,
  queueName,
  redisOptions,
  toWire,
  type BullmqTiming,
  type InputRef,
  type QueueJobData,
  type QueueJobResult,
  type ServerToWorker,
  type WorkerMessage,
  STOP_GRACE_MS,
} from './bullmq.ts';
import { settlesWithin } from './within.ts';
import { failedBeforeStart, imagesOf, jobOutcome, Recorder } from './runner.ts';
import type { JobImage } from './types.ts';

/** The worker's connection to the server: the event relay and the file transfers. */
export interface ServerLink {
  readonly connected: boolean;
  send(msg: WorkerMessage): void;
  /** Resolves once a message is sent over a connected socket (or rejects when there is none). */
  sendNow(msg: WorkerMessage): Promise<void>;
  onMessage(fn: (msg: ServerToWorker) => void): void;
  onConnected(fn: () => void): void;
  /** The input's bytes into the worker's input cache; returns the path to put in the workflow. */
  fetchInput(ref: InputRef): Promise<string>;
  /** Uploads an image a node wrote here (with the job's lock token); returns the name the server stored it under. */
  uploadImage(jobId: string, lock: string, nodeId: string, index: number, image: JobImage): Promise<JobImage>;
}

export interface QueueWorkerOptions<S> {
  url: string;
  name: string;
  device: string;
  /** Model sets this worker serves. */
  sets: string[];
  /** Sets whose models are loaded now (warm). */
  loadedSets: () => string[];
  registry: ReadonlyMap<string, NodeDef<S>>;
  services: S;
  link: ServerLink;
  timing: BullmqTiming;
  coldDelayMs?: number;
  maxNodes?: number;
  concurrency?: number;
  logger?: Logger;
  /** Unload every model (ComfyUI's /free). */
  unloadModels?: () => Promise<void>;
}

interface Current {
  jobId: string;
  /** The BullMQ lock token this worker holds the job with (one per job). */
  lock: string;
  controller: AbortController;
  lost: boolean;
  /** When the lock was last taken or renewed: past lockDuration it may belong to another worker. */
  renewedAt: number;
  /** Renews the lock now; false when it is not this worker's any more. */
  extend: () => Promise<boolean>;
}

function message(err: unknown): string {
  return err instanceof Error ? err.message || err.name : String(err);
}

export class QueueWorker<S> {
  readonly executor: Executor<S>;
  private readonly o: QueueWorkerOptions<S>;
  private readonly connection: ConnectionOptions;
  /** Lock tokens are this worker's id plus a counter, new for every job taken. */
  private readonly workerId = randomUUID();
  private taken = 0;
  private readonly synced = new Map<string, () => void>();
  /** For what BullMQ cannot do for us (a job whose data it cannot parse). */
  private raw: Redis | undefined;
  private readonly bull = new Map<string, { worker: Worker; queue: Queue; events: QueueEvents }>();
  private readonly logger: Logger;
  private current: Current | undefined;
  private wakeUp: (() => void) | undefined;
  private loop: Promise<void> | undefined;
  private stopped = false;

  constructor(o: QueueWorkerOptions<S>) {
    this.o = o;
    this.logger = o.logger ?? { info: (m) => console.error(m), warn: (m) => console.error(`warning: ${m}`) };
    this.connection = { ...redisOptions(o.url), maxRetriesPerRequest: null };
    this.executor = new Executor({ registry: o.registry, services: o.services, concurrency: o.concurrency, logger: this.logger });
    o.link.onMessage((m) => this.onServer(m));
    o.link.onConnected(() => {
      o.link.send({ type: 'hello', name: o.name, device: o.device, sets: o.sets, loaded: o.loadedSets() });
      this.wake();
    });
  }

  /** The id of the job running now. */
  get runningJob(): string | undefined {
    return this.current?.jobId;
  }

  /** Connects to the set queues and starts pulling. */
  async start(): Promise<void> {
    for (const set of this.o.sets) {
      const name = queueName(set);
      const worker = new Worker(name, null, {
        connection: this.connection,
        autorun: false,
        name: this.o.name,
        lockDuration: this.o.timing.lockDurationMs,
        stalledInterval: this.o.timing.stalledIntervalMs,
        maxStalledCount: MAX_STALLED_COUNT,
      });
      worker.on('error', (err) => this.logger.warn(`Redis (${name}): ${err.message}`));
      const queue = new Queue(name, { connection: this.connection });
      queue.on('error', (err) => this.logger.warn(`Redis (${name}): ${err.message}`));
      const events = new QueueEvents(name, { connection: this.connection });
      events.on('error', (err) => this.logger.warn(`Redis (${name}): ${err.message}`));
      // A new or returned job wakes the loop at once (the poll below is only a fallback).
      events.on('waiting', () => this.wake());
      this.bull.set(set, { worker, queue, events });
      await worker.startStalledCheckTimer();
      await events.waitUntilReady();
    }
    this.loop = this.run();
  }

  /**
   * Stops pulling; the running job is stopped and goes back to the queue at once (not after a
   * stall). False when Redis did not answer in time and the connections were dropped instead.
   */
  async stop(): Promise<boolean> {
    if (this.stopped) return true;
    this.stopped = true;
    const cur = this.current;
    if (cur) {
      cur.lost = true;
      cur.controller.abort(new Error('the worker is stopping'));
    }
    this.wake();
    const graceful = (async () => {
      await this.loop?.catch(() => {});
      for (const b of this.bull.values()) await Promise.all([b.events.close(), b.worker.close(true), b.queue.close()].map((p) => p.catch(() => {})));
    })();
    const clean = await settlesWithin(graceful, STOP_GRACE_MS);
    if (!clean) {
      this.logger.warn(`Redis did not answer within ${STOP_GRACE_MS / 1000} s while stopping; its connections are dropped (a job this worker held comes back through the stalled check)`);
      for (const b of this.bull.values()) for (const c of [b.events, b.worker, b.queue]) void c.disconnect().catch(() => {});
    }
    this.raw?.disconnect();
    return clean;
  }

  private wake(): void {
    const w = this.wakeUp;
    this.wakeUp = undefined;
    w?.();
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.wakeUp = undefined;
        resolve();
      }, ms);
      this.wakeUp = () => {
        clearTimeout(t);
        resolve();
      };
    });
  }

  private onServer(m: ServerToWorker): void {
    if (m.type === 'synced') {
      this.synced.get(m.jobId)?.();
      return;
    }
    if (m.type === 'cancel' && this.current?.jobId === m.jobId) this.current.controller.abort(new Error('cancelled'));
    if (m.type === 'free') {
      if (m.clearCache) this.executor.cache.clear();
      if (m.unloadModels) void this.o.unloadModels?.().then(() => this.status());
    }
  }

  private status(): void {
    if (this.o.link.connected) this.o.link.send({ type: 'status', loaded: this.o.loadedSets(), current: this.current?.jobId ?? null });
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      let next: { job: BullJob; set: string; lock: string } | undefined;
      let retryIn = 1000;
      try {
        if (this.o.link.connected) {
          const r = await this.take();
          next = r.job ? { job: r.job, set: r.set!, lock: r.lock! } : undefined;
          if (r.retryIn !== undefined) retryIn = Math.min(retryIn, r.retryIn);
        }
      } catch (err) {
        if (!this.stopped) this.logger.warn(`could not take a job: ${message(err)}`);
      }
      if (this.stopped) {
        if (next) await next.job.moveToWait(next.lock).catch(() => {});
        return;
      }
      if (!next) {
        await this.sleep(retryIn);
        continue;
      }
      try {
        await this.process(next.job, next.lock);
      } catch (err) {
        this.logger.warn(`job ${next.job.id}: ${message(err)}`);
      }
    }
  }

  /** Warm sets' jobs at once; a cold set's job only once it has waited coldDelayMs for a warm worker. */
  private async take(): Promise<{ job?: BullJob; set?: string; lock?: string; retryIn?: number }> {
    const loaded = new Set(this.o.loadedSets());
    const warm = this.o.sets.filter((s) => loaded.has(s));
    const cold = this.o.sets.filter((s) => !loaded.has(s));
    for (const set of warm) {
      const lock = this.newLock();
      const job = await this.next(set, lock);
      if (job) return { job, set, lock };
    }
    const delay = this.o.coldDelayMs ?? DEFAULT_COLD_DELAY_MS;
    let retryIn: number | undefined;
    for (const set of cold) {
      const b = this.bull.get(set)!;
      // BullMQ parses the job it lists: a damaged one is taken at once (next() fails it).
      const first = await b.queue.getJobs(['prioritized', 'wait'], 0, 0, true).then(
        ([j]) => j,
        (err: Error) => {
          if (err.name !== 'SyntaxError') throw err;
          return { timestamp: 0 };
        },
      );
      if (!first) continue;
      const waited = Date.now() - first.timestamp;
      if (waited < delay) {
        retryIn = Math.min(retryIn ?? delay, delay - waited + 5);
        continue;
      }
      const lock = this.newLock();
      const job = await this.next(set, lock);
      if (job) return { job, set, lock };
    }
    return { retryIn };
  }

  private newLock(): string {
    return `${this.workerId}:${++this.taken}`;
  }

  /**
   * BullMQ's getNextJob, except that a job whose stored data is not JSON (BullMQ cannot read it, and
   * it would come back after every stall) is failed with the reason instead of looping forever.
   */
  private async next(set: string, lock: string): Promise<BullJob | undefined> {
    const b = this.bull.get(set)!;
    try {
      return await b.worker.getNextJob(lock, { block: false });
    } catch (err) {
      if ((err as Error).name !== 'SyntaxError') throw err;
      const client = (this.raw ??= new Redis({ ...redisOptions(this.o.url), maxRetriesPerRequest: null }).on('error', () => {}));
      for (const id of await client.lrange(b.queue.keys.active!, 0, -1)) {
        if ((await client.get(`${b.queue.toKey(id)}:lock`)) !== lock) continue;
        const held = new BullJobClass(b.queue, 'run', {}, { attempts: 1 }, id);
        await held.moveToFailed(new Error("the job's data in Redis is not JSON (it was changed outside charflow); it is not run"), lock, false);
        this.logger.warn(`job ${id}: its data in Redis is not JSON; failed without running it`);
      }
      return undefined;
    }
  }

  private async process(bull: BullJob, lock: string): Promise<void> {
    const data = bull.data as QueueJobData & { id: string };
    const jobId = jobIdOf(bull.id);
    // Only entries charflow made run: the id inside the data must be the one the entry is stored under
    // (a forged entry naming another job's id would run that job twice).
    const forged = jobId === undefined ? `job id "${String(bull.id).slice(0, 140)}" is not one charflow makes` : typeof data !== 'object' || data === null || data.id !== jobId ? "the job's data names another job" : undefined;
    if (forged || jobId === undefined || bull.deferredFailure) {
      // Forged, or BullMQ's stalled check gave up on this job (it stalled too often): fail it, do not run it.
      await bull.moveToFailed(new Error(forged ? `${forged}; it is not run` : bull.deferredFailure!), lock, false);
      if (jobId !== undefined) await this.o.link.sendNow({ type: 'finished', jobId }).catch(() => {});
      if (forged) this.logger.warn(`job ${String(bull.id).slice(0, 140)}: ${forged}; failed without running it`);
      return;
    }
    const extend = async (): Promise<boolean> => {
      const asked = Date.now();
      const ok = await bull.extendLock(lock, this.o.timing.lockDurationMs);
      if (ok) cur.renewedAt = Math.max(cur.renewedAt, asked);
      else this.lose(cur);
      return !!ok;
    };
    const cur: Current = { jobId, lock, controller: new AbortController(), lost: false, renewedAt: Date.now(), extend };
    this.current = cur;
    // Renew the lock while the job runs; losing it means another worker may have the job now.
    const renew = setInterval(() => {
      extend().catch((err: Error) => this.logger.warn(`job ${jobId}: could not renew its lock: ${err.message}`));
    }, Math.max(50, Math.floor(this.o.timing.lockDurationMs / 2)));
    let result: QueueJobResult;
    try {
      this.o.link.send({ type: 'started', jobId, lock });
      this.status();
      result = await this.runJob(cur, data);
    } finally {
      clearInterval(renew);
      this.current = undefined;
    }
    if (cur.lost) {
      // Stopping (goes back to waiting) or the lock is gone (the stalled check moved it): not ours to finish.
      if (this.stopped) await bull.moveToWait(lock).catch(() => {});
      return;
    }
    // The server checks each event against the lock: let it handle them all before the lock goes.
    await this.sync(jobId, lock);
    await bull.moveToCompleted(result, lock, false);
    await this.o.link.sendNow({ type: 'finished', jobId }).catch(() => {
      // The server reads the result from Redis when it comes back.
    });
    this.status();
  }

  /** Waits (at most 10 s) until the server has handled every message sent for the job so far. */
  private async sync(jobId: string, lock: string): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const done = new Promise<void>((resolve) => {
      this.synced.set(jobId, resolve);
      timer = setTimeout(resolve, 10_000);
    });
    try {
      await this.o.link.sendNow({ type: 'sync', jobId, lock });
      await done;
    } catch {
      // Not connected: the server will read the result from Redis.
    } finally {
      clearTimeout(timer);
      this.synced.delete(jobId);
    }
  }

  /** Lost (or maybe lost) the job's lock: another worker may run it now, so nothing more goes out for it. */
  private lose(cur: Current): void {
    if (cur.lost) return;
    cur.lost = true;
    cur.controller.abort(new Error('the job lock was lost'));
    this.logger.warn(`job ${cur.jobId}: lost its lock (this process was paused or Redis was unreachable); stopping it here`);
  }

  /**
   * Whether this worker still holds the job. A lock not renewed for most of lockDuration (this
   * process was stopped, or Redis was away) may have passed to another worker: renewed first, and
   * nothing is sent unless that succeeds.
   */
  private async holds(cur: Current): Promise<boolean> {
    if (cur.lost) return false;
    if (Date.now() - cur.renewedAt > this.o.timing.lockDurationMs * 0.75) await cur.extend().catch(() => false);
    return !cur.lost && Date.now() - cur.renewedAt <= this.o.timing.lockDurationMs;
  }

  /** The same checks and outcome rules as the server's QueueRunner, then the run itself. */
  private async runJob(cur: Current, data: QueueJobData): Promise<QueueJobResult> {
    const { jobId, lock } = cur;
    const signal = cur.controller.signal;
    const rec = new Recorder();
    // Local input paths (by-hash cache) go back to the names the workflow used, in every message.
    const localNames = new Map<string, string>();
    // Events leave in order; an event with images waits for their upload (the server's names go out).
    let chain: Promise<void> = Promise.resolve();
    const relay = (e: RunEvent): Promise<void> => {
      chain = chain.then(async () => {
        if (!(await this.holds(cur))) return;
        if (e.type === 'node_failed' && e.stack) this.logger.warn(`job ${jobId}: ${e.stack}`);
        let images: JobImage[] | undefined;
        const own = 'outputs' in e ? imagesOf(e.outputs) : undefined;
        if (own) images = await Promise.all(own.map((img, i) => this.o.link.uploadImage(jobId, lock, (e as { nodeId: string }).nodeId, i, img)));
        const sent = withLocalNames(images ? ({ ...e, outputs: { images } } as RunEvent) : e, localNames);
        rec.record(sent);
        if (await this.holds(cur)) this.o.link.send({ type: 'event', jobId, lock, event: toWire(sent, images) });
      });
      return chain;
    };
    let run: RunResult | undefined;
    let error: string | null = null;
    try {
      const workflow = data?.workflow as unknown;
      const v = validateWorkflow(workflow, this.o.registry, this.o.maxNodes === undefined ? {} : { maxNodes: this.o.maxNodes });
      if (!v.ok) throw new WorkflowError(v.errors);
      const wf = await this.withLocalInputs(v.workflow!, Array.isArray(data.inputs) ? data.inputs : [], localNames);
      run = await this.executor.run(wf, {
        runId: jobId,
        ...(Array.isArray(data.targets) ? { targets: data.targets } : {}),
        signal,
        onEvent: (e) => relay(e),
      });
      await chain;
    } catch (err) {
      error = renameLocal(message(err), localNames);
      await chain.catch(() => {});
    }
    if (!rec.ended) await relay(failedBeforeStart(jobId)).catch(() => {});
    const nodes: Record<string, NodeOutcome> = {};
    for (const [id, n] of Object.entries(run?.nodes ?? {})) {
      nodes[id] = n.status === 'failed' ? { ...n, message: renameLocal(n.message, localNames), error: renameLocal(n.error, localNames) } : n;
    }
    return { ...jobOutcome(run, error), outputs: rec.outputs, nodes, worker: this.o.name };
  }

  /**
   * Image parameters (and saved-character names) in the job's input list point at the worker's cached
   * copy (fetched by content hash). Only a parameter that is an image path and still holds the listed value is
   * rewritten; anything else stays as validated, and the node resolves it inside its own folders.
   */
  private async withLocalInputs(wf: ValidWorkflow, refs: readonly InputRef[], localNames: Map<string, string>): Promise<ValidWorkflow> {
    if (!refs.length) return wf;
    const nodes = { ...wf.nodes };
    for (const ref of refs) {
      const node = nodes[ref.nodeId];
      if (!node || typeof ref.field !== 'string' || !/^[0-9a-f]{64}$/.test(String(ref.sha256))) continue;
      const param = this.o.registry.get(node.type)?.params?.[ref.field];
      if (!param || param.format !== (ref.kind === 'character' ? 'character' : 'image') || node.inputs[ref.field] !== ref.path) continue;
      const local = await this.o.link.fetchInput(ref);
      localNames.set(local, ref.path);
      nodes[ref.nodeId] = { ...node, inputs: { ...node.inputs, [ref.field]: local } };
    }
    return { ...wf, nodes };
  }
}

/** `text` with this worker's cached input paths named as the workflow names them. */
function renameLocal(text: string, localNames: ReadonlyMap<string, string>): string {
  for (const [local, name] of localNames) text = text.split(local).join(name);
  return text;
}

/** A failure event names the workflow's inputs, not this worker's cache; stacks stay in the worker's log. */
function withLocalNames(e: RunEvent, localNames: ReadonlyMap<string, string>): RunEvent {
  if (e.type === 'node_failed') {
    const { stack: _stack, ...rest } = e;
    return { ...rest, message: renameLocal(e.message, localNames), error: renameLocal(e.error, localNames) };
  }
  if (e.type === 'node_skipped') return { ...e, message: renameLocal(e.message, localNames) };
  return e;
}
