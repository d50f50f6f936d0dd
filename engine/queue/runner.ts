// The one loop that runs queued jobs: oldest pending first, one at a time, all through ONE shared
// Executor so the output cache spans jobs (a prompt-only change re-runs only the text encoder and
// what follows). Transports (editor WebSocket, ComfyUI API) listen to its per-job events.
import type { Logger, NodeDef, NodeOutputs } from '../node.ts';
import { Executor, type RunEvent, type RunResult } from '../executor/index.ts';
import { validateWorkflow, WorkflowError } from '../workflow/index.ts';
import { Emitter } from './emitter.ts';
import type { FreeResult, JobDispatcher, RunnerEvents, WorkerInfo } from './dispatcher.ts';
import type { JobQueue } from './queue.ts';
import { settlesWithin } from './within.ts';
import type { Job, JobImage, JobMessage, JobNodeOutput, JobResult, PruneOptions } from './types.ts';

/** A job's event log is capped so a 20,000-node workflow cannot make a huge history row. */
const MAX_MESSAGES = 50_000;
const MAX_STACK_CHARS = 4000;

export interface RunnerOptions<S> {
  queue: JobQueue;
  registry: ReadonlyMap<string, NodeDef<S>>;
  services: S;
  /** Shared executor; default one is made from registry and services. */
  executor?: Executor<S>;
  /** For the default executor. */
  concurrency?: number;
  cacheBudgetBytes?: number;
  logger?: Logger;
  /** Node limit when re-validating a job before it runs. */
  maxNodes?: number;
  /** Applied to the history after every job (e.g. { maxCount: 10_000 }). */
  keepHistory?: PruneOptions;
}

export type { RunnerEvents } from './dispatcher.ts';

interface Current {
  job: Job;
  controller: AbortController;
  shutdown: boolean;
}

/** Images from an output node's outputs, when it reports them in ComfyUI's shape. */
export function imagesOf(outputs: NodeOutputs | undefined): JobImage[] | undefined {
  const list = outputs?.images;
  if (!Array.isArray(list)) return undefined;
  const images: JobImage[] = [];
  for (const item of list as unknown[]) {
    if (typeof item !== 'object' || item === null) continue;
    const { filename, subfolder, type } = item as Record<string, unknown>;
    if (typeof filename !== 'string' || (type !== 'output' && type !== 'temp' && type !== 'input')) continue;
    images.push({ filename, subfolder: typeof subfolder === 'string' ? subfolder : '', type });
  }
  return images;
}

/** The run_finished event of a job that failed before its executor started (so every client sees it end). */
export function failedBeforeStart(runId: string): RunEvent {
  return { type: 'run_finished', runId, time: Date.now(), status: 'failed', ms: 0, counts: { done: 0, cached: 0, failed: 0, skipped: 0, cancelled: 0 } };
}

/**
 * How a job ended, from its executor result (undefined if it never got one) and the error that stopped it
 * (null if none): a cancel is 'interrupted'; a failed run names its first failed node's message.
 */
export function jobOutcome(result: RunResult | undefined, error: string | null): { status: 'done' | 'failed' | 'interrupted'; error: string | null } {
  if (!result || error !== null) return { status: 'failed', error };
  if (result.status === 'cancelled') return { status: 'interrupted', error: 'interrupted by a cancel request' };
  if (result.status === 'done') return { status: 'done', error: null };
  const first = Object.values(result.nodes).find((o) => o.status === 'failed');
  return { status: 'failed', error: first && first.status === 'failed' ? first.message : 'the run failed' };
}

/** Collects what a job keeps in its history: per-node outputs (JSON) and the event log. */
export class Recorder {
  readonly outputs: Record<string, JobNodeOutput> = {};
  readonly messages: JobMessage[] = [];
  ended = false;

  record(e: RunEvent): void {
    if (e.type === 'node_progress') return; // too many, and previews are transient
    const { type, runId: _runId, ...rest } = e;
    const data: Record<string, unknown> = { ...rest };
    if (e.type === 'node_finished' || e.type === 'node_cached') {
      delete data.outputs;
      const images = imagesOf(e.outputs);
      if (images) {
        this.outputs[e.nodeId] = { images };
        data.output = { images };
      }
    }
    if (e.type === 'node_failed' && e.stack) data.stack = e.stack.slice(0, MAX_STACK_CHARS);
    if (e.type === 'run_finished' || e.type === 'run_cancelled') this.ended = true;
    if (this.messages.length < MAX_MESSAGES) this.messages.push([type, data]);
  }
}

function message(err: unknown): string {
  return err instanceof Error ? err.message || err.name : String(err);
}

/** Pool-like services (the host's Services) that /free can unload; other hosts may have none. */
interface Unloadable {
  pool?: { stats(): { loaded: string[] }; unload(path: string): Promise<unknown> };
}

export class QueueRunner<S> extends Emitter<RunnerEvents> implements JobDispatcher {
  readonly kind = 'embedded' as const;
  readonly queue: JobQueue;
  private readonly services: S;
  readonly executor: Executor<S>;
  private readonly maxNodes: number | undefined;
  private readonly keepHistory: PruneOptions | undefined;
  private readonly logger: Logger;
  private readonly unsubscribe: (() => void)[] = [];
  private current: Current | undefined;
  private loop: Promise<void> | undefined;
  private dirty = false;
  private started = false;
  private paused = false;
  private stopped = false;

  constructor(opts: RunnerOptions<S>) {
    super();
    this.queue = opts.queue;
    this.services = opts.services;
    this.logger = opts.logger ?? { info: (m) => console.error(m), warn: (m) => console.error(`warning: ${m}`) };
    this.executor =
      opts.executor ??
      new Executor({
        registry: opts.registry,
        services: opts.services,
        concurrency: opts.concurrency,
        cacheBudgetBytes: opts.cacheBudgetBytes,
        logger: this.logger,
      });
    this.maxNodes = opts.maxNodes;
    this.keepHistory = opts.keepHistory;
    this.unsubscribe.push(
      this.queue.on('queued', () => this.wake()),
      this.queue.on('requeued', () => this.wake()),
      this.queue.on('cancel', (job) => {
        if (this.current?.job.id === job.id) this.current.controller.abort(new Error('cancelled'));
      }),
    );
  }

  runningJobs(): Job[] {
    return this.current ? [this.current.job] : [];
  }

  workers(): WorkerInfo[] {
    return [];
  }

  async free(opts: { unloadModels: boolean; clearCache: boolean }): Promise<FreeResult> {
    let unloadedModels = 0;
    const pool = (this.services as Unloadable | undefined)?.pool;
    if (opts.unloadModels && pool) {
      // A model in use finishes its runs first; the next run loads it again.
      const loaded = pool.stats().loaded;
      await Promise.all(loaded.map((p) => pool.unload(p)));
      unloadedModels = loaded.length;
    }
    if (opts.clearCache) this.executor.cache.clear();
    return { unloadedModels, cacheCleared: opts.clearCache };
  }

  /** The job being run, if any. */
  get runningJob(): Job | undefined {
    return this.current?.job;
  }

  get isPaused(): boolean {
    return this.paused || !this.started;
  }

  /** Starts (or resumes) taking jobs. */
  start(): void {
    if (this.stopped) throw new Error('the runner was stopped; make a new one');
    this.started = true;
    this.paused = false;
    this.wake();
  }

  /** Stops taking new jobs; the running one goes on. */
  pause(): void {
    this.paused = true;
  }

  /** Asks the running job to stop (ComfyUI's interrupt); it ends as 'interrupted'. */
  interrupt(): boolean {
    const job = this.current?.job;
    return job ? this.queue.cancel(job.id) === 'cancelling' : false;
  }

  /** Resolves when no job is running and the loop has stopped (queue empty or paused). */
  async whenIdle(): Promise<void> {
    while (this.loop) await this.loop;
  }

  /**
   * Graceful stop: takes no more jobs and aborts the running one, which goes back to pending so
   * nothing is lost. If it does not stop within timeoutMs, it is left as 'running' in the
   * database, and the next start re-queues it like after a crash.
   */
  async stop(opts: { timeoutMs?: number } = {}): Promise<void> {
    if (this.stopped) return this.whenIdle();
    this.stopped = true;
    for (const u of this.unsubscribe.splice(0)) u();
    const cur = this.current;
    if (cur) {
      cur.shutdown = true;
      cur.controller.abort(new Error('the server is stopping'));
    }
    const loop = this.loop;
    if (!loop) return;
    if (!(await settlesWithin(loop, opts.timeoutMs ?? 15_000)) && cur) this.logger.warn(`job ${cur.job.id} did not stop in time; it will run again at the next start`);
  }

  private wake(): void {
    this.dirty = true;
    if (this.loop || !this.started || this.paused || this.stopped) return;
    this.loop = this.drain().finally(() => {
      this.loop = undefined;
      if (this.dirty && !this.paused && !this.stopped && this.queue.isOpen) this.wake();
      else this.emit('idle');
    });
  }

  private async drain(): Promise<void> {
    while (!this.paused && !this.stopped && this.queue.isOpen) {
      this.dirty = false;
      let job: Job | undefined;
      try {
        job = this.queue.takeNext();
      } catch (err) {
        this.fatal(err);
        return;
      }
      if (!job) return;
      try {
        await this.runJob(job);
      } catch (err) {
        this.fatal(err);
        return;
      }
    }
  }

  private fatal(err: unknown): void {
    const e = err instanceof Error ? err : new Error(String(err));
    this.logger.warn(`the job runner stopped: ${e.message}`);
    this.paused = true;
    this.emit('error', e);
  }

  private async runJob(job: Job): Promise<void> {
    const cur: Current = { job, controller: new AbortController(), shutdown: false };
    this.current = cur;
    const rec = new Recorder();
    let result: RunResult | undefined;
    let error: string | null = null;
    try {
      this.emit('job_started', job);
      const v = validateWorkflow(job.workflow, this.executor.registry, this.maxNodes === undefined ? {} : { maxNodes: this.maxNodes });
      if (!v.ok) throw new WorkflowError(v.errors);
      result = await this.executor.run(v.workflow!, {
        runId: job.id,
        ...(job.targets ? { targets: job.targets } : {}),
        signal: cur.controller.signal,
        onEvent: (e) => {
          rec.record(e);
          this.emit('event', job, e);
        },
      });
    } catch (err) {
      error = message(err);
    } finally {
      this.current = undefined;
    }
    if (!this.queue.isOpen) return; // stop() gave up waiting; the next start re-queues the job

    const cancelRequested = this.queue.get(job.id)?.cancelRequested ?? false;
    if (cur.shutdown && !cancelRequested && (error !== null || result?.status === 'cancelled')) {
      const back = this.queue.requeue(job.id);
      if (back) this.emit('job_requeued', back);
      return;
    }
    if (!rec.ended) {
      // Failed before the executor started (e.g. the registry changed since it was queued).
      const e = failedBeforeStart(job.id);
      rec.record(e);
      this.emit('event', job, e);
    }
    const res: JobResult = { ...jobOutcome(result, error), outputs: rec.outputs, nodes: result?.nodes ?? {}, messages: rec.messages };
    const final = this.queue.finish(job.id, res);
    this.emit('job_finished', final);
    if (this.keepHistory) this.queue.prune(this.keepHistory);
  }
}
