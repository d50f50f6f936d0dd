// A runtime worker thread: the home of one loaded model (or a short-lived device probe).
// onnxruntime-node runs a session synchronously on the thread that calls it, so every ORT call
// lives here and the server's event loop stays free. Started through worker-boot.mjs.
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { basename, dirname, join } from 'node:path';
import { parentPort, threadId } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';
import { Graph } from '../../models/onnx/graph.ts';
import { quantizeRows } from '../../models/quant/quantize.ts';
import { fromOrt, toOrt } from '../../models/onnx/ort.ts';
import { type Tensor, float16ToFloat32, float32ToFloat16 } from '../../models/tensor.ts';
import {
  type CacheRequest, type Device, type Envelope, type LoadResult, type ProbeOutcome, type Reply,
  type Replies, type Request, type RequestOf, type RunResult, type SessionConfig, transferList,
} from './protocol.ts';

const port = parentPort;
if (!port) throw new Error('engine/runtime/worker.ts must run in a worker thread');

let session: ort.InferenceSession | undefined;
/** Feeds kept between runs (bind requests), already in the graph's precision. */
const bound = new Map<string, Record<string, ort.Tensor>>();

function executionProviders(device: Device): ort.InferenceSession.ExecutionProviderConfig[] {
  // ORT adds the CPU provider behind any other, for ops the device provider lacks.
  switch (device) {
    case 'cpu': return ['cpu'];
    case 'cuda': return [{ name: 'cuda', deviceId: 0 }];
    case 'webgpu': return ['webgpu'];
  }
}

function sessionOptions(config: SessionConfig): ort.InferenceSession.SessionOptions {
  return {
    executionProviders: executionProviders(config.device),
    intraOpNumThreads: config.intraOpThreads,
    // One op at a time: the pool parallelises across models, intra-op threads within an op.
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
    // Idle intra-op threads sleep instead of spinning, so sessions sharing the cores do not fight.
    extra: { session: { 'intra_op.allow_spinning': '0' } },
  };
}

/** Folder of this platform's native ORT files (the CUDA provider libraries go there). */
function ortBinDir(): string {
  const index = createRequire(import.meta.url).resolve('onnxruntime-node');
  return join(dirname(index), '..', 'bin', 'napi-v6', process.platform, process.arch);
}

function cudaProviderFile(): string {
  return join(ortBinDir(), process.platform === 'win32' ? 'onnxruntime_providers_cuda.dll' : 'libonnxruntime_providers_cuda.so');
}

/** y = x + [1, 2, 3, 4]: small enough for any provider, checked value by value. */
function probeModel(dtype: 'float32' | 'float16' = 'float32'): Uint8Array {
  const g = new Graph({ name: 'device_probe', dtype });
  const x = g.input('x', dtype, [1, 4]);
  g.output(g.node('Add', [x, g.floats([1, 2, 3, 4], [1, 4])]), 'y', dtype, [1, 4]);
  return g.toBytes();
}

/** Runs a probe model once; throws when the session fails, returns whether y = x + [1, 2, 3, 4] came out. */
async function trialRun(device: Device, model: Uint8Array, dtype: 'float32' | 'float16'): Promise<{ good: boolean; got: number[] }> {
  let trial: ort.InferenceSession | undefined;
  try {
    trial = await ort.InferenceSession.create(model, { executionProviders: executionProviders(device), logSeverityLevel: 3 });
    const ones = { dtype, dims: [1, 4], data: dtype === 'float16' ? float32ToFloat16(Float32Array.of(1, 1, 1, 1)) : Float32Array.of(1, 1, 1, 1) } as Tensor;
    const out = await trial.run({ x: toOrt(ones) });
    const y = out.y ? asFloat32(fromOrt(out.y)).data as Float32Array : undefined;
    return { good: !!y && y.length === 4 && y.every((v, i) => v === i + 2), got: y ? Array.from(y) : [] };
  } finally {
    await trial?.release().catch(() => {});
  }
}

/** ORT's message without the source location and failed check in front ("file.cc:136 f() x was false. Why"). */
function ortReason(e: unknown): string {
  const msg = (e instanceof Error ? e.message : String(e)).trim();
  return /\bwas false\.\s+([\s\S]+)$/.exec(msg)?.[1]
    ?? /Status Message: (?:\S+\.cc:\d+ \S+ )?([\s\S]+)$/.exec(msg)?.[1] // a failed kernel: its own words
    ?? msg;
}

async function probeOne(device: Device, model: Uint8Array): Promise<ProbeOutcome> {
  if (!ort.listSupportedBackends().some((b) => b.name === device)) {
    return { device, ok: false, reason: `this onnxruntime-node build (${process.platform}/${process.arch}) has no ${device} provider` };
  }
  // The CUDA provider libraries are downloaded apart from the package; without them ORT would
  // only log an error and fail, so say so up front.
  if (device === 'cuda' && !existsSync(cudaProviderFile())) {
    return { device, ok: false, providerFilesMissing: true, reason: `${cudaProviderFile()} is missing` };
  }
  try {
    // A trial session that really runs: listing a provider does not mean it has a usable device.
    const r = await trialRun(device, model, 'float32');
    if (!r.good) return { device, ok: false, reason: `trial run gave wrong values [${r.got}]` };
  } catch (e) {
    return { device, ok: false, reason: ortReason(e) };
  }
  if (device !== 'webgpu') return { device, ok: true };
  // WebGPU runs float16 only where the adapter has the shader-f16 feature (not every GPU or driver).
  let noFloat16: string | undefined;
  try {
    const r = await trialRun(device, probeModel('float16'), 'float16');
    if (!r.good) noFloat16 = `a float16 trial run gave wrong values [${r.got}]`;
  } catch (e) {
    noFloat16 = ortReason(e);
  }
  // Quantized sets need the com.microsoft MatMulNBits kernel; a provider without it would fall back to the
  // CPU op by op, or fail at load: find out once, on a 4-bit trial.
  let noMatMulNBits: string | undefined;
  try {
    const r = await trialRun(device, nbitsProbeModel(), 'float32');
    if (!r.good) noMatMulNBits = `a MatMulNBits trial run gave wrong values [${r.got}]`;
  } catch (e) {
    noMatMulNBits = ortReason(e);
  }
  return { device, ok: true, ...(noFloat16 ? { noFloat16 } : {}), ...(noMatMulNBits ? { noMatMulNBits } : {}) };
}

/**
 * y = x + [1, 2, 3, 4] through a 4-bit MatMulNBits, in exact integers: x (ones [1, 4]) tiled to [1, 16]
 * times weight rows n = [15, n + 1, 0, ...] (scale 1, zero point 0: every code exact) gives 16 + n;
 * minus 15, plus x: [2, 3, 4, 5], what trialRun checks.
 */
function nbitsProbeModel(): Uint8Array {
  const K = 16;
  const rows = new Float32Array(4 * K);
  for (let n = 0; n < 4; n++) {
    rows[n * K] = 15;
    rows[n * K + 1] = n + 1;
  }
  const g = new Graph({ name: 'device_probe_nbits', quant: { bits: 4, block: 16, accuracyLevel: 0 } });
  const x = g.input('x', 'float32', [1, 4]);
  const wide = g.node('Tile', [x, g.ints([1, 4])]); // [1, 16]
  const y = g.matMulNBits(wide, 'w', quantizeRows(rows, 4, K, { bits: 4, block: 16 })); // [1, 4] = 16 + n
  g.output(g.node('Add', [g.node('Sub', [y, g.scalar(15)]), x]), 'y', 'float32', [1, 4]);
  return g.toBytes();
}

async function probe(req: RequestOf<'probe'>): Promise<ProbeOutcome[]> {
  const model = probeModel();
  const outcomes: ProbeOutcome[] = [];
  for (const device of req.devices) {
    const outcome = await probeOne(device, model);
    outcomes.push(outcome);
    if (outcome.ok && req.stopAtFirst) break;
  }
  return outcomes;
}

/** Removes this model's stale optimised copies (other keys) and temporary folders older than a day. */
function pruneCache(finalDir: string): void {
  const parent = dirname(finalDir);
  const keep = basename(finalDir);
  for (const name of readdirSync(parent)) {
    if (name === keep) continue;
    const p = join(parent, name);
    const isTmp = name.includes('.tmp-');
    if (isTmp && Date.now() - statSync(p).mtimeMs < 86_400_000) continue; // maybe another process's write
    rmSync(p, { recursive: true, force: true });
  }
}

async function createWithCache(modelPath: string, config: SessionConfig, cache: CacheRequest): Promise<[ort.InferenceSession, LoadResult['cache'], string?]> {
  const base = sessionOptions(config);
  const cached = join(cache.dir, 'model.onnx');
  let note: string | undefined;
  if (existsSync(cached)) {
    try {
      // Already optimised for this device: skip the optimisers, which is what makes a warm start fast.
      return [await ort.InferenceSession.create(cached, { ...base, graphOptimizationLevel: 'disabled' }), 'hit'];
    } catch (e) {
      rmSync(cache.dir, { recursive: true, force: true });
      note = `cached copy was unusable and was rebuilt (${(e as Error).message.trim()})`;
    }
  }
  const tmp = `${cache.dir}.tmp-${process.pid}-${threadId}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  const saving: ort.InferenceSession.SessionOptions = {
    ...base,
    optimizedModelFilePath: join(tmp, 'model.onnx'),
    // ORT warns that an 'all'-level copy is hardware specific: the cache key covers the CPU model and device.
    logSeverityLevel: 3,
  };
  if (cache.externalData) {
    // Weights go to an external file next to the copy (a protobuf cannot hold more than 2 GB).
    saving.extra = {
      session: {
        ...(base.extra as { session?: Record<string, string> } | undefined)?.session,
        optimized_model_external_initializers_file_name: 'model.onnx.data',
        optimized_model_external_initializers_min_size_in_bytes: '1024',
      },
    };
  }
  let s: ort.InferenceSession;
  try {
    s = await ort.InferenceSession.create(modelPath, saving);
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    // Saving may be what failed (disk, provider): the model alone decides whether loading fails.
    const plain = await ort.InferenceSession.create(modelPath, base);
    return [plain, 'failed', `could not write the optimised copy (${(e as Error).message.trim()})`];
  }
  try {
    pruneCache(cache.dir);
    renameSync(tmp, cache.dir); // atomic: a folder is either complete or absent
    return [s, 'written', note];
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    return [s, 'failed', `could not store the optimised copy (${(e as Error).message})`];
  }
}

async function load(req: RequestOf<'load'>): Promise<LoadResult> {
  if (session) throw new Error('this worker already holds a model');
  const t0 = performance.now();
  let status: LoadResult['cache'] = 'off';
  let note: string | undefined;
  if (req.cache) {
    [session, status, note] = await createWithCache(req.modelPath, req.config, req.cache);
  } else {
    session = await ort.InferenceSession.create(req.modelPath, sessionOptions(req.config));
  }
  return {
    inputNames: [...session.inputNames],
    outputNames: [...session.outputNames],
    cache: status,
    cacheNote: note,
    loadMs: performance.now() - t0,
  };
}

const now = (): number => performance.timeOrigin + performance.now();

/**
 * Half-precision model sets keep the host side simple: callers feed and receive float32, and the
 * conversion to and from the graph's float16 happens here, off the main thread.
 */
function matchInputPrecision(s: ort.InferenceSession, name: string, t: Tensor): Tensor {
  const meta = s.inputMetadata.find((m) => m.name === name);
  if (meta?.isTensor && meta.type === 'float16' && t.dtype === 'float32') {
    return { dtype: 'float16', dims: t.dims, data: float32ToFloat16(t.data as Float32Array) };
  }
  return t;
}

function asFloat32(t: Tensor): Tensor {
  return t.dtype === 'float16' ? { dtype: 'float32', dims: t.dims, data: float16ToFloat32(t.data as Uint16Array) } : t;
}

async function run(req: RequestOf<'run'>): Promise<RunResult> {
  if (!session) throw new Error('no model is loaded in this worker');
  const feeds: Record<string, ort.Tensor> = {};
  for (const [name, t] of Object.entries(req.feeds)) feeds[name] = toOrt(matchInputPrecision(session, name, t));
  if (req.bound !== undefined) {
    const kept = bound.get(req.bound);
    if (!kept) throw new Error(`no feeds are bound under "${req.bound}" in this worker`);
    Object.assign(feeds, kept);
  }
  const startedAt = now();
  const out = req.outputs ? await session.run(feeds, req.outputs) : await session.run(feeds);
  const endedAt = now();
  const outputs: Record<string, Tensor> = {};
  for (const [name, t] of Object.entries(out)) outputs[name] = asFloat32(fromOrt(t));
  return { outputs, threadId, startedAt, endedAt };
}

async function handle(req: Request): Promise<Replies[keyof Replies]> {
  switch (req.type) {
    case 'probe': return probe(req);
    case 'load': return load(req);
    case 'run': return run(req);
    case 'bind': {
      if (!session) throw new Error('no model is loaded in this worker');
      const s = session;
      bound.set(req.key, Object.fromEntries(Object.entries(req.feeds).map(([name, t]) => [name, toOrt(matchInputPrecision(s, name, t))])));
      return null;
    }
    case 'unbind':
      bound.delete(req.key);
      return null;
    case 'release':
      bound.clear();
      await session?.release();
      session = undefined;
      return null;
    case 'crash':
      setImmediate(() => { throw new Error('simulated worker crash'); });
      return null;
  }
}

port.on('message', (env: Envelope) => {
  handle(env.req).then(
    (value) => {
      const reply: Reply = { id: env.id, ok: true, value };
      // Output tensors move to the main thread without a copy.
      const transfer = env.req.type === 'run' ? transferList(Object.values((value as RunResult).outputs)) : [];
      port.postMessage(reply, transfer);
    },
    (e: unknown) => {
      const err = e instanceof Error ? e : new Error(String(e));
      const reply: Reply = { id: env.id, ok: false, error: { name: err.name, message: err.message.trim() } };
      port.postMessage(reply);
    },
  );
});
