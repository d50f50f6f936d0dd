// The sampler's options on the tiny set, through the real executor, nodes and session pool: the example
// workflows (true CFG, a batch of 4, image-to-image), batch reproducibility, the per-image workflow in each
// PNG, clip_prompt, custom sigmas, and the errors that must name their field and change nothing.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { resolvePaths, type DataPaths } from '../../engine/paths.ts';
import { Executor, type RunResult } from '../../engine/executor/index.ts';
import { validateWorkflow } from '../../engine/workflow/index.ts';
import type { ValidWorkflow } from '../../engine/workflow/types.ts';
import type { NodeContext } from '../../engine/node.ts';
import { createServices, PACKAGE_ROOT, type OwnedServices, type Services } from '../../nodes/services.ts';
import { nodeRegistry } from '../../nodes/registry.ts';
import { writeTinyModelSet } from '../../models/tiny.ts';
import { decodeImage, readPngText } from '../../nodes/lib/image.ts';
import { TextEncode } from '../../nodes/text_encode.ts';
import { coverResize } from '../../nodes/load_image.ts';
import { VAEEncode } from '../../nodes/vae_encode.ts';
import { seededNormal } from '../../models/sampling.ts';
import { resizeImage } from '../../nodes/lib/image.ts';
import { checkBatchFits, fluxBytesPerImage } from '../../nodes/dit_sample.ts';
import type { Conditioning, Latent, ModelSet } from '../../nodes/types.ts';
import { type Tensor, toFloat32 } from '../../models/tensor.ts';
import { flowMatchSchedule, shiftedSchedule, truncateSchedule } from '../../models/sampling.ts';
import { maxAbsDiff } from '../helpers/goldens.ts';

const registry = nodeRegistry();
type Wf = { nodes: Record<string, { type: string; inputs: Record<string, unknown> }>; meta?: Record<string, unknown> };
const SMALL = { width: 96, height: 64, steps: 3 };

let dir: string;
let paths: DataPaths;
let services: OwnedServices;
const warnings: string[] = [];
/** Every flux call's batch size, in order. */
const fluxBatches: number[] = [];

function example(name: string): Wf {
  return JSON.parse(readFileSync(join(PACKAGE_ROOT, 'workflows', name), 'utf8')) as Wf;
}

/** A workflow with node inputs changed (the sampler small and quick unless told otherwise). */
function prepare(wf: Wf, changes: Record<string, Record<string, unknown>> = {}): ValidWorkflow {
  const w = structuredClone(wf);
  const sampler = Object.entries(w.nodes).find(([, n]) => n.type === 'DiTSample')![0];
  Object.assign(w.nodes[sampler]!.inputs, SMALL);
  for (const n of Object.values(w.nodes)) if (n.type === 'LoadImage') Object.assign(n.inputs, { width: SMALL.width, height: SMALL.height });
  for (const [id, inputs] of Object.entries(changes)) {
    for (const [k, v] of Object.entries(inputs)) {
      if (v === undefined) delete w.nodes[id]!.inputs[k];
      else w.nodes[id]!.inputs[k] = v;
    }
  }
  const v = validateWorkflow(w, registry);
  if (!v.ok) throw new Error(v.errors.map((e) => e.message).join('\n'));
  return v.workflow!;
}

async function run(wf: ValidWorkflow, targets?: string[], on: Services = services): Promise<RunResult> {
  const executor = new Executor({ registry, services: on, logger: { info: () => {}, warn: (m) => void warnings.push(m) } });
  fluxBatches.length = 0;
  return executor.run(wf, targets ? { targets } : {});
}

function savedFiles(result: RunResult, node = '9'): string[] {
  return ((result.outputs[node] as { images: { filename: string }[] }).images).map((i) => join(paths.outputs, i.filename));
}

function latentOf(result: RunResult, node = '7'): Tensor {
  return (result.outputs[node]!.latent as Latent).samples;
}

/** Batch item i of [B, ...] as [1, ...]. */
function item(t: Tensor, i: number): Tensor {
  const d = toFloat32(t);
  const per = d.length / t.dims[0]!;
  return { dtype: 'float32', dims: [1, ...t.dims.slice(1)], data: d.slice(i * per, (i + 1) * per) };
}

function failure(result: RunResult, node: string): { field?: string; message: string } {
  const o = result.nodes[node] as { status: string; field?: string; message: string };
  expect(o.status, JSON.stringify(result.nodes)).toBe('failed');
  return o;
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'charflow-options-'));
  paths = resolvePaths({ data: dir });
  await writeTinyModelSet(join(paths.models, 'tiny'));
  services = await createServices(paths, { device: 'cpu' });
  const realRun = services.pool.run.bind(services.pool);
  services.pool.run = async (model, feeds, opts) => {
    if (model.endsWith('flux.onnx')) fluxBatches.push(feeds.hidden_states!.dims[0]!);
    return realRun(model, feeds, opts);
  };
}, 300_000);

afterAll(async () => {
  await services?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('the example workflows, headless', () => {
  it('true_cfg.json: one batch-2 transformer call per step', async () => {
    const result = await run(prepare(example('true_cfg.json')));
    expect(result.status, JSON.stringify(result.nodes)).toBe('done');
    expect(fluxBatches).toEqual(Array(SMALL.steps).fill(2));
    expect(savedFiles(result)).toHaveLength(1);
  });

  it('batch4.json: one batched call per step, one PNG per image, each embedding the workflow of its image alone', async () => {
    const wf = example('batch4.json');
    const seed = wf.nodes['7']!.inputs.seed as number;
    const batch = wf.nodes['7']!.inputs.batch_size as number;
    const result = await run(prepare(wf));
    expect(result.status, JSON.stringify(result.nodes)).toBe('done');
    expect(fluxBatches).toEqual(Array(SMALL.steps).fill(batch));
    const files = savedFiles(result);
    expect(files).toHaveLength(batch);
    for (const [i, file] of files.entries()) {
      const embedded = JSON.parse(readPngText(readFileSync(file)).workflow!) as Wf;
      expect(embedded.nodes['7']!.inputs).toMatchObject({ seed: seed + i, batch_size: 1 });
    }
    // Dropping the third PNG into the editor and running it makes that image again.
    const pick = 2;
    const alone = JSON.parse(readPngText(readFileSync(files[pick]!)).workflow!) as Wf;
    const v = validateWorkflow(alone, registry);
    expect(v.ok).toBe(true);
    const again = await run(v.workflow!);
    expect(fluxBatches).toEqual(Array(SMALL.steps).fill(1));
    const [a, b] = await Promise.all([decodeImage(savedFiles(again)[0]!), decodeImage(files[pick]!)]);
    let worst = 0;
    for (let k = 0; k < a.data.length; k++) worst = Math.max(worst, Math.abs(a.data[k]! - b.data[k]!));
    expect(worst).toBeLessThanOrEqual(1);
  });

  it('img2img.json: runs the kept steps of the schedule from the encoded picture', async () => {
    const wf = example('img2img.json');
    const denoise = wf.nodes['7']!.inputs.denoise as number;
    const result = await run(prepare(wf));
    expect(result.status, JSON.stringify(result.nodes)).toBe('done');
    const kept = truncateSchedule(flowMatchSchedule(SMALL.steps, (SMALL.width / 16) * (SMALL.height / 16)), denoise).timesteps.length;
    expect(kept).toBeLessThan(SMALL.steps);
    expect(fluxBatches).toEqual(Array(kept).fill(1));
  });
});

describe('batches', () => {
  it('gives image i of a batch the final latents of seed + i alone (within 1e-5)', async () => {
    const base = example('instantcharacter.json');
    const seed = 77;
    const batched = latentOf(await run(prepare(base, { 7: { seed, batch_size: 3 } }), ['7']));
    expect(batched.dims[0]).toBe(3);
    for (let i = 0; i < 3; i++) {
      const alone = latentOf(await run(prepare(base, { 7: { seed: seed + i, batch_size: 1 } }), ['7']));
      expect(maxAbsDiff(item(batched, i), alone)).toBeLessThanOrEqual(1e-5);
    }
    // Different seeds give different images.
    expect(maxAbsDiff(item(batched, 0), item(batched, 1))).toBeGreaterThan(1e-2);
  });

  it('refuses a batch too large for the memory budget before any model loads', async () => {
    const models = services.modelSet('tiny');
    const flux = models.manifest.files.flux.bytes;
    const each = fluxBytesPerImage(models, models.manifest.t5.seqLen, (SMALL.width / 16) * (SMALL.height / 16));
    const small = await createServices(paths, { device: 'cpu', memoryBudgetBytes: flux + Math.floor(2.5 * each) });
    try {
      const result = await run(prepare(example('instantcharacter.json'), { 7: { batch_size: 4 } }), undefined, small);
      const f = failure(result, '7');
      expect(f.field).toBe('batch_size');
      expect(f.message).toMatch(/at most 2 fit/);
      expect(small.pool.stats().loads).toBe(0);
      expect(readdirSync(paths.outputs).filter((n) => n.startsWith('instantcharacter_'))).toHaveLength(0);
      // The same budget takes a batch of 2.
      expect(() => checkBatchFits(models, small.pool, { batch: 2, width: SMALL.width, height: SMALL.height, textTokens: models.manifest.t5.seqLen, trueCfg: false })).not.toThrow();
      expect(() => checkBatchFits(models, small.pool, { batch: 2, width: SMALL.width, height: SMALL.height, textTokens: models.manifest.t5.seqLen, trueCfg: true })).toThrow(/at most 1 fit/);
    } finally {
      await small.close();
    }
  });
});

describe('true CFG', () => {
  it('refuses true_cfg above 1 without a negative, naming the field, before anything runs', async () => {
    const loads = services.pool.stats().loads;
    const result = await run(prepare(example('instantcharacter.json'), { 7: { true_cfg: 2 }, 6: { prompt: 'an untouched prompt 1' } }));
    expect(failure(result, '7').field).toBe('true_cfg');
    expect(result.nodes['6']).toBeUndefined(); // nothing upstream ran for it
    expect(services.pool.stats().loads).toBe(loads);
  });

  it('warns about a negative at true_cfg 1, which costs nothing: its Text Encode does not run, single passes', async () => {
    warnings.length = 0;
    const wf = example('true_cfg.json');
    const negative = (wf.nodes['7']!.inputs.negative as { node: string }).node;
    const result = await run(prepare(wf, { 7: { true_cfg: 1 }, [negative]: { prompt: 'a negative nobody encodes' } }));
    expect(result.status).toBe('done');
    expect(result.nodes[negative]).toBeUndefined(); // not needed, not run
    expect(fluxBatches).toEqual(Array(SMALL.steps).fill(1));
    expect(warnings.join('\n')).toMatch(/input "negative" is connected but not used: true_cfg is 1/);
  });
});

describe('image-to-image errors', () => {
  it('names init when the init latent has the wrong size', async () => {
    const result = await run(prepare(example('img2img.json'), { 10: { width: 128 } }));
    expect(failure(result, '7').field).toBe('init');
  });

  it('names the seed when seed + i would pass the largest exact integer', async () => {
    const f = failure(await run(prepare(example('batch4.json'), { 7: { seed: Number.MAX_SAFE_INTEGER - 1 } })), '7');
    expect(f.field).toBe('seed');
  });

  it('names denoise at 0, and below 1 without an init', async () => {
    expect(failure(await run(prepare(example('img2img.json'), { 7: { denoise: 0 } })), '7').field).toBe('denoise');
    expect(failure(await run(prepare(example('instantcharacter.json'), { 7: { denoise: 0.5 } })), '7').field).toBe('denoise');
  });

  it('names the path of a missing input image before anything loads', async () => {
    const loads = services.pool.stats().loads;
    const result = await run(prepare(example('img2img.json'), { 10: { path: 'no-such-picture.png' } }));
    expect(failure(result, '10').field).toBe('path');
    expect(services.pool.stats().loads).toBe(loads);
  });
});

describe('custom sigmas', () => {
  it('replaces the schedule (shifted for the resolution) and sets the step count', async () => {
    const sigmas = [1, 0.6, 0.3, 0.1];
    const result = await run(prepare(example('instantcharacter.json'), { 7: { sigmas: sigmas.join(', ') } }), ['7']);
    expect(result.status).toBe('done');
    expect(fluxBatches).toHaveLength(sigmas.length);
    const expected = shiftedSchedule(sigmas, (SMALL.width / 16) * (SMALL.height / 16));
    expect(expected.sigmas[1]).not.toBe(sigmas[1]); // the shift applied
  });

  it('refuses lists that are not decreasing or not in (0, 1], naming the field', async () => {
    for (const bad of ['1, 0.5, 0.7', '1.2, 0.5', '1, 0.5, 0', '1, x']) {
      const result = await run(prepare(example('instantcharacter.json'), { 7: { sigmas: bad } }));
      expect(failure(result, '7').field, bad).toBe('sigmas');
    }
  });
});

describe('clip_prompt', () => {
  it('replaces what CLIP-L sees and leaves the T5 features alone', async () => {
    const models: ModelSet = services.modelSet('tiny');
    const ctx: NodeContext<Services> = { nodeId: 't', signal: new AbortController().signal, progress: () => {}, services, workflow: {}, log: { info: () => {}, warn: () => {} } };
    const encode = async (prompt: string, clip_prompt: string) => (await TextEncode.run(ctx, { models, prompt, clip_prompt })).conditioning as Conditioning;
    const plain = await encode('a knight in the rain', '');
    const same = await encode('a knight in the rain', 'a knight in the rain');
    const other = await encode('a knight in the rain', 'watercolor, soft light');
    expect(maxAbsDiff(same.pooled, plain.pooled)).toBe(0);
    expect(maxAbsDiff(other.promptEmbeds, plain.promptEmbeds)).toBe(0);
    expect(maxAbsDiff(other.pooled, plain.pooled)).toBeGreaterThan(1e-3);
  });
});

describe('Load Image', () => {
  it('crops to cover (centred, the target aspect) and then resizes with the exact bicubic', () => {
    // 6x2 pixels, each with its own value; a 2x2 target keeps the middle 2x2 block untouched.
    const data = Uint8Array.from({ length: 6 * 2 * 3 }, (_, i) => i);
    const img = { width: 6, height: 2, data };
    const out = coverResize(img, 2, 2);
    expect([out.width, out.height]).toEqual([2, 2]);
    const px = (x: number, y: number) => Array.from(data.subarray((y * 6 + x) * 3, (y * 6 + x) * 3 + 3));
    expect(Array.from(out.data)).toEqual([...px(2, 0), ...px(3, 0), ...px(2, 1), ...px(3, 1)]);
    // A tall picture to a wide target: the centred band of rows, then the same resize as resizeImage.
    const tall = { width: 4, height: 8, data: Uint8Array.from({ length: 4 * 8 * 3 }, (_, i) => (i * 7) % 256) };
    const wide = coverResize(tall, 8, 4);
    const band = { width: 4, height: 2, data: tall.data.slice(3 * 4 * 3, 5 * 4 * 3) };
    expect(Array.from(wide.data)).toEqual(Array.from(resizeImage(band, 8, 4).data));
  });
});

describe('VAE Encode', () => {
  it('gives the mean by default and a seeded draw with sample on, which is not the sampler noise of that seed', async () => {
    const models: ModelSet = services.modelSet('tiny');
    const ctx: NodeContext<Services> = { nodeId: 'v', signal: new AbortController().signal, progress: () => {}, services, workflow: {}, log: { info: () => {}, warn: () => {} } };
    const image = coverResize(await decodeImage(join(PACKAGE_ROOT, 'workflows/assets/character.png')), SMALL.width, SMALL.height);
    const encode = async (sample: boolean, seed: number) => ((await VAEEncode.run(ctx, { models, image, sample, seed })).latent as Latent).samples;
    const mean = await encode(false, 0);
    expect(maxAbsDiff(await encode(false, 9), mean)).toBe(0); // the seed plays no part
    const a = await encode(true, 5);
    expect(maxAbsDiff(await encode(true, 5), a)).toBe(0);
    expect(maxAbsDiff(a, mean)).toBeGreaterThan(1e-3);
    expect(maxAbsDiff(await encode(true, 6), a)).toBeGreaterThan(1e-3);
    // latents - mean = scale * std * eps: not proportional to DiT Sample's noise for seed 5.
    const d = toFloat32(a).map((v, i) => v - toFloat32(mean)[i]!);
    const noise = seededNormal(5, d.length);
    const dot = d.reduce((acc, v, i) => acc + v * noise[i]!, 0);
    const norm = Math.sqrt(d.reduce((acc, v) => acc + v * v, 0) * noise.reduce((acc, v) => acc + v * v, 0));
    expect(Math.abs(dot / norm)).toBeLessThan(0.5);
  });
});
