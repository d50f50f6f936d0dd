// The one interface the server runs jobs through, whichever queue backs it: the embedded runner
// (SQLite queue, this process runs the jobs: QueueRunner) or BullMQ on Redis (workers on other
// machines run them: BullmqDispatcher). In both, the server's SQLite JobQueue keeps the record of
// every job (listing, history); the dispatcher decides where and when a job runs and reports its
// events. Transports (editor WebSocket, ComfyUI API) only see this interface.
import type { Emitter } from './emitter.ts';
import type { Job } from './types.ts';
import type { JobQueue } from './queue.ts';
import type { RunEvent } from '../executor/events.ts';

/** What a dispatcher reports about the jobs it runs (the transports listen to these). */
export type RunnerEvents = {
  /** The runner took the job; run events follow. */
  job_started: [job: Job];
  /** An executor event of the job (runId === job.id). Synchronous: do not block. */
  event: [job: Job, event: RunEvent];
  /** The job reached a final status; `job` is the stored history entry. */
  job_finished: [job: Job];
  /** A graceful stop put the running job back to pending. */
  job_requeued: [job: Job];
  /** Nothing left to run (or paused). */
  idle: [];
  /** The queue database failed; the runner stops taking jobs. */
  error: [err: Error];
  /** Workers connected, left, or changed job or loaded sets (scale-out only). */
  workers_changed: [];
};

/** A worker connected to the server (scale-out mode), as /system_stats and the editor show it. */
export interface WorkerInfo {
  name: string;
  device: string;
  /** Model sets this worker serves (the queues it takes from). */
  sets: string[];
  /** Model sets with models loaded now: this worker takes their jobs first. */
  loaded: string[];
  /** The job it runs now. */
  current: { id: string; number: number } | null;
  /** Date.now() when it connected. */
  since: number;
}

export interface FreeResult {
  unloadedModels: number;
  cacheCleared: boolean;
}

export interface JobDispatcher extends Pick<Emitter<RunnerEvents>, 'on' | 'off'> {
  /** 'embedded': this process runs the jobs; 'bullmq': workers pull them from Redis. */
  readonly kind: 'embedded' | 'bullmq';
  readonly queue: JobQueue;
  /** Jobs being run now, wherever they run. */
  runningJobs(): Job[];
  /** Starts (or resumes) handing out jobs. */
  start(): void;
  /** Stops handing out new jobs; running ones go on. */
  pause(): void;
  /** ComfyUI's /interrupt without a prompt id: stops every running job; true if there was one. */
  interrupt(): boolean;
  /** ComfyUI's /free: unload models and/or clear the output cache, wherever jobs run. */
  free(opts: { unloadModels: boolean; clearCache: boolean }): Promise<FreeResult>;
  /** Connected workers (empty in embedded mode: the server itself runs the jobs). */
  workers(): WorkerInfo[];
  /** Graceful stop; see each implementation. */
  stop(opts?: { timeoutMs?: number }): Promise<void>;
}
