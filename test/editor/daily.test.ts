// The editor for everyday use (issue 25): templates, the model-set list and models panel, the chosen
// picture's thumbnail, and the background at device pixel ratio 2. Debian's chromium via playwright-core
// against a real server with the tiny model set (and a copy of it, so that there is a choice).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { launchChromium, watchProblems } from '../helpers/browser.ts';
import sharp from 'sharp';
import { ensureDirs, resolvePaths, type DataPaths } from '../../engine/paths.ts';
import { writeTinyModelSet } from '../../models/tiny.ts';
import { PACKAGE_ROOT } from '../../nodes/services.ts';
import { startServer } from '../../editor/server/index.ts';
import { buildEditor } from '../../editor/build.ts';

let dir: string;
let paths: DataPaths;
let server: Awaited<ReturnType<typeof startServer>>;
let browser: Browser;
const problems: string[] = [];

async function newPage(deviceScaleFactor = 1): Promise<Page> {
  const page = await browser.newPage({ viewport: { width: 1200, height: 800 }, deviceScaleFactor });
  watchProblems(page, problems, { http: false });
  await page.goto(server.url);
  await page.waitForSelector('.cf-status[data-connection="open"]', { timeout: 20_000 });
  await page.waitForFunction('window.charflow.graph._nodes.length > 0');
  return page;
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'charflow-daily-'));
  paths = resolvePaths({ data: dir, env: {} });
  await ensureDirs(paths);
  await writeTinyModelSet(join(paths.models, 'tiny'));
  cpSync(join(paths.models, 'tiny'), join(paths.models, 'tiny-copy'), { recursive: true });
  await buildEditor();
  server = await startServer({ paths, host: '127.0.0.1', port: 0, device: 'cpu' });
  browser = await launchChromium();
}, 240_000);

afterAll(async () => {
  await browser?.close();
  await server?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('the editor for everyday use', () => {
  it('Templates offers every bundled workflow with its description, and opens one', async () => {
    const page = await newPage();
    await page.click('button[data-action="templates"]');
    await page.waitForSelector('.cf-list li[data-name]');
    const names = await page.locator('.cf-list li[data-name]').evaluateAll((els) => els.map((e) => (e as HTMLElement).dataset.name));
    const bundled = readdirSync(join(PACKAGE_ROOT, 'workflows')).filter((f) => f.endsWith('.json')).map((f) => f.slice(0, -5)).sort();
    expect(names).toEqual(bundled);
    const file = JSON.parse(readFileSync(join(PACKAGE_ROOT, 'workflows', 'two_characters.json'), 'utf8')) as { meta: { title: string }; nodes: Record<string, unknown> };
    expect(await page.locator('.cf-list li[data-name="two_characters"] .cf-detail').textContent()).toBe(file.meta.title);
    await page.locator('.cf-list li[data-name="two_characters"]').click();
    await page.waitForFunction(`window.charflow.graph._nodes.length === ${Object.keys(file.nodes).length}`);
    expect(Object.keys(await page.evaluate('window.charflow.app.workflow().nodes') as object).sort()).toEqual(Object.keys(file.nodes).sort());
    await page.close();
    expect(problems.splice(0)).toEqual([]);
  }, 120_000);

  it('Load Models offers the installed sets; the models panel shows format, size and loaded state', async () => {
    const page = await newPage();
    const id = await page.evaluate(`window.charflow.graph._nodes.find((n) => n.type === 'LoadModels').id`) as number;
    const choices = await page.evaluate(`(() => { const w = window.charflow.app.node(${id}).widgets.find((w) => w.name === 'set'); const v = w.options.values; return typeof v === 'function' ? v() : v; })()`);
    expect(choices).toEqual(['tiny', 'tiny-copy']);
    await page.click('button[data-action="models"]');
    await page.waitForSelector('.cf-model-list li[data-name="tiny-copy"]');
    const rows = await page.locator('.cf-model-list li[data-name]').evaluateAll((els) => els.map((e) => [(e as HTMLElement).dataset.name, e.querySelector('.cf-detail')!.textContent]));
    const listed = (await (await fetch(new URL('/api/models', server.url))).json()) as { sets: { name: string; bytes: number }[] };
    expect(rows.map((r) => r[0])).toEqual(['tiny', 'tiny-copy']);
    for (const [name, detail] of rows) {
      const bytes = listed.sets.find((s) => s.name === name)!.bytes;
      expect(detail).toBe(`fp32 · ${(bytes / 1024 ** 2).toFixed(0)} MB · not loaded`);
    }
    expect(await page.locator('.cf-model-list li[data-name="tiny"] button').isDisabled()).toBe(true);
    await page.close();
    expect(problems.splice(0)).toEqual([]);
  }, 120_000);

  it('Load Character shows the chosen picture as a thumbnail, also on a small node just opened', async () => {
    const page = await newPage();
    const id = await page.evaluate(`window.charflow.graph._nodes.find((n) => n.type === 'LoadCharacter').id`) as number;
    await page.waitForFunction(`(() => { const i = window.charflow.app.node(${id}).shownImage(); return i && i.complete && i.naturalWidth > 0; })()`);
    await page.evaluate('window.charflow.canvas.setDirty(true, true)');
    await page.waitForTimeout(200);
    // The picture is drawn below the widgets: its rectangle starts under the last widget.
    const [x, y] = await page.evaluate(`(() => { const n = window.charflow.app.node(${id}); return window.charflow.app.toClient(n.pos[0] + n.size[0] / 2, n.pos[1] + n.size[1] + 8 + 6 + 20); })()`) as [number, number];
    const shot = await page.screenshot({ clip: { x: x - 2, y: y - 2, width: 4, height: 4 } });
    const { data } = await sharp(shot).raw().toBuffer({ resolveWithObject: true });
    // Not the canvas background (#222 or so): a picture pixel.
    expect(Math.max(data[0]!, data[1]!, data[2]!)).toBeGreaterThan(0x40);
    await page.close();
    expect(problems.splice(0)).toEqual([]);
  }, 120_000);

  it('a freshly opened workflow draws the picture below the widgets from its first frame (no stripes)', async () => {
    const page = await newPage();
    const id = await page.evaluate(`window.charflow.graph._nodes.find((n) => n.type === 'LoadCharacter').id`) as number;
    await page.waitForFunction(`(() => { const i = window.charflow.app.node(${id}).shownImage(); return i && i.complete && i.naturalWidth > 0; })()`);
    // Record where each frame puts the picture, then reopen the workflow with room for it inside the node.
    const tops = await page.evaluate(`(async () => {
      const app = window.charflow.app;
      const proto = Object.getPrototypeOf(app.node(${id}));
      const tops = [];
      const draw = proto.drawImage;
      proto.drawImage = function (ctx, img, below) {
        if (this.type === 'LoadCharacter') tops.push([this.contentTop(), Math.max(...this.widgets.filter((w) => !w.hidden).map((w) => (w.y ?? 0) + (w.computedHeight ?? 0)))]);
        return draw.call(this, ctx, img, below);
      };
      const wf = app.workflow();
      wf.nodes[String(${id})].ui.size = [300, 420];
      app.open(wf, null, null, 'test');
      for (let i = 0; i < 3; i++) { app.canvas.draw(true, true); await new Promise((r) => requestAnimationFrame(r)); }
      proto.drawImage = draw;
      return tops;
    })()`) as [number, number][];
    expect(tops.length).toBeGreaterThan(1);
    // From the first frame on: below the last widget, and the same on every frame.
    expect(tops[0]![0]).toBeGreaterThanOrEqual(tops[0]![1]);
    expect(tops[0]![1]).toBeGreaterThan(0);
    for (const t of tops) expect(t).toEqual(tops[0]);
    await page.close();
    expect(problems.splice(0)).toEqual([]);
  }, 120_000);

  it('at device pixel ratio 2 the background grid covers the whole canvas (every corner)', async () => {
    const page = await newPage(2);
    // At 100 % zoom litegraph draws its grid pattern.
    await page.evaluate('(() => { const c = window.charflow.canvas; c.ds.scale = 1; c.ds.offset[0] = 0; c.ds.offset[1] = 0; c.setDirty(true, true); })()');
    await page.waitForTimeout(300);
    const box = (await page.locator('canvas.cf-canvas').boundingBox())!;
    const size = 60;
    const corners: [number, number][] = [[box.x + 2, box.y + 2], [box.x + box.width - size - 2, box.y + 2], [box.x + 2, box.y + box.height - size - 2], [box.x + box.width - size - 2, box.y + box.height - size - 2]];
    for (const [x, y] of corners) {
      const png = await page.screenshot({ clip: { x, y, width: size, height: size } });
      const { data, info } = await sharp(png).removeAlpha().raw().toBuffer({ resolveWithObject: true });
      expect(info.width).toBe(size * 2); // device pixels
      const colours = new Set<number>();
      for (let i = 0; i < data.length; i += 3) colours.add((data[i]! << 16) | (data[i + 1]! << 8) | data[i + 2]!);
      // The grid: background and lines, so more than one colour in every corner; the page behind is flat.
      expect(colours.size, `corner at ${x},${y}`).toBeGreaterThan(1);
    }
    await page.screenshot({ path: join(dir, 'dpr2.png') });
    await page.close();
    expect(problems.splice(0)).toEqual([]);
  }, 120_000);
});
