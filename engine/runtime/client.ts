// The main-thread end of one runtime worker: numbered requests, one reply each, and crash
// detection. An idle worker does not keep the process alive; one with requests in flight does.
import { Worker } from 'node:worker_threads';
import type { Envelope, Replies, Reply, RequestOf, Request } from './protocol.ts';

const BOOT = new URL('./worker-boot.mjs', import.meta.url);

export class WorkerCrashError extends Error {
  override name = 'WorkerCrashError';
}

let live = 0;

/** Runtime worker threads alive in this process (started and not yet exited). */
export function liveWorkers(): number {
  return live;
}

interface Pending {
  resolve(value: unknown): void;
  reject(err: Error): void;
}

export class WorkerClient {
  private readonly worker: Worker;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private closing = false;
  private lastError?: Error;
  /** Set once the worker is gone (crash or terminate); later requests reject with it. */
  private gone?: Error;
  readonly exited: Promise<void>;

  /** `label` names the worker in errors (the model path); `onCrash` hears of an unexpected exit. */
  constructor(private label: string, private onCrash?: (err: Error) => void) {
    this.worker = new Worker(BOOT, { name: `charflow-runtime ${label}` });
    live++;
    this.worker.on('message', (reply: Reply) => this.settle(reply));
    this.worker.on('error', (e) => { this.lastError = e; });
    this.worker.on('messageerror', (e) => { this.lastError = e; });
    // After the listeners: attaching a 'message' listener refs the worker's port again.
    this.worker.unref();
    this.exited = new Promise((resolve) => {
      this.worker.once('exit', (code) => {
        live--;
        const why = this.lastError ? this.lastError.message : `exit code ${code}`;
        const err = this.closing
          ? new Error(`${this.label}: the worker was closed`)
          : new WorkerCrashError(`${this.label}: its worker thread crashed (${why})`);
        this.gone = err;
        for (const p of this.pending.values()) p.reject(err);
        this.pending.clear();
        if (!this.closing) this.onCrash?.(err);
        resolve();
      });
    });
  }

  /** Gives a pre-started worker its model: the name used in errors and who hears of a crash. */
  assign(label: string, onCrash: (err: Error) => void): void {
    this.label = label;
    this.onCrash = onCrash;
  }

  get alive(): boolean {
    return !this.gone;
  }

  get threadId(): number {
    return this.worker.threadId;
  }

  request<K extends Request['type']>(req: RequestOf<K>, transfer: ArrayBuffer[] = []): Promise<Replies[K]> {
    if (this.gone) return Promise.reject(this.gone);
    const id = this.nextId++;
    return new Promise<Replies[K]>((resolve, reject) => {
      const env: Envelope = { id, req };
      try {
        this.worker.postMessage(env, transfer);
      } catch (e) {
        reject(e instanceof Error ? e : new Error(String(e)));
        return;
      }
      if (this.pending.size === 0) this.worker.ref();
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
    });
  }

  private settle(reply: Reply): void {
    const p = this.pending.get(reply.id);
    if (!p) return;
    this.pending.delete(reply.id);
    if (this.pending.size === 0) this.worker.unref();
    if (reply.ok) p.resolve(reply.value);
    else {
      const err = new Error(reply.error.message);
      err.name = reply.error.name;
      p.reject(err);
    }
  }

  /** Stops the thread (what it holds is freed with it); pending requests reject. */
  async terminate(): Promise<void> {
    this.closing = true;
    await this.worker.terminate();
    await this.exited;
  }
}
