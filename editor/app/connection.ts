// The WebSocket link to the server (/ws/editor): request/reply by id, unasked run events and queue
// updates, and reconnection with backoff when the server goes away (e.g. it restarts).
import type { ClientMessage, ReplyBody, ServerMessage } from '../protocol.ts';

type Request = ClientMessage extends infer M ? (M extends { id: string } ? Omit<M, 'id'> : never) : never;
type ReplyOf<T extends ReplyBody['type']> = Extract<ReplyBody, { type: T }>;

export type ConnectionState = 'connecting' | 'open' | 'closed';

/** A refused request (the server's `error` frame), with per-node validation errors when there are any. */
export class RequestError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly errors: { nodeId?: string; nodeType?: string; field?: string; message: string }[] = [],
  ) {
    super(message);
    this.name = 'RequestError';
  }
}

interface Pending {
  resolve(body: ReplyBody): void;
  reject(err: Error): void;
  timer: ReturnType<typeof setTimeout>;
}

export interface ConnectionOptions {
  url: string;
  /** Called on every state change; `retryInMs` is set while waiting to reconnect. */
  onState?(state: ConnectionState, retryInMs?: number): void;
  /** Unasked frames: run events, queue changes, hello. */
  onMessage?(msg: ServerMessage): void;
  /** After each successful (re)connect. */
  onOpen?(): void;
  requestTimeoutMs?: number;
}

const MIN_BACKOFF_MS = 250;
const MAX_BACKOFF_MS = 5000;

export class Connection {
  state: ConnectionState = 'closed';
  clientId = '';
  private ws: WebSocket | null = null;
  private nextId = 1;
  private pending = new Map<string, Pending>();
  private backoff = MIN_BACKOFF_MS;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private stopped = false;

  constructor(private readonly opts: ConnectionOptions) {}

  start(): void {
    this.stopped = false;
    this.open();
  }

  stop(): void {
    this.stopped = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.ws?.close();
  }

  /** Sends a request and resolves with the reply of the expected type; rejects with RequestError when refused. */
  request<T extends ReplyBody['type']>(msg: Request, expect: T): Promise<ReplyOf<T>> {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return Promise.reject(new RequestError('offline', 'not connected to the server'));
    const id = `c${this.nextId++}`;
    return new Promise<ReplyOf<T>>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new RequestError('timeout', `the server did not answer "${msg.type}"`));
      }, this.opts.requestTimeoutMs ?? 30_000);
      this.pending.set(id, {
        resolve: (body) => {
          if (body.type === expect) resolve(body as ReplyOf<T>);
          else reject(new RequestError('protocol', `expected a "${expect}" reply, got "${body.type}"`));
        },
        reject,
        timer,
      });
      ws.send(JSON.stringify({ ...msg, id }));
    });
  }

  private setState(state: ConnectionState, retryInMs?: number): void {
    this.state = state;
    this.opts.onState?.(state, retryInMs);
  }

  private open(): void {
    this.setState('connecting');
    const ws = new WebSocket(this.opts.url);
    this.ws = ws;
    ws.addEventListener('open', () => {
      this.backoff = MIN_BACKOFF_MS;
      this.setState('open');
      this.opts.onOpen?.();
    });
    ws.addEventListener('message', (ev) => this.receive(String(ev.data)));
    ws.addEventListener('close', () => {
      if (this.ws !== ws) return;
      this.ws = null;
      for (const [id, p] of this.pending) {
        clearTimeout(p.timer);
        p.reject(new RequestError('offline', 'the connection to the server was lost'));
        this.pending.delete(id);
      }
      if (this.stopped) {
        this.setState('closed');
        return;
      }
      // Exponential backoff with jitter, so many tabs do not hammer a restarting server in step.
      const wait = Math.round(this.backoff * (0.75 + Math.random() * 0.5));
      this.backoff = Math.min(MAX_BACKOFF_MS, this.backoff * 2);
      this.setState('closed', wait);
      this.retryTimer = setTimeout(() => this.open(), wait);
    });
  }

  private receive(text: string): void {
    let msg: ServerMessage;
    try {
      msg = JSON.parse(text) as ServerMessage;
    } catch {
      console.warn('charflow: ignoring a frame that is not JSON');
      return;
    }
    if ('id' in msg && msg.id !== null && this.pending.has(msg.id)) {
      const p = this.pending.get(msg.id)!;
      this.pending.delete(msg.id);
      clearTimeout(p.timer);
      if (msg.ok) p.resolve(msg as ReplyBody);
      else if (msg.type === 'error') p.reject(new RequestError(msg.code, msg.message, msg.errors));
      return;
    }
    if (msg.type === 'hello') this.clientId = msg.clientId;
    this.opts.onMessage?.(msg);
  }
}

/** ws(s)://<host>/ws/editor for the page's own origin. */
export function defaultSocketUrl(loc: Location = location): string {
  return `${loc.protocol === 'https:' ? 'wss' : 'ws'}://${loc.host}/ws/editor`;
}
