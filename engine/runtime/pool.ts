// The session pool: every ONNX model the engine runs goes through here. Each model is loaded once,
// shared by all nodes and runs, and lives in its own worker thread (its "home"), because
// onnxruntime-node runs inference synchronously on the calling thread and the server's event loop
// must never block. Runs of one model are queued and sent to its worker one at a time; runs of
// different models proceed in parallel on their own threads. Loaded models are unloaded least
// recently used first when a new one would exceed the memory budget; a model with a run in flight
// or queued is never unloaded.
import { createHash } from 'node:crypto';
import { stat } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { arch, availableParallelism, cpus } from 'node:os';
import { basename, join, resolve } from 'node:path';
import { numel, type Tensor } from '../../models/tensor.ts';
import { WorkerClient, WorkerCrashError } from './client.ts';
import { defaultMemoryBudget, resolveDevice } from './device.ts';
import { ModelFileError, scanModel, type ModelScan } from './onnx-scan.ts';
import { type CacheRequest, type Device, type DeviceRequest, type RunResult, type SessionConfig, transferList } from './protocol.ts';

export type { Device, DeviceRequest };
export { DeviceUnavailableError } from './device.ts';
export { ModelFileError } from './onnx-scan.ts';
export { liveWorkers, WorkerCrashError } from './client.ts';

export interface PoolOptions {
  /** Default 'auto': CUDA, then WebGPU, then CPU. An explicit device that cannot run throws. */
  device?: DeviceRequest;
  /** Default: 75% of RAM (CPU, WebGPU) or 80% of GPU memory (CUDA, via nvidia-smi). */
  memoryBudgetBytes?: number;
  /**
   * ORT intra-op threads per session. Default max(1, floor(cores / expectedConcurrency)); idle
   * threads sleep rather than spin, so sessions running at once share the cores without a fight.
   */
  intraOpThreads?: number;
  /** How many sessions are expected to run at once (sizes the default thread count). Default 1: the sampler, which dominates a run, runs alone and gets every core. */
  expectedConcurrency?: number;
  /**
   * Folder for optimised model copies (e.g. <data>/cache/ort). Off when unset. A copy holds all the
   * weights again (model.onnx.data beside it for external-data models): it doubles disk use.
   */
  cacheDir?: string;
  /** Models estimated above this size load without the cache (default: no limit). */
  cacheMaxBytes?: number;
  /**
   * Keep one worker thread started ahead of the next load (default true). Starting a worker costs
   * some 0.3 s (mostly registering tsx in it), which would otherwise add to every model's cold start.
   */
  spareWorker?: boolean;
  log?: (msg: string) => void;
}

export interface RunOptions {
  /** Output names to compute (default: all graph outputs). */
  outputs?: string[];
  /**
   * Aborting rejects a run that has not reached ORT yet (waiting for its model to load or queued
   * behind another run of the same model) with an AbortError. A run already inside ORT finishes:
   * onnxruntime-node runs synchronously on the worker and exposes no way to interrupt it.
   */
  signal?: AbortSignal;
  /**
   * Move the feeds' buffers to the worker instead of copying them; the caller's typed arrays are
   * then detached (length 0). Off by default, because a feed is often a value the caller keeps
   * (a cached node output, a text embedding reused at every denoising step).
   */
  transferInputs?: boolean;
  /** Resident size to assume if this run loads the model (default: file sizes). */
  sizeBytes?: number;
  /**
   * Feeds kept in the model's worker between runs (run-time LoRA factors): sent once per key and worker,
   * then every run naming the key gets them without a copy. Their bytes count in the memory budget while
   * bound; a model keeps the last MAX_BOUND keys (older ones are dropped, and sent again when named).
   */
  bound?: BoundFeeds;
}

export interface BoundFeeds {
  /** Identity of the feeds' contents (the same key must always mean the same tensors). */
  key: string;
  feeds: Record<string, Tensor>;
  bytes: number;
}

/** Bound feed sets a model keeps (a strength change or a swap binds a new one; the last few stay for reuse). */
const MAX_BOUND = 2;

export interface RunInfo {
  /** Worker thread that ran the model. */
  threadId: number;
  /** Wall-clock epoch ms (sub-ms precision) around session.run inside the worker. */
  startedAt: number;
  endedAt: number;
}

export interface PoolStats {
  loads: number;
  unloads: number;
  /** Completed runs per model path (absolute). */
  runs: Record<string, number>;
  /** Estimated bytes of the models loaded or loading. */
  residentBytes: number;
  budgetBytes: number;
  /** Absolute paths of the models loaded now. */
  loaded: string[];
  /** Loads served from the optimised-model cache. */
  cacheHits: number;
  /** The most bytes reserved at once since the pool started: the peak of residentBytes. */
  peakResidentBytes: number;
  /** Absolute paths of every model loaded since the pool started, in load order (a model reloaded appears again). */
  loadHistory: string[];
}

interface QueuedRun {
  feeds: Record<string, Tensor>;
  bound?: BoundFeeds;
  transfer: ArrayBuffer[];
  outputs?: string[];
  resolve(r: RunResult): void;
  reject(e: Error): void;
  detachAbort(): void;
}

class Entry {
  state: 'loading' | 'ready' | 'gone' = 'loading';
  /** Bytes reserved against the budget (0 until reserved and after release). */
  bytes = 0;
  client?: WorkerClient;
  /** Callers between acquire and release: a pinned model is never evicted. */
  pins = 0;
  lastUsed = 0;
  queue: QueuedRun[] = [];
  busy = false;
  /** Keys bound in this entry's worker, oldest first, with their bytes (counted in `bytes`). */
  bound = new Map<string, number>();
  ready!: Promise<void>;
  constructor(readonly path: string) {}
}

const ORT_VERSION = (createRequire(import.meta.url)('onnxruntime-node/package.json') as { version: string }).version;
const GiB = 1024 ** 3;
function fmtBytes(n: number): string {
  if (n >= GiB / 10) return `${(n / GiB).toFixed(2)} GiB`;
  if (n >= 1024 ** 2) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  return `${(n / 1024).toFixed(1)} KiB`;
}
const sha = (s: string): string => createHash('sha256').update(s).digest('hex');

function abortError(path: string): Error {
  return new DOMException(`run of ${path} was aborted before it started`, 'AbortError');
}

export class SessionPool {
  private readonly entries = new Map<string, Entry>();
  private readonly sizeHints = new Map<string, number>();
  private readonly scans = new Map<string, { key: string; scan: ModelScan }>();
  private readonly runCounts: Record<string, number> = {};
  private waiters: (() => void)[] = [];
  private reserved = 0;
  private peakReserved = 0;
  private readonly loadHistory: string[] = [];
  private loads = 0;
  private unloads = 0;
  private cacheHits = 0;
  private clock = 0;
  private closed = false;
  private spare?: WorkerClient;
  /**
   * ORT's WebGPU provider keeps one device context per process, shared by every session: two
   * workers using it at once corrupt its command queue (seen as "deferred dispatch count exceeds
   * maxNumPendingDispatches" and segfaults). So on WebGPU, loads, runs and releases take turns.
   */
  private readonly deviceTurns: Turns | undefined;

  private constructor(
    readonly device: Device,
    /** Why this device cannot run float16 graphs; undefined where it can. */
    private readonly noFloat16: string | undefined,
    /** Why this device cannot run quantized (MatMulNBits) graphs; undefined where it can. */
    private readonly noMatMulNBits: string | undefined,
    readonly budgetBytes: number,
    readonly intraOpThreads: number,
    private readonly cacheDir: string | undefined,
    private readonly cacheMaxBytes: number,
    private readonly keepSpare: boolean,
    private readonly log: (msg: string) => void,
    probeWorker: WorkerClient | undefined,
  ) {
    this.deviceTurns = device === 'webgpu' ? new Turns() : undefined;
    if (probeWorker) this.adoptSpare(probeWorker);
    else this.startSpare();
  }

  /** Runs `f` alone among device work when the device context is shared (WebGPU), else at once. */
  private onDevice<T>(f: () => Promise<T>): Promise<T> {
    return this.deviceTurns ? this.deviceTurns.take(f) : f();
  }

  /** Probes the device (once per process), sizes threads and budget. */
  static async create(opts: PoolOptions = {}): Promise<SessionPool> {
    const log = opts.log ?? ((m: string) => console.error(`[charflow] ${m}`));
    const concurrency = Math.max(1, Math.floor(opts.expectedConcurrency ?? 1));
    const threads = opts.intraOpThreads ?? Math.max(1, Math.floor(availableParallelism() / concurrency));
    if (!Number.isInteger(threads) || threads < 1) throw new Error(`intraOpThreads must be a positive integer, got ${threads}`);
    if (opts.memoryBudgetBytes !== undefined && !(opts.memoryBudgetBytes > 0)) {
      throw new Error(`memoryBudgetBytes must be positive, got ${opts.memoryBudgetBytes}`);
    }
    const keepSpare = opts.spareWorker ?? true;
    // The spare worker runs the device probe (when one is needed), then waits for the first model.
    const spare = keepSpare ? new WorkerClient('spare runtime worker') : undefined;
    try {
      const { device, noFloat16, noMatMulNBits } = await resolveDevice(opts.device ?? 'auto', log, spare);
      const budget = opts.memoryBudgetBytes ?? await defaultMemoryBudget(device, log);
      log(`runtime: ${threads} intra-op thread(s) per session, memory budget ${fmtBytes(budget)}`
        + (opts.cacheDir ? `, optimised-model cache in ${opts.cacheDir}` : ''));
      const cacheDir = opts.cacheDir ? resolve(opts.cacheDir) : undefined;
      return new SessionPool(device, noFloat16, noMatMulNBits, budget, threads, cacheDir, opts.cacheMaxBytes ?? Infinity, keepSpare, log, spare);
    } catch (e) {
      await spare?.terminate();
      throw e;
    }
  }

  /** Runs a model; loads it first when needed. Outputs arrive without a copy (transferred). */
  async run(modelPath: string, feeds: Record<string, Tensor>, opts: RunOptions = {}): Promise<Record<string, Tensor>> {
    return (await this.runWithInfo(modelPath, feeds, opts)).outputs;
  }

  /** Like run, plus where and when ORT ran it (for benchmarks and tests). */
  async runWithInfo(modelPath: string, feeds: Record<string, Tensor>, opts: RunOptions = {}): Promise<{ outputs: Record<string, Tensor>; info: RunInfo }> {
    this.assertOpen();
    const path = resolve(modelPath);
    if (opts.signal?.aborted) throw abortError(path);
    const [wireFeeds, transfer] = prepareFeeds(path, feeds, opts.transferInputs ?? false);
    if (opts.sizeBytes !== undefined) this.sizeHints.set(path, opts.sizeBytes);
    const entry = this.acquire(path);
    try {
      await abortable(entry.ready, opts.signal, path);
      if (opts.bound && !entry.bound.has(opts.bound.key)) await this.makeRoom(entry, opts.bound.bytes);
      const r = await this.enqueue(entry, wireFeeds, transfer, opts);
      this.runCounts[path] = (this.runCounts[path] ?? 0) + 1;
      return { outputs: r.outputs, info: { threadId: r.threadId, startedAt: r.startedAt, endedAt: r.endedAt } };
    } finally {
      this.release(entry);
    }
  }

  /** Loads a model ahead of its first run. `sizeBytes` overrides the file-size estimate. */
  async load(modelPath: string, opts: { sizeBytes?: number } = {}): Promise<void> {
    this.assertOpen();
    const path = resolve(modelPath);
    if (opts.sizeBytes !== undefined) this.sizeHints.set(path, opts.sizeBytes);
    const entry = this.acquire(path);
    try {
      await entry.ready;
    } finally {
      this.release(entry);
    }
  }

  /** Names a run must feed (read from the file; the model is not loaded). */
  async inputNames(modelPath: string): Promise<string[]> {
    return [...(await this.scan(resolve(modelPath))).inputNames];
  }

  async outputNames(modelPath: string): Promise<string[]> {
    return [...(await this.scan(resolve(modelPath))).outputNames];
  }

  stats(): PoolStats {
    return {
      loads: this.loads,
      unloads: this.unloads,
      runs: { ...this.runCounts },
      residentBytes: this.reserved,
      budgetBytes: this.budgetBytes,
      loaded: [...this.entries.values()].filter((e) => e.state === 'ready').map((e) => e.path),
      cacheHits: this.cacheHits,
      peakResidentBytes: this.peakReserved,
      loadHistory: [...this.loadHistory],
    };
  }

  /** Unloads a model once its queued and running runs are done; later runs load it again. */
  async unload(modelPath: string): Promise<void> {
    const path = resolve(modelPath);
    const entry = this.entries.get(path);
    if (!entry) return;
    this.entries.delete(path); // new runs start a fresh load
    await entry.ready.catch(() => {});
    while (entry.pins > 0 && entry.state !== 'gone') await this.nextChange();
    await this.retire(entry, 'on request');
  }

  /** Terminates every worker. Queued and running runs reject; the pool cannot be used again. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const all = [...this.entries.values()];
    this.entries.clear();
    const closing = new Error('the session pool was closed');
    const spare = this.spare;
    this.spare = undefined;
    await Promise.all([...all.map((e) => this.drop(e, closing)), spare?.terminate()]);
    this.changed();
  }

  /** Test hook: makes a loaded model's worker die as a crash would; resolves once it is gone. */
  async debugCrashWorker(modelPath: string): Promise<void> {
    const entry = this.entries.get(resolve(modelPath));
    if (!entry?.client || entry.state !== 'ready') throw new Error(`${modelPath} is not loaded`);
    const client = entry.client;
    await client.request({ type: 'crash' });
    await client.exited;
  }

  // ---- loading and the memory budget ----

  private assertOpen(): void {
    if (this.closed) throw new Error('the session pool was closed');
  }

  private acquire(path: string): Entry {
    let entry = this.entries.get(path);
    if (!entry) {
      const e = new Entry(path);
      entry = e;
      this.entries.set(path, e);
      e.ready = this.loadEntry(e);
      e.ready.catch(() => {}); // callers see the error through their own await
    }
    entry.pins++;
    entry.lastUsed = ++this.clock;
    return entry;
  }

  private release(entry: Entry): void {
    entry.pins--;
    entry.lastUsed = ++this.clock;
    this.changed();
  }

  private async scan(path: string): Promise<ModelScan> {
    const st = await stat(path).catch(() => undefined);
    if (!st) throw new ModelFileError(`model file not found: ${path}`);
    const key = `${st.size}:${st.mtimeMs}`;
    const hit = this.scans.get(path);
    if (hit?.key === key) return hit.scan;
    const scan = await scanModel(path);
    this.scans.set(path, { key, scan });
    return scan;
  }

  private async loadEntry(e: Entry): Promise<void> {
    try {
      const scan = await this.scan(e.path);
      if (scan.contribOps && this.noMatMulNBits) {
        throw new ModelFileError(`model ${e.path} has int8/int4 weights (ONNX Runtime MatMulNBits), which the ${this.device} device here cannot run `
          + `(${this.noMatMulNBits}): convert a float set (charflow models convert --weights fp16) or run on --device cpu`);
      }
      if (scan.halfBytes > 0 && this.noFloat16) {
        throw new ModelFileError(`model ${e.path} has float16 weights, which the ${this.device} device here cannot run `
          + `(${this.noFloat16}): use a float32 model set (charflow models convert --dtype fp32) or another --device`);
      }
      const hint = this.sizeHints.get(e.path);
      const widened = hint === undefined && this.device === 'cpu' && scan.halfBytes > 0;
      await this.reserve(e, hint ?? this.residentEstimate(scan), widened ? ': its files plus float32 copies of its float16 weights, as the CPU provider makes them' : '');
      this.assertOpen();
      if (e.state === 'gone') throw new Error(`loading ${e.path} was cancelled`);
      const client = this.takeWorker(e.path, (err) => void this.onCrash(e, err));
      e.client = client;
      const config: SessionConfig = { device: this.device, intraOpThreads: this.intraOpThreads };
      const cache = this.cacheFor(scan);
      const r = await this.onDevice(() => client.request({ type: 'load', modelPath: e.path, config, cache })).catch((err: Error) => {
        throw err instanceof WorkerCrashError ? err : new Error(`cannot load model ${e.path}: ${err.message}`);
      });
      if ((e.state as Entry['state']) === 'gone') throw new Error(`loading ${e.path} was cancelled`);
      e.state = 'ready';
      this.loads++;
      this.loadHistory.push(e.path);
      if (r.cache === 'hit') this.cacheHits++;
      const cacheNote = r.cache === 'off' ? '' : `, cache ${r.cache}${r.cacheNote ? `: ${r.cacheNote}` : ''}`;
      this.log(`runtime: loaded ${e.path} (${fmtBytes(e.bytes)}, ${r.loadMs.toFixed(0)} ms${cacheNote})`);
    } catch (err) {
      await this.drop(e, err as Error);
      throw err;
    }
  }

  /**
   * What a loaded model will hold: its files, plus, on the CPU, a float32 copy of its float16 weights
   * (the CPU provider has no float16 kernels for most ops on x86 and widens them at load; measured:
   * an fp16 T5-XXL of 8.9 GB peaks at 17.5 GB, an fp16 DINOv2 of 2.1 GB at 5.0 GB).
   */
  private residentEstimate(scan: ModelScan): number {
    return this.device === 'cpu' ? scan.bytes + scan.halfBytes : scan.bytes;
  }

  /** Reserves `bytes` for `e`, evicting idle models least recently used first, or waiting for runs to end. */
  private async reserve(e: Entry, bytes: number, why = ''): Promise<void> {
    if (bytes > this.budgetBytes) {
      throw new Error(`model ${e.path} needs about ${fmtBytes(bytes)} (${bytes} bytes${why}), more than the whole memory `
        + `budget of ${fmtBytes(this.budgetBytes)} (${this.budgetBytes} bytes); raise the memory budget (--memory-budget or CHARFLOW_MEMORY_BUDGET) or use a smaller model`);
    }
    for (;;) {
      this.assertOpen();
      if (e.state === 'gone') return;
      if (this.reserved + bytes <= this.budgetBytes) {
        this.reserved += bytes; // no await between the check and the reservation
        this.peakReserved = Math.max(this.peakReserved, this.reserved);
        e.bytes = bytes;
        return;
      }
      const victim = this.leastRecentlyUsedIdle();
      if (victim) await this.retire(victim, `to make room for ${e.path}`);
      else await this.nextChange(); // everything resident is busy: wait for a run to end
    }
  }

  private startSpare(): void {
    if (this.keepSpare && !this.closed) this.adoptSpare(new WorkerClient('spare runtime worker'));
  }

  private adoptSpare(spare: WorkerClient): void {
    spare.assign('spare runtime worker', () => {
      if (this.spare === spare) this.spare = undefined;
    });
    this.spare = spare;
  }

  /** A worker for a model: the spare when there is one (then a new spare starts), else a new one. */
  private takeWorker(path: string, onCrash: (err: Error) => void): WorkerClient {
    const spare = this.spare;
    this.spare = undefined;
    this.startSpare();
    if (spare?.alive) {
      spare.assign(path, onCrash);
      return spare;
    }
    return new WorkerClient(path, onCrash);
  }

  private leastRecentlyUsedIdle(): Entry | undefined {
    let best: Entry | undefined;
    for (const e of this.entries.values()) {
      if (e.state !== 'ready' || e.pins > 0 || e.busy || e.queue.length) continue;
      if (!best || e.lastUsed < best.lastUsed) best = e;
    }
    return best;
  }

  /** Unloads a model: releases the session, ends its worker, frees its reservation. */
  private async retire(e: Entry, why: string): Promise<void> {
    if (e.state === 'gone') return;
    const wasReady = e.state === 'ready';
    if (this.entries.get(e.path) === e) this.entries.delete(e.path);
    e.state = 'gone';
    await this.drop(e, new Error(`${e.path} was unloaded`), true);
    if (wasReady) {
      this.unloads++;
      this.log(`runtime: unloaded ${e.path} ${why}`);
    }
  }

  /**
   * Forgets an entry at once: rejects its queue, frees its bytes, terminates its worker. `release`:
   * the session is idle, so release it before the thread ends (an unload; an idle ready one is released on close too). On a shared device
   * context that happens in every case, in its turn: a session torn down with its thread while
   * another worker uses the context corrupted the heap.
   */
  private async drop(e: Entry, err: Error, release = false): Promise<void> {
    if (this.entries.get(e.path) === e) this.entries.delete(e.path);
    // An idle loaded session is released before its thread ends on close too: onnxruntime-node's finalizers
    // running in a terminating thread could throw a Napi::Error there and abort the whole process.
    const idle = e.state === 'ready' && !e.busy;
    e.state = 'gone';
    for (const job of e.queue.splice(0)) {
      job.detachAbort();
      job.reject(err);
    }
    this.reserved -= e.bytes;
    e.bytes = 0;
    this.changed();
    const client = e.client;
    if (client?.alive && (release || idle || this.deviceTurns)) await this.onDevice(() => client.request({ type: 'release' })).catch(() => {});
    await client?.terminate();
  }

  private async onCrash(e: Entry, err: Error): Promise<void> {
    this.log(`runtime: ${err.message}; the next run of this model loads it again`);
    await this.drop(e, err);
  }

  private cacheFor(scan: ModelScan): CacheRequest | undefined {
    if (!this.cacheDir || scan.bytes > this.cacheMaxBytes) return undefined;
    // An 'all'-level optimised graph is specific to the provider and the CPU it was made on.
    const key = sha([scan.fingerprint, this.device, ORT_VERSION, cpus()[0]?.model ?? '', arch()].join('\n')).slice(0, 16);
    const folder = `${basename(scan.path).replace(/\.onnx$/i, '')}-${sha(scan.path).slice(0, 12)}`;
    return { dir: join(this.cacheDir, folder, key), externalData: scan.externalFiles.length > 0 };
  }

  // ---- the per-model run queue ----

  private enqueue(e: Entry, feeds: Record<string, Tensor>, transfer: ArrayBuffer[], opts: RunOptions): Promise<RunResult> {
    return new Promise<RunResult>((resolveRun, rejectRun) => {
      const signal = opts.signal;
      const onAbort = () => {
        const i = e.queue.indexOf(job);
        if (i >= 0) {
          e.queue.splice(i, 1);
          rejectRun(abortError(e.path));
        }
      };
      const job: QueuedRun = {
        feeds, transfer, outputs: opts.outputs, bound: opts.bound,
        resolve: resolveRun, reject: rejectRun,
        detachAbort: () => signal?.removeEventListener('abort', onAbort),
      };
      if (signal?.aborted) {
        rejectRun(abortError(e.path));
        return;
      }
      signal?.addEventListener('abort', onAbort, { once: true });
      e.queue.push(job);
      this.pump(e);
    });
  }

  private pump(e: Entry): void {
    if (e.busy || e.state !== 'ready' || !e.client) return;
    const job = e.queue.shift();
    if (!job) return;
    job.detachAbort(); // from here on the run goes into ORT and cannot be stopped
    e.busy = true;
    const client = e.client;
    this.onDevice(async () => {
      if (job.bound) await this.bind(e, client, job.bound);
      return client.request({ type: 'run', feeds: job.feeds, outputs: job.outputs, bound: job.bound?.key }, job.transfer);
    }).then(
      (r) => job.resolve(r),
      (err: Error) => job.reject(runError(e.path, err)),
    ).finally(() => {
      e.busy = false;
      e.lastUsed = ++this.clock;
      this.pump(e);
      this.changed();
    });
  }

  /** Sends bound feeds to the entry's worker unless it has them; drops its oldest set beyond MAX_BOUND. */
  private async bind(e: Entry, client: WorkerClient, b: BoundFeeds): Promise<void> {
    const had = e.bound.get(b.key);
    if (had !== undefined) {
      e.bound.delete(b.key); // most recent last
      e.bound.set(b.key, had);
      return;
    }
    await client.request({ type: 'bind', key: b.key, feeds: b.feeds }); // a structured copy: the caller keeps its tensors
    e.bound.set(b.key, b.bytes);
    e.bytes += b.bytes;
    this.reserved += b.bytes;
    while (e.bound.size > MAX_BOUND) {
      const [oldest, bytes] = e.bound.entries().next().value as [string, number];
      e.bound.delete(oldest);
      e.bytes -= bytes;
      this.reserved -= bytes;
      await client.request({ type: 'unbind', key: oldest });
    }
  }

  /** Evicts idle models other than `e` (least recently used first) until `bytes` more fit in the budget. */
  private async makeRoom(e: Entry, bytes: number): Promise<void> {
    if (bytes > this.budgetBytes) {
      throw new Error(`${fmtBytes(bytes)} of run-time inputs for ${e.path} exceed the whole memory budget of ${fmtBytes(this.budgetBytes)}`);
    }
    while (this.reserved + bytes > this.budgetBytes) {
      let victim: Entry | undefined;
      for (const x of this.entries.values()) {
        if (x === e || x.state !== 'ready' || x.pins > 0 || x.busy || x.queue.length) continue;
        if (!victim || x.lastUsed < victim.lastUsed) victim = x;
      }
      if (!victim) return; // everything else is busy: go over for now rather than wait on ourselves
      await this.retire(victim, `to make room for the run-time inputs of ${e.path}`);
    }
  }

  private changed(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  private nextChange(): Promise<void> {
    return new Promise((r) => this.waiters.push(r));
  }
}

/** A FIFO of async tasks, one at a time; a failed task does not stop the ones after it. */
class Turns {
  private tail: Promise<unknown> = Promise.resolve();
  take<T>(f: () => Promise<T>): Promise<T> {
    const turn = this.tail.then(f);
    this.tail = turn.catch(() => {});
    return turn;
  }
}

/**
 * Feeds as they will travel: the caller's buffers themselves when transferring (if a typed array
 * spans its whole buffer), else compact copies (a view into a larger buffer would otherwise
 * drag, or detach, all of it).
 */
function prepareFeeds(path: string, feeds: Record<string, Tensor>, transferInputs: boolean): [Record<string, Tensor>, ArrayBuffer[]] {
  const out: Record<string, Tensor> = {};
  for (const [name, t] of Object.entries(feeds)) {
    if (t.data.byteLength === 0 && numel(t.dims) > 0) {
      throw new Error(`feed "${name}" of ${path} has no data: its buffer was detached (moved to an earlier run with transferInputs?)`);
    }
    const buf = t.data.buffer;
    const whole = t.data.byteOffset === 0 && t.data.byteLength === buf.byteLength;
    const keep = !(buf instanceof ArrayBuffer) || (transferInputs && whole);
    out[name] = keep ? t : { dtype: t.dtype, dims: t.dims, data: t.data.slice() };
  }
  return [out, transferList(Object.values(out))];
}

function abortable<T>(p: Promise<T>, signal: AbortSignal | undefined, path: string): Promise<T> {
  if (!signal) return p;
  return new Promise<T>((res, rej) => {
    const onAbort = () => rej(abortError(path));
    if (signal.aborted) return onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(res, rej).finally(() => signal.removeEventListener('abort', onAbort));
  });
}

function runError(path: string, err: Error): Error {
  if (err instanceof WorkerCrashError || err.message.includes(path)) return err;
  const wrapped = new Error(`run of ${path} failed: ${err.message}`);
  wrapped.name = err.name;
  return wrapped;
}
