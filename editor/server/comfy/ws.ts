// The ComfyUI WebSocket (/ws?clientId=): a `status` message with the session id first, status
// broadcasts whenever the queue changes, and per prompt, to the client that queued it (to everyone
// when it gave no client_id): execution_start, execution_cached, executing, progress (+ binary
// preview frames), executed, execution_success / execution_error / execution_interrupted, and
// finally executing {node: null} once the history entry is written. Only jobs queued through this
// API are reported here; the editor has its own socket.
import { pingClients, trackPongs } from '../heartbeat.ts';
import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { WebSocket } from 'ws';
import type { RunEvent } from '../../../engine/executor/events.ts';
import type { PreviewImage } from '../../../engine/node.ts';
import { imagesOf, type Job, type JobDispatcher, type JobQueue } from '../../../engine/queue/index.ts';
import { executionError } from './history.ts';

/** Above this many unsent bytes a socket gets no preview frames until it catches up. */
const PREVIEW_BACKLOG_BYTES = 4 * 1024 * 1024;
const HEARTBEAT_MS = 30_000;
const CLIENT_ID_RE = /^[A-Za-z0-9_.:-]{1,128}$/;

/** Binary frame event types and image formats, big-endian u32 each. */
export const BINARY_PREVIEW_IMAGE = 1;
export const IMAGE_FORMAT = { jpeg: 1, png: 2 } as const;

/** A preview as ComfyUI frames it: event type 1, image format, then the encoded image. */
export function previewFrame(preview: PreviewImage): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(BINARY_PREVIEW_IMAGE, 0);
  head.writeUInt32BE(IMAGE_FORMAT[preview.format], 4);
  return Buffer.concat([head, preview.data]);
}

interface Client {
  ws: WebSocket;
  clientId: string;
  alive: boolean;
}

/** What the hub keeps about a job of this API while it runs. */
interface RunState {
  job: Job;
  /** Frames of one job leave in order, even when one waits (for a PNG being completed). */
  /** Cached nodes reported right after the start, sent together as one execution_cached. */
  cached: string[] | null;
  current: string | null;
  executed: string[];
  errorSent: boolean;
}

export interface ComfyHubOptions<S> {
  queue: JobQueue;
  runner: JobDispatcher;
  log: (message: string) => void;
}

export class ComfyHub<S> {
  private readonly clients = new Set<Client>();
  private readonly runs = new Map<string, RunState>();
  private readonly unsubscribe: (() => void)[] = [];
  private readonly heartbeat: NodeJS.Timeout;
  private statusTimer: NodeJS.Immediate | undefined;
  private closed = false;

  constructor(private readonly o: ComfyHubOptions<S>) {
    this.unsubscribe.push(
      o.queue.on('changed', () => this.scheduleStatus()),
      o.runner.on('job_started', (job) => {
        if (job.source === 'api') this.runs.set(job.id, { job, cached: null, current: null, executed: [], errorSent: false });
      }),
      o.runner.on('event', (job, e) => this.onEvent(job, e)),
      o.runner.on('job_finished', (job) => this.onFinished(job)),
      o.runner.on('job_requeued', (job) => void this.runs.delete(job.id)),
    );
    this.heartbeat = setInterval(() => this.ping(), HEARTBEAT_MS);
    this.heartbeat.unref();
  }

  get connections(): number {
    return this.clients.size;
  }

  queueRemaining(): number {
    if (!this.o.queue.isOpen) return 0;
    const c = this.o.queue.counts();
    return c.pending + c.running;
  }

  attach(ws: WebSocket, req: IncomingMessage): void {
    if (this.closed) {
      ws.close(1001, 'server stopping');
      return;
    }
    const asked = new URL(req.url ?? '/', 'http://x').searchParams.get('clientId');
    const client: Client = { ws, clientId: asked && CLIENT_ID_RE.test(asked) ? asked : randomUUID().replace(/-/g, ''), alive: true };
    this.clients.add(client);
    trackPongs(client);
    ws.on('close', () => this.clients.delete(client));
    ws.on('error', (err) => this.o.log(`comfy websocket: ${err.message}`));
    ws.on('message', () => {}); // clients may announce features; nothing here needs an answer
    this.sendTo(client, JSON.stringify({ type: 'status', data: { status: { exec_info: { queue_remaining: this.queueRemaining() } }, sid: client.clientId } }));
    // A client that reconnects while its prompt runs learns which node is executing.
    for (const st of this.runs.values()) {
      if (st.job.clientId === client.clientId && st.current !== null) {
        this.sendTo(client, JSON.stringify({ type: 'executing', data: { node: st.current, display_node: st.current, prompt_id: st.job.id } }));
      }
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.heartbeat);
    if (this.statusTimer) clearImmediate(this.statusTimer);
    for (const u of this.unsubscribe.splice(0)) u();
    for (const c of this.clients) c.ws.close(1001, 'server stopping');
    this.clients.clear();
    this.runs.clear();
  }

  private ping(): void {
    pingClients(this.clients);
  }

  private sendTo(c: Client, frame: string | Buffer): void {
    if (c.ws.readyState !== WebSocket.OPEN) return;
    if (typeof frame !== 'string' && c.ws.bufferedAmount > PREVIEW_BACKLOG_BYTES) return;
    c.ws.send(frame, (err) => {
      if (err) this.o.log(`comfy websocket: send failed: ${err.message}`);
    });
  }

  /** A prompt's frames go to its client, or to every client when it named none (as ComfyUI does). */
  private deliver(job: Job, frame: string | Buffer): void {
    for (const c of this.clients) if (job.clientId === null || c.clientId === job.clientId) this.sendTo(c, frame);
  }

  private scheduleStatus(): void {
    if (this.statusTimer || this.closed) return;
    this.statusTimer = setImmediate(() => {
      this.statusTimer = undefined;
      if (this.clients.size === 0 || !this.o.queue.isOpen) return;
      const frame = JSON.stringify({ type: 'status', data: { status: { exec_info: { queue_remaining: this.queueRemaining() } } } });
      for (const c of this.clients) this.sendTo(c, frame);
    });
  }

  private enqueue(st: RunState, frame: string | Buffer): void {
    this.deliver(st.job, frame);
  }

  private send(st: RunState, type: string, data: Record<string, unknown>): void {
    this.enqueue(st, JSON.stringify({ type, data }));
  }

  private flushCached(st: RunState, time: number): void {
    if (st.cached === null) return;
    const nodes = st.cached;
    st.cached = null;
    this.send(st, 'execution_cached', { nodes, prompt_id: st.job.id, timestamp: time });
  }

  private onEvent(job: Job, e: RunEvent): void {
    const st = this.runs.get(job.id);
    if (!st) return;
    const prompt_id = job.id;
    if (e.type !== 'node_cached') this.flushCached(st, e.time);
    switch (e.type) {
      case 'run_started':
        this.send(st, 'execution_start', { prompt_id, timestamp: e.time });
        // The cached nodes known at the start follow synchronously; send them as one message.
        st.cached = [];
        queueMicrotask(() => this.flushCached(st, e.time));
        break;
      case 'node_cached': {
        st.executed.push(e.nodeId);
        if (st.cached !== null) st.cached.push(e.nodeId);
        else this.send(st, 'execution_cached', { nodes: [e.nodeId], prompt_id, timestamp: e.time });
        // An output node served from the cache still reports its images.
        const images = imagesOf(e.outputs);
        if (images) {
          this.flushCached(st, e.time);
          this.send(st, 'executed', { node: e.nodeId, display_node: e.nodeId, output: { images }, prompt_id, timestamp: e.time });
        }
        break;
      }
      case 'node_started':
        st.current = e.nodeId;
        this.send(st, 'executing', { node: e.nodeId, display_node: e.nodeId, prompt_id, timestamp: e.time });
        break;
      case 'node_progress':
        this.send(st, 'progress', { value: e.step, max: e.total, node: e.nodeId, prompt_id });
        if (e.preview) this.enqueue(st, previewFrame(e.preview));
        break;
      case 'node_finished': {
        st.executed.push(e.nodeId);
        if (st.current === e.nodeId) st.current = null;
        const images = imagesOf(e.outputs);
        if (images) {
          this.send(st, 'executed', { node: e.nodeId, display_node: e.nodeId, output: { images }, prompt_id, timestamp: e.time });
        }
        break;
      }
      case 'node_failed':
        if (st.current === e.nodeId) st.current = null;
        if (st.errorSent) break; // ComfyUI reports one error per prompt
        st.errorSent = true;
        this.send(st, 'execution_error', executionError(job, e.nodeId, { message: e.message, ...(e.field !== undefined ? { field: e.field } : {}) }, [...st.executed], e.time));
        break;
      case 'run_finished':
        if (e.status === 'done') this.send(st, 'execution_success', { prompt_id, timestamp: e.time });
        break;
      case 'run_cancelled': {
        const node = st.current;
        this.send(st, 'execution_interrupted', {
          prompt_id,
          node_id: node,
          node_type: node === null ? null : (job.workflow.nodes[node]?.type ?? null),
          executed: [...st.executed],
          timestamp: e.time,
        });
        break;
      }
      case 'node_skipped':
        break;
    }
  }

  private onFinished(job: Job): void {
    const st = this.runs.get(job.id);
    if (!st) return;
    this.runs.delete(job.id);
    st.job = job;
    if (job.status === 'failed' && !st.errorSent) {
      // Failed before any node ran (e.g. the node types changed since it was queued).
      st.errorSent = true;
      this.send(st, 'execution_error', executionError(job, null, { message: job.error ?? 'the run failed' }, [], job.finishedAt ?? Date.now()));
    }
    this.send(st, 'executing', { node: null, display_node: null, prompt_id: job.id });
  }
}
