// Many tabs at once on loopback (bench/load.ts drives them): 50 WebSocket clients queue runs of
// the tiny workflow at 96x64 with distinct seeds while a probe keeps asking GET /api/nodes. Only
// behaviour is asserted: each run finishes exactly once for its tab, for every other tab and in
// the queue's history; none is lost; the server answers the probe throughout. Plus: tabs that
// close right after queueing lose nothing either.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { resolvePaths } from '../../engine/paths.ts';
import { writeTinyModelSet } from '../../models/tiny.ts';
import { createServices, PACKAGE_ROOT, type OwnedServices } from '../../nodes/services.ts';
import { startServer } from '../../editor/server/index.ts';
import { benchLoad, formatLoad } from '../../bench/load.ts';
import { TestClient } from './client.ts';

const CLIENTS = 50;
const RUNS_EACH = 2;

let root: string;
let models: string;
let services: OwnedServices;

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'charflow-load-test-'));
  models = join(root, 'models');
  await writeTinyModelSet(join(models, 'tiny'));
  services = await createServices(resolvePaths({ data: join(root, 'shared'), models }), { device: 'cpu', log: () => {} });
}, 120_000);

afterAll(async () => {
  await services?.close();
  if (root) rmSync(root, { recursive: true, force: true });
});

describe('load on loopback', () => {
  it(`${CLIENTS} tabs x ${RUNS_EACH} runs: every job finishes exactly once, the server answers throughout`, async () => {
    const r = await benchLoad({ clients: CLIENTS, runsPerClient: RUNS_EACH, steps: 1, clientsIn: 'inline', services, timeoutMs: 200_000 });
    console.log(formatLoad(r));
    const jobs = CLIENTS * RUNS_EACH;
    expect(r.check.problems).toEqual([]);
    expect([r.check.queued, r.check.finishedOnceForOwner, r.check.inHistoryOnce]).toEqual([jobs, jobs, jobs]);
    expect(r.check.statuses).toEqual({ done: jobs });
    // Answered throughout: no probe failed or timed out, none waited long, no long silence.
    expect(r.probe.failures).toBe(0);
    expect(r.probe.count).toBeGreaterThan(0);
    expect(r.probe.max).toBeLessThan(10_000);
    expect(r.probe.maxGapMs).toBeLessThan(15_000);
  }, 300_000);

  it('tabs that close right after queueing lose no job, and no job runs twice', async () => {
    const paths = resolvePaths({ data: join(root, 'closing'), models });
    const server = await startServer({ paths, port: 0, services, staticDir: null, startRunner: false, log: () => {} });
    try {
      const wf = JSON.parse(readFileSync(join(PACKAGE_ROOT, 'workflows/instantcharacter.json'), 'utf8')) as { nodes: Record<string, { inputs: Record<string, unknown> }> };
      const ids: string[] = [];
      for (let i = 0; i < 8; i++) {
        const c = await TestClient.connect(`ws://127.0.0.1:${server.port}/ws/editor`);
        Object.assign(wf.nodes['7']!.inputs, { width: 96, height: 64, steps: 1, seed: 500 + i });
        const q = await c.request({ type: 'run', workflow: wf });
        if (q.type !== 'queued') throw new Error(JSON.stringify(q));
        ids.push(q.runId);
        await c.close();
      }
      const watcher = await TestClient.connect(`ws://127.0.0.1:${server.port}/ws/editor`);
      server.runner.start();
      for (const id of ids) expect((await watcher.event(id, 'run_finished', () => true)).event).toMatchObject({ status: 'done' });
      await server.runner.whenIdle();
      const history = server.queue.history({ limit: 100 });
      expect(ids.map((id) => history.filter((j) => j.id === id).length)).toEqual(ids.map(() => 1));
      expect(ids.map((id) => watcher.events(id).filter((e) => e.event.type === 'run_finished').length)).toEqual(ids.map(() => 1));
      expect(server.queue.counts()).toMatchObject({ pending: 0, running: 0 });
      await watcher.close();
    } finally {
      await server.close();
    }
  }, 120_000);
});
