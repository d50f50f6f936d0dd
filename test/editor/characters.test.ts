// Saved characters in the browser editor against a real server: the server's character routes and
// /object_info, the Characters panel with thumbnails, dragging a character onto the canvas, "Save Character"
// from a Load Character node's context menu, and workflows/storyboard.json run from the editor.
// Debian's chromium driven by playwright-core on the tiny model set, as test/editor/editor.test.ts does.
import { beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync } from 'node:fs';
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
import { main } from '../../cli/main.ts';
import { THUMBNAIL_SIZE, readCharacter } from '../../nodes/lib/saved_characters.ts';

const ARTIFACTS = join(PACKAGE_ROOT, 'test-artifacts', 'editor-characters');
type Server = Awaited<ReturnType<typeof startServer>>;
type Point = [number, number];

let dir: string;
let paths: DataPaths;
let server: Server | undefined;
let browser: Browser | undefined;
let page: Page;
const problems: string[] = [];
const { app, js } = editorDriver(() => page);
const quiet = { write: () => true };

async function shot(name: string): Promise<void> {
  await page.waitForTimeout(150); // one more animation frame for the canvas
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`) });
}

async function api(path: string): Promise<Response> {
  return fetch(new URL(path, server!.url));
}

interface WfNode { type: string; inputs: Record<string, unknown> }
async function workflow(): Promise<{ nodes: Record<string, WfNode> }> {
  return js(`${app}.workflow()`);
}

/** Opens a workflow file of the server's workflows folder through the Open dialog. */
async function openWorkflow(name: string, nodes: number): Promise<void> {
  await page.keyboard.press('Escape'); // nothing left open by an earlier step
  await page.click('button[data-action="open"]');
  await page.locator(`.cf-list li[data-name*="${name}"]`).click();
  // Unsaved changes on screen are asked about before they are replaced.
  const opened = `window.charflow.graph._nodes.length === ${nodes} && document.querySelector('.cf-modal') === null`;
  await page.waitForFunction(`(${opened}) || document.querySelector('.cf-modal button[data-key="discard"]') !== null`, undefined, { timeout: 10_000 });
  const discard = page.locator('.cf-modal button[data-key="discard"]');
  if (await discard.count()) await discard.click();
  await page.waitForFunction(opened, undefined, { timeout: 10_000 });
}

/** Small samplers, so runs are quick on the tiny set. */
async function smallSamplers(): Promise<void> {
  await js(`(() => { for (const n of window.charflow.graph._nodes) if (n.type === 'DiTSample') for (const [k, v] of [['width', 64], ['height', 64], ['steps', 2]]) n.params.get(k).set(v); })()`);
}

async function runAndWait(): Promise<void> {
  const before = await js<number>(`${app}.runs.log.length`);
  await page.click('button[data-action="run"]');
  await page.waitForFunction(`${app}.runs.log.slice(${before}).some((e) => e.event.type === 'run_finished' || e.event.type === 'run_failed')`, undefined, { timeout: 180_000 });
  expect(await js<string[]>(`${app}.runs.log.slice(${before}).map((e) => e.event.type).filter((t) => t.startsWith('run_'))`)).toContain('run_finished');
}

beforeAll(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  dir = mkdtempSync(join(tmpdir(), 'charflow-editor-chars-'));
  paths = resolvePaths({ data: dir, env: {} });
  await ensureDirs(paths);
  await writeTinyModelSet(join(paths.models, 'tiny'));
  for (const f of ['instantcharacter.json', 'storyboard.json']) copyFileSync(join(PACKAGE_ROOT, 'workflows', f), join(paths.workflows, f));
  const code = await main(['characters', 'add', 'hero', join(PACKAGE_ROOT, 'workflows/assets/character.png'), '--data', dir, '--device', 'cpu'], { stdout: quiet, stderr: quiet, env: {} });
  if (code !== 0) throw new Error(`characters add: exit ${code}`);
  await buildEditor();
  server = await startServer({ paths, host: '127.0.0.1', port: 0, log: () => {} });
  browser = await launchChromium();
  page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
  watchProblems(page, problems);
}, 300_000);

editorTeardown(() => ({ problems, browser, server, dir }));

describe('saved characters on the server', () => {
  it('lists them with thumbnails, and /object_info offers them as Saved Character\'s COMBO', async () => {
    const list = (await (await api('/api/characters')).json()) as { items: { name: string; set: string; bytes: number }[] };
    expect(list.items.map((c) => [c.name, c.set])).toEqual([['hero', 'tiny']]);
    const thumb = await api('/api/characters/hero/thumbnail');
    expect(thumb.headers.get('content-type')).toBe('image/png');
    const meta = await sharp(Buffer.from(await thumb.arrayBuffer())).metadata();
    expect([meta.format, meta.width, meta.height]).toEqual(['png', THUMBNAIL_SIZE, THUMBNAIL_SIZE]);
    expect((await api('/api/characters/nobody/thumbnail')).status).toBe(404);
    expect((await api('/api/characters/..%2Fmodels/thumbnail')).status).toBe(400);
    const info = (await (await api('/object_info/SavedCharacter')).json()) as Record<string, { input: { required: Record<string, unknown[]> } }>;
    expect(info.SavedCharacter!.input.required.name![0]).toEqual(['hero']);
    const all = (await (await api('/object_info')).json()) as Record<string, { input: { required: Record<string, unknown[]> } }>;
    expect(all.SavedCharacter!.input.required.name![0]).toEqual(['hero']);
  });
});

describe('the Characters panel', () => {
  it('shows each saved character with its thumbnail; dragging one onto the canvas adds its node wired to Load Models', async () => {
    await page.goto(server!.url.replace(/\/?$/, '/'));
    await page.waitForSelector('.cf-status[data-connection="open"]', { timeout: 20_000 });
    const entry = page.locator('.cf-character[data-name="hero"]');
    await entry.waitFor({ timeout: 20_000 });
    await page.waitForFunction(`(() => { const i = document.querySelector('.cf-character[data-name="hero"] img'); return i && i.complete && i.naturalWidth === ${THUMBNAIL_SIZE}; })()`);
    expect(await entry.textContent()).toContain('tiny');

    const before = await js<number>('window.charflow.graph._nodes.length');
    const box = (await page.locator('canvas.cf-canvas').boundingBox())!;
    await entry.dragTo(page.locator('canvas.cf-canvas'), { targetPosition: { x: box.width / 2, y: box.height - 120 } });
    await page.waitForFunction(`window.charflow.graph._nodes.length === ${before + 1}`, undefined, { timeout: 5000 });
    const wf = await workflow();
    const [id, node] = Object.entries(wf.nodes).find(([, n]) => n.type === 'SavedCharacter')!;
    expect(node.inputs.name).toBe('hero');
    const modelsId = Object.entries(wf.nodes).find(([, n]) => n.type === 'LoadModels')![0];
    expect(node.inputs.models).toEqual({ node: modelsId, output: 'models' });
    // Its name widget offers the saved characters.
    expect(await js(`${app}.values(${JSON.stringify(id)}).name`)).toBe('hero');
    await shot('01-panel-and-dropped-character');
  }, 120_000);

  it('runs workflows/storyboard.json: one saved character in four scenes', async () => {
    await openWorkflow('storyboard', 18);
    await smallSamplers();
    const outputsBefore = readdirSync(paths.outputs).length;
    await runAndWait();
    const saves = Object.entries((await workflow()).nodes).filter(([, n]) => n.type === 'SaveImage').map(([id]) => id);
    expect(saves).toHaveLength(4);
    for (const id of saves) await page.waitForFunction(`${app}.node('${id}').run.images.length === 1`, undefined, { timeout: 10_000 });
    expect(readdirSync(paths.outputs).filter((f) => f.startsWith('storyboard_')).length - outputsBefore).toBe(4);
    await shot('02-storyboard');
  }, 240_000);

  it('"Save Character" in a Load Character node\'s context menu wires a Save Character node; running it adds the character to the panel', async () => {
    await openWorkflow('instantcharacter', 9);
    await smallSamplers();
    // Right-click the Load Character node's title.
    const title = await js<Point>(`(() => { const n = ${app}.node('2'); return ${app}.toClient(n.pos[0] + 60, n.pos[1] - 12); })()`);
    await page.mouse.click(title[0], title[1], { button: 'right' });
    const item = page.locator('.litecontextmenu .litemenu-entry', { hasText: 'Save Character' });
    await item.first().waitFor({ timeout: 5000 });
    await shot('03-context-menu');
    await item.first().click();
    await page.waitForFunction('window.charflow.graph._nodes.length === 10', undefined, { timeout: 5000 });
    const wf = await workflow();
    const save = Object.values(wf.nodes).find((n) => n.type === 'SaveCharacter')!;
    expect(save.inputs).toMatchObject({
      models: { node: '1', output: 'models' }, reference: { node: '2', output: 'image' }, character: { node: '5', output: 'character' }, name: 'character',
    });
    const saveId = Object.entries(wf.nodes).find(([, n]) => n.type === 'SaveCharacter')![0];
    await js(`${app}.node('${saveId}').params.get('name').set('villain')`);
    await runAndWait();
    await page.locator('.cf-character[data-name="villain"]').waitFor({ timeout: 10_000 });
    await shot('04-saved-villain');
    const c = readCharacter(join(dir, 'characters', 'villain.safetensors'));
    expect([c.name, c.set]).toEqual(['villain', 'tiny']);
  }, 240_000);
});
