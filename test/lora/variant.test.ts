// The LoRA-capable variant of a graph whose weights are in an external-data file (as every real FLUX and T5 set
// is): the variant is a small graph beside a link to the same data, zero factors give the plain graph's output bit for
// bit, and a LoRA gives what the graph built from the merged weights gives.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { Graph } from '../../models/onnx/graph.ts';
import { runOnce } from '../../models/onnx/ort.ts';
import { buildClip, clipWeightShapes } from '../../models/clip.ts';
import { TINY_CLIP, TINY_FLUX, TINY_T5, randomWeights } from '../../models/tiny.ts';
import { memorySource, type WeightSource } from '../../models/weights/source.ts';
import { loraGraph, loraFeeds, loraVariant } from '../../models/lora/runtime.ts';
import { planLoras } from '../../models/lora/keys.ts';
import { syntheticKohyaLora } from '../../models/lora/synthetic.ts';
import { mergeLoras } from '../../models/convert/lora.ts';
import { writeSafetensors } from '../../models/weights/safetensors.ts';
import { i64, toFloat32 } from '../../models/tensor.ts';

const SEQ = 8;
let dir: string;

function writeClip(name: string, weights: WeightSource): string {
  const out = join(dir, name);
  const g = new Graph({ name: 'clip', external: { dir: out, file: 'clip.onnx.data' } });
  buildClip({ g, w: weights }, TINY_CLIP, { seqLen: SEQ });
  g.save(join(out, 'clip.onnx'));
  return join(out, 'clip.onnx');
}

const ids = i64([1, SEQ], Array.from({ length: SEQ }, (_, i) => (i * 7 + 3) % TINY_CLIP.vocabSize));
const maxDiff = (a: Float32Array, b: Float32Array) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'charflow-lora-variant-'));
});
afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('LoRA-capable variant of an external-data graph', () => {
  it('links the data, equals the plain graph with zero factors and the merged graph with a LoRA', async () => {
    const base = memorySource(randomWeights(clipWeightShapes(TINY_CLIP), 11));
    const plainPath = writeClip('plain', base);
    const g = loraVariant(loraGraph(plainPath, 'clip', join(dir, 'cache')));
    expect(g.sites).toHaveLength(6 * TINY_CLIP.numLayers);
    const data = join(dirname(g.path), 'clip.onnx.data');
    expect(existsSync(data)).toBe(true);
    expect(statSync(data).ino).toBe(statSync(join(dirname(plainPath), 'clip.onnx.data')).ino); // a hard link, no copy
    expect(statSync(g.path).size).toBeLessThan(statSync(data).size / 4);
    // Made once: the second call finds it.
    const mtime = statSync(g.path).mtimeMs;
    expect(loraVariant(loraGraph(plainPath, 'clip', join(dir, 'cache'))).path).toBe(g.path);
    expect(statSync(g.path).mtimeMs).toBe(mtime);

    const plain = (await runOnce(plainPath, { input_ids: ids })).last_hidden_state!;
    const zero = loraFeeds(g, []);
    expect(zero.applied).toBe(0);
    const unchanged = (await runOnce(g.path, { input_ids: ids, ...zero.feeds })).last_hidden_state!;
    expect(maxDiff(toFloat32(unchanged), toFloat32(plain))).toBe(0);

    const lora = syntheticKohyaLora(TINY_FLUX, TINY_CLIP, 3, 5);
    const file = join(dir, 'style.safetensors');
    writeSafetensors(file, lora);
    const plan = planLoras([{ path: file, source: memorySource(lora), strength: { flux: 0.7, clip: 0.7, t5: 0.7 } }], g.table);
    const f = loraFeeds(g, plan.updates);
    expect(f.applied).toBe(g.sites.length);
    const withLora = (await runOnce(g.path, { input_ids: ids, ...f.feeds })).last_hidden_state!;
    const merged = mergeLoras(memorySource(randomWeights({}, 0)), [{ path: file, weight: 0.7 }], TINY_FLUX, () => {}, { clip: TINY_CLIP, t5: TINY_T5 });
    const mergedPath = writeClip('merged', merged.mergeText('clip', base).source);
    const ref = (await runOnce(mergedPath, { input_ids: ids })).last_hidden_state!;
    const err = maxDiff(toFloat32(withLora), toFloat32(ref));
    expect(err).toBeLessThan(1e-5);
    expect(maxDiff(toFloat32(ref), toFloat32(plain))).toBeGreaterThan(1000 * err);
  });
});
