// The mask editor in the browser (Debian's chromium through playwright-core, a real server on the tiny set):
// on Load Mask and Load Image nodes of the inpainting example it paints and erases strokes with the round brush,
// undoes, clears, inverts and saves; the saved PNG in the inputs folder is checked pixel by pixel under and away
// from the strokes, and the node points at it. Then both inpainting examples run in the editor.
import { beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { editorDriver, editorTeardown, launchChromium, watchProblems } from '../helpers/browser.ts';
import sharp from 'sharp';
import { ensureDirs, resolvePaths, type DataPaths } from '../../engine/paths.ts';
import { writeTinyModelSet } from '../../models/tiny.ts';
import { PACKAGE_ROOT } from '../../nodes/services.ts';
import { startServer } from '../../editor/server/index.ts';
import { buildEditor } from '../../editor/build.ts';

const ARTIFACTS = join(PACKAGE_ROOT, 'test-artifacts', 'editor');
type Point = [number, number];
type Server = Awaited<ReturnType<typeof startServer>>;

let dir: string;
let paths: DataPaths;
let server: Server | undefined;
let browser: Browser | undefined;
let page: Page;
const problems: string[] = [];
const { app, js, widgetPos, typeIntoWidget } = editorDriver(() => page);

async function values(node: string): Promise<Record<string, unknown>> {
  return js(`${app}.values(${JSON.stringify(node)})`);
}

async function openExample(name: string): Promise<void> {
  const nodes = Object.keys((JSON.parse(readFileSync(join(PACKAGE_ROOT, 'workflows', `${name}.json`), 'utf8')) as { nodes: object }).nodes).length;
  await page.click('button[data-action="open"]');
  await page.locator(`.cf-list li[data-name*="${name}"]`).click();
  const opened = `window.charflow.graph._nodes.length === ${nodes} && document.querySelector('.cf-doc').textContent.includes(${JSON.stringify(name)})`;
  await page.waitForFunction(`(${opened}) || document.querySelector('.cf-modal button[data-key="discard"]') !== null`, undefined, { timeout: 10_000 });
  const discard = page.locator('.cf-modal button[data-key="discard"]');
  if (await discard.count()) await discard.click();
  await page.waitForFunction(opened, undefined, { timeout: 10_000 });
}

/** The mask editor's canvas: its client rectangle and picture size, to aim strokes at picture pixels. */
async function canvasGeometry(): Promise<{ left: number; top: number; scaleX: number; scaleY: number; width: number; height: number }> {
  return js(`(() => { const c = document.querySelector('.cf-mask-canvas'); const r = c.getBoundingClientRect();
    return { left: r.left, top: r.top, scaleX: r.width / c.width, scaleY: r.height / c.height, width: c.width, height: c.height }; })()`);
}

/** A stroke from picture pixel `a` to `b` (pixel centres), with the mouse. */
async function stroke(a: Point, b: Point): Promise<void> {
  const g = await canvasGeometry();
  const client = ([x, y]: Point): Point => [g.left + (x + 0.5) * g.scaleX, g.top + (y + 0.5) * g.scaleY];
  const [ax, ay] = client(a);
  const [bx, by] = client(b);
  await page.mouse.move(ax, ay);
  await page.mouse.down();
  await page.mouse.move(bx, by, { steps: 12 });
  await page.mouse.up();
}

async function openMaskEditor(node: string): Promise<void> {
  const [x, y] = await widgetPos(node, 'path_mask');
  await page.mouse.click(x, y);
  try {
    await page.waitForSelector('.cf-mask-canvas', { timeout: 10_000 });
  } catch (err) {
    await page.screenshot({ path: join(ARTIFACTS, 'mask-editor-failed-to-open.png') });
    throw new Error(`${(err as Error).message}; at ${x},${y}; status: ${await page.locator('.cf-msg').textContent()}`);
  }
}

/** Saves and waits until the node's path is the new file; returns its RGBA pixels. */
async function saveMask(node: string): Promise<{ path: string; width: number; height: number; px: (x: number, y: number) => number[] }> {
  const before = (await values(node)).path;
  await page.click('.cf-mask-editor button[data-mask="save"]');
  await page.waitForFunction(`${app}.values(${JSON.stringify(node)}).path !== ${JSON.stringify(before)}`, undefined, { timeout: 10_000 });
  const path = (await values(node)).path as string;
  const { data, info } = await sharp(join(paths.inputs, path)).ensureAlpha().raw().toBuffer({ resolveWithObject: true });
  return { path, width: info.width, height: info.height, px: (x, y) => Array.from(data.subarray((y * info.width + x) * 4, (y * info.width + x) * 4 + 4)) };
}

beforeAll(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  dir = mkdtempSync(join(tmpdir(), 'charflow-mask-editor-'));
  paths = resolvePaths({ data: dir, env: {} });
  await ensureDirs(paths);
  await writeTinyModelSet(join(paths.models, 'tiny'));
  for (const f of ['insert_character.json', 'outpaint.json']) copyFileSync(join(PACKAGE_ROOT, 'workflows', f), join(paths.workflows, f));
  await buildEditor();
  server = await startServer({ paths, host: '127.0.0.1', port: 0 });
  browser = await launchChromium();
  page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
  watchProblems(page, problems);
  await page.goto(server.url.replace(/\/?$/, '/'));
  await page.waitForSelector('.cf-status[data-connection="open"]', { timeout: 20_000 });
  await page.waitForSelector('.cf-node-item[data-type="LoadMask"]', { timeout: 20_000 });
}, 240_000);

editorTeardown(() => ({ problems, browser, server, dir }));

const MASK_NODE = '12';
const IMAGE_NODE = '10';

describe('the mask editor', () => {
  it('on Load Mask: clear, two strokes, undo the second, save a black-and-white PNG the node points at', async () => {
    await openExample('insert_character');
    expect(await js<string>(`${app}.node('${MASK_NODE}').type`)).toBe('LoadMask');
    await openMaskEditor(MASK_NODE);
    const g = await canvasGeometry();
    expect([g.width, g.height]).toEqual([256, 256]); // the mask file's own size
    await page.click('button[data-mask="clear"]'); // the example's mask had a white box in the middle
    await page.locator('input[data-mask="size"]').fill('20');
    await page.locator('input[data-mask="hardness"]').fill('100');
    await stroke([30, 40], [220, 40]);
    await stroke([30, 200], [220, 200]);
    await page.screenshot({ path: join(ARTIFACTS, 'mask-editor-strokes.png') });
    await page.click('button[data-mask="undo"]');
    const saved = await saveMask(MASK_NODE);
    expect(saved.path).toMatch(/^scene_mask(_\d+)?\.png$/);
    expect([saved.width, saved.height]).toEqual([256, 256]);
    for (const x of [40, 128, 210]) {
      expect(saved.px(x, 40), `under the stroke at ${x},40`).toEqual([255, 255, 255, 255]);
      expect(saved.px(x, 34), `inside the brush's radius at ${x},34`).toEqual([255, 255, 255, 255]);
      expect(saved.px(x, 200), `under the undone stroke at ${x},200`).toEqual([0, 0, 0, 255]);
      expect(saved.px(x, 53), `past the brush's radius at ${x},53`).toEqual([0, 0, 0, 255]);
    }
    expect(saved.px(128, 150), 'where the cleared box was').toEqual([0, 0, 0, 255]);
    expect(saved.px(5, 40), 'left of the stroke').toEqual([0, 0, 0, 255]);
  }, 120_000);

  it('reopens the saved mask, inverts it, erases a stroke with a soft brush, saves again', async () => {
    await openMaskEditor(MASK_NODE);
    await page.click('button[data-mask="invert"]');
    await page.click('button[data-mask="erase"]');
    await page.locator('input[data-mask="size"]').fill('40');
    await page.locator('input[data-mask="hardness"]').fill('50');
    await stroke([30, 150], [220, 150]);
    const saved = await saveMask(MASK_NODE);
    expect(saved.px(128, 40), 'the first stroke, inverted').toEqual([0, 0, 0, 255]);
    expect(saved.px(128, 100), 'away from every stroke, inverted').toEqual([255, 255, 255, 255]);
    expect(saved.px(128, 150), 'under the eraser\'s centre').toEqual([0, 0, 0, 255]);
    // Hardness 0.5: full inside 10 pixels, fading out towards the radius (20), so a pixel 15 away is partly erased.
    const edge = saved.px(128, 165)[0]!;
    expect(edge).toBeGreaterThan(0);
    expect(edge).toBeLessThan(255);
  }, 120_000);

  it('on Load Image: the painted part becomes transparent in a copy of the picture, whose colours are kept', async () => {
    await openMaskEditor(IMAGE_NODE);
    await page.locator('input[data-mask="size"]').fill('30');
    await page.locator('input[data-mask="hardness"]').fill('100');
    await stroke([60, 128], [200, 128]);
    const saved = await saveMask(IMAGE_NODE);
    expect(saved.path).toMatch(/^scene_painted(_\d+)?\.png$/);
    const { data: scene } = await sharp(join(PACKAGE_ROOT, 'workflows/assets/scene.png')).ensureAlpha().raw().toBuffer({ resolveWithObject: true });
    const orig = (x: number, y: number) => Array.from(scene.subarray((y * 256 + x) * 4, (y * 256 + x) * 4 + 3));
    expect(saved.px(128, 128)).toEqual([...orig(128, 128), 0]);
    expect(saved.px(128, 60)).toEqual([...orig(128, 60), 255]);
    expect(saved.px(20, 128)).toEqual([...orig(20, 128), 255]);
  }, 120_000);
});

describe('the inpainting examples in the editor', () => {
  for (const name of ['insert_character', 'outpaint']) {
    it(`${name}.json runs`, async () => {
      await openExample(name);
      for (const [k, v] of [['width', 96], ['height', 64], ['steps', 2]] as const) await typeIntoWidget('7', k, v);
      if (name === 'outpaint') {
        for (const [k, v] of [['width', 64], ['height', 64]] as const) await typeIntoWidget(IMAGE_NODE, k, v);
        for (const [k, v] of [['left', 16], ['right', 16], ['feather', 8]] as const) await typeIntoWidget('12', k, v);
      } else {
        for (const [k, v] of [['width', 96], ['height', 64]] as const) await typeIntoWidget(IMAGE_NODE, k, v);
      }
      const before = await js<number>(`${app}.runs.log.length`);
      await page.click('button[data-action="run"]');
      await page.waitForFunction(`${app}.runs.log.slice(${before}).some((e) => e.event.type === 'run_finished')`, undefined, { timeout: 180_000 });
      const finished = await js<{ status: string }>(`${app}.runs.log.slice(${before}).find((e) => e.event.type === 'run_finished').event`);
      const failed = await js<unknown[]>(`${app}.runs.log.slice(${before}).filter((e) => e.event.type === 'node_failed' || e.event.status === 'failed').map((e) => e.event)`);
      expect(finished.status, `${name}: ${JSON.stringify(failed)}`).toBe('done');
      await page.waitForFunction(`(() => { const i = ${app}.node('9').run.images; return i.length === 1 && i[0].img.complete && i[0].img.naturalWidth > 0; })()`, undefined, { timeout: 20_000 });
      expect(await js<number[]>(`[${app}.node('9').run.images[0].img.naturalWidth, ${app}.node('9').run.images[0].img.naturalHeight]`)).toEqual([96, 64]);
    }, 240_000);
  }
});
