// The browser editor against a real server: Debian's chromium driven by playwright-core, the tiny
// model set, real UI actions (clicks, typing, drags between socket positions computed from the graph).
import { beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { editorDriver, editorTeardown, launchChromium, watchProblems } from '../helpers/browser.ts';
import sharp from 'sharp';
import { ensureDirs, resolvePaths, type DataPaths } from '../../engine/paths.ts';
import { writeTinyModelSet } from '../../models/tiny.ts';
import { PACKAGE_ROOT } from '../../nodes/services.ts';
import { readPngText } from '../../nodes/lib/image.ts';
import { startServer } from '../../editor/server/index.ts';
import { buildEditor } from '../../editor/build.ts';

const ARTIFACTS = join(PACKAGE_ROOT, 'test-artifacts', 'editor');

type Server = Awaited<ReturnType<typeof startServer>>;
type Point = [number, number];

let dir: string;
let paths: DataPaths;
let server: Server | undefined;
let browser: Browser | undefined;
let page: Page;
let port = 0;
/**
 * Everything that went wrong in the page since the last check: uncaught errors, console errors and
 * HTTP responses of 400 or more. Each test must end with none (the reconnect test allows the refused
 * connections of the server's downtime).
 */
const problems: string[] = [];
const { app, js, widgetPos, typeIntoWidget } = editorDriver(() => page);


async function shot(name: string): Promise<void> {
  await page.waitForTimeout(150); // one more animation frame for the canvas
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`) });
}

async function statusMessage(): Promise<string> {
  return (await page.locator('.cf-msg').textContent()) ?? '';
}

async function waitConnected(): Promise<void> {
  await page.waitForSelector('.cf-status[data-connection="open"]', { timeout: 20_000 });
  await page.waitForSelector('.cf-node-item[data-type="LoadModels"]', { timeout: 20_000 });
}

async function socketPos(node: string, kind: 'input' | 'output', name: string): Promise<Point> {
  const p = await js<Point | null>(`${app}.socketPos(${JSON.stringify(node)}, '${kind}', ${JSON.stringify(name)})`);
  if (!p) throw new Error(`no ${kind} ${name} on node ${node}`);
  return p;
}

/** Clicks the multiline prompt widget and types into the in-place editor. */
async function typePrompt(node: string, text: string): Promise<void> {
  const [x, y] = await widgetPos(node, 'prompt');
  await page.mouse.click(x, y);
  const ta = page.locator('textarea.cf-text-edit');
  await ta.waitFor({ state: 'visible', timeout: 5000 });
  await ta.fill(text);
  await ta.press('Control+Enter');
  await ta.waitFor({ state: 'detached', timeout: 5000 });
}

async function drag(from: Point, to: Point): Promise<void> {
  await page.mouse.move(from[0], from[1]);
  await page.mouse.down();
  await page.mouse.move((from[0] + to[0]) / 2, (from[1] + to[1]) / 2, { steps: 8 });
  await page.mouse.move(to[0], to[1], { steps: 8 });
  await page.mouse.up();
  await page.waitForTimeout(50);
}

async function values(node: string): Promise<Record<string, unknown>> {
  return js(`${app}.values(${JSON.stringify(node)})`);
}

interface WfNode {
  type: string;
  inputs: Record<string, unknown>;
  ui: { pos: Point; size: Point; [k: string]: unknown };
}
async function workflow(): Promise<{ nodes: Record<string, WfNode> }> {
  return js(`${app}.workflow()`);
}

/**
 * Drops a file on the canvas. Playwright cannot drag files from the desktop, so the drop events are
 * dispatched with a DataTransfer holding the file, as the browser would.
 */
async function dropFile(base64: string, name: string, type: string): Promise<void> {
  await page.evaluate(
    `(() => {
      const bytes = Uint8Array.from(atob(${JSON.stringify(base64)}), (c) => c.charCodeAt(0));
      const dt = new DataTransfer();
      dt.items.add(new File([bytes], ${JSON.stringify(name)}, { type: ${JSON.stringify(type)} }));
      const target = document.querySelector('canvas.cf-canvas');
      const r = target.getBoundingClientRect();
      const opts = { dataTransfer: dt, bubbles: true, cancelable: true, clientX: r.x + 120, clientY: r.y + 120 };
      target.dispatchEvent(new DragEvent('dragenter', opts));
      target.dispatchEvent(new DragEvent('dragover', opts));
      target.dispatchEvent(new DragEvent('drop', opts));
    })()`,
  );
}

async function openEditor(): Promise<void> {
  await page.goto(server!.url.replace(/\/?$/, '/'));
  await waitConnected();
}

beforeAll(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  for (const f of readdirSync(ARTIFACTS)) if (f.endsWith('.png')) rmSync(join(ARTIFACTS, f));
  dir = mkdtempSync(join(tmpdir(), 'charflow-editor-'));
  paths = resolvePaths({ data: dir, env: {} });
  await ensureDirs(paths);
  await writeTinyModelSet(join(paths.models, 'tiny'));
  for (const f of ['instantcharacter.json', 'two_characters.json', 'best_of_8.json']) copyFileSync(join(PACKAGE_ROOT, 'workflows', f), join(paths.workflows, f));
  await buildEditor();
  server = await startServer({ paths, host: '127.0.0.1', port: 0 });
  port = server.port;
  browser = await launchChromium();
  page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
  watchProblems(page, problems);
}, 240_000);

editorTeardown(() => ({ problems, browser, server, dir }));

describe('the browser editor', () => {
  it('opens, lists node types by category and loads the default workflow from the server', async () => {
    await openEditor();
    const categories = await page.locator('.cf-category').allTextContents();
    expect(categories).toEqual(expect.arrayContaining(['character', 'sampling', 'loaders']));
    // Search narrows the palette.
    await page.fill('.cf-search', 'dit');
    expect(await page.locator('.cf-node-item').evaluateAll((els) => els.map((e) => (e as HTMLElement).dataset.type))).toEqual(['DiTSample']);
    await page.fill('.cf-search', '');

    await page.click('button[data-action="open"]');
    await page.locator('.cf-list li[data-name*="instantcharacter"]').click();
    await page.waitForFunction(`window.charflow.graph._nodes.length === 9 && /instantcharacter/.test(document.querySelector('.cf-doc').textContent)`);
    const wf = await workflow();
    expect(wf.nodes['7']!.type).toBe('DiTSample');
    expect(wf.nodes['7']!.inputs.conditioning).toEqual({ node: '6', output: 'conditioning' });
    expect(wf.nodes['9']!.ui.pos).toEqual([1540, 200]);
    await shot('01-default-workflow');
  }, 120_000);

  it('makes the workflow small and changes the prompt through the widgets', async () => {
    // Values snap to the schema: width is a multiple of 16, so 100 becomes 96.
    await typeIntoWidget('7', 'width', 100);
    await typeIntoWidget('7', 'height', 64);
    await typeIntoWidget('7', 'steps', 3);
    await typePrompt('6', 'a character is reading a book in the rain');
    expect(await values('7')).toMatchObject({ width: 96, height: 64, steps: 3 });
    expect(await values('6')).toMatchObject({ prompt: 'a character is reading a book in the rain' });
    await expect.poll(() => page.locator('.cf-doc').textContent()).toContain('•');
    await shot('02-small-via-widgets');
  }, 120_000);

  it('runs it: the running node is highlighted with progress and preview, the image lands on SaveImage', async () => {
    await page.click('button[data-action="run"]');
    await page.waitForFunction(`${app}.runs.log.some((e) => e.event.type === 'node_progress' && e.event.nodeId === '7')`, undefined, { timeout: 60_000 });
    await shot('03-running');
    await page.waitForFunction(`${app}.runs.log.some((e) => e.event.type === 'run_finished')`, undefined, { timeout: 120_000 });
    const log = await js<{ event: { type: string; nodeId?: string; step?: number; total?: number; preview?: string; status?: string } }[]>(`${app}.runs.log`);
    const progress = log.filter((e) => e.event.type === 'node_progress' && e.event.nodeId === '7').map((e) => e.event);
    expect(progress.map((e) => `${e.step}/${e.total}`)).toEqual(['1/3', '2/3', '3/3']);
    expect(progress.some((e) => e.preview?.startsWith('data:image/'))).toBe(true);
    expect(log.at(-1)!.event).toMatchObject({ type: 'run_finished', status: 'done' });
    // The final image is shown on node 9 and is the 96x64 picture the server wrote.
    await page.waitForFunction(`(() => { const n = ${app}.node('9'); const i = n.run.images[0]; return i && i.img.complete && i.img.naturalWidth > 0; })()`);
    const shown = await js<{ w: number; h: number; url: string; state: string }>(
      `(() => { const n = ${app}.node('9'); const i = n.run.images[0]; return { w: i.img.naturalWidth, h: i.img.naturalHeight, url: i.ref.url, state: n.run.state }; })()`,
    );
    expect([shown.w, shown.h, shown.state]).toEqual([96, 64, 'done']);
    const png = new Uint8Array(await (await page.request.get(new URL(shown.url, server!.url).href)).body());
    const embedded = JSON.parse(readPngText(png).workflow!) as { nodes: Record<string, WfNode> };
    expect(embedded.nodes['6']!.inputs.prompt).toBe('a character is reading a book in the rain');
    expect(await js(`${app}.node('7').run.state`)).toBe('done');
    await expect.poll(statusMessage).toMatch(/finished/);
    await shot('04-finished');
  }, 240_000);

  let savedPositions: Record<string, Point> = {};

  it('builds a small graph from the palette, links compatible sockets only, saves it and finds it intact after a reload', async () => {
    await page.click('button[data-action="new"]');
    await page.locator('.cf-modal button[data-key="discard"]').click();
    await page.waitForFunction('window.charflow.graph._nodes.length === 0');

    // Add nodes from the palette: search + click, then move each by dragging its title bar.
    const add = async (query: string, type: string, to: Point): Promise<string> => {
      await page.fill('.cf-search', query);
      await page.locator(`.cf-node-item[data-type="${type}"]`).click();
      const id = await js<string>(`String(window.charflow.graph._nodes.at(-1).id)`);
      const title = await js<Point>(`(() => { const n = ${app}.node('${id}'); return ${app}.toClient(n.pos[0] + 40, n.pos[1] - 15); })()`);
      const target = await js<Point>(`${app}.toClient(${to[0]}, ${to[1]})`);
      await drag(title, target);
      return id;
    };
    const canvasBox = (await page.locator('canvas.cf-canvas').boundingBox())!;
    const origin = await js<Point>(`${app}.toGraph(${canvasBox.x + 60}, ${canvasBox.y + 120})`);
    const models = await add('load models', 'LoadModels', [origin[0] + 40, origin[1]]);
    const text = await add('text', 'TextEncode', [origin[0] + 420, origin[1]]);
    const save = await add('save', 'SaveImage', [origin[0] + 420, origin[1] + 260]);
    await page.fill('.cf-search', '');
    expect(await js(`window.charflow.graph._nodes.map((n) => n.type)`)).toEqual(['LoadModels', 'TextEncode', 'SaveImage']);

    // Compatible: MODELS -> MODELS.
    await drag(await socketPos(models, 'output', 'models'), await socketPos(text, 'input', 'models'));
    // Incompatible: MODELS -> IMAGE, and MODELS onto TextEncode's STRING parameter socket.
    await drag(await socketPos(models, 'output', 'models'), await socketPos(save, 'input', 'image'));
    const promptRow = await widgetPos(text, 'prompt', 0.02);
    await drag(await socketPos(models, 'output', 'models'), promptRow);
    const wf = await workflow();
    expect(wf.nodes[text]!.inputs.models).toEqual({ node: models, output: 'models' });
    expect(wf.nodes[save]!.inputs.image).toBeUndefined();
    expect(typeof wf.nodes[text]!.inputs.prompt).toBe('string');
    expect(await js('window.charflow.graph.links.size')).toBe(1);

    await typePrompt(text, 'a red fox in a library');
    await typeIntoWidget(save, 'filename_prefix', 'fox');
    await shot('05-small-graph');

    await page.click('button[data-action="saveas"]');
    await page.locator('.cf-modal input').fill('fox-test');
    await page.locator('.cf-modal button.primary').click();
    await expect.poll(() => page.locator('.cf-doc').textContent()).toMatch(/^fox-test(\.json)?$/);
    const before = await workflow();
    savedPositions = Object.fromEntries(Object.entries(before.nodes).map(([id, n]) => [id, n.ui.pos]));

    await page.reload();
    await waitConnected();
    await page.waitForFunction('window.charflow.graph._nodes.length === 3');
    await expect.poll(() => page.locator('.cf-doc').textContent()).toMatch(/^fox-test(\.json)?$/);
    const after = await workflow();
    expect(after).toEqual(before);
    expect(after.nodes[text]!.inputs).toEqual({ models: { node: models, output: 'models' }, prompt: 'a red fox in a library' });
    expect(after.nodes[save]!.inputs).toEqual({ filename_prefix: 'fox' });
    expect(Object.fromEntries(Object.entries(after.nodes).map(([id, n]) => [id, n.ui.pos]))).toEqual(savedPositions);
    expect(await js('window.charflow.graph.links.size')).toBe(1);
    await shot('06-reloaded');
  }, 120_000);

  it('shows validation errors of a refused run on their nodes', async () => {
    // SaveImage has no image linked: the server refuses the run.
    await page.click('button[data-action="run"]');
    await page.waitForFunction(`window.charflow.graph._nodes.some((n) => n.type === 'SaveImage' && n.run.error)`, undefined, { timeout: 10_000 });
    const error = await js<string>(`window.charflow.graph._nodes.find((n) => n.type === 'SaveImage').run.error`);
    expect(error).toMatch(/image/);
    await expect.poll(statusMessage).toMatch(/refused/);
    await shot('07-validation-errors');
  }, 120_000);

  it('shows the conflict message when the file changed on the server since it was opened', async () => {
    const files = readdirSync(paths.workflows).filter((f) => f.startsWith('fox-test'));
    expect(files.length).toBe(1);
    const file = join(paths.workflows, files[0]!);
    const onDisk = JSON.parse(readFileSync(file, 'utf8')) as { meta?: Record<string, unknown> };
    writeFileSync(file, JSON.stringify({ ...onDisk, meta: { ...onDisk.meta, changedBy: 'someone else' } }, null, 2));
    await typeIntoWidget(await js<string>(`String(window.charflow.graph._nodes.find((n) => n.type === 'SaveImage').id)`), 'filename_prefix', 'fox2');
    await page.click('button[data-action="save"]');
    const dialog = page.locator('.cf-modal.cf-choose');
    await dialog.waitFor({ timeout: 10_000 });
    expect(await dialog.locator('h2').textContent()).toBe('Save conflict');
    expect((await dialog.locator('.cf-message').textContent())!.length).toBeGreaterThan(10);
    await shot('08-save-conflict');
    await dialog.locator('button[data-key="overwrite"]').click();
    await expect.poll(statusMessage).toMatch(/saved/);
    expect(readFileSync(file, 'utf8')).toContain('"fox2"');
  }, 120_000);

  it('reopens the workflow of a dropped charflow PNG', async () => {
    const outputs = readdirSync(paths.outputs).filter((f) => f.endsWith('.png'));
    expect(outputs.length).toBeGreaterThan(0);
    await dropFile(readFileSync(join(paths.outputs, outputs[0]!)).toString('base64'), 'result.png', 'image/png');
    // The graph has unsaved changes? No: it was just saved, so the dropped workflow opens directly.
    await page.waitForFunction('window.charflow.graph._nodes.length === 9', undefined, { timeout: 10_000 });
    expect(await values('6')).toMatchObject({ prompt: 'a character is reading a book in the rain' });
    expect(await values('7')).toMatchObject({ width: 96, height: 64, steps: 3 });
    await shot('09-dropped-png');
  }, 120_000);

  it('turns a dropped picture into a Load Character node; its upload button stores another image', async () => {
    const b64 = readFileSync(join(PACKAGE_ROOT, 'workflows', 'assets', 'character.png')).toString('base64');
    await dropFile(b64, 'hero.png', 'image/png');
    await page.waitForFunction('window.charflow.graph._nodes.length === 10', undefined, { timeout: 10_000 });
    const id = await js<string>('String(window.charflow.graph._nodes.at(-1).id)');
    expect(await js(`${app}.node('${id}').type`)).toBe('LoadCharacter');
    expect(await values(id)).toMatchObject({ path: 'hero.png' });
    expect(existsSync(join(paths.inputs, 'hero.png'))).toBe(true);

    // The upload button opens a file chooser; the chosen file is uploaded and selected.
    const blue = await sharp({ create: { width: 40, height: 30, channels: 3, background: '#2050d0' } }).png().toBuffer();
    const chooser = page.waitForEvent('filechooser');
    const [x, y] = await widgetPos(id, 'path_upload');
    await page.mouse.click(x, y);
    await (await chooser).setFiles({ name: 'blue.png', mimeType: 'image/png', buffer: blue });
    await expect.poll(() => values(id)).toMatchObject({ path: 'blue.png' });
    expect(existsSync(join(paths.inputs, 'blue.png'))).toBe(true);
    expect(await js(`${app}.inputsList()`)).toEqual(['blue.png', 'hero.png']);
    await page.waitForTimeout(300); // thumbnail load
    await shot('10-uploaded-character');
  }, 120_000);

  it('opens a dropped workflow .json; a parameter fed by a link and an unknown node type survive a round trip', async () => {
    const wf = {
      format: 'charflow.workflow',
      version: 1,
      nodes: {
        '1': { type: 'LoadModels', inputs: { set: 'tiny' }, ui: { pos: [0, 0], size: [240, 70] } },
        '2': { type: 'PromptSource', inputs: { text: 'from elsewhere' }, ui: { pos: [0, 160], size: [240, 80], note: 'kept' } },
        '5': {
          type: 'TextEncode',
          inputs: { models: { node: '1', output: 'models' }, prompt: { node: '2', output: 'text' } },
          ui: { pos: [360, 40], size: [320, 240], title: 'Prompt from a link', custom: [1, 2] },
        },
      },
      groups: [{ title: 'Inputs', bounding: [-20, -60, 300, 340] }],
      meta: { title: 'round trip' },
    };
    await dropFile(Buffer.from(JSON.stringify(wf)).toString('base64'), 'linked.json', 'application/json');
    await page.locator('.cf-modal button[data-key="open"]').click(); // replaces unsaved changes
    await page.waitForFunction('window.charflow.graph._nodes.length === 3', undefined, { timeout: 10_000 });
    expect(await js('window.charflow.graph.links.size')).toBe(2);
    expect(await workflow()).toEqual(wf);
    // The prompt widget gives way to its link; the unknown node is flagged.
    expect(await js(`${app}.node('5').params.get('prompt').widget.computedDisabled`)).toBe(true);
    expect(await js(`window.charflow.graph.getNodeById(2).has_errors`)).toBe(true);
    await expect.poll(statusMessage).toMatch(/unknown type "PromptSource"/);
    await shot('11-linked-param-unknown-type');
  }, 120_000);

  it('opens the regional and best-of-8 examples with every link in place (CHARACTERS feeds DiT Sample\'s character)', async () => {
    for (const name of ['two_characters', 'best_of_8']) {
      const file = JSON.parse(readFileSync(join(PACKAGE_ROOT, 'workflows', `${name}.json`), 'utf8')) as { nodes: Record<string, WfNode> };
      const links = Object.values(file.nodes).flatMap((n) => Object.values(n.inputs).filter((v) => typeof v === 'object' && v !== null && 'node' in v));
      await page.click('button[data-action="open"]');
      await page.locator(`.cf-list li[data-name*="${name}"]`).click();
      const modal = page.locator('.cf-modal button[data-key="open"]');
      if (await modal.count()) await modal.click(); // replaces unsaved changes
      await page.waitForFunction(`window.charflow.graph._nodes.length === ${Object.keys(file.nodes).length}`, undefined, { timeout: 10_000 });
      expect(await js('window.charflow.graph.links.size')).toBe(links.length);
      const wf = await workflow();
      for (const [id, n] of Object.entries(file.nodes)) expect(wf.nodes[id]!.inputs, `${name} node ${id}`).toMatchObject(n.inputs); // + defaults of newer parameters
      await shot(`12-example-${name}`);
    }
    const dit = Object.entries((await workflow()).nodes).find(([, n]) => n.type === 'DiTSample')![0];
    expect(await js(`${app}.node('${dit}').inputs.find((s) => s.name === 'character').type`)).toBe('CHARACTER,CHARACTERS');
    // best_of_8 (open now), small: Identity Score shows the 8 scores on the node, Save Image the 2 best.
    await typeIntoWidget('7', 'width', 64);
    await typeIntoWidget('7', 'height', 64);
    await typeIntoWidget('7', 'steps', 2);
    const before = await js<number>(`${app}.runs.log.length`);
    await page.click('button[data-action="run"]');
    await page.waitForFunction(`${app}.runs.log.slice(${before}).some((e) => e.event.type === 'run_finished')`, undefined, { timeout: 120_000 });
    const summary = await js<string[]>(`${app}.node('10').run.summary`);
    expect(summary).toHaveLength(8);
    for (const line of summary) expect(line).toMatch(/^#\d DINO-I -?\d\.\d{3} SigLIP-I -?\d\.\d{3}$/);
    await page.waitForFunction(`${app}.node('9').run.images.length === 2`);
    await shot('12-best_of_8-scores');
  }, 240_000);

  it('reconnects by itself when the server restarts', async () => {
    await server!.close();
    await page.waitForSelector('.cf-status[data-connection="closed"]', { timeout: 15_000 });
    await shot('13-offline');
    server = await startServer({ paths, host: '127.0.0.1', port });
    await page.waitForSelector('.cf-status[data-connection="open"]', { timeout: 20_000 });
    expect(await page.locator('.cf-conn').textContent()).toBe('connected');
    // While the server was down the page's reconnect attempts failed, as they should; nothing else went wrong.
    for (const p of problems.splice(0)) expect(p).toMatch(/WebSocket connection to .* failed|ERR_CONNECTION_REFUSED/);
  }, 120_000);
});

describe('the browser editor: the sampler-option examples (true CFG, a batch of 4, image-to-image)', () => {
  const examples = ['true_cfg', 'batch4', 'img2img'];
  beforeAll(() => {
    for (const f of examples) copyFileSync(join(PACKAGE_ROOT, 'workflows', `${f}.json`), join(paths.workflows, `${f}.json`));
  });

  it('opens each, makes it small through the widgets, runs it and shows every image on Save Image', async () => {
    await openEditor(); // also when run alone (-t)
    for (const name of examples) {
      const file = JSON.parse(readFileSync(join(PACKAGE_ROOT, 'workflows', `${name}.json`), 'utf8')) as { nodes: Record<string, WfNode> };
      const idOf = (type: string): string | undefined => Object.entries(file.nodes).find(([, n]) => n.type === type)?.[0];
      await page.click('button[data-action="open"]');
      await page.locator(`.cf-list li[data-name*="${name}"]`).click();
      const opened = `window.charflow.graph._nodes.length === ${Object.keys(file.nodes).length} && document.querySelector('.cf-doc').textContent.includes(${JSON.stringify(name)})`;
      // Unsaved changes (the previous example's widgets) are discarded after a question.
      await page.waitForFunction(`(${opened}) || document.querySelector('.cf-modal button[data-key="discard"]') !== null`, undefined, { timeout: 10_000 });
      const modal = page.locator('.cf-modal button[data-key="discard"]');
      if (await modal.count()) await modal.click();
      await page.waitForFunction(opened, undefined, { timeout: 10_000 });
      const sampler = idOf('DiTSample')!;
      const save = idOf('SaveImage')!;
      for (const [k, v] of [['width', 96], ['height', 64], ['steps', 2]] as const) await typeIntoWidget(sampler, k, v);
      const loader = idOf('LoadImage');
      if (loader) for (const [k, v] of [['width', 96], ['height', 64]] as const) await typeIntoWidget(loader, k, v);
      const before = await js<number>(`${app}.runs.log.length`);
      await page.click('button[data-action="run"]');
      await page.waitForFunction(`${app}.runs.log.slice(${before}).some((e) => e.event.type === 'run_finished')`, undefined, { timeout: 180_000 });
      const finished = await js<{ status: string }>(`${app}.runs.log.slice(${before}).find((e) => e.event.type === 'run_finished').event`);
      expect(finished.status, name).toBe('done');
      const batch = (file.nodes[sampler]!.inputs.batch_size as number | undefined) ?? 1;
      await page.waitForFunction(`(() => { const i = ${app}.node('${save}').run.images; return i.length === ${batch} && i.every((x) => x.img.complete && x.img.naturalWidth > 0); })()`, undefined, { timeout: 20_000 });
      const sizes = await js<number[][]>(`${app}.node('${save}').run.images.map((i) => [i.img.naturalWidth, i.img.naturalHeight])`);
      expect(sizes, name).toEqual(Array(batch).fill([96, 64]));
      await shot(`14-example-${name}`);
    }
  }, 600_000);
});
