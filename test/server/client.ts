// A small editor-protocol client for tests: request/reply by id, and every unasked frame kept so
// tests can wait for the events they expect.
import { WebSocket, type ClientOptions } from 'ws';
import type { ClientMessage, ServerMessage } from '../../editor/protocol.ts';

type Request = ClientMessage extends infer M ? (M extends { id: string } ? Omit<M, 'id'> : never) : never;
export type Reply = Extract<ServerMessage, { id: string | null }>;
export type EventFrame = Extract<ServerMessage, { type: 'event' }>;

export class TestClient {
  readonly frames: ServerMessage[] = [];
  clientId = '';
  private nextId = 1;
  private waiters: { pred: (m: ServerMessage) => boolean; resolve: (m: ServerMessage) => void }[] = [];

  private constructor(readonly ws: WebSocket) {
    ws.on('message', (data) => {
      const msg = JSON.parse(data.toString()) as ServerMessage;
      this.frames.push(msg);
      if (msg.type === 'hello') this.clientId = msg.clientId;
      for (const w of [...this.waiters]) {
        if (w.pred(msg)) {
          this.waiters.splice(this.waiters.indexOf(w), 1);
          w.resolve(msg);
        }
      }
    });
  }

  /** Connects and waits for the server's hello. */
  static async connect(url: string, opts: ClientOptions = {}): Promise<TestClient> {
    const ws = new WebSocket(url, opts);
    const client = new TestClient(ws);
    const hello = client.waitFor((m) => m.type === 'hello');
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
      ws.once('unexpected-response', (_req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
    });
    await hello;
    return client;
  }

  /** The first frame (already received or coming) that matches. */
  waitFor(pred: (m: ServerMessage) => boolean, timeoutMs = 60_000): Promise<ServerMessage> {
    const seen = this.frames.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out waiting for a frame; got ${this.frames.length}: ${JSON.stringify(this.frames.slice(-5))}`)), timeoutMs);
      this.waiters.push({
        pred,
        resolve: (m) => {
          clearTimeout(timer);
          resolve(m);
        },
      });
    });
  }

  /** Sends a raw text frame. */
  sendRaw(text: string): void {
    this.ws.send(text);
  }

  request(msg: Request): Promise<Reply> {
    const id = `t${this.nextId++}`;
    const reply = this.waitFor((m) => 'id' in m && m.id === id);
    this.ws.send(JSON.stringify({ ...msg, id }));
    return reply as Promise<Reply>;
  }

  /** Waits for a run event of `runId` of the given type. */
  event(runId: string, type: string, extra: (e: EventFrame) => boolean = () => true): Promise<EventFrame> {
    return this.waitFor((m) => m.type === 'event' && m.runId === runId && m.event.type === type && extra(m)) as Promise<EventFrame>;
  }

  events(runId: string): EventFrame[] {
    return this.frames.filter((m): m is EventFrame => m.type === 'event' && m.runId === runId);
  }

  close(): Promise<void> {
    if (this.ws.readyState === WebSocket.CLOSED) return Promise.resolve();
    return new Promise((resolve) => {
      this.ws.once('close', () => resolve());
      this.ws.close();
    });
  }
}

/** Tries a WebSocket upgrade; resolves with the HTTP status of a refusal, or 101 when accepted. */
export function upgradeStatus(url: string, opts: ClientOptions = {}): Promise<number> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, opts);
    ws.once('open', () => {
      ws.close();
      resolve(101);
    });
    ws.once('unexpected-response', (_req, res) => {
      resolve(res.statusCode ?? 0);
      res.resume();
    });
    ws.once('error', (err) => {
      if (!/Unexpected server response/.test(err.message)) reject(err);
    });
  });
}
