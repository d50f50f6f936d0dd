// Runs a validated workflow: only the nodes that feed the requested outputs, independent branches
// concurrently (bounded), reusing cached outputs across runs, isolating failures to what depends
// on them, and stopping cleanly on cancel. It knows node types only through NodeDef.
import { createHash, randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { NodeInputError, type Logger, type NodeContext, type NodeDef, type NodeOutputs, type PreviewImage } from '../node.ts';
import { nodeLabel, type ValidWorkflow } from '../workflow/types.ts';
import { DEFAULT_CACHE_BUDGET, estimateSize, OutputCache } from './cache.ts';
import { RunEvents, callListener, type RunCounts, type RunEvent, type RunListener } from './events.ts';
import { IndexHeap, planRun, type RunPlan } from './scheduler.ts';

export const DEFAULT_CONCURRENCY = 2;

export interface ExecutorOptions<S> {
  registry: ReadonlyMap<string, NodeDef<S>>;
  /** Passed untouched to every node as ctx.services. */
  services: S;
  /** How many nodes may run at once (default 2). */
  concurrency?: number;
  /** A cache to share; default a new one of cacheBudgetBytes. */
  cache?: OutputCache;
  /** Byte budget of the default cache (default 1 GiB; 0 disables caching). */
  cacheBudgetBytes?: number;
  /** Where ctx.log goes (default: stderr, prefixed with the node). */
  logger?: Logger;
}

export interface RunOptions {
  /** Node ids whose outputs are wanted (default: every output node). */
  targets?: readonly string[];
  signal?: AbortSignal;
  /** A listener for this run's events only (in addition to executor.events). */
  onEvent?: RunListener;
  /** Default: a random UUID. */
  runId?: string;
  /** Overrides the executor's concurrency for this run. */
  concurrency?: number;
}

export type NodeOutcome =
  | { status: 'done'; ms: number }
  | { status: 'cached' }
  | { status: 'failed'; message: string; error: string; field?: string }
  | { status: 'skipped'; because: string; message: string }
  | { status: 'cancelled' };

export interface RunResult {
  runId: string;
  status: 'done' | 'failed' | 'cancelled';
  /** The outcome of every node the run needed (nodes not needed are absent). */
  nodes: Record<string, NodeOutcome>;
  /** Outputs of the targets that completed (ran or cached). */
  outputs: Record<string, NodeOutputs>;
  counts: RunCounts;
  ms: number;
}

const enum St {
  Pending = 0, // needed, waiting for upstream
  Running = 1,
  Done = 2,
  Cached = 3,
  Failed = 4,
  Skipped = 5,
  Cancelled = 6,
  Unneeded = 7, // in the plan but not needed: something downstream was cached
}

/** Stable JSON (sorted object keys) so equal constants give equal keys. */
function stableJson(v: unknown): string {
  if (typeof v !== 'object' || v === null) return JSON.stringify(v) ?? 'null';
  if (Array.isArray(v)) return `[${v.map(stableJson).join(',')}]`;
  const keys = Object.keys(v).sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${stableJson((v as Record<string, unknown>)[k])}`).join(',')}}`;
}

function hash(s: string): string {
  return createHash('sha256').update(s).digest('base64url');
}

const stderrLogger: Logger = {
  info: (m) => process.stderr.write(`${m}\n`),
  warn: (m) => process.stderr.write(`warning: ${m}\n`),
};

function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message || err.name;
  return String(err);
}

export class Executor<S> {
  /** Events of every run of this executor. */
  readonly events = new RunEvents();
  readonly cache: OutputCache;
  readonly registry: ReadonlyMap<string, NodeDef<S>>;
  readonly services: S;
  readonly concurrency: number;
  readonly logger: Logger;

  constructor(opts: ExecutorOptions<S>) {
    this.registry = opts.registry;
    this.services = opts.services;
    this.concurrency = checkConcurrency(opts.concurrency ?? DEFAULT_CONCURRENCY);
    this.cache = opts.cache ?? new OutputCache(opts.cacheBudgetBytes ?? DEFAULT_CACHE_BUDGET);
    this.logger = opts.logger ?? stderrLogger;
  }

  /** The nodes a run of `targets` needs, in priority order (see planRun). */
  plan(workflow: ValidWorkflow, targets?: readonly string[]): RunPlan<S> {
    return planRun(workflow, this.registry, targets);
  }

  /**
   * Runs a validated workflow. Resolves with every node's outcome; never rejects because of a
   * node. Rejects with WorkflowError only for an unknown target (or a workflow that skipped
   * validation).
   */
  async run(workflow: ValidWorkflow, opts: RunOptions = {}): Promise<RunResult> {
    const plan = this.plan(workflow, opts.targets);
    const concurrency = checkConcurrency(opts.concurrency ?? this.concurrency);
    return new Run(this, plan, workflow, opts, concurrency).execute();
  }
}

function checkConcurrency(n: number): number {
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`concurrency must be an integer >= 1, got ${n}`);
  return n;
}

/** One-shot convenience: a fresh executor (and cache) for a single run. */
export function execute<S>(workflow: ValidWorkflow, opts: ExecutorOptions<S> & RunOptions): Promise<RunResult> {
  return new Executor(opts).run(workflow, opts);
}

/** The state of one run; lives only for the duration of Executor.run. */
class Run<S> {
  private readonly n: number;
  private readonly state: Uint8Array;
  private readonly remaining: Int32Array; // upstream nodes still to finish
  private readonly consumers: Int32Array; // pending dependants that still need the outputs
  private readonly used: (readonly number[])[]; // upstream nodes whose outputs a node reads (see NodeDef.unusedInputs)
  private readonly unused: (ReadonlySet<string> | undefined)[]; // linked inputs a node will not read
  private readonly keys: (string | null | undefined)[]; // undefined: not known yet; null: never cached
  private readonly outputs: (NodeOutputs | undefined)[];
  private readonly outcomes: (NodeOutcome | undefined)[];
  private readonly heap = new IndexHeap();
  private readonly controller = new AbortController();
  private readonly pending: Promise<void>[] = [];
  private readonly runId: string;
  private readonly t0 = performance.now();
  private running = 0;
  private aborted = false;
  private finish!: () => void;

  constructor(
    private readonly ex: Executor<S>,
    private readonly plan: RunPlan<S>,
    private readonly workflow: ValidWorkflow,
    private readonly opts: RunOptions,
    private readonly limit: number,
  ) {
    this.n = plan.nodes.length;
    this.state = new Uint8Array(this.n);
    this.remaining = new Int32Array(this.n);
    this.consumers = new Int32Array(this.n);
    this.keys = new Array<string | null | undefined>(this.n);
    this.used = plan.nodes.map((p) => p.upstream);
    this.unused = new Array<ReadonlySet<string> | undefined>(this.n);
    this.outputs = new Array<NodeOutputs | undefined>(this.n);
    this.outcomes = new Array<NodeOutcome | undefined>(this.n);
    this.runId = opts.runId ?? randomUUID();
  }

  private readonly onListenerError = (err: unknown): void => {
    this.ex.logger.warn(`event listener failed: ${errorMessage(err)}`);
  };

  private emit(e: RunEvent): void {
    const p = this.ex.events.emit(e, this.onListenerError);
    if (p) this.pending.push(...p);
    if (this.opts.onEvent) {
      const q = callListener(this.opts.onEvent, e, this.onListenerError);
      if (q) this.pending.push(q);
    }
  }

  async execute(): Promise<RunResult> {
    const signal = this.opts.signal;
    const onAbort = (): void => {
      this.aborted = true;
      this.controller.abort(signal?.reason);
      this.pump();
    };
    if (signal?.aborted) {
      this.aborted = true;
      this.controller.abort(signal.reason);
    } else {
      signal?.addEventListener('abort', onAbort, { once: true });
    }
    try {
      const early = await this.computeStaticKeys();
      await this.preflight(early);
      this.markNeeded();
      const reported: string[] = [];
      for (let i = 0; i < this.n; i++) if (this.state[i] !== St.Unneeded) reported.push(this.plan.nodes[i]!.id);
      this.emit({ type: 'run_started', runId: this.runId, time: Date.now(), nodes: reported, targets: this.plan.targets });
      for (const e of early) this.emit(e);
      for (let i = 0; i < this.n; i++) {
        if (this.state[i] === St.Cached) this.emitCached(i);
        else if (this.state[i] === St.Pending && this.remaining[i] === 0) this.heap.push(i);
      }
      await new Promise<void>((resolve) => {
        this.finish = resolve;
        this.pump();
      });
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
    return this.conclude();
  }

  // ---- keys -------------------------------------------------------------------------------

  /** What determines a node's result, apart from cacheKey(): type, version, constants, upstream keys. */
  private baseKey(i: number): string {
    const p = this.plan.nodes[i]!;
    let s = `${p.type}\u0000${p.def.version}\u0000${stableJson(p.consts)}`;
    for (const l of p.links) s += `\u0000${l.input}=${this.keys[l.from]!}#${l.output}`;
    return s;
  }

  /**
   * Keys that can be known before anything runs, in dependency order. A node whose cacheKey()
   * needs linked values gets its key (and so do its dependants) only when it is about to run.
   * Returns the failure/skip events of nodes whose cacheKey() threw, to emit after run_started.
   */
  private async computeStaticKeys(): Promise<RunEvent[]> {
    const early: RunEvent[] = [];
    for (let i = 0; i < this.n; i++) {
      if (this.state[i] === St.Skipped) continue;
      const p = this.plan.nodes[i]!;
      if (p.def.cacheable === false) {
        this.keys[i] = null;
        continue;
      }
      let known = true;
      let volatile = false;
      for (const u of p.upstream) {
        const k = this.keys[u];
        if (k === null) volatile = true;
        else if (k === undefined) known = false;
      }
      if (volatile) this.keys[i] = null; // downstream of something uncacheable: unique per run
      else if (!known || (p.def.cacheKey && p.links.length > 0)) this.keys[i] = undefined;
      else if (!p.def.cacheKey) this.keys[i] = hash(this.baseKey(i));
      else {
        if (this.aborted) continue; // conclude() marks it cancelled
        try {
          const extra = await p.def.cacheKey({ ...p.consts }, this.ex.services);
          this.keys[i] = hash(`${this.baseKey(i)}\u0000${extra}`);
        } catch (err) {
          this.fail(i, err, early);
        }
      }
    }
    return early;
  }

  /** NodeDef.preflight of every node that has one, before anything runs; a failure fails the node as a run would. */
  private async preflight(early: RunEvent[]): Promise<void> {
    for (let i = 0; i < this.n; i++) {
      const p = this.plan.nodes[i]!;
      if (!p.def.preflight || this.state[i] === St.Skipped || this.state[i] === St.Failed) continue;
      const upstream = (input: string): Record<string, unknown> | undefined => {
        const link = p.links.find((l) => l.input === input);
        return link ? { ...this.plan.nodes[link.from]!.consts } : undefined;
      };
      try {
        await p.def.preflight({ ...p.consts }, this.ex.services, upstream);
      } catch (err) {
        this.fail(i, err, early);
      }
    }
  }

  /** Walks back from the targets: cached nodes need nothing upstream; the rest need all upstream. */
  private markNeeded(): void {
    const wanted = new Uint8Array(this.n);
    for (const t of this.plan.targets) wanted[this.plan.index.get(t)!] = 1;
    for (let i = this.n - 1; i >= 0; i--) {
      const st = this.state[i];
      if (st === St.Failed || st === St.Skipped) continue;
      if (!wanted[i]) {
        this.state[i] = St.Unneeded;
        continue;
      }
      const key = this.keys[i];
      // Take the value now: later insertions in this run may evict it from the cache.
      const hit = typeof key === 'string' ? this.ex.cache.get(key) : undefined;
      if (hit) {
        this.state[i] = St.Cached;
        this.outputs[i] = hit;
        this.outcomes[i] = { status: 'cached' };
        continue;
      }
      this.dropUnusedInputs(i);
      for (const u of this.used[i]!) wanted[u] = 1;
    }
    for (let i = 0; i < this.n; i++) {
      if (this.state[i] !== St.Pending) continue;
      for (const u of this.used[i]!) {
        if (this.state[u] === St.Pending) this.remaining[i]++;
        this.consumers[u]++;
      }
    }
  }

  /** Applies NodeDef.unusedInputs to a node about to run: its upstream for scheduling, with a warning per input left out. */
  private dropUnusedInputs(i: number): void {
    const p = this.plan.nodes[i]!;
    if (!p.def.unusedInputs) return;
    const reasons = p.def.unusedInputs({ ...p.consts });
    const names = new Set(Object.keys(reasons).filter((k) => p.links.some((l) => l.input === k)));
    if (!names.size) return;
    for (const k of names) this.ex.logger.warn(`${nodeLabel(p.id, p.type)}: input "${k}" is connected but not used: ${reasons[k]}`);
    this.unused[i] = names;
    this.used[i] = [...new Set(p.links.filter((l) => !names.has(l.input)).map((l) => l.from))];
  }

  // ---- scheduling -------------------------------------------------------------------------

  private pump(): void {
    while (!this.aborted && this.running < this.limit && this.heap.size > 0) {
      const i = this.heap.pop()!;
      this.running++;
      this.state[i] = St.Running;
      this.runNode(i).then(
        () => this.settle(i),
        (err: unknown) => {
          // Only a bug in the executor or a listener gets here; still isolate it to the node.
          if (this.state[i] === St.Running) this.fail(i, err);
          this.settle(i);
        },
      );
    }
    if (this.running === 0 && (this.aborted || this.heap.size === 0)) this.finish?.();
  }

  private settle(i: number): void {
    this.running--;
    const st = this.state[i];
    if (st === St.Done || st === St.Cached) {
      for (const d of this.plan.nodes[i]!.dependants) {
        if (this.state[d] === St.Pending && this.used[d]!.includes(i) && --this.remaining[d]! === 0) this.heap.push(d);
      }
    }
    this.release(i);
    this.pump();
  }

  /** Drops run-local references to upstream outputs nobody else will read (the cache keeps its own). */
  private release(i: number): void {
    for (const u of this.used[i]!) {
      if (--this.consumers[u]! === 0 && !this.plan.nodes[u]!.target) this.outputs[u] = undefined;
    }
  }

  private inputsOf(i: number): Record<string, unknown> {
    const p = this.plan.nodes[i]!;
    const inputs: Record<string, unknown> = { ...p.consts };
    for (const l of p.links) if (!this.unused[i]?.has(l.input)) inputs[l.input] = this.outputs[l.from]![l.output];
    return inputs;
  }

  private async runNode(i: number): Promise<void> {
    const p = this.plan.nodes[i]!;
    const inputs = this.inputsOf(i);
    if (this.keys[i] === undefined) {
      // Deferred key: upstream keys (and values, for cacheKey) are known now.
      try {
        let volatile = false;
        for (const u of p.upstream) if (this.keys[u] === null) volatile = true;
        if (volatile) this.keys[i] = null;
        else {
          const extra = p.def.cacheKey ? `\u0000${await p.def.cacheKey({ ...inputs }, this.ex.services)}` : '';
          this.keys[i] = hash(this.baseKey(i) + extra);
        }
      } catch (err) {
        this.fail(i, err);
        return;
      }
      const hit = typeof this.keys[i] === 'string' ? this.ex.cache.get(this.keys[i]!) : undefined;
      if (hit) {
        this.state[i] = St.Cached;
        this.outputs[i] = hit;
        this.outcomes[i] = { status: 'cached' };
        this.emitCached(i);
        return;
      }
      if (this.aborted) {
        this.state[i] = St.Cancelled;
        return;
      }
    }

    this.emit({ type: 'node_started', runId: this.runId, time: Date.now(), nodeId: p.id, nodeType: p.type });
    const start = performance.now();
    let out: NodeOutputs;
    try {
      out = await p.def.run(this.context(i), inputs);
      const missing = checkOutputs(p.def, out);
      if (missing) throw new Error(missing);
    } catch (err) {
      if (this.aborted) {
        this.state[i] = St.Cancelled;
        this.outcomes[i] = { status: 'cancelled' };
      } else {
        this.fail(i, err);
      }
      return;
    }
    const ms = performance.now() - start;
    this.state[i] = St.Done;
    this.outputs[i] = out;
    this.outcomes[i] = { status: 'done', ms };
    const key = this.keys[i];
    if (typeof key === 'string' && this.ex.cache.budget > 0) this.ex.cache.set(key, out, sizeOfOutputs(p.def, out));
    this.emit({
      type: 'node_finished',
      runId: this.runId,
      time: Date.now(),
      nodeId: p.id,
      nodeType: p.type,
      ms,
      ...(p.def.output || p.target ? { outputs: out } : {}),
      ...summaryOf(p.def, out),
    });
  }

  private context(i: number): NodeContext<S> {
    const p = this.plan.nodes[i]!;
    const prefix = `[${nodeLabel(p.id, p.type)}] `;
    const logger = this.ex.logger;
    return {
      nodeId: p.id,
      signal: this.controller.signal,
      services: this.ex.services,
      workflow: this.workflow,
      log: { info: (m) => logger.info(prefix + m), warn: (m) => logger.warn(prefix + m) },
      progress: (step: number, total: number, preview?: PreviewImage) => {
        this.emit({
          type: 'node_progress',
          runId: this.runId,
          time: Date.now(),
          nodeId: p.id,
          nodeType: p.type,
          step,
          total,
          ...(preview ? { preview } : {}),
        });
      },
    };
  }

  private emitCached(i: number): void {
    const p = this.plan.nodes[i]!;
    this.emit({
      type: 'node_cached',
      runId: this.runId,
      time: Date.now(),
      nodeId: p.id,
      nodeType: p.type,
      ...(p.def.output || p.target ? { outputs: this.outputs[i] } : {}),
      ...summaryOf(p.def, this.outputs[i]),
    });
  }

  /**
   * Marks a node failed and everything downstream of it skipped. Events go to `sink` when given
   * (before run_started), else out immediately.
   */
  private fail(i: number, err: unknown, sink?: RunEvent[]): void {
    const p = this.plan.nodes[i]!;
    const label = nodeLabel(p.id, p.type);
    const raw = errorMessage(err);
    const field = err instanceof NodeInputError ? err.field : undefined;
    const message = field !== undefined ? `${label} input "${field}": ${raw}` : `${label} failed: ${raw}`;
    this.state[i] = St.Failed;
    this.outcomes[i] = { status: 'failed', message, error: raw, ...(field !== undefined ? { field } : {}) };
    const out = (e: RunEvent): void => (sink ? void sink.push(e) : this.emit(e));
    const stack = field === undefined && err instanceof Error ? err.stack : undefined;
    out({
      type: 'node_failed',
      runId: this.runId,
      time: Date.now(),
      nodeId: p.id,
      nodeType: p.type,
      message,
      error: raw,
      ...(field !== undefined ? { field } : {}),
      ...(stack ? { stack } : {}),
    });
    // Everything downstream that has not run yet cannot run now.
    const todo = [...p.dependants];
    while (todo.length) {
      const d = todo.pop()!;
      const st = this.state[d];
      if (st !== St.Pending) continue;
      const q = this.plan.nodes[d]!;
      const why = `${nodeLabel(q.id, q.type)} skipped: upstream ${label} failed`;
      this.state[d] = St.Skipped;
      this.outcomes[d] = { status: 'skipped', because: p.id, message: why };
      out({ type: 'node_skipped', runId: this.runId, time: Date.now(), nodeId: q.id, nodeType: q.type, because: p.id, message: why });
      if (!sink) this.release(d); // before markNeeded nothing holds references yet
      for (const x of q.dependants) todo.push(x);
    }
  }

  private async conclude(): Promise<RunResult> {
    const counts: RunCounts = { done: 0, cached: 0, failed: 0, skipped: 0, cancelled: 0 };
    const nodes: Record<string, NodeOutcome> = {};
    const outputs: Record<string, NodeOutputs> = {};
    for (let i = 0; i < this.n; i++) {
      const st = this.state[i];
      if (st === St.Unneeded) continue;
      const p = this.plan.nodes[i]!;
      if (st === St.Pending || st === St.Running || st === St.Cancelled) {
        this.state[i] = St.Cancelled;
        this.outcomes[i] = { status: 'cancelled' };
      }
      const o = this.outcomes[i]!;
      nodes[p.id] = o;
      counts[o.status]++;
      if (p.target && (o.status === 'done' || o.status === 'cached')) outputs[p.id] = this.outputs[i]!;
    }
    const ms = performance.now() - this.t0;
    const status = counts.cancelled > 0 ? 'cancelled' : counts.failed > 0 ? 'failed' : 'done';
    const time = Date.now();
    if (status === 'cancelled') this.emit({ type: 'run_cancelled', runId: this.runId, time, ms, counts });
    else this.emit({ type: 'run_finished', runId: this.runId, time, ms, counts, status });
    // Async listeners get to finish (e.g. write the last line) before the caller sees the result.
    while (this.pending.length) await Promise.all(this.pending.splice(0));
    return { runId: this.runId, status, nodes, outputs, counts, ms };
  }
}

/** A message when a node's result lacks a declared output, else undefined. */
function checkOutputs<S>(def: NodeDef<S>, out: unknown): string | undefined {
  if (typeof out !== 'object' || out === null) return `returned ${out === null ? 'null' : typeof out} instead of its outputs`;
  for (const name in def.outputs) if (!(name in out)) return `did not return its output "${name}"`;
  return undefined;
}

function sizeOfOutputs<S>(def: NodeDef<S>, out: NodeOutputs): number {
  let size = 0;
  for (const k in out) size += def.sizeOf ? def.sizeOf(out[k]) : estimateSize(out[k]);
  return size;
}

/** The node type's summary of its outputs for the events; a failing summary is left out, not fatal. */
function summaryOf<S>(def: NodeDef<S>, out: NodeOutputs | undefined): { summary?: Record<string, unknown> } {
  if (!def.summary || !out) return {};
  try {
    const summary = def.summary(out);
    return summary ? { summary } : {};
  } catch {
    return {};
  }
}
