// The session pool: exact results, shared loads, off-thread runs, LRU under a budget, aborts,
// clear errors for bad models, and recovery after a worker crash.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Graph } from '../../models/onnx/graph.ts';
import { runOnce } from '../../models/onnx/ort.ts';
import { f32 } from '../../models/tensor.ts';
import { liveWorkers, SessionPool, type PoolOptions } from '../../engine/runtime/pool.ts';
import { scanModel } from '../../engine/runtime/onnx-scan.ts';
import { affineModel, affineReference, heavyInput, heavyModel, tempDir } from './models.ts';

const tmp = tempDir();
const logs: string[] = [];
const pools: SessionPool[] = [];
const X = f32([2, 3], [1, 2, 3, -1, 0, 5]);

async function newPool(opts: PoolOptions = {}): Promise<SessionPool> {
  const pool = await SessionPool.create({ device: 'cpu', log: (m) => logs.push(m), ...opts });
  pools.push(pool);
  return pool;
}

let A: ReturnType<typeof affineModel>;
let HEAVY: string;
let HEAVY2: string;

beforeAll(() => {
  A = affineModel(tmp.dir, 'affine');
  HEAVY = heavyModel(tmp.dir, 'heavy');
  HEAVY2 = heavyModel(tmp.dir, 'heavy2');
});

afterEach(async () => {
  await Promise.all(pools.splice(0).map((p) => p.close()));
});

afterAll(() => tmp.cleanup());

describe('SessionPool', () => {
  it('runs a model off the main thread with exact results', async () => {
    const pool = await newPool();
    expect(pool.device).toBe('cpu');
    const out = await pool.run(A.path, { x: X });
    expect(out.y!.dims).toEqual([2, 4]);
    expect(Array.from(out.y!.data as Float32Array)).toEqual(Array.from(affineReference(X, A.w, A.b)));
    expect(pool.stats().runs[A.path]).toBe(1);
  });

  it('reads input and output names without loading the model', async () => {
    const pool = await newPool();
    expect(await pool.inputNames(A.path)).toEqual(['x']);
    expect(await pool.outputNames(A.path)).toEqual(['y']);
    expect(pool.stats().loads).toBe(0);
  });

  it('loads a model once for concurrent callers', async () => {
    const pool = await newPool();
    const [a, b] = await Promise.all([pool.run(A.path, { x: X }), pool.run(A.path, { x: X })]);
    expect(a.y!.data).toEqual(b.y!.data);
    const s = pool.stats();
    expect(s.loads).toBe(1);
    expect(s.runs[A.path]).toBe(2);
    expect(s.loaded).toEqual([A.path]);
  });

  it('keeps the event loop ticking during a long inference', async () => {
    const pool = await newPool();
    await pool.load(HEAVY);
    const ticks = async (work: () => Promise<unknown>): Promise<number> => {
      let n = 0;
      let done = false;
      const spin = () => { if (!done) { n++; setImmediate(spin); } };
      setImmediate(spin);
      await work();
      done = true;
      return n;
    };
    let ms = 0;
    const pooled = await ticks(async () => {
      const { info } = await pool.runWithInfo(HEAVY, { x: heavyInput() });
      ms = info.endedAt - info.startedAt;
    });
    // The same run through ORT on this thread blocks it for the whole inference.
    const direct = await ticks(() => runOnce(HEAVY, { x: heavyInput() }, { intraOpNumThreads: 1 }));
    console.log(`inference ${ms.toFixed(0)} ms: ${pooled} event-loop ticks through the pool, ${direct} when run on the main thread`);
    expect(pooled).toBeGreaterThan(20);
    expect(direct).toBeLessThan(10);
  });

  it('runs two models at once on two worker threads', async () => {
    const pool = await newPool();
    await Promise.all([pool.load(HEAVY), pool.load(HEAVY2)]);
    const [a, b] = await Promise.all([
      pool.runWithInfo(HEAVY, { x: heavyInput() }),
      pool.runWithInfo(HEAVY2, { x: heavyInput() }),
    ]);
    expect(a.info.threadId).not.toBe(b.info.threadId);
    // Each run started before the other ended: they overlapped.
    expect(a.info.startedAt).toBeLessThan(b.info.endedAt);
    expect(b.info.startedAt).toBeLessThan(a.info.endedAt);
  });

  it('runs of one model queue on its home worker', async () => {
    const pool = await newPool();
    const [a, b] = await Promise.all([
      pool.runWithInfo(HEAVY, { x: heavyInput() }),
      pool.runWithInfo(HEAVY, { x: heavyInput() }),
    ]);
    expect(a.info.threadId).toBe(b.info.threadId);
    expect(b.info.startedAt).toBeGreaterThanOrEqual(a.info.endedAt);
  });

  it('unloads the least recently used idle model under the budget', async () => {
    const m = ['lru_a', 'lru_b', 'lru_c'].map((n, i) => affineModel(tmp.dir, n, 256, 1024, i + 1)); // ~1 MiB each
    const x = f32([2, 256], new Float32Array(512).fill(1));
    const { statSync } = await import('node:fs');
    const size = statSync(m[0]!.path).size;
    const pool = await newPool({ memoryBudgetBytes: Math.floor(size * 2.5) });
    await pool.run(m[0]!.path, { x });
    await pool.run(m[1]!.path, { x });
    await pool.run(m[2]!.path, { x });
    expect(pool.stats().loaded.sort()).toEqual([m[1]!.path, m[2]!.path].sort());
    expect(pool.stats().unloads).toBe(1);
    await pool.run(m[0]!.path, { x }); // b is now the least recently used
    expect(pool.stats().loaded.sort()).toEqual([m[0]!.path, m[2]!.path].sort());
    expect(pool.stats().unloads).toBe(2);
    expect(pool.stats().residentBytes).toBeLessThanOrEqual(pool.budgetBytes);
    const out = await pool.run(m[1]!.path, { x });
    expect(Array.from(out.y!.data as Float32Array)).toEqual(Array.from(affineReference(x, m[1]!.w, m[1]!.b)));
  });

  it('never unloads a model while it runs: a new load waits', async () => {
    const { statSync } = await import('node:fs');
    // Room for HEAVY, not for HEAVY and the small model together.
    const pool = await newPool({ memoryBudgetBytes: statSync(HEAVY).size + statSync(A.path).size - 1 });
    await pool.load(HEAVY);
    const running = pool.runWithInfo(HEAVY, { x: heavyInput() });
    // Needs HEAVY's room: waits for HEAVY's run to end, then unloads it.
    const small = await pool.runWithInfo(A.path, { x: X });
    const heavy = await running;
    expect((heavy.outputs.y!.data as Float32Array)[0]).toBeCloseTo(1, 4);
    expect(small.info.startedAt).toBeGreaterThanOrEqual(heavy.info.endedAt);
    expect(pool.stats().loaded).toEqual([A.path]);
    expect(pool.stats().unloads).toBe(1);
  });

  it('refuses a model larger than the whole budget, naming it', async () => {
    const pool = await newPool({ memoryBudgetBytes: 1024 * 1024 });
    await expect(pool.run(HEAVY, { x: heavyInput() })).rejects.toThrow(/heavy\.onnx needs about 2\.3 MiB .*more than the whole memory budget of 1\.0 MiB/);
    // A size hint overrides the file sizes.
    await expect(pool.load(A.path, { sizeBytes: 10 * 1024 ** 3 })).rejects.toThrow(/affine\.onnx needs about 10\.00 GiB/);
    expect(pool.stats().residentBytes).toBe(0);
    expect(pool.stats().loads).toBe(0);
  });

  it('counts float16 weights twice on the CPU, which widens them to float32 at load', async () => {
    // y = x @ W with W [512, 512] stored as float16: 512 KiB on disk, 1 MiB more once ORT widens it.
    const g = new Graph({ name: 'half', dtype: 'float16' });
    const x = g.input('x', 'float16', [1, 512]);
    g.output(g.node('MatMul', [x, g.weight('w', f32([512, 512], new Float32Array(512 * 512).fill(1 / 512)))]), 'y', 'float16', [1, 512]);
    const path = join(tmp.dir, 'half.onnx');
    g.save(path);
    const scan = await scanModel(path);
    expect(scan.halfBytes).toBe(512 * 512 * 2);
    expect(scan.bytes).toBeGreaterThan(512 * 512 * 2);
    const pool = await newPool({ memoryBudgetBytes: 1024 * 1024 });
    await expect(pool.run(path, { x: f32([1, 512], new Float32Array(512).fill(1)) }))
      .rejects.toThrow(/half\.onnx needs about 1\.0 MiB \(\d+ bytes: its files plus float32 copies of its float16 weights, as the CPU provider makes them\)/);
    const roomy = await newPool({ memoryBudgetBytes: 2 * 1024 * 1024 });
    const out = await roomy.run(path, { x: f32([1, 512], new Float32Array(512).fill(1)) });
    expect(out.y!.dtype).toBe('float32');
    expect(roomy.stats().residentBytes).toBe(scan.bytes + scan.halfBytes);
  });

  it('gives clear errors for missing, corrupt and unloadable models, then recovers', async () => {
    const pool = await newPool();
    const missing = join(tmp.dir, 'missing.onnx');
    await expect(pool.run(missing, { x: X })).rejects.toThrow(`model file not found: ${missing}`);

    const corrupt = join(tmp.dir, 'corrupt.onnx');
    writeFileSync(corrupt, 'this is not an onnx model');
    await expect(pool.run(corrupt, { x: X })).rejects.toThrow(`${corrupt} is not a valid ONNX model`);

    const g = new Graph({ name: 'bad_op' });
    g.output(g.node('NoSuchOp', [g.input('x', 'float32', [2, 3])]), 'y');
    const badOp = join(tmp.dir, 'bad_op.onnx');
    g.save(badOp);
    await expect(pool.run(badOp, { x: X })).rejects.toThrow(new RegExp(`cannot load model ${badOp}: .*NoSuchOp`));

    const ext = affineModel(tmp.dir, 'ext_missing', 64, 64, 3, true);
    const { rmSync } = await import('node:fs');
    rmSync(join(tmp.dir, 'ext_missing.data'));
    await expect(pool.run(ext.path, { x: f32([2, 64]) })).rejects.toThrow(/ext_missing\.onnx references external data .*ext_missing\.data, which is missing/);

    const s = pool.stats();
    expect(s.residentBytes).toBe(0);
    expect(s.loaded).toEqual([]);
    const out = await pool.run(A.path, { x: X });
    expect(Array.from(out.y!.data as Float32Array)).toEqual(Array.from(affineReference(X, A.w, A.b)));
  });

  it('names the model when a run fails', async () => {
    const pool = await newPool();
    await expect(pool.run(A.path, { wrong: X })).rejects.toThrow(new RegExp(`run of ${A.path} failed: .*`));
    await expect(pool.run(A.path, { x: f32([2, 5]) })).rejects.toThrow(/run of .*affine\.onnx failed/);
  });

  it('computes only the requested outputs', async () => {
    const g = new Graph({ name: 'two_out' });
    const x = g.input('x', 'float32', [2]);
    g.output(g.node('Neg', [x]), 'neg');
    g.output(g.node('Abs', [x]), 'abs');
    const path = join(tmp.dir, 'two_out.onnx');
    g.save(path);
    const pool = await newPool();
    const out = await pool.run(path, { x: f32([2], [-1, 2]) }, { outputs: ['abs'] });
    expect(Object.keys(out)).toEqual(['abs']);
    expect(Array.from(out.abs!.data as Float32Array)).toEqual([1, 2]);
  });

  it('copies feeds by default and moves them with transferInputs', async () => {
    const pool = await newPool();
    const x = f32([2, 3], [1, 2, 3, -1, 0, 5]);
    await pool.run(A.path, { x });
    expect(x.data.length).toBe(6); // still usable
    await pool.run(A.path, { x }, { transferInputs: true });
    expect(x.data.byteLength).toBe(0); // detached: it moved to the worker
    await expect(pool.run(A.path, { x })).rejects.toThrow(/feed "x" of .*affine\.onnx has no data: its buffer was detached/);
  });

  it('rejects an aborted run before it starts', async () => {
    const pool = await newPool();
    const ac = new AbortController();
    ac.abort();
    await expect(pool.run(A.path, { x: X }, { signal: ac.signal })).rejects.toMatchObject({ name: 'AbortError' });
    expect(pool.stats().loads).toBe(0);

    // Aborted while queued behind a running run of the same model: never reaches ORT.
    await pool.load(HEAVY);
    const first = pool.run(HEAVY, { x: heavyInput() });
    const queued = new AbortController();
    const second = pool.run(HEAVY, { x: heavyInput() }, { signal: queued.signal });
    await new Promise((r) => setImmediate(r)); // the second run now waits in HEAVY's queue
    queued.abort();
    await expect(second).rejects.toMatchObject({ name: 'AbortError' });
    await first;
    expect(pool.stats().runs[HEAVY]).toBe(1);
  });

  it('recovers after a worker crash: pending runs fail naming the model, the next run reloads', async () => {
    const pool = await newPool();
    await pool.run(A.path, { x: X });
    const crashed = pool.debugCrashWorker(A.path);
    const pending = pool.run(A.path, { x: X });
    await expect(pending).rejects.toThrow(new RegExp(`${A.path}: its worker thread crashed`));
    await crashed;
    expect(pool.stats().loaded).toEqual([]);
    expect(pool.stats().residentBytes).toBe(0);
    expect(logs.some((l) => l.includes('crashed') && l.includes(A.path))).toBe(true);
    const out = await pool.run(A.path, { x: X });
    expect(Array.from(out.y!.data as Float32Array)).toEqual(Array.from(affineReference(X, A.w, A.b)));
    expect(pool.stats().loads).toBe(2);
  });

  it('unloads on request and rejects use after close', async () => {
    const pool = await newPool();
    await pool.run(A.path, { x: X });
    await pool.unload(A.path);
    expect(pool.stats()).toMatchObject({ loaded: [], unloads: 1, residentBytes: 0 });
    await Promise.all([pool.load(A.path), pool.load(HEAVY)]);
    expect(liveWorkers()).toBe(3); // two model homes and the spare
    await pool.close();
    expect(liveWorkers()).toBe(0);
    await expect(pool.run(A.path, { x: X })).rejects.toThrow('the session pool was closed');
  });

  it('sizes intra-op threads from the cores and the expected concurrency', async () => {
    const { availableParallelism } = await import('node:os');
    expect((await newPool({ expectedConcurrency: 1 })).intraOpThreads).toBe(availableParallelism());
    expect((await newPool({ expectedConcurrency: 1000 })).intraOpThreads).toBe(1);
    expect((await newPool({ intraOpThreads: 3 })).intraOpThreads).toBe(3);
  });
});
