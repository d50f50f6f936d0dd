// The browser tests' Chromium: Debian's (or CHARFLOW_CHROMIUM's), headless. No silent skip: a missing
// browser is an error naming the command that installs it (`npm test` checks for it before any test).
import { existsSync, rmSync } from 'node:fs';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, afterEach, expect } from 'vitest';
import { CHROMIUM } from '../../scripts/system-deps.mjs';

export async function launchChromium(): Promise<Browser> {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: npm run test:setup`);
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
}

/**
 * Collects what a browser test must end without: uncaught page errors, console errors and (unless
 * `http` is false, for tests that expect refusals) HTTP responses of 400 or more.
 */
export function watchProblems(page: Page, problems: string[], { http = true }: { http?: boolean } = {}): void {
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console error: ${m.text()} (${m.location().url})`);
  });
  if (http) {
    page.on('response', (r) => {
      if (r.status() >= 400) problems.push(`HTTP ${r.status()} ${r.request().method()} ${r.url()}`);
    });
  }
}

/**
 * The hooks an editor browser test ends with: after each test, no page problems (watchProblems); after all,
 * the browser and the server closed and the data folder removed. `state` is read when the hooks run.
 */
export function editorTeardown(state: () => { problems: string[]; browser?: Browser; server?: { close(): Promise<unknown> }; dir?: string }): void {
  afterEach(() => {
    expect(state().problems.splice(0), 'page errors, console errors or HTTP errors during this test').toEqual([]);
  });
  afterAll(async () => {
    const s = state();
    await s.browser?.close();
    await s.server?.close();
    if (s.dir) rmSync(s.dir, { recursive: true, force: true });
  });
}

/** The editor's test hooks (window.charflow.app) on the page a test holds; `page` is read at each call. */
export function editorDriver(page: () => Page) {
  const app = 'window.charflow.app';
  /** Evaluates a JavaScript expression in the page (a string, so no transpiler helpers leak in). */
  const js = <T>(expr: string): Promise<T> => page().evaluate(expr) as Promise<T>;
  async function widgetPos(node: string, name: string, fraction = 0.5): Promise<[number, number]> {
    const p = await js<[number, number] | null>(`${app}.widgetPos(${JSON.stringify(node)}, ${JSON.stringify(name)}, ${fraction})`);
    if (!p) throw new Error(`no widget ${name} on node ${node}`);
    return p;
  }
  /**
   * Clicks a number or text widget and types the value into litegraph's prompt dialog. Right after a
   * workflow opens the view may still move (fit to the graph, thumbnails laid out), so the widget's
   * place is taken once it holds still, and a click that left the value unchanged is tried again.
   */
  async function typeIntoWidget(node: string, name: string, value: string | number): Promise<void> {
    const current = async (): Promise<unknown> => (await js<Record<string, unknown>>(`${app}.values(${JSON.stringify(node)})`))[name];
    const before = await current();
    for (let attempt = 0; attempt < 3; attempt++) {
      let [x, y] = await widgetPos(node, name);
      for (let i = 0; i < 10; i++) {
        await page().waitForTimeout(50);
        const [x2, y2] = await widgetPos(node, name);
        if (x2 === x && y2 === y) break;
        [x, y] = [x2, y2];
      }
      await page().mouse.click(x, y);
      const input = page().locator('.graphdialog input.value');
      await input.waitFor({ state: 'visible', timeout: 5000 });
      await input.fill(String(value));
      await input.press('Enter');
      await input.waitFor({ state: 'detached', timeout: 5000 });
      if (String(before) === String(value) || (await current()) !== before) return;
    }
  }
  return { app, js, widgetPos, typeIntoWidget };
}
