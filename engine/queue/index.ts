// The durable job queue (SQLite) and the loop that runs it.
export * from './types.ts';
export {
  DEFAULT_MAX_ATTEMPTS,
  DEFAULT_MAX_PENDING,
  DEFAULT_MAX_PENDING_PER_CLIENT,
  JobQueue,
  QueueDatabaseError,
  QueueLimitError,
  type QueueDatabaseErrorCode,
  type QueueEvents,
  type QueueOptions,
  type Recovery,
} from './queue.ts';
export { imagesOf, QueueRunner, type RunnerEvents, type RunnerOptions } from './runner.ts';
export { Emitter, type EventMap, type Listener } from './emitter.ts';
export type { FreeResult, JobDispatcher, WorkerInfo } from './dispatcher.ts';
