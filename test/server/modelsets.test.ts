// Model sets you can pick (issue 25, item 3): `charflow models list`, /api/models with what is loaded and
// an unload, and Load Models' `set` as a COMBO of the installed sets in /object_info.
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureDirs, resolvePaths, type DataPaths } from '../../engine/paths.ts';
import { writeTinyModelSet } from '../../models/tiny.ts';
import { startServer, type RunningServer } from '../../editor/server/index.ts';
import { main } from '../../cli/main.ts';
import { PACKAGE_ROOT } from '../../nodes/services.ts';
import { workflowToApi } from '../../editor/server/comfy/convert.ts';
import { nodeRegistry } from '../../nodes/registry.ts';

let dir: string;
let paths: DataPaths;
let server: RunningServer;

/** Bytes of every file in a folder (recursive), as `du --apparent-size` counts them, manifest excluded. */
function graphBytes(folder: string): number {
  let n = 0;
  for (const e of readdirSync(folder, { withFileTypes: true, recursive: true })) {
    if (e.isFile() && /\.(onnx|data|bin|onnx_data)$|\.onnx\./.test(e.name)) n += statSync(join(e.parentPath, e.name)).size;
  }
  return n;
}

async function get<T>(path: string): Promise<T> {
  const res = await fetch(new URL(path, server.url));
  expect(res.status, path).toBe(200);
  return (await res.json()) as T;
}

interface Item { name: string; format: string; bytes: number; complete: boolean; loaded: number }

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'charflow-modelsets-'));
  paths = resolvePaths({ data: dir, env: {} });
  await ensureDirs(paths);
  await writeTinyModelSet(join(paths.models, 'tiny'));
  cpSync(join(paths.models, 'tiny'), join(paths.models, 'another'), { recursive: true });
  server = await startServer({ paths, host: '127.0.0.1', port: 0, device: 'cpu' });
}, 120_000);

afterAll(async () => {
  await server?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('installed model sets', () => {
  it('charflow models list --json: name, format and size on disk of each set', async () => {
    const out: string[] = [];
    const code = await main(['models', 'list', '--json', '--data', dir], { stdout: { write: (s: string) => void out.push(s) }, stderr: { write: () => {} }, env: {}, cwd: dir });
    expect(code).toBe(0);
    const listed = JSON.parse(out.join('')) as { sets: Item[] };
    expect(listed.sets.map((s) => s.name)).toEqual(['another', 'tiny']);
    for (const s of listed.sets) {
      expect(s).toMatchObject({ format: 'fp32', complete: true });
      expect(s.bytes).toBe(graphBytes(join(paths.models, s.name)));
    }
  });

  it('/object_info offers Load Models\' set as a COMBO of the installed sets', async () => {
    const info = await get<{ LoadModels: { input: { required: { set: [unknown, Record<string, unknown>] } } } }>('/object_info/LoadModels');
    expect(info.LoadModels.input.required.set[0]).toEqual(['another', 'tiny']);
    expect(info.LoadModels.input.required.set[1]).toMatchObject({ default: 'tiny' });
  });

  it('/api/models says which sets are loaded, and unloads one', async () => {
    const before = await get<{ sets: Item[] }>('/api/models');
    expect(before.sets.map((s) => [s.name, s.loaded])).toEqual([['another', 0], ['tiny', 0]]);
    // Run a small workflow on "tiny": its graphs are loaded afterwards.
    const wf = JSON.parse(readFileSync(join(PACKAGE_ROOT, 'workflows', 'instantcharacter.json'), 'utf8')) as { nodes: Record<string, { inputs: Record<string, unknown> }> };
    Object.assign(wf.nodes['7']!.inputs, { width: 64, height: 64, steps: 1 });
    const prompt = workflowToApi(wf as never, nodeRegistry());
    const r = await fetch(new URL('/prompt', server.url), { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt }) });
    expect(r.status).toBe(200);
    const { prompt_id: id } = (await r.json()) as { prompt_id: string };
    await expect.poll(async () => Object.keys(await get<Record<string, unknown>>(`/history/${id}`)).length, { timeout: 60_000, interval: 250 }).toBe(1);
    const during = await get<{ sets: Item[] }>('/api/models');
    expect(during.sets.find((s) => s.name === 'tiny')!.loaded).toBeGreaterThan(0);
    expect(during.sets.find((s) => s.name === 'another')!.loaded).toBe(0);
    // `charflow models list --server` says the same, loaded graphs included.
    const out: string[] = [];
    expect(await main(['models', 'list', '--server', server.url], { stdout: { write: (t: string) => void out.push(t) }, stderr: { write: () => {} }, env: {}, cwd: dir })).toBe(0);
    expect(out.join('').split('\n').find((l) => l.startsWith('tiny '))).toMatch(new RegExp(`ok, loaded \\(${during.sets.find((s) => s.name === 'tiny')!.loaded} graphs\\)$`));
    const un = await fetch(new URL('/api/models/tiny/unload', server.url), { method: 'POST' });
    expect(un.status).toBe(200);
    expect(await un.json()).toEqual({ name: 'tiny', unloaded: during.sets.find((s) => s.name === 'tiny')!.loaded });
    const after = await get<{ sets: Item[] }>('/api/models');
    expect(after.sets.map((s) => [s.name, s.loaded])).toEqual([['another', 0], ['tiny', 0]]);
  }, 120_000);
});
