// Large prompts are checked on a worker thread first: a 20,000-node invalid prompt costs hundreds of
// milliseconds to validate and its error body megabytes to serialise, which on the event loop would
// stall every other request (/system_stats, WebSocket pings, other clients). Only the refusal comes
// back (as a JSON string); an acceptable prompt is then checked again in the handler, which needs
// the validated workflow itself. Used only with the stock node registry (the thread builds its own).
import { Worker } from 'node:worker_threads';
import type { NextFunction, Request, Response } from 'express';

const BOOT = new URL('./check-boot.mjs', import.meta.url);
/** Prompts with at least this many nodes go to the thread; smaller ones are cheap enough inline. */
export const THREAD_MIN_NODES = 1000;

type Reply = { id: number; ok: true } | { id: number; ok: false; status: number; json: string } | { id: number; error: string };
export type PreCheck = { ok: true } | { ok: false; status: number; json: string };

export class PromptCheckThread {
  private worker: Worker | undefined;
  private next = 0;
  private readonly waiting = new Map<number, { resolve: (r: PreCheck) => void; reject: (e: Error) => void }>();

  /** How many nodes a submitted prompt has (API prompt: its keys; charflow workflow: its nodes). */
  static size(prompt: unknown): number {
    if (typeof prompt !== 'object' || prompt === null) return 0;
    const nodes = (prompt as { nodes?: unknown }).nodes;
    const bag = typeof nodes === 'object' && nodes !== null ? nodes : prompt;
    let n = 0;
    for (const _ in bag) n++;
    return n;
  }

  check(prompt: unknown, maxNodes: number): Promise<PreCheck> {
    const w = this.start();
    const id = this.next++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      w.postMessage({ id, prompt, maxNodes });
    });
  }

  private start(): Worker {
    if (this.worker) return this.worker;
    const w = new Worker(BOOT, { name: 'charflow-prompt-check' });
    w.unref();
    w.on('message', (r: Reply) => {
      const p = this.waiting.get(r.id);
      if (!p) return;
      this.waiting.delete(r.id);
      if ('error' in r) p.reject(new Error(r.error));
      else p.resolve(r.ok ? { ok: true } : { ok: false, status: r.status, json: r.json });
    });
    const fail = (err: Error): void => {
      if (this.worker === w) this.worker = undefined;
      for (const p of this.waiting.values()) p.reject(err);
      this.waiting.clear();
    };
    w.on('error', fail);
    w.on('exit', (code) => fail(new Error(`the prompt-check thread exited (${code})`)));
    this.worker = w;
    return w;
  }

  async close(): Promise<void> {
    const w = this.worker;
    this.worker = undefined;
    await w?.terminate();
  }
}

/** Bodies from this size on count as large prompts (about 700 nodes of API JSON; ComfyUI's usual ones are under 20 KiB). */
export const LARGE_PROMPT_BYTES = 64 * 1024;

/**
 * Large prompts per client address: a burst of `burst`, then one per `everyMs`. Checking a large
 * prompt costs a core for a while; one address sending them back to back would take that core from
 * everyone else (honest clients' jobs, the workers on the same machine). A refusal costs nothing:
 * it is answered before the body is read.
 */
export class LargePromptBudget {
  private readonly left = new Map<string, { tokens: number; at: number }>();

  constructor(
    private readonly burst = 4,
    private readonly everyMs = 1000,
  ) {}

  /** Takes one from the address's budget; false when it has none left. */
  take(address: string, now = Date.now()): boolean {
    const b = this.left.get(address) ?? { tokens: this.burst, at: now };
    b.tokens = Math.min(this.burst, b.tokens + (now - b.at) / this.everyMs);
    b.at = now;
    if (this.left.size > 10_000) this.left.clear(); // bounded memory whatever the addresses
    this.left.set(address, b);
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }
}

/**
 * Express middleware for POST /prompt, mounted before the JSON body parser: a large prompt over
 * its address's budget is answered 429 (ComfyUI's queue_full shape) without reading its body.
 */
export function rationLargePrompts(budget = new LargePromptBudget()): (req: Request, res: Response, next: NextFunction) => void {
  return (req, res, next) => {
    if (req.method !== 'POST' || Number(req.headers['content-length'] ?? 0) < LARGE_PROMPT_BYTES || budget.take(req.socket.remoteAddress ?? '?')) return next();
    res.setHeader('Connection', 'close');
    res.setHeader('Retry-After', '1');
    res.status(429).json({ error: { type: 'queue_full', message: 'The queue is full', details: 'too many large prompts from this address; send at most one per second', extra_info: {} }, node_errors: {} });
  };
}
