// What a job is: one accepted run of a workflow, from the moment it is queued until its history
// entry is deleted. Shared by the queue (SQLite), the runner and the transports (editor, ComfyUI API).
import type { NodeOutcome } from '../executor/executor.ts';
import type { ValidWorkflow } from '../workflow/types.ts';

/**
 * pending: waiting its turn. running: the runner has it. done / failed: the executor finished it.
 * cancelled: removed before it ran (or while being cancelled when the server stopped).
 * interrupted: stopped by a cancel while it ran.
 */
export type JobStatus = 'pending' | 'running' | 'done' | 'failed' | 'cancelled' | 'interrupted';
export const FINISHED_STATUSES: readonly JobStatus[] = ['done', 'failed', 'cancelled', 'interrupted'];

/** Who queued it: the editor's WebSocket or the HTTP API (ComfyUI-compatible layer). */
export type JobSource = 'editor' | 'api';

/** An image an output node wrote, as ComfyUI's history lists them. */
export interface JobImage {
  filename: string;
  subfolder: string;
  type: 'output' | 'temp' | 'input';
}

/** What an output node produced that outlives the run (JSON only; tensors stay in the cache). */
export interface JobNodeOutput {
  images?: JobImage[];
}

/** One entry of a job's event log: [event name, data], ComfyUI's `messages` shape. */
export type JobMessage = [string, Record<string, unknown>];

/** JSON value stored verbatim (the ComfyUI layer keeps the original prompt and extra_data here). */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

export interface Job {
  /** A UUID; also the executor's runId, so run events name their job. */
  id: string;
  /** Monotonic, never reused (not even after deletion). */
  number: number;
  clientId: string | null;
  source: JobSource;
  status: JobStatus;
  /** The workflow as validated when it was accepted (defaults filled in). */
  workflow: ValidWorkflow;
  /** Requested output nodes; null means every output node. */
  targets: string[] | null;
  extra: JsonValue;
  /** Per output node, what it wrote. */
  outputs: Record<string, JobNodeOutput>;
  /** The outcome of each node the run needed (empty until it finishes). */
  nodes: Record<string, NodeOutcome>;
  messages: JobMessage[];
  /** Why a job failed or was cancelled, one line; null otherwise. */
  error: string | null;
  /** A cancel arrived while it ran (so a crash mid-cancel ends as cancelled, not re-run). */
  cancelRequested: boolean;
  /** How many times the runner started it (> 1 after a crash re-queued it). */
  attempts: number;
  /** Date.now() values. */
  createdAt: number;
  startedAt: number | null;
  finishedAt: number | null;
  /** The worker that ran it (scale-out mode); null when it ran in the server's own runner. */
  worker: string | null;
}

/** A job without its heavy JSON parts, for queue listings that go to every client. */
export type JobSummary = Pick<Job, 'id' | 'number' | 'clientId' | 'source' | 'status' | 'createdAt' | 'startedAt' | 'worker'>;

export interface EnqueueRequest {
  /** A caller-chosen job id (ComfyUI's client-chosen prompt_id); default a random UUID. Must be unused. */
  id?: string;
  workflow: ValidWorkflow;
  targets?: readonly string[] | null;
  clientId?: string | null;
  source: JobSource;
  extra?: JsonValue;
  /** Put it before every pending job (ComfyUI's `front`). */
  front?: boolean;
}

export interface HistoryOptions {
  /** Default 100, at most 10,000. */
  limit?: number;
  offset?: number;
  /** Only jobs that finished strictly before this time (Date.now() units), for paging. */
  before?: number;
  /** 'newest' (default) lists the latest first; 'oldest' in the order they finished. */
  order?: 'newest' | 'oldest';
}

export interface PruneOptions {
  /** Delete finished jobs older than this many milliseconds. */
  maxAge?: number;
  /** Keep at most this many finished jobs (the newest). */
  maxCount?: number;
}

/** 'cancelled': was pending, is now cancelled. 'cancelling': was running, the runner is stopping it. */
export type CancelResult = 'cancelled' | 'cancelling' | 'finished' | 'not_found';

export interface JobResult {
  status: 'done' | 'failed' | 'interrupted' | 'cancelled';
  outputs: Record<string, JobNodeOutput>;
  nodes: Record<string, NodeOutcome>;
  messages: JobMessage[];
  error?: string | null;
}
