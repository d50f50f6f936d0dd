// The editor's WebSocket protocol (JSON text frames, path /ws/editor). Shared by the server
// (editor/server) and the browser app (editor/app), so both sides agree at compile time.
// Every client request carries an `id`; the server answers it with exactly one `reply` (ok) or
// `error` frame with the same id. Run events and queue updates arrive unasked.

/** A node type as the editor sees it (from the node registry). */
export interface CatalogNode {
  type: string;
  displayName: string;
  category: string;
  description: string;
  output: boolean;
  /** Link-only inputs. */
  inputs: Record<string, { type: string; optional: boolean; description?: string }>;
  /** Parameters: JSON Schema subset (see engine/node.ts ParamSchema); each may also take a link of its socket type. */
  params: Record<string, Record<string, unknown> & { type: 'number' | 'integer' | 'string' | 'boolean'; socket: string }>;
  outputs: Record<string, { type: string; description?: string }>;
}

export interface WorkflowInfo {
  name: string;
  /** Opaque version of the stored file; send it back when saving to detect concurrent edits. */
  etag: string;
  bytes: number;
  modified: string;
}

export interface ImageRef {
  filename: string;
  subfolder: string;
  type: 'output' | 'temp' | 'input';
  /** URL the browser can load (served from the allowed folders only). */
  url: string;
}

export interface QueueItem {
  runId: string;
  status: 'pending' | 'running';
  /** Which connection queued it (each tab sees its own runs highlighted). */
  mine: boolean;
  queuedAt: string;
  /** The job's number (as /queue lists it), its workflow's name, and who queued it. */
  number?: number;
  name?: string;
  source?: 'editor' | 'api';
}

/** A finished run as the queue panel's history lists it (the same jobs as /history). */
export interface HistoryItem {
  runId: string;
  number: number;
  name: string;
  status: 'done' | 'failed' | 'cancelled' | 'interrupted';
  mine: boolean;
  source: 'editor' | 'api';
  queuedAt: string;
  startedAt: string | null;
  finishedAt: string;
  /** Run time (start to finish), null when it never started. */
  ms: number | null;
  error: string | null;
  /** What its output nodes wrote, in node order. */
  images: (ImageRef & { nodeId: string })[];
}

// ---- client -> server ----
export type ClientMessage =
  | { id: string; type: 'catalog' }
  | { id: string; type: 'workflows.list' }
  | { id: string; type: 'workflows.load'; name: string }
  /** etag: the version loaded (refused with code 'conflict' if the file changed since); null: the file must not exist yet. */
  | { id: string; type: 'workflows.save'; name: string; workflow: unknown; etag: string | null }
  | { id: string; type: 'workflows.rename'; from: string; to: string }
  | { id: string; type: 'workflows.delete'; name: string }
  /** Runs the graph as it is in the editor (saved or not). */
  | { id: string; type: 'run'; workflow: unknown; targets?: string[] }
  | { id: string; type: 'cancel'; runId: string }
  | { id: string; type: 'queue' }
  /** Finished runs, newest first. */
  | { id: string; type: 'history'; limit?: number }
  /** The workflow a run ran (to reopen it or queue it again). */
  | { id: string; type: 'history.load'; runId: string }
  /** Removes pending or finished runs (a running one is cancelled instead). */
  | { id: string; type: 'jobs.delete'; runIds: string[] };

// ---- server -> client ----
export type ReplyBody =
  | { type: 'catalog'; nodes: CatalogNode[] }
  | { type: 'workflows'; items: WorkflowInfo[] }
  | { type: 'workflow'; name: string; workflow: unknown; etag: string }
  | { type: 'saved'; name: string; etag: string }
  | { type: 'renamed'; from: string; to: string; etag: string }
  | { type: 'deleted'; name: string }
  | { type: 'queued'; runId: string; position: number }
  | { type: 'cancelling'; runId: string }
  | { type: 'queue'; items: QueueItem[] }
  | { type: 'history'; items: HistoryItem[] }
  | { type: 'history_item'; runId: string; workflow: unknown }
  | { type: 'jobs_deleted'; deleted: number };

export type ServerMessage =
  | ({ id: string; ok: true } & ReplyBody)
  /** code: 'invalid_message' | 'invalid_workflow' | 'not_found' | 'conflict' | 'exists' | 'limit' | 'internal' ... */
  | { id: string | null; ok: false; type: 'error'; code: string; message: string; errors?: { nodeId?: string; nodeType?: string; field?: string; message: string }[] }
  | { type: 'event'; runId: string; mine: boolean; event: RunEventMessage }
  | { type: 'queue_changed'; items: QueueItem[] }
  | { type: 'hello'; serverVersion: string; clientId: string }
  /** Scale-out (serve --queue): the connected workers, sent on connect and whenever they change. */
  | { type: 'workers'; items: WorkerItem[] };

/** A `charflow worker` as the status line shows it. */
export interface WorkerItem {
  name: string;
  device: string;
  /** Model sets it serves, and those loaded now. */
  sets: string[];
  loaded: string[];
  /** The job it runs now. */
  current: { id: string; number: number } | null;
}

/** Executor events as sent to the browser (previews as data URLs, images as URLs). */
export type RunEventMessage =
  | { type: 'run_queued'; position: number }
  | { type: 'run_started'; nodeIds: string[] }
  | { type: 'node_started'; nodeId: string; nodeType: string }
  | { type: 'node_progress'; nodeId: string; step: number; total: number; preview?: string }
  | { type: 'node_cached'; nodeId: string; images?: ImageRef[]; summary?: Record<string, unknown> }
  | { type: 'node_finished'; nodeId: string; ms: number; images?: ImageRef[]; summary?: Record<string, unknown> }
  | { type: 'node_failed'; nodeId: string; nodeType: string; field?: string; message: string }
  | { type: 'node_skipped'; nodeId: string; because: string }
  | { type: 'run_finished'; status: 'done' | 'failed'; ms: number }
  | { type: 'run_cancelled' };
