// The queue panel's data over the editor WebSocket: names of queued runs and the finished runs with their
// pictures, read from the same job queue as ComfyUI's /queue and /history.
import type { Job, JobQueue, JobSummary } from '../../engine/queue/index.ts';
import type { HistoryItem, QueueItem } from '../protocol.ts';
import { viewUrl } from './files.ts';

/** Only the first this many queued runs get their workflow's name (each needs the job read in full). */
const NAMED_ACTIVE = 100;

/** A run's name: its workflow's meta.name (the editor sends the document's), else meta.title, else its number. */
export function jobName(job: Pick<Job, 'number' | 'workflow'>): string {
  const meta = job.workflow.meta as { name?: unknown; title?: unknown } | undefined;
  if (typeof meta?.name === 'string' && meta.name) return meta.name;
  if (typeof meta?.title === 'string' && meta.title) return meta.title;
  return `run #${job.number}`;
}

const iso = (t: number | null): string | null => (t === null ? null : new Date(t).toISOString());

export function queueItems(queue: JobQueue, active: JobSummary[], mine: (j: JobSummary) => boolean): QueueItem[] {
  return active.map((j, i) => {
    const full = i < NAMED_ACTIVE ? queue.get(j.id) : undefined;
    return {
      runId: j.id,
      status: j.status === 'running' ? 'running' : 'pending',
      mine: mine(j),
      queuedAt: new Date(j.createdAt).toISOString(),
      number: j.number,
      source: j.source,
      ...(full ? { name: jobName(full) } : {}),
    };
  });
}

export function historyItems(queue: JobQueue, limit: number, mine: (j: Job) => boolean): HistoryItem[] {
  return queue.history({ limit }).map((j) => ({
    runId: j.id,
    number: j.number,
    name: jobName(j),
    status: j.status as HistoryItem['status'],
    mine: mine(j),
    source: j.source,
    queuedAt: iso(j.createdAt)!,
    startedAt: iso(j.startedAt),
    finishedAt: iso(j.finishedAt)!,
    ms: j.startedAt !== null && j.finishedAt !== null ? j.finishedAt - j.startedAt : null,
    error: j.error,
    images: Object.entries(j.outputs).flatMap(([nodeId, o]) => (o.images ?? []).map((img) => ({ ...img, url: viewUrl(img), nodeId }))),
  }));
}
