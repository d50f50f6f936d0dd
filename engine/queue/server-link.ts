// A worker's connection to its server over HTTP(S) and one WebSocket, all with the token: the
// event relay (reconnecting by itself), input images by content hash into a local cache, and output
// images uploaded into the server's data folder. Files are read and written only inside the
// worker's own folders.
import { createHash } from 'node:crypto';
import { readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { WebSocket } from 'ws';
import { writeFileAtomic } from '../fsutil.ts';
import { resolveInside } from '../paths.ts';
import type { InputRef, ServerToWorker, WorkerMessage } from './bullmq.ts';
import type { ServerLink } from './bullmq-worker.ts';
import { parseServerMessage } from './wire.ts';
import type { JobImage } from './types.ts';

export interface HttpServerLinkOptions {
  /** http(s)://host:port of the server. */
  server: string;
  token?: string;
  /** The worker's inputs folder; fetched inputs go to its by-hash/ subfolder. */
  inputsDir: string;
  /** Where the worker's output nodes write (output and temp images). */
  outputsDir: string;
  tempDir: string;
  log: (message: string) => void;
}

/** The server cannot be used (unreachable, wrong token, not in scale-out mode); says what to do. */
export class ServerLinkError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ServerLinkError';
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class HttpServerLink implements ServerLink {
  private ws: WebSocket | undefined;
  private readonly messageFns: ((m: ServerToWorker) => void)[] = [];
  private readonly connectedFns: (() => void)[] = [];
  private readonly base: URL;
  private closed = false;
  private retryTimer: NodeJS.Timeout | undefined;

  constructor(private readonly o: HttpServerLinkOptions) {
    try {
      this.base = new URL(o.server);
    } catch {
      throw new ServerLinkError(`--server "${o.server}" is not a URL; expected http(s)://host:port`);
    }
    if (this.base.protocol !== 'http:' && this.base.protocol !== 'https:') throw new ServerLinkError(`--server must be http:// or https://, got ${this.base.protocol}//`);
  }

  get connected(): boolean {
    return this.ws?.readyState === WebSocket.OPEN;
  }

  private headers(extra: Record<string, string> = {}): Record<string, string> {
    return { ...(this.o.token ? { authorization: `Bearer ${this.o.token}` } : {}), ...extra };
  }

  private url(p: string): string {
    return new URL(p, this.base).toString();
  }

  /** Checks the server and the token once (clear errors), then keeps the socket open. */
  async open(): Promise<void> {
    let res: Response;
    try {
      res = await fetch(this.url('/api/worker/ping'), { headers: this.headers(), signal: AbortSignal.timeout(10_000) });
    } catch (err) {
      throw new ServerLinkError(`cannot reach the server at ${this.base.origin}: ${(err as Error).cause instanceof Error ? ((err as Error).cause as Error).message : (err as Error).message}`);
    }
    if (res.status === 401) throw new ServerLinkError(`the server at ${this.base.origin} refused the token (${((await res.json().catch(() => ({}))) as { message?: string }).message ?? 'unauthorized'}); pass the server's --worker-token`);
    if (res.status === 404) throw new ServerLinkError(`the server at ${this.base.origin} does not take workers: start it with --queue redis://...`);
    if (!res.ok) throw new ServerLinkError(`the server at ${this.base.origin} answered ${res.status}`);
    await res.body?.cancel();
    this.connect();
  }

  close(): void {
    this.closed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.ws?.close(1000, 'worker stopping');
  }

  private connect(): void {
    if (this.closed) return;
    const wsUrl = new URL('/ws/worker', this.base);
    wsUrl.protocol = this.base.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = new WebSocket(wsUrl, { headers: this.headers() });
    this.ws = ws;
    ws.on('open', () => {
      for (const f of this.connectedFns) f();
    });
    ws.on('message', (data, isBinary) => {
      const m = isBinary ? undefined : parseServerMessage(data.toString());
      if (!m?.ok) {
        this.o.log(`warning: the server sent ${m ? m.reason : 'a binary frame'}; reconnecting`);
        ws.close(1008, m ? m.reason.slice(0, 120) : 'binary frame');
        return;
      }
      for (const f of this.messageFns) f(m.msg);
    });
    ws.on('error', () => {}); // 'close' follows
    ws.on('close', () => {
      if (this.ws === ws) this.ws = undefined;
      if (!this.closed) this.retryTimer = setTimeout(() => this.connect(), 1000);
    });
  }

  send(msg: WorkerMessage): void {
    if (this.connected) this.ws!.send(JSON.stringify(msg));
  }

  sendNow(msg: WorkerMessage): Promise<void> {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return Promise.reject(new Error('not connected to the server'));
    return new Promise((resolve, reject) => ws.send(JSON.stringify(msg), (err) => (err ? reject(err) : resolve())));
  }

  onMessage(fn: (msg: ServerToWorker) => void): void {
    this.messageFns.push(fn);
  }

  /** Called on every (re)connection, and at once when connected already. */
  onConnected(fn: () => void): void {
    this.connectedFns.push(fn);
    if (this.connected) fn();
  }

  async fetchInput(ref: InputRef): Promise<string> {
    const character = ref.kind === 'character';
    const ext = character ? '.safetensors' : /^\.[a-z0-9]{1,5}$/.test(ref.ext) ? ref.ext : '.bin';
    const rel = path.join('by-hash', `${ref.sha256}${ext}`);
    const file = resolveInside(this.o.inputsDir, rel);
    const have = await readFile(file).catch(() => undefined);
    if (have && createHash('sha256').update(have).digest('hex') === ref.sha256) return rel;
    const res = await this.retry(`input ${ref.path}`, () =>
      fetch(this.url(character ? `/api/worker/characters/${ref.sha256}?name=${encodeURIComponent(ref.path)}` : `/api/worker/inputs/${ref.sha256}?path=${encodeURIComponent(ref.path)}`), { headers: this.headers() }),
    );
    if (!res.ok) throw new Error(`the server could not send input "${ref.path}" (${res.status})`);
    const bytes = Buffer.from(await res.arrayBuffer());
    if (createHash('sha256').update(bytes).digest('hex') !== ref.sha256) throw new Error(`input "${ref.path}" arrived with another content hash`);
    await writeFileAtomic(file, bytes);
    return rel;
  }

  async uploadImage(jobId: string, lock: string, nodeId: string, index: number, image: JobImage): Promise<JobImage> {
    const dir = image.type === 'temp' ? this.o.tempDir : this.o.outputsDir;
    if (image.type === 'input') return image;
    const file = resolveInside(dir, path.join(image.subfolder, image.filename));
    const bytes = await readFile(file);
    const q = new URLSearchParams({ job: jobId, lock, node: nodeId, index: String(index), type: image.type, name: image.filename });
    const res = await this.retry(`output ${image.filename}`, () =>
      fetch(this.url(`/api/worker/outputs?${q}`), { method: 'PUT', headers: this.headers({ 'content-type': 'application/octet-stream' }), body: bytes }),
    );
    if (!res.ok) throw new Error(`the server refused output ${image.filename}: ${res.status} ${await res.text().catch(() => '')}`);
    const stored = (await res.json()) as JobImage;
    await rm(file, { force: true }); // the server has it; the worker keeps no outputs
    return { filename: stored.filename, subfolder: stored.subfolder, type: stored.type };
  }

  /** Network failures are retried for up to a minute (a server restart); HTTP answers are not. */
  private async retry(what: string, call: () => Promise<Response>): Promise<Response> {
    const until = Date.now() + 60_000;
    for (let wait = 250; ; wait = Math.min(wait * 2, 5000)) {
      try {
        return await call();
      } catch (err) {
        if (Date.now() > until) throw new Error(`could not transfer ${what}: ${(err as Error).message}`);
        this.o.log(`warning: transferring ${what} failed (${(err as Error).message}); retrying`);
        await sleep(wait);
      }
    }
  }
}
