// Saved characters on the tiny model set, through the real executor, nodes and session pool: Save Character
// writes one file; Saved Character gives the same pictures bit for bit without loading SigLIP or DINOv2
// (the pool's record of loads); another model set is refused before anything loads; Regional Character,
// Combine Characters and Identity Score take saved characters; bad files and names are clear errors.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { resolvePaths, type DataPaths } from '../../engine/paths.ts';
import { Executor } from '../../engine/executor/index.ts';
import { validateWorkflow } from '../../engine/workflow/index.ts';
import type { NodeContext } from '../../engine/node.ts';
import { writeTinyModelSet } from '../../models/tiny.ts';
import { SafetensorsFile } from '../../models/weights/safetensors.ts';
import { rewriteCharacter } from '../helpers/characters.ts';
import type { Tensor } from '../../models/tensor.ts';
import { createServices, PACKAGE_ROOT, type OwnedServices, type Services } from '../../nodes/services.ts';
import { nodeRegistry } from '../../nodes/registry.ts';
import { decodeImage, squareImage } from '../../nodes/lib/image.ts';
import { embedImages } from '../../nodes/lib/identity.ts';
import {
  CharacterError, THUMBNAIL_SIZE, charactersDir, checkCharacterName, loadCharacter, modelSetIdentity, readCharacter, thumbnailOf,
} from '../../nodes/lib/saved_characters.ts';
import type { BatchImage, CharacterTokens, RgbImage } from '../../nodes/types.ts';

const registry = nodeRegistry();
const PICTURE = 'workflows/assets/character.png';
const SIZE = { width: 64, height: 64, steps: 2 };

type Nodes = Record<string, { type: string; inputs: Record<string, unknown> }>;
const link = (node: string, output: string) => ({ node, output });

let dir: string;
let paths: DataPaths;
let services: OwnedServices;

/** Fresh services over the same data folder: a cold pool whose record covers one run only. */
async function freshServices(): Promise<OwnedServices> {
  return createServices(paths, { device: 'cpu' });
}

async function run(nodes: Nodes, opts: { services?: Services; targets?: string[] } = {}) {
  const v = validateWorkflow({ format: 'charflow.workflow', version: 1, nodes }, registry);
  if (!v.ok) throw new Error(v.errors.map((e) => e.message).join('\n'));
  const executor = new Executor({ registry, services: opts.services ?? services, logger: { info: () => {}, warn: () => {} } });
  return executor.run(v.workflow!, opts.targets ? { targets: opts.targets } : {});
}

/** Load Models, and the character either from the picture (encoders + adapter) or saved (`saved` names it). */
function characterNodes(saved?: string, set = 'tiny'): Nodes {
  const m = link('1', 'models');
  if (saved) return { '1': { type: 'LoadModels', inputs: { set } }, '5': { type: 'SavedCharacter', inputs: { models: m, name: saved } } };
  return {
    '1': { type: 'LoadModels', inputs: { set } },
    '2': { type: 'LoadCharacter', inputs: { path: PICTURE } },
    '3': { type: 'SigLIPEncode', inputs: { models: m, image: link('2', 'image') } },
    '4': { type: 'DINOv2Encode', inputs: { models: m, image: link('2', 'image') } },
    '5': { type: 'AdapterFuse', inputs: { models: m, siglip: link('3', 'features'), dinov2: link('4', 'features') } },
  };
}

/** The character drawn in a scene: text, sampler, decoder (node 8 is the picture). */
function scene(nodes: Nodes, prompt = 'a character in the snow'): Nodes {
  const m = link('1', 'models');
  return {
    ...nodes,
    '6': { type: 'TextEncode', inputs: { models: m, prompt } },
    '7': { type: 'DiTSample', inputs: { models: m, conditioning: link('6', 'conditioning'), character: link('5', 'character'), seed: 7, ...SIZE } },
    '8': { type: 'Decode', inputs: { models: m, latent: link('7', 'latent') } },
  };
}

/** A failed node's message (with the field it names). */
function errorOf(r: { nodes: Record<string, unknown> }, id: string): string {
  const o = r.nodes[id] as { status: string; message?: string; field?: string };
  return o.status === 'failed' ? `${o.field ?? ''}: ${o.message}` : `not failed: ${o.status}`;
}

const componentsLoaded = (s: Services): string[] => s.pool.stats().loadHistory.map((p) => p.split('/').pop()!.replace(/\.onnx$/, ''));

function ctx(s: Services): NodeContext<Services> {
  return { nodeId: 't', signal: new AbortController().signal, progress: () => {}, services: s, workflow: {}, log: { info: () => {}, warn: () => {} } };
}

const bytesOf = (t: Tensor) => Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'charflow-saved-'));
  paths = resolvePaths({ data: dir });
  await writeTinyModelSet(join(paths.models, 'tiny'));
  await writeTinyModelSet(join(paths.models, 'tiny-fp16'), undefined, { weights: 'fp16' });
  services = await createServices(paths, { device: 'cpu' });
  // The character every test below uses, saved from Adapter Fuse's output.
  const r = await run({
    ...characterNodes(),
    '9': { type: 'SaveCharacter', inputs: { models: link('1', 'models'), reference: link('2', 'image'), character: link('5', 'character'), name: 'hero' } },
  }, { targets: ['5', '9'] });
  if (r.status !== 'done') throw new Error(JSON.stringify(r.nodes));
  fused = (r.outputs['5'] as { character: CharacterTokens }).character;
}, 600_000);

let fused: CharacterTokens;

afterAll(async () => {
  await services?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('Save Character', () => {
  it('writes one safetensors file: the tokens bit for bit, the reference embeddings, a thumbnail, the set in the header', async () => {
    const file = join(charactersDir(paths.root), 'hero.safetensors');
    const c = readCharacter(file);
    expect(bytesOf(c.tokens).equals(bytesOf(fused.resamplerInput))).toBe(true);
    expect(c.tokens.dims).toEqual(fused.resamplerInput.dims);
    // The header: the set's name and identity (a hash of the SigLIP, DINOv2 and adapter graphs).
    const f = new SafetensorsFile(file);
    const tiny = services.modelSet('tiny');
    expect(f.metadata).toMatchObject({ format: 'charflow.character', name: 'hero', set: 'tiny', set_identity: modelSetIdentity(tiny) });
    f.close();
    // The embeddings Identity Score would compute from the (squared) picture.
    const square = await squareImage(await decodeImage(join(PACKAGE_ROOT, PICTURE)), 'pad');
    const [dino] = await embedImages(ctx(services), tiny, [square], 'dinov2');
    const [sig] = await embedImages(ctx(services), tiny, [square], 'siglip');
    expect(Array.from(c.reference.dinov2)).toEqual(Array.from(dino!));
    expect(Array.from(c.reference.siglip!)).toEqual(Array.from(sig!));
    expect(c.reference.dinov2.length).toBe(tiny.manifest.dinov2.width);
    expect([c.thumbnail.width, c.thumbnail.height]).toEqual([THUMBNAIL_SIZE, THUMBNAIL_SIZE]);
    expect(Buffer.from(c.thumbnail.data).equals(Buffer.from(thumbnailOf(square).data))).toBe(true);
    // Small: the tensors and the header, nothing else.
    const want = c.tokens.data.byteLength + 4 * (dino!.length + sig!.length) + THUMBNAIL_SIZE * THUMBNAIL_SIZE * 3;
    expect(statSync(file).size - want).toBeLessThan(2048);
  });

  it('without a character input encodes the picture itself, to the same tokens', async () => {
    const r = await run({
      ...characterNodes(),
      '9': { type: 'SaveCharacter', inputs: { models: link('1', 'models'), reference: link('2', 'image'), name: 'hero-direct' } },
    }, { targets: ['9'] });
    expect(r.status, JSON.stringify(r.nodes)).toBe('done');
    const c = loadCharacter(charactersDir(paths.root), 'hero-direct');
    expect(bytesOf(c.tokens).equals(bytesOf(fused.resamplerInput))).toBe(true);
  });

  it('refuses a duplicate name before anything runs unless overwrite is on; the file stays as it was', async () => {
    const file = join(charactersDir(paths.root), 'hero.safetensors');
    const before = readFileSync(file);
    const s = await freshServices();
    try {
      const r = await run({
        ...characterNodes(),
        '9': { type: 'SaveCharacter', inputs: { models: link('1', 'models'), reference: link('2', 'image'), name: 'hero' } },
      }, { services: s, targets: ['9'] });
      expect(r.status).toBe('failed');
      expect(errorOf(r, '9')).toMatch(/character named "hero" exists already/);
      expect(s.pool.stats().loads).toBe(0);
      expect(readFileSync(file).equals(before)).toBe(true);
    } finally {
      await s.close();
    }
    const again = await run({
      ...characterNodes(),
      '9': { type: 'SaveCharacter', inputs: { models: link('1', 'models'), reference: link('2', 'image'), character: link('5', 'character'), name: 'hero', overwrite: true } },
    }, { targets: ['9'] });
    expect(again.status, JSON.stringify(again.nodes)).toBe('done');
    expect(bytesOf(readCharacter(file).tokens).equals(bytesOf(fused.resamplerInput))).toBe(true);
  });

  it('refuses a name with path characters when the workflow is validated', () => {
    for (const name of ['../evil', 'a/b', 'a\\b', '.hidden', '']) {
      const v = validateWorkflow({ format: 'charflow.workflow', version: 1, nodes: { '1': { type: 'LoadModels', inputs: {} }, '5': { type: 'SavedCharacter', inputs: { models: link('1', 'models'), name } } } }, registry);
      expect(v.ok, name).toBe(false);
      expect(() => checkCharacterName(name)).toThrow(/not a valid character name/);
    }
  });
});

describe('Saved Character', () => {
  it('gives the same picture as the picture itself, bit for bit, and loads neither SigLIP nor DINOv2 (pool record)', async () => {
    const fromPicture = await run(scene(characterNodes()), { targets: ['8'] });
    expect(fromPicture.status, JSON.stringify(fromPicture.nodes)).toBe('done');
    const s = await freshServices();
    try {
      const fromSaved = await run(scene(characterNodes('hero')), { services: s, targets: ['8'] });
      expect(fromSaved.status, JSON.stringify(fromSaved.nodes)).toBe('done');
      const a = fromPicture.outputs['8']!.image as RgbImage;
      const b = fromSaved.outputs['8']!.image as RgbImage;
      expect([b.width, b.height]).toEqual([SIZE.width, SIZE.height]);
      expect(Buffer.from(b.data).equals(Buffer.from(a.data))).toBe(true);
      const loaded = componentsLoaded(s);
      expect(loaded).not.toContain('siglip');
      expect(loaded).not.toContain('dinov2');
      expect(loaded).not.toContain('adapter_static');
      expect(loaded).toEqual(expect.arrayContaining(['adapter_time', 'flux', 'vae', 't5', 'clip']));
      // The pool's peak holds no encoder: it is at most the sum of what did load.
      const tiny = s.modelSet('tiny');
      const encoders = tiny.manifest.files.siglip.bytes + tiny.manifest.files.dinov2.bytes;
      const others = (['adapter_time', 'flux', 'vae', 't5', 'clip'] as const).reduce((n, c) => n + tiny.manifest.files[c].bytes, 0);
      expect(s.pool.stats().peakResidentBytes).toBeLessThanOrEqual(others);
      expect(s.pool.stats().peakResidentBytes).toBeGreaterThan(0);
      expect(encoders).toBeGreaterThan(0);
    } finally {
      await s.close();
    }
  });

  it('refuses a character saved with another model set before anything loads, naming both sets', async () => {
    const s = await freshServices();
    try {
      const r = await run(scene(characterNodes('hero', 'tiny-fp16')), { services: s, targets: ['8'] });
      expect(r.status).toBe('failed');
      const msg = errorOf(r, '5');
      expect(msg).toMatch(/model set "tiny" .*model set "tiny-fp16"/);
      expect(s.pool.stats().loads).toBe(0);
      expect(s.pool.stats().loadHistory).toEqual([]);
    } finally {
      await s.close();
    }
  });

  it('feeds Regional Character, Combine Characters and Identity Score, which scores as with the reference picture', async () => {
    const m = link('1', 'models');
    const nodes: Nodes = {
      ...characterNodes(),
      '10': { type: 'SavedCharacter', inputs: { models: m, name: 'hero' } },
      '11': { type: 'RegionalCharacter', inputs: { character: link('10', 'character'), x: 0, w: 0.5 } },
      '12': { type: 'RegionalCharacter', inputs: { character: link('5', 'character'), reference: link('2', 'image'), x: 0.5, w: 0.5 } },
      '13': { type: 'CombineCharacters', inputs: { a: link('11', 'characters'), b: link('12', 'characters') } },
      '6': { type: 'TextEncode', inputs: { models: m, prompt: 'two friends' } },
      '7': { type: 'DiTSample', inputs: { models: m, conditioning: link('6', 'conditioning'), character: link('13', 'characters'), seed: 3, ...SIZE } },
      '8': { type: 'Decode', inputs: { models: m, latent: link('7', 'latent') } },
      // Per region: the saved character (no reference picture) and the same character from its picture.
      '14': { type: 'IdentityScore', inputs: { models: m, images: link('8', 'image'), characters: link('13', 'characters') } },
      // Whole picture: the saved character's embeddings against the reference picture.
      '15': { type: 'IdentityScore', inputs: { models: m, images: link('8', 'image'), character: link('10', 'character') } },
      '16': { type: 'IdentityScore', inputs: { models: m, images: link('8', 'image'), reference: link('2', 'image') } },
    };
    const r = await run(nodes, { targets: ['14', '15', '16'] });
    expect(r.status, JSON.stringify(r.nodes)).toBe('done');
    const score = (id: string) => (r.outputs[id]!.images as BatchImage).identity!;
    expect(score('15')).toEqual(score('16'));
    const regional = score('14').characters!;
    expect(regional).toHaveLength(2);
    // Same character both sides: only the region differs, and each side was scored (finite cosines).
    for (const c of regional) expect(Number.isFinite(c.dino_i) && Number.isFinite(c.siglip_i!)).toBe(true);
  });
});

describe('workflows/storyboard.json', () => {
  it('draws one saved character in four scenes headless, with no vision encoder loaded', async () => {
    const wf = JSON.parse(readFileSync(join(PACKAGE_ROOT, 'workflows/storyboard.json'), 'utf8')) as { nodes: Nodes };
    const samplers = Object.values(wf.nodes).filter((n) => n.type === 'DiTSample');
    const saves = Object.entries(wf.nodes).filter(([, n]) => n.type === 'SaveImage').map(([id]) => id);
    const saved = Object.values(wf.nodes).filter((n) => n.type === 'SavedCharacter');
    expect([samplers.length, saves.length, saved.length]).toEqual([4, 4, 1]);
    for (const n of samplers) Object.assign(n.inputs, SIZE);
    const s = await freshServices();
    try {
      const v = validateWorkflow({ ...wf, format: 'charflow.workflow', version: 1 }, registry);
      expect(v.ok, JSON.stringify(v.errors)).toBe(true);
      const r = await new Executor({ registry, services: s, logger: { info: () => {}, warn: () => {} } }).run(v.workflow!);
      expect(r.status, JSON.stringify(r.nodes)).toBe('done');
      const pictures = saves.map((id) => readFileSync(join(paths.outputs, (r.outputs[id]!.images as { filename: string }[])[0]!.filename)));
      expect(new Set(pictures.map((p) => p.toString('base64'))).size).toBe(4);
      const loaded = componentsLoaded(s);
      expect(loaded).not.toContain('siglip');
      expect(loaded).not.toContain('dinov2');
      expect(loaded.filter((c) => c === 'adapter_time')).toHaveLength(1);
    } finally {
      await s.close();
    }
  });
});

describe('bad character files', () => {
  const dirOf = () => charactersDir(paths.root);
  const savedRun = async (name: string) => {
    const s = await freshServices();
    try {
      const r = await run(scene(characterNodes(name)), { services: s, targets: ['8'] });
      return { r, loads: s.pool.stats().loads };
    } finally {
      await s.close();
    }
  };

  it('a corrupt, truncated or edited file is a clear error naming the character, before anything loads', async () => {
    const good = readFileSync(join(dirOf(), 'hero.safetensors'));
    writeFileSync(join(dirOf(), 'junk.safetensors'), Buffer.from('not a safetensors file at all'));
    writeFileSync(join(dirOf(), 'cut.safetensors'), good.subarray(0, good.length - 100));
    const edited = Buffer.from(good);
    edited[edited.length - 1] ^= 0xff; // the last byte of the thumbnail
    writeFileSync(join(dirOf(), 'edited.safetensors'), edited);
    for (const [name, why] of [['junk', /corrupt or truncated/], ['cut', /corrupt or truncated.*inconsistent offsets/], ['edited', /do not match the hash/], ['nobody', /no saved character named "nobody"/]] as const) {
      const { r, loads } = await savedRun(name);
      expect(r.status, name).toBe('failed');
      expect(errorOf(r, '5'), name).toMatch(why);
      expect(loads, name).toBe(0);
    }
    expect(() => readCharacter(join(dirOf(), 'cut.safetensors'))).toThrow(CharacterError);
  });

  it('a character whose token shape does not fit the adapter is refused, naming the shapes', async () => {
    const c = loadCharacter(dirOf(), 'hero');
    const inner = services.modelSet('tiny').manifest.adapter.innerDim;
    const [, n] = c.tokens.dims as [number, number, number];
    // A well-formed file (its own hash right) with the set's identity but tokens one channel too wide.
    rewriteCharacter(join(dirOf(), 'hero.safetensors'), join(dirOf(), 'wide.safetensors'), (t, m) => {
      t.set('tokens', { dtype: 'float32', dims: [1, n, inner + 1], data: new Float32Array(n * (inner + 1)) });
      m.name = 'wide';
    });
    const { r, loads } = await savedRun('wide');
    expect(r.status).toBe('failed');
    expect(errorOf(r, '5')).toContain(`its tokens are [1, ${n}, ${inner + 1}] float32, the adapter of model set "tiny" takes [1, n, ${inner}] float32`);
    expect(loads).toBe(0);
    expect(existsSync(join(dirOf(), 'wide.safetensors'))).toBe(true);
  });
});
