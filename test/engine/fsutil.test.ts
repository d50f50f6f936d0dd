import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileError, formatBytes, readFileLimited, readTextLimited, writeFileAtomic } from '../../engine/fsutil.ts';
import { ensureDirs, resolveInside, resolvePaths } from '../../engine/paths.ts';
import { loadWorkflow, saveWorkflow } from '../../engine/workflow/load.ts';
import { benchGraphScale } from '../../bench/graph-scale.ts';
import { testRegistry, wf } from '../helpers/testnodes.ts';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'charflow-fs-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function rejection(p: Promise<unknown>): Promise<FileError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(FileError);
    return err as FileError;
  }
  throw new Error('expected a rejection');
}

describe('readFileLimited', () => {
  it('reads files up to the limit', async () => {
    const f = path.join(dir, 'ten.bin');
    await writeFile(f, Buffer.alloc(10, 7));
    expect(await readFileLimited(f, 10)).toEqual(Buffer.alloc(10, 7));
    expect(await readFileLimited(f, 100)).toEqual(Buffer.alloc(10, 7));
  });

  it('refuses larger files, naming the file and sizes', async () => {
    const f = path.join(dir, 'big.bin');
    await writeFile(f, Buffer.alloc(3000));
    const e = await rejection(readFileLimited(f, 2048));
    expect(e.code).toBe('too_large');
    expect(e.message).toBe(`${f}: 2.9 KiB is larger than the limit of 2.0 KiB`);
  });

  it('refuses endless devices without reading them whole', async () => {
    const e = await rejection(readFileLimited('/dev/zero', 1 << 16));
    expect(e.code).toBe('too_large');
    expect(e.message).toBe('/dev/zero: larger than the limit of 64 KiB');
  });

  it('reports missing files and folders clearly', async () => {
    const missing = path.join(dir, 'nope.json');
    expect((await rejection(readFileLimited(missing, 10))).message).toBe(`${missing}: file not found`);
    expect((await rejection(readFileLimited(dir, 10))).message).toBe(`${dir}: is a directory, not a file`);
  });

  it('readTextLimited drops a byte-order mark', async () => {
    const f = path.join(dir, 'bom.txt');
    await writeFile(f, '\uFEFF{"a":1}');
    expect(await readTextLimited(f, 100)).toBe('{"a":1}');
  });

  it('formatBytes', () => {
    expect([formatBytes(5), formatBytes(1536), formatBytes(16 * 1024 * 1024), formatBytes(3 * 1024 ** 3)]).toEqual([
      '5 bytes',
      '1.5 KiB',
      '16 MiB',
      '3.0 GiB',
    ]);
  });
});

describe('writeFileAtomic', () => {
  it('writes, replaces, creates the folder and leaves no temporary files', async () => {
    const f = path.join(dir, 'sub', 'deeper', 'out.json');
    await writeFileAtomic(f, 'first');
    await writeFileAtomic(f, new Uint8Array([104, 105]));
    expect(await readFile(f, 'utf8')).toBe('hi');
    expect(await readdir(path.dirname(f))).toEqual(['out.json']);
  });

  it('a failed write leaves the old file intact and cleans up', async () => {
    const d = path.join(dir, 'blocked');
    await mkdir(path.join(d, 'target'), { recursive: true }); // a folder where the file should go
    const e = await rejection(writeFileAtomic(path.join(d, 'target'), 'x'));
    expect(e.code).toBe('io');
    expect(e.message.startsWith(`${path.join(d, 'target')}: cannot write (`)).toBe(true);
    expect((await readdir(d)).sort()).toEqual(['target']);
  });

  it('concurrent writers never produce a mixed file', async () => {
    const f = path.join(dir, 'race.txt');
    const a = 'a'.repeat(100_000);
    const b = 'b'.repeat(100_000);
    await Promise.all([writeFileAtomic(f, a), writeFileAtomic(f, b), writeFileAtomic(f, a)]);
    expect([a, b]).toContain(await readFile(f, 'utf8'));
  });
});

describe('workflow files', () => {
  it('saveWorkflow + loadWorkflow round-trip', async () => {
    const f = path.join(dir, 'wf', 'saved.json');
    const w = wf({ '1': ['Const', { value: 3 }] });
    await saveWorkflow(f, w);
    expect(await readFile(f, 'utf8')).toBe(`${JSON.stringify(w, null, 2)}\n`);
    const r = await loadWorkflow(f, testRegistry());
    expect(r.ok).toBe(true);
    expect(r.workflow!.nodes['1']!.inputs).toEqual({ value: 3 });
  });

  it('loadWorkflow enforces the size limit', async () => {
    const f = path.join(dir, 'wf', 'huge.json');
    await writeFile(f, JSON.stringify(wf({ '1': ['Const', { value: 3 }] })));
    const r = await loadWorkflow(f, testRegistry(), { maxBytes: 20 });
    expect(r.errors).toHaveLength(1);
    expect(r.errors[0]!.code).toBe('file');
    expect(r.errors[0]!.message).toMatch(/^.*huge\.json: \d+ bytes is larger than the limit of 20 bytes$/);
  });
});

describe('paths', () => {
  it('defaults to ./data with everything inside', () => {
    expect(resolvePaths({ cwd: '/w', env: {} })).toEqual({
      root: '/w/data',
      models: '/w/data/models',
      outputs: '/w/data/outputs',
      inputs: '/w/data/inputs',
      workflows: '/w/data/workflows',
      temp: '/w/data/temp',
      database: '/w/data/queue.db',
    });
  });

  it('--data beats CHARFLOW_DATA; --models beats CHARFLOW_MODELS', () => {
    const env = { CHARFLOW_DATA: '/env/data', CHARFLOW_MODELS: '/env/models' };
    expect(resolvePaths({ cwd: '/w', env })).toMatchObject({ root: '/env/data', models: '/env/models', outputs: '/env/data/outputs' });
    expect(resolvePaths({ cwd: '/w', env, data: 'd', models: '../m' })).toMatchObject({ root: '/w/d', models: '/m' });
    expect(resolvePaths({ cwd: '/w', env: { CHARFLOW_DATA: '' } }).root).toBe('/w/data');
  });

  it('ensureDirs creates every folder', async () => {
    const p = resolvePaths({ cwd: dir, env: {}, data: 'store' });
    await ensureDirs(p);
    expect((await readdir(p.root)).sort()).toEqual(['inputs', 'models', 'outputs', 'temp', 'workflows']);
  });

  it('resolveInside refuses paths that leave the folder', () => {
    expect(resolveInside('/data/inputs', 'a/b.png')).toBe('/data/inputs/a/b.png');
    expect(() => resolveInside('/data/inputs', '../secret')).toThrowError('path "../secret" is outside /data/inputs');
    expect(() => resolveInside('/data/inputs', '/etc/passwd')).toThrowError('outside');
    expect(() => resolveInside('/data/inputs', '')).toThrowError('outside');
  });
});

describe('bench/graph-scale', () => {
  it('measures validation, scheduling and per-node overhead', async () => {
    const r = await benchGraphScale(500, 1);
    for (const v of [r.validateMs, r.scheduleMs, r.perNodeUs]) expect(Number.isFinite(v)).toBe(true);
  });
});
