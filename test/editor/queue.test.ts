// The editor's queue and history panel, the gallery, undo, the node search and the token page (issue 25),
// with Debian's chromium via playwright-core against a real server running the tiny model set.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { editorDriver, launchChromium, watchProblems } from '../helpers/browser.ts';
import { ensureDirs, resolvePaths, type DataPaths } from '../../engine/paths.ts';
import { writeTinyModelSet } from '../../models/tiny.ts';
import { startServer } from '../../editor/server/index.ts';
import { buildEditor } from '../../editor/build.ts';

let dir: string;
let paths: DataPaths;
let server: Awaited<ReturnType<typeof startServer>>;
let browser: Browser;
let page: Page;
const problems: string[] = [];
const { app, js } = editorDriver(() => page);

/** Queues the default workflow at 64x64 with `inputs` for DiT Sample (node 7), named `name`; returns its run id. */
async function queue(name: string, inputs: Record<string, unknown>): Promise<string> {
  return js<string>(`(async () => {
    const wf = ${app}.workflow();
    Object.assign(wf.nodes['7'].inputs, { width: 64, height: 64 }, ${JSON.stringify(inputs)});
    wf.meta = { ...wf.meta, name: ${JSON.stringify(name)} };
    return (await ${app}.conn.request({ type: 'run', workflow: wf }, 'queued')).runId;
  })()`);
}

const row = (runId: string): string => `.cf-queue-panel .cf-job[data-run-id="${runId}"]`;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'charflow-queue-'));
  paths = resolvePaths({ data: dir, env: {} });
  await ensureDirs(paths);
  await writeTinyModelSet(join(paths.models, 'tiny'));
  await buildEditor();
  server = await startServer({ paths, host: '127.0.0.1', port: 0, device: 'cpu' });
  browser = await launchChromium();
  page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  watchProblems(page, problems, { http: false });
  await page.goto(server.url);
  await page.waitForSelector('.cf-status[data-connection="open"]', { timeout: 20_000 });
  await page.waitForFunction('window.charflow.graph._nodes.length === 9');
}, 240_000);

afterAll(async () => {
  await browser?.close();
  await server?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('queue, history and gallery', () => {
  let done: string;

  it('lists queued runs by name; Cancel on one of two pending runs leaves the other', async () => {
    await page.click('button[data-action="queue"]');
    await page.waitForSelector('.cf-queue-panel:not([hidden])');
    // A slow run keeps the runner busy, so that the next two wait.
    const slow = await queue('slow one', { steps: 200, width: 256, height: 256 });
    const first = await queue('first pending', { steps: 1, batch_size: 2 });
    const second = await queue('second pending', { steps: 1 });
    await page.waitForSelector(`${row(second)}[data-status="pending"]`);
    expect(await page.locator(`${row(first)} .cf-job-name`).textContent()).toBe('first pending');
    expect(await page.locator(`${row(first)} .cf-job-detail`).textContent()).toContain('queued by you');
    await page.waitForSelector(`${row(slow)}[data-status="running"] progress`);

    await page.click(`${row(second)} button[data-action="cancel"]`);
    await page.waitForSelector(`${row(second)}[data-status="pending"]`, { state: 'detached' });
    expect(await page.locator(`${row(first)}[data-status="pending"]`).count()).toBe(1);
    // The same data as ComfyUI's /queue: the cancelled run is gone from it, the other still waits.
    const q = (await (await fetch(new URL('/queue', server.url))).json()) as { queue_pending: unknown[][] };
    expect(q.queue_pending.map((p) => p[1])).toEqual([first]);
    // The cancelled run is in the history as cancelled.
    await page.waitForSelector(`${row(second)}[data-status="cancelled"]`);

    await page.click(`${row(slow)} button[data-action="cancel"]`);
    await page.waitForSelector(`${row(first)}[data-status="done"]`, { timeout: 90_000 });
    done = first;
    expect(problems.splice(0)).toEqual([]);
  }, 180_000);

  it('a past run shows its pictures in the gallery: full size, arrow keys through the batch, download', async () => {
    const detail = await page.locator(`${row(done)} .cf-job-detail`).textContent();
    expect(detail).toMatch(/^#\d+ · done · [\d.]+ (ms|s) · 2 pictures$/);
    expect(await page.locator(`${row(done)} img`).evaluate((i) => (i as HTMLImageElement).src)).toContain('/api/view?');
    await page.click(`${row(done)} .cf-job-text`);
    await page.waitForSelector('.cf-gallery');
    const history = (await (await fetch(new URL(`/history/${done}`, server.url))).json()) as Record<string, { outputs: Record<string, { images: { filename: string }[] }> }>;
    const files = Object.values(history[done]!.outputs).flatMap((o) => o.images.map((i) => i.filename));
    expect(files).toHaveLength(2);
    expect(await page.locator('.cf-gallery-name').textContent()).toBe(files[0]);
    expect(await page.locator('.cf-gallery-count').textContent()).toBe('1 / 2');
    await page.waitForFunction(`(() => { const i = document.querySelector('.cf-gallery-img'); return i.complete && i.naturalWidth === 64; })()`);
    // The reference picture beside it (Load Character's).
    expect(await page.locator('.cf-gallery-ref img').count()).toBe(1);
    await page.keyboard.press('ArrowRight');
    expect(await page.locator('.cf-gallery-name').textContent()).toBe(files[1]);
    expect(await page.locator('.cf-gallery-count').textContent()).toBe('2 / 2');
    expect(await page.locator('.cf-gallery-download').getAttribute('download')).toBe(files[1]);
    await page.keyboard.press('Escape');
    await page.waitForSelector('.cf-gallery', { state: 'detached' });
    expect(problems.splice(0)).toEqual([]);
  }, 60_000);

  it('reopens a past run\'s workflow on the canvas', async () => {
    await js(`${app}.graph.clear()`);
    await page.click(`${row(done)} button[data-action="open"]`);
    // The canvas was changed (cleared): the editor asks before replacing it.
    await page.click('.cf-modal button[data-key="open"]');
    await page.waitForFunction('window.charflow.graph._nodes.length === 9');
    const wf = await js<{ nodes: Record<string, { inputs: Record<string, unknown> }> }>(`${app}.workflow()`);
    expect(wf.nodes['7']!.inputs).toMatchObject({ width: 64, height: 64, steps: 1, batch_size: 2 });
    // Again: the same workflow queued once more; it runs and joins the history.
    const before = await page.locator('.cf-queue-panel .cf-job[data-status="done"]').count();
    await page.click(`${row(done)} button[data-action="again"]`);
    await expect.poll(() => page.locator('.cf-queue-panel .cf-job[data-status="done"]').count(), { timeout: 60_000 }).toBe(before + 1);
    const newest = await page.locator('.cf-queue-panel .cf-job[data-status="done"] .cf-job-name').first().textContent();
    expect(newest).toBe('first pending');
    expect(problems.splice(0)).toEqual([]);
  }, 90_000);
});

describe('editing', () => {
  it('Ctrl+Z undoes a delete (links included), Ctrl+Shift+Z redoes it', async () => {
    await page.click('button[data-action="queue"]'); // hide the panel
    const before = await js<unknown>(`${app}.workflow().nodes`);
    await js(`${app}.canvas.selectNode(${app}.graph.getNodeById(8))`);
    await page.locator('canvas.cf-canvas').focus();
    await page.keyboard.press('Delete');
    await page.waitForFunction('window.charflow.graph._nodes.length === 8');
    await page.keyboard.press('Control+z');
    await page.waitForFunction('window.charflow.graph._nodes.length === 9');
    expect(await js<unknown>(`${app}.workflow().nodes`)).toEqual(before);
    await page.keyboard.press('Control+Shift+Z');
    await page.waitForFunction('window.charflow.graph._nodes.length === 8');
    expect(Object.keys(await js<object>(`${app}.workflow().nodes`))).not.toContain('8');
    await page.keyboard.press('Control+z');
    await page.waitForFunction('window.charflow.graph._nodes.length === 9');
    expect(problems.splice(0)).toEqual([]);
  }, 60_000);

  it('double-click search finds DiT Sample by "KSampler" and Decode by "VAEDecode"', async () => {
    const box = (await page.locator('canvas.cf-canvas').boundingBox())!;
    // An empty spot: below every node.
    const spot = await js<[number, number]>(`(() => { let y = 0; for (const n of window.charflow.graph._nodes) y = Math.max(y, n.pos[1] + n.size[1]); return ${app}.toClient(0, y + 150); })()`);
    const x = Math.max(box.x + 40, spot[0]);
    const y = Math.min(box.y + box.height - 40, spot[1]);
    await page.mouse.dblclick(x, y);
    await page.waitForSelector('.cf-search-box input');
    await page.keyboard.type('KSampler');
    expect(await page.locator('.cf-search-box li').first().getAttribute('data-type')).toBe('DiTSample');
    await page.locator('.cf-search-box input').fill('VAEDecode');
    expect(await page.locator('.cf-search-box li').first().getAttribute('data-type')).toBe('Decode');
    await page.keyboard.press('Enter');
    await page.waitForFunction('window.charflow.graph._nodes.filter((n) => n.type === "Decode").length === 2');
    expect(problems.splice(0)).toEqual([]);
  }, 60_000);

  it('Save Image offers "Open image"', async () => {
    const labels = await js<string[]>(`window.charflow.app.node('9').getExtraMenuOptions().map((o) => o.content)`);
    expect(labels).toEqual(['Open image']);
    expect(await js<unknown[]>(`window.charflow.app.node('7').getExtraMenuOptions()`)).toEqual([]);
  });
});

describe('a protected server', () => {
  it('shows a token page to a browser without ?token=, JSON to scripts, and the editor after the token', async () => {
    // Its own data folder (one server per queue database), the same models.
    const other = resolvePaths({ data: join(dir, 'protected'), models: paths.models, env: {} });
    await ensureDirs(other);
    const protectedServer = await startServer({ paths: other, host: '127.0.0.1', port: 0, device: 'cpu', token: 'sekrit-token', services: server.services });
    try {
      const json = await fetch(protectedServer.url);
      expect(json.status).toBe(401);
      expect(json.headers.get('content-type')).toContain('application/json');
      const p = await browser.newPage();
      const res = await p.goto(protectedServer.url);
      expect(res!.status()).toBe(401);
      expect(await p.locator('h1').textContent()).toBe('charflow needs its token');
      await p.fill('input[name="token"]', 'sekrit-token');
      await p.click('button[type="submit"]');
      await p.waitForSelector('.cf-status[data-connection="open"]', { timeout: 20_000 });
      await p.close();
    } finally {
      await protectedServer.close();
    }
  }, 60_000);
});
