// Typed run events and a small emitter. Listeners may be async: the executor does not wait for each
// one (a slow websocket must not slow the graph) but a run resolves only after they have settled.
import type { NodeOutputs, PreviewImage } from '../node.ts';

interface EventBase {
  runId: string;
  /** Date.now() when the event was emitted. */
  time: number;
}

interface NodeEventBase extends EventBase {
  nodeId: string;
  nodeType: string;
}

export interface RunStartedEvent extends EventBase {
  type: 'run_started';
  /** Every node this run will report on (to run, cached, or failing early), in execution priority order. */
  nodes: string[];
  /** The requested outputs: the targets given, or all output nodes. */
  targets: string[];
}

export interface NodeStartedEvent extends NodeEventBase {
  type: 'node_started';
}

export interface NodeProgressEvent extends NodeEventBase {
  type: 'node_progress';
  step: number;
  total: number;
  preview?: PreviewImage;
}

export interface NodeCachedEvent extends NodeEventBase {
  type: 'node_cached';
  /** The cached outputs, for output nodes and requested targets. */
  outputs?: NodeOutputs;
  /** The node type's summary of its outputs (NodeDef.summary), JSON. */
  summary?: Record<string, unknown>;
}

export interface NodeFinishedEvent extends NodeEventBase {
  type: 'node_finished';
  ms: number;
  /** The node's outputs, for output nodes and requested targets. */
  outputs?: NodeOutputs;
  /** The node type's summary of its outputs (NodeDef.summary), JSON. */
  summary?: Record<string, unknown>;
}

export interface NodeFailedEvent extends NodeEventBase {
  type: 'node_failed';
  /** One line naming node id and type (and the field for a NodeInputError). */
  message: string;
  /** The error's own message. */
  error: string;
  /** Set when the node raised a NodeInputError. */
  field?: string;
  /** Stack of unexpected errors (not NodeInputError), for logs; never shown to users by default. */
  stack?: string;
}

export interface NodeSkippedEvent extends NodeEventBase {
  type: 'node_skipped';
  /** The id of the failed node upstream. */
  because: string;
  message: string;
}

export interface RunCounts {
  done: number;
  cached: number;
  failed: number;
  skipped: number;
  cancelled: number;
}

export interface RunFinishedEvent extends EventBase {
  type: 'run_finished';
  status: 'done' | 'failed';
  ms: number;
  counts: RunCounts;
}

export interface RunCancelledEvent extends EventBase {
  type: 'run_cancelled';
  ms: number;
  counts: RunCounts;
}

export type RunEvent =
  | RunStartedEvent
  | NodeStartedEvent
  | NodeProgressEvent
  | NodeCachedEvent
  | NodeFinishedEvent
  | NodeFailedEvent
  | NodeSkippedEvent
  | RunFinishedEvent
  | RunCancelledEvent;

export type RunEventType = RunEvent['type'];
export type RunEventOf<T extends RunEventType> = Extract<RunEvent, { type: T }>;
export type RunListener<E = RunEvent> = (event: E) => void | Promise<void>;

/** Calls a listener; returns its promise (already guarded) if it is async. */
export function callListener<E>(
  listener: RunListener<E>,
  event: E,
  onError: (err: unknown) => void,
): Promise<void> | undefined {
  try {
    const r = listener(event);
    if (r && typeof (r as Promise<void>).then === 'function') return (r as Promise<void>).then(undefined, onError);
  } catch (err) {
    onError(err);
  }
  return undefined;
}

/** An EventEmitter-like, typed hub: `on('node_finished', e => ...)`, `onAny(e => ...)`. */
export class RunEvents {
  private readonly byType = new Map<RunEventType, Set<RunListener<never>>>();
  private readonly any = new Set<RunListener>();
  private count = 0;

  /** Subscribes to one event type; returns a function that unsubscribes. */
  on<T extends RunEventType>(type: T, listener: RunListener<RunEventOf<T>>): () => void {
    let set = this.byType.get(type);
    if (!set) this.byType.set(type, (set = new Set()));
    if (!set.has(listener as RunListener<never>)) {
      set.add(listener as RunListener<never>);
      this.count++;
    }
    return () => this.off(type, listener);
  }

  off<T extends RunEventType>(type: T, listener: RunListener<RunEventOf<T>>): void {
    if (this.byType.get(type)?.delete(listener as RunListener<never>)) this.count--;
  }

  /** Subscribes to every event; returns a function that unsubscribes. */
  onAny(listener: RunListener): () => void {
    if (!this.any.has(listener)) {
      this.any.add(listener);
      this.count++;
    }
    return () => this.offAny(listener);
  }

  offAny(listener: RunListener): void {
    if (this.any.delete(listener)) this.count--;
  }

  get listenerCount(): number {
    return this.count;
  }

  /**
   * Delivers an event to its listeners in subscription order (type-specific first). Returns the
   * promises of async listeners, if any; listener errors go to onError and never reach the caller.
   */
  emit(event: RunEvent, onError: (err: unknown) => void = () => {}): Promise<void>[] | undefined {
    if (this.count === 0) return undefined;
    let pending: Promise<void>[] | undefined;
    const deliver = (l: RunListener<never>): void => {
      const p = callListener(l as RunListener, event, onError);
      if (p) (pending ??= []).push(p);
    };
    const set = this.byType.get(event.type);
    if (set) for (const l of [...set]) deliver(l);
    for (const l of [...this.any]) deliver(l);
    return pending;
  }
}
