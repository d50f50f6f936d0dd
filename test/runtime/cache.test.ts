// The optimised-model cache: the first load saves ORT's optimised graph, later loads (other pools,
// later processes) load it without optimising again; rebuilt models and broken copies are handled.
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { f32 } from '../../models/tensor.ts';
import { SessionPool } from '../../engine/runtime/pool.ts';
import { affineModel, affineReference, tempDir } from './models.ts';

const tmp = tempDir();
afterAll(() => tmp.cleanup());

async function loadOnce(cacheDir: string, path: string, k: number, cacheMaxBytes?: number): Promise<{ y: number[]; hits: number; logs: string[] }> {
  const logs: string[] = [];
  const pool = await SessionPool.create({ device: 'cpu', cacheDir, cacheMaxBytes, log: (m) => logs.push(m) });
  try {
    const out = await pool.run(path, { x: f32([2, k], Array.from({ length: 2 * k }, (_, i) => (i % 5) - 2)) });
    return { y: Array.from(out.y!.data as Float32Array), hits: pool.stats().cacheHits, logs };
  } finally {
    await pool.close();
  }
}

/** The key folders holding optimised copies of one model. */
function cachedCopies(cacheDir: string, name: string): string[][] {
  if (!existsSync(cacheDir)) return [];
  const modelDir = readdirSync(cacheDir).find((d) => d.startsWith(`${name}-`));
  if (!modelDir) return [];
  return readdirSync(join(cacheDir, modelDir)).map((key) => readdirSync(join(cacheDir, modelDir, key)).sort());
}

describe('optimised model cache', () => {
  for (const external of [false, true]) {
    it(`writes, then loads the optimised copy (${external ? 'external data' : 'inline weights'})`, async () => {
      const cacheDir = join(tmp.dir, `cache-${external}`);
      const name = external ? 'ext' : 'inline';
      const k = 64;
      const m = affineModel(tmp.dir, name, k, 32, 2, external);
      const expected = Array.from(affineReference(f32([2, k], Array.from({ length: 2 * k }, (_, i) => (i % 5) - 2)), m.w, m.b));

      const cold = await loadOnce(cacheDir, m.path, k);
      expect(cold.y).toEqual(expected);
      expect(cold.hits).toBe(0);
      expect(cold.logs.some((l) => l.includes('cache written'))).toBe(true);
      expect(cachedCopies(cacheDir, name)).toEqual([external ? ['model.onnx', 'model.onnx.data'] : ['model.onnx']]);

      const warm = await loadOnce(cacheDir, m.path, k);
      expect(warm.y).toEqual(expected);
      expect(warm.hits).toBe(1);
    });
  }

  it('keys copies by the model files: a rebuilt model gets a new copy and the stale one goes', async () => {
    const cacheDir = join(tmp.dir, 'cache-rebuild');
    const first = affineModel(tmp.dir, 'rebuilt', 8, 4, 1);
    await loadOnce(cacheDir, first.path, 8);
    const second = affineModel(tmp.dir, 'rebuilt', 8, 4, 5); // same path, other weights
    const expected = Array.from(affineReference(f32([2, 8], Array.from({ length: 16 }, (_, i) => (i % 5) - 2)), second.w, second.b));
    const r = await loadOnce(cacheDir, second.path, 8);
    expect(r.hits).toBe(0);
    expect(r.y).toEqual(expected);
    expect(cachedCopies(cacheDir, 'rebuilt')).toHaveLength(1);
    expect((await loadOnce(cacheDir, second.path, 8)).hits).toBe(1);
  });

  it('replaces a broken cached copy', async () => {
    const cacheDir = join(tmp.dir, 'cache-broken');
    const m = affineModel(tmp.dir, 'broken', 8, 4, 3);
    const good = await loadOnce(cacheDir, m.path, 8);
    const modelDir = readdirSync(cacheDir)[0]!;
    const key = readdirSync(join(cacheDir, modelDir))[0]!;
    writeFileSync(join(cacheDir, modelDir, key, 'model.onnx'), 'garbage');
    const r = await loadOnce(cacheDir, m.path, 8);
    expect(r.y).toEqual(good.y);
    expect(r.hits).toBe(0);
    expect(r.logs.some((l) => l.includes('unusable'))).toBe(true);
    expect((await loadOnce(cacheDir, m.path, 8)).hits).toBe(1);
  });

  it('skips models above cacheMaxBytes', async () => {
    const cacheDir = join(tmp.dir, 'cache-max');
    const m = affineModel(tmp.dir, 'too_big', 8, 4, 4);
    const r = await loadOnce(cacheDir, m.path, 8, 100);
    expect(r.logs.some((l) => l.includes('cache'))).toBe(true); // the pool line names the folder...
    expect(r.logs.some((l) => l.includes('loaded') && l.includes('cache'))).toBe(false); // ...the load did not use it
    expect(cachedCopies(cacheDir, 'too_big')).toEqual([]);
  });
});
