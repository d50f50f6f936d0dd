// Inpainting and outpainting on the tiny set, through the real executor, nodes and session pool: the two example
// workflows, Set Latent Noise Mask (ComfyUI's route), the mask nodes, soft mode, and the bad inputs (a mask of
// another size, a mask with no white pixel, a mask without init, a mask file that is no picture).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { resolvePaths, type DataPaths } from '../../engine/paths.ts';
import { Executor, type RunResult } from '../../engine/executor/index.ts';
import { validateWorkflow } from '../../engine/workflow/index.ts';
import type { ValidWorkflow } from '../../engine/workflow/types.ts';
import { createServices, PACKAGE_ROOT, type OwnedServices } from '../../nodes/services.ts';
import { nodeRegistry } from '../../nodes/registry.ts';
import { writeTinyModelSet } from '../../models/tiny.ts';
import { decodeImage } from '../../nodes/lib/image.ts';
import { toFloat32 } from '../../models/tensor.ts';
import type { Latent, Mask, RgbImage } from '../../nodes/types.ts';
import { alphaMask } from '../../nodes/load_image.ts';
import { padForOutpaint } from '../../nodes/pad_image.ts';
import { rasteriseRegion } from '../../nodes/lib/regions.ts';
import {
  featherMask, freeAtStep, growMask, invertMask, latentGridMask, nearestGrid, resizeMask,
} from '../../nodes/lib/mask.ts';

const registry = nodeRegistry();
type Wf = { nodes: Record<string, { type: string; inputs: Record<string, unknown> }> };
const SMALL = { width: 96, height: 64, steps: 3 };

let dir: string;
let paths: DataPaths;
let services: OwnedServices;
const warnings: string[] = [];
let fluxRuns = 0;

function example(name: string): Wf {
  return JSON.parse(readFileSync(join(PACKAGE_ROOT, 'workflows', name), 'utf8')) as Wf;
}

const byType = (w: Wf, type: string): string => Object.entries(w.nodes).find(([, n]) => n.type === type)![0];

/** The example made small (96x64, 3 steps), with node inputs changed; `undefined` removes an input. */
function prepare(wf: Wf, changes: Record<string, Record<string, unknown>> = {}): ValidWorkflow {
  const w = structuredClone(wf);
  Object.assign(w.nodes[byType(w, 'DiTSample')]!.inputs, SMALL);
  const pad = Object.values(w.nodes).find((n) => n.type === 'PadImage');
  for (const n of Object.values(w.nodes)) {
    // Outpainting: a 64x64 picture padded by 16 on the left and right is the sampler's 96x64.
    if (n.type === 'LoadImage') Object.assign(n.inputs, pad ? { width: 64, height: 64 } : { width: SMALL.width, height: SMALL.height });
    if (n.type === 'PadImage') Object.assign(n.inputs, { left: 16, right: 16, top: 0, bottom: 0, feather: 8 });
  }
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

async function run(wf: ValidWorkflow, targets: string[] | 'outputs' = Object.keys(wf.nodes)): Promise<RunResult> {
  const executor = new Executor({ registry, services, logger: { info: () => {}, warn: (m) => void warnings.push(m) } });
  // By default every node is a target, so each one's outputs come back (the latents compared below).
  return executor.run(wf, targets === 'outputs' ? {} : { targets });
}

function failure(result: RunResult, node: string): { field?: string; message: string } {
  const o = result.nodes[node] as { status: string; field?: string; message: string };
  expect(o.status, JSON.stringify(result.nodes)).toBe('failed');
  return o;
}

function latentOf(result: RunResult, node: string): Float32Array {
  return toFloat32((result.outputs[node]!.latent as Latent).samples);
}

/** Which latent values [C, h, w] the blend keeps (grid value 0 after the mask's processing). */
function keptCells(grid: Float32Array, channels: number): boolean[] {
  return Array.from({ length: channels * grid.length }, (_, k) => grid[k % grid.length] === 0);
}

/** Final latents equal the init latents exactly where the mask keeps the picture, and differ elsewhere. */
function expectKeptAndChanged(out: Float32Array, init: Float32Array, kept: boolean[]): void {
  let changed = 0;
  let keptCount = 0;
  for (let k = 0; k < out.length; k++) {
    if (kept[k]) {
      keptCount++;
      expect(out[k], `kept value ${k}`).toBe(init[k]);
    } else if (out[k] !== init[k]) changed++;
  }
  expect(keptCount).toBeGreaterThan(0);
  expect(changed).toBeGreaterThan(0);
}

async function writeMaskPng(name: string, width: number, height: number, white: (x: number, y: number) => boolean): Promise<string> {
  const px = new Uint8Array(width * height);
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) px[y * width + x] = white(x, y) ? 255 : 0;
  await sharp(Buffer.from(px), { raw: { width, height, channels: 1 } }).png().toFile(join(paths.inputs, name));
  return name;
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'charflow-inpaint-'));
  paths = resolvePaths({ data: dir });
  mkdirSync(paths.inputs, { recursive: true });
  await writeTinyModelSet(join(paths.models, 'tiny'));
  services = await createServices(paths, { device: 'cpu' });
  const realRun = services.pool.run.bind(services.pool);
  services.pool.run = async (model, feeds, opts) => {
    if (model.endsWith('flux.onnx')) fluxRuns++;
    return realRun(model, feeds, opts);
  };
}, 300_000);

afterAll(async () => {
  await services?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('the example workflows, headless', () => {
  it('insert_character.json: the scene stays outside the mask, the regional character is painted inside it', async () => {
    const wf = example('insert_character.json');
    const sampler = byType(wf, 'DiTSample');
    const encode = byType(wf, 'VAEEncode');
    const result = await run(prepare(wf));
    expect(result.status, JSON.stringify(result.nodes)).toBe('done');
    expect(result.outputs[byType(wf, 'RegionalCharacter')]).toBeDefined();
    const s = wf.nodes[sampler]!.inputs;
    const mask = result.outputs[byType(wf, 'LoadMask')]!.mask as Mask;
    const h = SMALL.height / 8;
    const w = SMALL.width / 8;
    const grid = latentGridMask(mask, SMALL.width, SMALL.height, h, w, { grow: s.mask_grow as number, feather: s.mask_feather as number, mode: s.mask_mode as 'binary' });
    const init = latentOf(result, encode);
    expectKeptAndChanged(latentOf(result, sampler), init, keptCells(grid, init.length / grid.length));
    const saved = (result.outputs[byType(wf, 'SaveImage')] as { images: { filename: string }[] }).images;
    const png = await decodeImage(join(paths.outputs, saved[0]!.filename));
    expect([png.width, png.height]).toEqual([SMALL.width, SMALL.height]);
  });

  it('outpaint.json: the padded picture\'s new area is painted, the middle of the picture is kept', async () => {
    const wf = example('outpaint.json');
    const sampler = byType(wf, 'DiTSample');
    const result = await run(prepare(wf));
    expect(result.status, JSON.stringify(result.nodes)).toBe('done');
    const padded = result.outputs[byType(wf, 'PadImage')]!;
    expect([(padded.image as RgbImage).width, (padded.image as RgbImage).height]).toEqual([SMALL.width, SMALL.height]);
    const mask = padded.mask as Mask;
    const grid = latentGridMask(mask, SMALL.width, SMALL.height, SMALL.height / 8, SMALL.width / 8, { grow: 0, feather: 0, mode: 'soft' });
    const init = latentOf(result, byType(wf, 'VAEEncode'));
    expectKeptAndChanged(latentOf(result, sampler), init, keptCells(grid, init.length / grid.length));
  });
});

describe('ComfyUI\'s route: Set Latent Noise Mask and Load Image\'s mask', () => {
  it('a mask on the init latent (Set Latent Noise Mask) gives exactly what the sampler\'s mask input gives', async () => {
    const wf = example('insert_character.json');
    const sampler = byType(wf, 'DiTSample');
    const encode = byType(wf, 'VAEEncode');
    const direct = await run(prepare(wf));
    const routed = structuredClone(wf);
    routed.nodes['90'] = { type: 'SetLatentNoiseMask', inputs: { samples: { node: encode, output: 'latent' }, mask: { node: byType(wf, 'LoadMask'), output: 'mask' } } };
    Object.assign(routed.nodes[sampler]!.inputs, { init: { node: '90', output: 'latent' } });
    delete routed.nodes[sampler]!.inputs.mask;
    const viaLatent = await run(prepare(routed));
    expect(viaLatent.status, JSON.stringify(viaLatent.nodes)).toBe('done');
    expect(latentOf(viaLatent, sampler)).toEqual(latentOf(direct, sampler));
  });

  it('Load Image gives 1 - alpha as the mask (all 0 without alpha), cropped and resized with the picture', async () => {
    // 4x2 RGBA: the left half opaque, the right half transparent.
    const rgba = new Uint8Array([9, 9, 9, 255, 9, 9, 9, 255, 9, 9, 9, 0, 9, 9, 9, 0, 9, 9, 9, 255, 9, 9, 9, 255, 9, 9, 9, 0, 9, 9, 9, 0]);
    const png = await sharp(Buffer.from(rgba), { raw: { width: 4, height: 2, channels: 4 } }).png().toBuffer();
    const m = await alphaMask(png, 4, 2);
    expect(Array.from(m.data)).toEqual([0, 0, 1, 1, 0, 0, 1, 1]);
    const opaque = await sharp(Buffer.from(rgba.filter((_, i) => i % 4 !== 3)), { raw: { width: 4, height: 2, channels: 3 } }).png().toBuffer();
    expect(Array.from((await alphaMask(opaque, 16, 16)).data)).toEqual(Array(256).fill(0));
    expect((await alphaMask(png, 16, 16)).data.length).toBe(256);
  });
});

describe('the mask nodes', () => {
  it('Pad Image: the picture in the middle, the new area white in the mask, the seam feathered as ImagePadForOutpaint', () => {
    const img: RgbImage = { width: 4, height: 2, data: new Uint8Array(24).map((_, i) => 10 + i) };
    const { image, mask } = padForOutpaint(img, { left: 2, top: 0, right: 1, bottom: 1 }, 2, 'edge');
    expect([image.width, image.height]).toEqual([7, 3]);
    // Row 0: two new pixels (the edge repeated), the picture, one new pixel.
    expect(Array.from(image.data.subarray(0, 3))).toEqual([10, 11, 12]);
    expect(Array.from(image.data.subarray(6, 9))).toEqual([10, 11, 12]);
    // Inside, ((feather - d) / feather)^2 with d counted from 0 on the left and from 1 on the right and bottom.
    expect(Array.from(mask.data.subarray(0, 7))).toEqual([1, 1, 1, 0.25, 0, 0.25, 1]);
    expect(Array.from(mask.data.subarray(7, 14))).toEqual([1, 1, 1, 0.25, 0.25, 0.25, 1]);
    expect(Array.from(mask.data.subarray(14, 21))).toEqual(Array(7).fill(1));
    const grey = padForOutpaint(img, { left: 1, top: 0, right: 0, bottom: 0 }, 0, 'grey');
    expect(Array.from(grey.image.data.subarray(0, 3))).toEqual([128, 128, 128]);
    expect(Array.from(grey.mask.data.subarray(0, 5))).toEqual([1, 0, 0, 0, 0]);
  });

  it('Mask from Region is Regional Character\'s rectangle per pixel; Invert Mask is 1 - value', async () => {
    const v = validateWorkflow({
      format: 'charflow.workflow', version: 1,
      nodes: {
        1: { type: 'MaskFromRegion', inputs: { x: 0.25, y: 0, w: 0.5, h: 1, feather: 0.1, width: 40, height: 16 } },
        2: { type: 'InvertMask', inputs: { mask: { node: '1', output: 'mask' } } },
      },
    }, registry);
    expect(v.ok, JSON.stringify(v.errors)).toBe(true);
    const result = await run(v.workflow!);
    const region = result.outputs['1']!.mask as Mask;
    expect(Array.from(region.data)).toEqual(Array.from(rasteriseRegion({ kind: 'rect', x: 0.25, y: 0, w: 0.5, h: 1, feather: 0.1 }, 16, 40)));
    expect(region.data[0]).toBe(0);
    expect(region.data[20]).toBe(1);
    expect(Array.from((result.outputs['2']!.mask as Mask).data)).toEqual(Array.from(invertMask(region).data));
  });

  it('grow, feather and the soft threshold', () => {
    const m: Mask = { width: 7, height: 1, data: new Float32Array([0, 0, 0, 1, 0, 0, 0]) };
    expect(Array.from(growMask(m, 2).data)).toEqual([0, 1, 1, 1, 1, 1, 0]);
    expect(Array.from(growMask(growMask(m, 2), -2).data)).toEqual([0, 0, 0, 1, 0, 0, 0]);
    const f = featherMask({ width: 9, height: 1, data: new Float32Array([0, 0, 0, 0, 1, 1, 1, 1, 1]) }, 2).data;
    for (let i = 1; i < 9; i++) expect(f[i]!).toBeGreaterThanOrEqual(f[i - 1]!); // a ramp, no step
    expect(f[0]).toBe(0);
    expect(f[8]).toBe(1);
    expect(f[3]! > 0 && f[4]! < 1).toBe(true);
    // Soft: a grey g is free once sigma / sigma_first <= g.
    const grid = new Float32Array([0, 0.25, 0.5, 1]);
    expect(Array.from(freeAtStep(grid, 1, 1, 'soft'))).toEqual([0, 0, 0, 1]);
    expect(Array.from(freeAtStep(grid, 0.5, 1, 'soft'))).toEqual([0, 0, 1, 1]);
    expect(Array.from(freeAtStep(grid, 0.2, 1, 'soft'))).toEqual([0, 1, 1, 1]);
    expect(Array.from(freeAtStep(grid, 0.2, 1, 'binary'))).toEqual(Array.from(grid));
    // torch nearest to the latent grid: source index floor(i * in / out).
    expect(Array.from(nearestGrid({ width: 6, height: 1, data: new Float32Array([0, 1, 2, 3, 4, 5]) }, 1, 4))).toEqual([0, 1, 3, 4]);
  });

  it('soft mode: grey cells join the repaint as the schedule passes 1 - g; black ones keep the init exactly', async () => {
    const wf = example('insert_character.json');
    const sampler = byType(wf, 'DiTSample');
    // Left quarter black, the next quarter mid grey, the right half white.
    const name = 'soft.png';
    const px = new Uint8Array(SMALL.width * SMALL.height).map((_, i) => ((i % SMALL.width) < 24 ? 0 : (i % SMALL.width) < 48 ? 128 : 255));
    await sharp(Buffer.from(px), { raw: { width: SMALL.width, height: SMALL.height, channels: 1 } }).png().toFile(join(paths.inputs, name));
    const maskNode = byType(wf, 'LoadMask');
    const soft = await run(prepare(wf, { [maskNode]: { path: name }, [sampler]: { mask_mode: 'soft', mask_grow: 0 } }));
    const binary = await run(prepare(wf, { [maskNode]: { path: name }, [sampler]: { mask_mode: 'binary', mask_grow: 0 } }));
    const init = latentOf(soft, byType(wf, 'VAEEncode'));
    const a = latentOf(soft, sampler);
    const b = latentOf(binary, sampler);
    const w = SMALL.width / 8;
    let greyDiffers = 0;
    for (let k = 0; k < a.length; k++) {
      const x = k % w;
      if (x < 3) {
        expect(a[k]).toBe(init[k]);
        expect(b[k]).toBe(init[k]);
      } else if (x < 6 && a[k] !== b[k]) greyDiffers++;
    }
    expect(greyDiffers).toBeGreaterThan(0); // the grey quarter is repainted for fewer steps than in binary mode
  });
});

describe('bad input', () => {
  it('a mask of another size is resized to the picture: half size gives exactly the full-size result', async () => {
    const wf = example('insert_character.json');
    const sampler = byType(wf, 'DiTSample');
    const maskNode = byType(wf, 'LoadMask');
    const full = await writeMaskPng('full.png', SMALL.width, SMALL.height, (x) => x < SMALL.width / 2);
    const half = await writeMaskPng('half.png', SMALL.width / 2, SMALL.height / 2, (x) => x < SMALL.width / 4);
    const a = await run(prepare(wf, { [maskNode]: { path: full }, [sampler]: { mask_grow: 0 } }));
    const b = await run(prepare(wf, { [maskNode]: { path: half }, [sampler]: { mask_grow: 0 } }));
    expect(b.status, JSON.stringify(b.nodes)).toBe('done');
    expect(latentOf(b, sampler)).toEqual(latentOf(a, sampler));
    expect(Array.from(resizeMask({ width: 2, height: 1, data: new Float32Array([1, 0]) }, 4, 1).data)).toEqual([1, 0.75, 0.25, 0]);
  });

  it('a mask with no white pixel warns that nothing will change, and the result is the init', async () => {
    const wf = example('insert_character.json');
    const sampler = byType(wf, 'DiTSample');
    const black = await writeMaskPng('black.png', SMALL.width, SMALL.height, () => false);
    warnings.length = 0;
    const result = await run(prepare(wf, { [byType(wf, 'LoadMask')]: { path: black }, [sampler]: { denoise: 0.5, mask_grow: 0 } }));
    expect(result.status, JSON.stringify(result.nodes)).toBe('done');
    expect(warnings.join('\n')).toMatch(/mask has no white pixel.*nothing will change/);
    expect(latentOf(result, sampler)).toEqual(latentOf(result, byType(wf, 'VAEEncode')));
  });

  it('a mask without init is refused naming mask, before anything loads', async () => {
    const wf = example('insert_character.json');
    const sampler = byType(wf, 'DiTSample');
    const loads = services.pool.stats().loads;
    const before = fluxRuns;
    const result = await run(prepare(wf, { [sampler]: { init: undefined, denoise: 1 } }), 'outputs');
    expect(result.nodes[byType(wf, 'TextEncode')]).toBeUndefined(); // nothing upstream ran for it
    const f = failure(result, sampler);
    expect(f.field).toBe('mask');
    expect(f.message).toMatch(/init/);
    expect(services.pool.stats().loads).toBe(loads);
    expect(fluxRuns).toBe(before);
  });

  it('a mask file that is no picture is refused with its name', async () => {
    writeFileSync(join(paths.inputs, 'notes.png'), 'these are not pixels');
    const wf = example('insert_character.json');
    const maskNode = byType(wf, 'LoadMask');
    const result = await run(prepare(wf, { [maskNode]: { path: 'notes.png' } }));
    const f = failure(result, maskNode);
    expect(f.field).toBe('path');
    expect(f.message).toMatch(/"notes\.png" is not a readable image/);
  });
});
