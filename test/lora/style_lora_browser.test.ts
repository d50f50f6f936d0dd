// workflows/style_lora.json in the browser editor (Debian's chromium through playwright-core, the tiny set, a
// generated LoRA): the Load LoRA node offers the loras folder, uploads a LoRA through its button, and the workflow
// runs to an image.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { editorDriver, launchChromium, watchProblems } from '../helpers/browser.ts';
import { ensureDirs, resolvePaths, type DataPaths } from '../../engine/paths.ts';
import { TINY_CLIP, TINY_FLUX, writeTinyModelSet } from '../../models/tiny.ts';
import { syntheticKohyaLora } from '../../models/lora/synthetic.ts';
import { writeSafetensors } from '../../models/weights/safetensors.ts';
import { PACKAGE_ROOT } from '../../nodes/services.ts';
import { startServer } from '../../editor/server/index.ts';
import { buildEditor } from '../../editor/build.ts';

const EXAMPLE = JSON.parse(readFileSync(join(PACKAGE_ROOT, 'workflows', 'style_lora.json'), 'utf8')) as { nodes: Record<string, { type: string; inputs: Record<string, unknown> }> };
const id = (type: string): string => Object.entries(EXAMPLE.nodes).find(([, n]) => n.type === type)![0];
const LORA = id('LoraLoader');
const LORA_FILE = EXAMPLE.nodes[LORA]!.inputs.lora_name as string;

let dir: string;
let paths: DataPaths;
let server: Awaited<ReturnType<typeof startServer>> | undefined;
let browser: Browser | undefined;
let page: Page;
const problems: string[] = [];
const { app, js, widgetPos, typeIntoWidget } = editorDriver(() => page);

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'charflow-style-browser-'));
  paths = resolvePaths({ data: dir, env: {} });
  await ensureDirs(paths);
  await writeTinyModelSet(join(paths.models, 'tiny'));
  copyFileSync(join(PACKAGE_ROOT, 'workflows', 'style_lora.json'), join(paths.workflows, 'style_lora.json'));
  mkdirSync(join(dir, 'loras'), { recursive: true });
  writeSafetensors(join(dir, 'loras', LORA_FILE), syntheticKohyaLora(TINY_FLUX, TINY_CLIP, 4, 7));
  writeSafetensors(join(dir, 'second.safetensors'), syntheticKohyaLora(TINY_FLUX, undefined, 2, 9)); // to upload
  await buildEditor();
  server = await startServer({ paths, host: '127.0.0.1', port: 0 });
  browser = await launchChromium();
  page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
  watchProblems(page, problems);
}, 240_000);

afterAll(async () => {
  await browser?.close();
  await server?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('the style LoRA workflow in the browser editor', () => {
  it('offers the loras folder, uploads a LoRA and runs the workflow to an image', async () => {
    await page.goto(server!.url.replace(/\/?$/, '/'));
    await page.waitForSelector('.cf-status[data-connection="open"]', { timeout: 20_000 });
    await page.waitForSelector('.cf-node-item[data-type="LoraLoader"]', { timeout: 20_000 });
    await page.click('button[data-action="open"]');
    await page.locator('.cf-list li[data-name*="style_lora"]').click();
    await page.waitForFunction(`window.charflow.graph._nodes.length === ${Object.keys(EXAMPLE.nodes).length}`, undefined, { timeout: 10_000 });
    const choices = await js<string[]>(`(() => { const w = window.charflow.graph.getNodeById(${LORA}).widgets.find((w) => w.name === 'lora_name'); const v = w.options.values; return typeof v === 'function' ? v() : v; })()`);
    expect(choices).toEqual([LORA_FILE]);

    // Upload through the node's button: the file chooser gets the second LoRA, the widget then names it.
    const [x, y] = await widgetPos(LORA, 'lora_name_upload');
    const chooser = page.waitForEvent('filechooser');
    await page.mouse.click(x, y);
    await (await chooser).setFiles(join(dir, 'second.safetensors'));
    await page.waitForFunction(`${app}.values(${JSON.stringify(LORA)}).lora_name === 'second.safetensors'`, undefined, { timeout: 10_000 });
    expect(existsSync(join(dir, 'loras', 'second.safetensors'))).toBe(true);

    const sampler = id('DiTSample');
    await typeIntoWidget(sampler, 'width', 96);
    await typeIntoWidget(sampler, 'height', 64);
    await typeIntoWidget(sampler, 'steps', 2);
    await page.click('button[data-action="run"]');
    await page.waitForFunction(`${app}.runs.log.some((e) => e.event.type === 'run_finished')`, undefined, { timeout: 120_000 });
    expect((await js<{ event: { type: string; status?: string } }[]>(`${app}.runs.log`)).at(-1)!.event).toMatchObject({ type: 'run_finished', status: 'done' });
    const saver = id('SaveImage');
    await page.waitForFunction(`(() => { const i = ${app}.node(${JSON.stringify(saver)}).run.images[0]; return i && i.img.complete && i.img.naturalWidth > 0; })()`, undefined, { timeout: 20_000 });
    expect(problems).toEqual([]);
  }, 240_000);
});
