// Regional characters and identity scores on the tiny model set: the example workflows headless,
// the score properties, Keep Best, mask rasterisation, and the bad-input errors.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { resolvePaths, type DataPaths } from '../../engine/paths.ts';
import { Executor } from '../../engine/executor/index.ts';
import type { RunEvent } from '../../engine/executor/events.ts';
import { validateWorkflow } from '../../engine/workflow/index.ts';
import { NodeInputError, type NodeContext, type NodeDef } from '../../engine/node.ts';
import { Graph } from '../../models/onnx/graph.ts';
import { writeTinyModelSet } from '../../models/tiny.ts';
import { f32, type Tensor } from '../../models/tensor.ts';
import { createServices, PACKAGE_ROOT, type OwnedServices, type Services } from '../../nodes/services.ts';
import { nodeRegistry } from '../../nodes/registry.ts';
import { jsonReporter } from '../../cli/progress.ts';
import { decodeImage, readPngText, cropImage } from '../../nodes/lib/image.ts';
import { rasteriseRegion, regionBox } from '../../nodes/lib/regions.ts';
import { type FluxIpFeedRequest, characterMasks, prepareIpFeeds } from '../../nodes/lib/flux_feeds.ts';
import { boxPixels, identityScores } from '../../nodes/lib/identity.ts';
import { bestIndices, KeepBest } from '../../nodes/keep_best.ts';
import { CombineCharacters } from '../../nodes/combine_characters.ts';
import { RegionalCharacter, decodeMask } from '../../nodes/regional_character.ts';
import type { BatchImage, CharacterSet, CharacterTokens, IdentityScores, ModelSet, RgbImage } from '../../nodes/types.ts';
/** The feeds of one step at `timestep`. */
async function fluxIpFeeds(req: FluxIpFeedRequest & { timestep: number }): Promise<Record<string, Tensor>> {
  return (await prepareIpFeeds(req))(req.timestep);
}

const registry = nodeRegistry();
const EXACT = 1e-6;

let dir: string;
let paths: DataPaths;
let services: OwnedServices;
let models: ModelSet;
let ref1: RgbImage;
let ref2: RgbImage;

function ctx(nodeId = 'test'): NodeContext<Services> {
  return { nodeId, signal: new AbortController().signal, progress: () => {}, services, workflow: {}, log: { info: () => {}, warn: () => {} } };
}

async function runNode<T>(def: NodeDef<Services>, inputs: Record<string, unknown>, output: string): Promise<T> {
  const defaults = Object.fromEntries(Object.entries(def.params).map(([k, p]) => [k, p.default]));
  return (await def.run(ctx(def.type), { ...defaults, ...inputs }))[output] as T;
}

/** An example workflow at a small size, run through the real executor. */
async function runExample(file: string, dit: Record<string, unknown>): Promise<{ events: RunEvent[]; outputs: Record<string, Record<string, unknown>>; status: string; wf: { nodes: Record<string, { type: string; inputs: Record<string, unknown> }> } }> {
  const wf = JSON.parse(readFileSync(join(PACKAGE_ROOT, 'workflows', file), 'utf8')) as { nodes: Record<string, { type: string; inputs: Record<string, unknown> }> };
  const ditId = Object.keys(wf.nodes).find((id) => wf.nodes[id]!.type === 'DiTSample')!;
  Object.assign(wf.nodes[ditId]!.inputs, dit);
  const v = validateWorkflow(wf, registry);
  if (!v.ok) throw new Error(v.errors.map((e) => e.message).join('\n'));
  const events: RunEvent[] = [];
  const executor = new Executor({ registry, services, logger: { info: () => {}, warn: () => {} } });
  const result = await executor.run(v.workflow!, { onEvent: (e) => void events.push(e) });
  if (result.status !== 'done') throw new Error(JSON.stringify(result.nodes));
  return { events, outputs: result.outputs as Record<string, Record<string, unknown>>, status: result.status, wf };
}

function savedScores(outputs: Record<string, Record<string, unknown>>, saveId: string): IdentityScores[] {
  const images = (outputs[saveId]!.images as { filename: string }[]);
  return images.map((i) => JSON.parse(readPngText(readFileSync(join(paths.outputs, i.filename))).identity_scores!) as IdentityScores);
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'charflow-regional-'));
  paths = resolvePaths({ data: dir });
  mkdirSync(paths.inputs, { recursive: true });
  await writeTinyModelSet(join(paths.models, 'tiny'));
  services = await createServices(paths, { device: 'cpu' });
  models = services.modelSet('tiny');
  ref1 = await decodeImage(join(PACKAGE_ROOT, 'workflows/assets/character.png'));
  ref2 = await decodeImage(join(PACKAGE_ROOT, 'workflows/assets/character2.png'));
}, 300_000);

afterAll(async () => {
  await services?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('regions on the packed latent grid', () => {
  it('rasterises a hard rectangle as the exact area each cell has inside it', () => {
    // x 0.25..0.6 over 4 columns: cells [0, .25) out, [.25, .5) in, [.5, .75) 40 % in, rest out.
    const m = rasteriseRegion({ kind: 'rect', x: 0.25, y: 0, w: 0.35, h: 0.5, feather: 0 }, 2, 4);
    const want = [0, 1, 0.4, 0, 0, 0, 0, 0];
    m.forEach((v, i) => expect(v).toBeCloseTo(want[i]!, 6));
  });

  it('feathers the edge: a ramp of the feather width centred on it, symmetric, in [0, 1]', () => {
    const cols = 40;
    const m = rasteriseRegion({ kind: 'rect', x: 0.25, y: 0, w: 0.5, h: 1, feather: 0.2 }, 1, cols);
    for (const v of m) expect(v >= 0 && v <= 1).toBe(true);
    for (let j = 0; j < cols; j++) expect(m[j]).toBeCloseTo(m[cols - 1 - j]!, 6); // symmetric about 0.5
    // Cell centres: outside the ramp 0 / 1, at the edge (0.25) one half.
    const at = (u: number) => m[Math.floor(u * cols)]!;
    expect(at(0.1)).toBe(0);
    expect(at(0.45)).toBe(1);
    expect((m[9]! + m[10]!) / 2).toBeCloseTo(0.5, 6); // cells 9 and 10 straddle the edge at 0.25
    // An edge on the picture's border is not feathered: a full-height band is 1 all the way up and down.
    const band = rasteriseRegion({ kind: 'rect', x: 0, y: 0, w: 0.5, h: 1, feather: 0.2 }, 10, 10);
    for (let i = 0; i < 10; i++) expect([band[i * 10]!, band[i * 10 + 9]!]).toEqual([1, 0]);
    expect(m[9]!).toBeGreaterThan(0);
    expect(m[10]!).toBeLessThan(1);
  });

  it('area-averages a mask image to the grid and finds its bounding box', () => {
    // 4 x 2 mask, one white pixel at (1, 0) and a grey one at (2, 1), to a 1 x 2 grid.
    const data = new Float32Array([0, 1, 0, 0, 0, 0, 0.5, 0]);
    const region = { kind: 'mask' as const, width: 4, height: 2, data };
    const m = rasteriseRegion(region, 1, 2);
    expect(Array.from(m)).toEqual([0.25, 0.125]);
    expect(regionBox(region)).toEqual({ x: 0.25, y: 0, w: 0.5, h: 1 });
  });

  it('reads a mask image: grey level times alpha; refuses colour and all-black masks naming the mask field', async () => {
    const png = (raw: Uint8Array, ch: 3 | 4) => sharp(Buffer.from(raw), { raw: { width: 2, height: 1, channels: ch } }).png().toBuffer();
    const ok = await decodeMask(await png(new Uint8Array([255, 255, 255, 255, 128, 128, 128, 0]), 4), 'ok.png');
    expect(Array.from(ok.data)).toEqual([1, 0]);
    await expect(decodeMask(await png(new Uint8Array([255, 0, 0, 255, 255, 255]), 3), 'red.png')).rejects.toMatchObject({ field: 'mask', message: expect.stringMatching(/colour/) });
    await expect(decodeMask(await png(new Uint8Array([0, 0, 0, 0, 0, 0]), 3), 'black.png')).rejects.toMatchObject({ field: 'mask', message: expect.stringMatching(/black everywhere/) });
    await expect(decodeMask(new Uint8Array([1, 2, 3]), 'junk.png')).rejects.toMatchObject({ field: 'mask' });
  });
});

describe('character sets and the transformer feeds', () => {
  const tokens = (): CharacterTokens => ({ resamplerInput: f32([1, 2, 4]) });
  const one = (x: number): CharacterSet => ({ characters: [{ character: tokens(), region: { kind: 'rect', x, y: 0, w: 0.25, h: 1, feather: 0 }, scale: 0.5 }] });

  it('a rectangle outside [0, 1] is refused naming the field', async () => {
    const bad = (p: Record<string, unknown>) => runNode(RegionalCharacter, { character: tokens(), ...p }, 'characters');
    await expect(bad({ x: 0.6, w: 0.5 })).rejects.toMatchObject({ name: 'NodeInputError', field: 'w' });
    await expect(bad({ y: 0.5, h: 0.75 })).rejects.toMatchObject({ field: 'h' });
    await expect(bad({ x: -0.1 })).rejects.toMatchObject({ field: 'x' });
    await expect(bad({ w: 0 })).rejects.toMatchObject({ field: 'w' });
    await expect(bad({ region: 'mask' })).rejects.toMatchObject({ field: 'mask' });
  });

  it('combines up to 4 characters and names the input past that', async () => {
    const two = await runNode<CharacterSet>(CombineCharacters, { a: one(0), b: one(0.25) }, 'characters');
    const four = await runNode<CharacterSet>(CombineCharacters, { a: two, b: two }, 'characters');
    expect(four.characters.map((c) => (c.region as { x: number }).x)).toEqual([0, 0.25, 0, 0.25]);
    await expect(runNode(CombineCharacters, { a: four, b: one(0.5) }, 'characters')).rejects.toMatchObject({ field: 'b', message: expect.stringMatching(/5 characters.*at most 4/) });
    await expect(runNode(CombineCharacters, { a: tokens(), b: one(0.5) }, 'characters')).rejects.toMatchObject({ field: 'a' });
  });

  it('feeds [R, P, D] tokens and [R, L] weights = scale x mask; no character feeds zero weights; one character its scale', async () => {
    const set: CharacterSet = { characters: [one(0).characters[0]!, { ...one(0.5).characters[0]!, scale: 1.5 }] };
    const character = await runNode<CharacterTokens>(registry.get('AdapterFuse')!, {
      models,
      siglip: await runNode(registry.get('SigLIPEncode')!, { models, image: ref1 }, 'features'),
      dinov2: await runNode(registry.get('DINOv2Encode')!, { models, image: ref1 }, 'features'),
    }, 'character');
    for (const c of set.characters) c.character = character;
    const { adapter } = models.manifest;
    const rows = 2, cols = 4;
    const req = { pool: services.pool, models, character: set as CharacterSet | CharacterTokens | undefined, subjectScale: 0.9, rows, cols, timestep: 500 };
    const perStep = await prepareIpFeeds(req);
    const feeds = await perStep(req.timestep);
    expect(feeds.ip_hidden_states!.dims).toEqual([2, adapter.numQueries, adapter.outputDim]);
    expect(Array.from(feeds.ip_masks!.data as Float32Array)).toEqual([0.5, 0, 0, 0, 0.5, 0, 0, 0, 0, 0, 1.5, 0, 0, 0, 1.5, 0]);
    expect(feeds.ip_masks!.data).toEqual(characterMasks(set, rows, cols).data);
    expect((await perStep(250)).ip_masks).toBe(feeds.ip_masks); // once per sampling run, not per step
    const single = await fluxIpFeeds({ ...req, character });
    expect(single.ip_hidden_states!.dims).toEqual([1, adapter.numQueries, adapter.outputDim]);
    expect(Array.from(single.ip_masks!.data as Float32Array)).toEqual(new Array(8).fill(Math.fround(0.9)));
    // Both characters are the same picture here: their tokens equal the single character's.
    const data = single.ip_hidden_states!.data as Float32Array;
    expect(Array.from((feeds.ip_hidden_states!.data as Float32Array).subarray(data.length))).toEqual(Array.from(data));
    const none = await fluxIpFeeds({ ...req, character: undefined });
    expect(Array.from(none.ip_masks!.data as Float32Array).every((v) => v === 0)).toBe(true);
    const five: CharacterSet = { characters: [...set.characters, ...set.characters, set.characters[0]!] };
    await expect(fluxIpFeeds({ ...req, character: five })).rejects.toMatchObject({ field: 'character', message: expect.stringMatching(/5 characters/) });
  });

  it('refuses a set for a transformer built before regional support (subject_scale input), naming the field', async () => {
    const file = join(dir, 'legacy-flux.onnx');
    const g = new Graph({ name: 'legacy' });
    const ip = g.input('ip_hidden_states', 'float32', ['batch', 'ip_tokens', 4]);
    const s = g.input('subject_scale', 'float32', [1]);
    g.output(g.node('Mul', [ip, s]), 'noise_pred', 'float32', ['batch', 'ip_tokens', 4]);
    writeFileSync(file, g.toBytes());
    const legacy: ModelSet = { ...models, path: (c) => (c === 'flux' ? file : models.path(c)) };
    const req = { pool: services.pool, models: legacy, subjectScale: 0.9, rows: 2, cols: 2, timestep: 500 };
    await expect(fluxIpFeeds({ ...req, character: one(0) })).rejects.toMatchObject({ field: 'character', message: expect.stringMatching(/without regional character support/) });
    const feeds = await fluxIpFeeds({ ...req, character: undefined, batch: 2 });
    expect(Object.keys(feeds).sort()).toEqual(['ip_hidden_states', 'subject_scale']);
    expect(feeds.ip_hidden_states!.dims[0]).toBe(2);
  });

  it('a bad rectangle in a workflow fails its node with the node and field named', async () => {
    const wf = JSON.parse(readFileSync(join(PACKAGE_ROOT, 'workflows/two_characters.json'), 'utf8')) as { nodes: Record<string, { inputs: Record<string, unknown> }> };
    Object.assign(wf.nodes['15']!.inputs, { x: 0.75, w: 0.5 });
    Object.assign(wf.nodes['7']!.inputs, { width: 64, height: 64, steps: 1 });
    const v = validateWorkflow(wf, registry);
    expect(v.ok).toBe(true);
    const events: RunEvent[] = [];
    const result = await new Executor({ registry, services, logger: { info: () => {}, warn: () => {} } }).run(v.workflow!, { onEvent: (e) => void events.push(e) });
    expect(result.status).toBe('failed');
    const failed = events.find((e) => e.type === 'node_failed');
    expect(failed).toMatchObject({ nodeId: '15', nodeType: 'RegionalCharacter', field: 'w' });
    expect((failed as { message: string }).message).toMatch(/15.*RegionalCharacter|RegionalCharacter.*15/);
  });
});

describe('identity scores', () => {
  it('an image against itself scores 1; the score is symmetric', async () => {
    const [self] = await identityScores(ctx(), models, [ref1], ref1, undefined);
    expect(Math.abs(self!.dino_i - 1)).toBeLessThanOrEqual(EXACT);
    expect(self!.siglip_i).toBeDefined();
    expect(Math.abs(self!.siglip_i! - 1)).toBeLessThanOrEqual(EXACT);
    const [ab] = await identityScores(ctx(), models, [ref2], ref1, undefined);
    const [ba] = await identityScores(ctx(), models, [ref1], ref2, undefined);
    expect(Math.abs(ab!.dino_i - ba!.dino_i)).toBeLessThanOrEqual(EXACT);
    expect(Math.abs(ab!.siglip_i! - ba!.siglip_i!)).toBeLessThanOrEqual(EXACT);
    expect(ab!.dino_i).toBeLessThan(1 - 1e-4); // two different pictures do not score 1
  });

  it('the batch path gives the numbers of scoring one image at a time', async () => {
    // 10 pictures: more than one encoder chunk; crops and flips of the two references.
    const pictures: RgbImage[] = [];
    for (const r of [ref1, ref2]) {
      pictures.push(r, cropImage(r, 10, 20, 200, 300), cropImage(r, 0, 0, r.width, r.height / 2));
      pictures.push(await sharp(Buffer.from(r.data), { raw: { width: r.width, height: r.height, channels: 3 } }).flop().raw().toBuffer().then((d) => ({ width: r.width, height: r.height, data: new Uint8Array(d) })));
      pictures.push(cropImage(r, 50, 50, 100, 100));
    }
    const batch = await identityScores(ctx(), models, pictures, ref1, undefined);
    for (const [i, p] of pictures.entries()) {
      const [alone] = await identityScores(ctx(), models, [p], ref1, undefined);
      expect(Math.abs(batch[i]!.dino_i - alone!.dino_i), `image ${i} DINO-I`).toBeLessThanOrEqual(EXACT);
      expect(Math.abs(batch[i]!.siglip_i! - alone!.siglip_i!), `image ${i} SigLIP-I`).toBeLessThanOrEqual(EXACT);
    }
  });

  it('with several characters, scores each against its own region (rectangle or mask bounding box), as cropping by hand does', async () => {
    // A side-by-side picture: ref1 left, ref2 right.
    const w = ref1.width + ref2.width;
    const h = ref1.height;
    const data = new Uint8Array(w * h * 3);
    for (let y = 0; y < h; y++) {
      data.set(ref1.data.subarray(y * ref1.width * 3, (y + 1) * ref1.width * 3), y * w * 3);
      data.set(ref2.data.subarray(y * ref2.width * 3, (y + 1) * ref2.width * 3), (y * w + ref1.width) * 3);
    }
    const pair: RgbImage = { width: w, height: h, data };
    const maskData = new Float32Array(8 * 4);
    for (let y = 0; y < 4; y++) for (let x = 4; x < 8; x++) maskData[y * 8 + x] = 1; // right half
    const tokens: CharacterTokens = { resamplerInput: f32([1, 1, 1]) };
    const set: CharacterSet = {
      characters: [
        { character: tokens, region: { kind: 'rect', x: 0, y: 0, w: 0.5, h: 1, feather: 0.1 }, scale: 1, reference: ref1 },
        { character: tokens, region: { kind: 'mask', width: 8, height: 4, data: maskData }, scale: 1, reference: ref2 },
      ],
    };
    const both = await identityScores(ctx(), models, [pair, pair], undefined, set);
    const half = (x: number) => boxPixels({ x, y: 0, w: 0.5, h: 1 }, w, h);
    const left = half(0), right = half(0.5);
    const [l] = await identityScores(ctx(), models, [cropImage(pair, left.x, left.y, left.w, left.h)], ref1, undefined);
    const [r] = await identityScores(ctx(), models, [cropImage(pair, right.x, right.y, right.w, right.h)], ref2, undefined);
    for (const s of both) {
      expect(s.characters).toHaveLength(2);
      expect(Math.abs(s.characters![0]!.dino_i - l!.dino_i)).toBeLessThanOrEqual(EXACT);
      expect(Math.abs(s.characters![1]!.dino_i - r!.dino_i)).toBeLessThanOrEqual(EXACT);
      expect(Math.abs(s.characters![1]!.siglip_i! - r!.siglip_i!)).toBeLessThanOrEqual(EXACT);
      expect(Math.abs(s.dino_i - (l!.dino_i + r!.dino_i) / 2)).toBeLessThanOrEqual(EXACT);
    }
    // Each half is exactly its reference: both characters score 1.
    expect(Math.abs(l!.dino_i - 1)).toBeLessThanOrEqual(EXACT);
    expect(Math.abs(r!.siglip_i! - 1)).toBeLessThanOrEqual(EXACT);
  });

  it('Keep Best keeps the top k, best first, and equal scores in batch order', async () => {
    expect(bestIndices([0.5, 0.9, 0.5, 0.9, 0.1], 3)).toEqual([1, 3, 0]);
    expect(bestIndices([0.2, 0.2, 0.2], 2)).toEqual([0, 1]);
    expect(bestIndices([0.3], 5)).toEqual([0]);
    const img = (dino: number, tag: number): BatchImage => ({ width: 1, height: 1, data: new Uint8Array([tag, 0, 0]), identity: { dino_i: dino, siglip_i: 1 - dino } });
    const batch = [img(0.4, 0), img(0.8, 1), img(0.4, 2), img(0.8, 3)];
    const kept = await runNode<BatchImage[]>(KeepBest, { images: batch, k: 3, by: 'dino_i' }, 'images');
    expect(kept.map((i) => i.data[0])).toEqual([1, 3, 0]);
    const bySiglip = await runNode<BatchImage[]>(KeepBest, { images: batch, k: 2, by: 'siglip_i' }, 'images');
    expect(bySiglip.map((i) => i.data[0])).toEqual([0, 2]);
    await expect(runNode(KeepBest, { images: [{ width: 1, height: 1, data: new Uint8Array(3) }], k: 1 }, 'images')).rejects.toBeInstanceOf(NodeInputError);
  });
});

describe('the example workflows, headless', () => {
  it('two_characters.json: two characters, two sets of tokens per step, scores per region in the events and the PNG', async () => {
    const before = services.pool.stats().runs;
    const count = (c: string, runs: Record<string, number>) => Object.entries(runs).filter(([p]) => p.endsWith(`/${c}.onnx`)).reduce((n, [, k]) => n + k, 0);
    const steps = 2;
    const { events, outputs, wf } = await runExample('two_characters.json', { width: 96, height: 64, steps });
    const after = services.pool.stats().runs;
    expect(count('adapter_time', after) - count('adapter_time', before)).toBe(2 * steps); // per character per step
    expect(count('flux', after) - count('flux', before)).toBe(steps);
    const scoreId = Object.keys(wf.nodes).find((id) => wf.nodes[id]!.type === 'IdentityScore')!;
    const saveId = Object.keys(wf.nodes).find((id) => wf.nodes[id]!.type === 'SaveImage')!;
    const fin = events.find((e) => e.type === 'node_finished' && e.nodeId === scoreId) as { summary?: { scores: IdentityScores[] } };
    expect(fin.summary!.scores).toHaveLength(1);
    expect(fin.summary!.scores[0]!.characters).toHaveLength(2);
    const saved = savedScores(outputs, saveId);
    expect(saved).toEqual(fin.summary!.scores);
    for (const s of [saved[0]!.dino_i, saved[0]!.siglip_i!, ...saved[0]!.characters!.flatMap((c) => [c.dino_i, c.siglip_i!])]) {
      expect(Math.abs(s)).toBeLessThanOrEqual(1 + EXACT);
    }
  }, 300_000);

  it('best_of_8.json: a batch of 8 scored, the 2 best saved in order with their scores', async () => {
    const { events, outputs, wf } = await runExample('best_of_8.json', { width: 64, height: 64, steps: 2 });
    const id = (t: string) => Object.keys(wf.nodes).find((k) => wf.nodes[k]!.type === t)!;
    const scored = (events.find((e) => e.type === 'node_finished' && e.nodeId === id('IdentityScore')) as { summary?: { scores: IdentityScores[] } }).summary!.scores;
    expect(scored).toHaveLength(8);
    const kept = savedScores(outputs, id('SaveImage'));
    expect(kept).toHaveLength(2);
    const want = bestIndices(scored.map((s) => s.dino_i), 2).map((i) => scored[i]);
    expect(kept).toEqual(want);
    expect(kept[0]!.dino_i).toBeGreaterThanOrEqual(kept[1]!.dino_i);
    // `charflow run --json` prints the events one per line: the scores are in IdentityScore's node_finished.
    const lines: string[] = [];
    const reporter = jsonReporter({ write: (c: string) => lines.push(c) }, { write: () => true });
    for (const e of events) reporter.onEvent(e);
    const printed = lines.join('').trim().split('\n').map((l) => JSON.parse(l) as { type: string; nodeId?: string; summary?: { scores: IdentityScores[] } });
    expect(printed.find((e) => e.type === 'node_finished' && e.nodeId === id('IdentityScore'))!.summary!.scores).toEqual(scored);
  }, 300_000);
});
