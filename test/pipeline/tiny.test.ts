// The default workflow on the tiny model set, through the real executor, nodes and session pool.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { resolvePaths, type DataPaths } from '../../engine/paths.ts';
import { Executor } from '../../engine/executor/index.ts';
import { validateWorkflow } from '../../engine/workflow/index.ts';
import type { ValidWorkflow } from '../../engine/workflow/types.ts';
import { createServices, PACKAGE_ROOT, type OwnedServices } from '../../nodes/services.ts';
import { nodeRegistry } from '../../nodes/registry.ts';
import { tinySpec, writeTinyModelSet } from '../../models/tiny.ts';
import { writeModelSet } from '../../models/modelset.ts';
import { readPngText } from '../../nodes/lib/image.ts';

const registry = nodeRegistry();
const base = JSON.parse(readFileSync(join(PACKAGE_ROOT, 'workflows/instantcharacter.json'), 'utf8')) as {
  nodes: Record<string, { type: string; inputs: Record<string, unknown> }>;
};

let dir: string;
let paths: DataPaths;
let services: OwnedServices;

/** The default workflow, small and quick, with some inputs changed. */
function workflow(changes: Record<string, Record<string, unknown>> = {}): ValidWorkflow {
  const wf = structuredClone(base);
  Object.assign(wf.nodes['7']!.inputs, { width: 96, height: 64, steps: 3 });
  for (const [id, inputs] of Object.entries(changes)) Object.assign(wf.nodes[id]!.inputs, inputs);
  const v = validateWorkflow(wf, registry);
  if (!v.ok) throw new Error(v.errors.map((e) => e.message).join('\n'));
  return v.workflow!;
}

function runsOf(component: string): number {
  const stats = services.pool.stats();
  return Object.entries(stats.runs).filter(([p]) => p.endsWith(`/${component}.onnx`)).reduce((n, [, c]) => n + c, 0);
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'charflow-tiny-'));
  paths = resolvePaths({ data: dir });
  await writeTinyModelSet(join(paths.models, 'tiny'));
  services = await createServices(paths, { device: 'cpu' });
}, 300_000);

afterAll(async () => {
  await services?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('the default workflow on the tiny set', () => {
  it('writes a PNG of the requested size that carries the workflow; adapter parts run once and once per step', async () => {
    const executor = new Executor({ registry, services, logger: { info: () => {}, warn: () => {} } });
    const progress: number[] = [];
    let previews = 0;
    const result = await executor.run(workflow(), {
      onEvent: (e) => {
        if (e.type === 'node_progress' && e.nodeId === '7') {
          progress.push(e.step);
          if (e.preview) previews++;
        }
      },
    });
    expect(result.status, JSON.stringify(result.nodes)).toBe('done');
    expect(progress).toEqual([1, 2, 3]);
    expect(previews).toBe(3);
    const images = (result.outputs['9'] as { images: { filename: string }[] }).images;
    const file = join(paths.outputs, images[0]!.filename);
    const meta = await sharp(file).metadata();
    expect([meta.width, meta.height, meta.format]).toEqual([96, 64, 'png']);
    const embedded = JSON.parse(readPngText(readFileSync(file)).workflow!) as { nodes: Record<string, { type: string }> };
    expect(embedded.nodes['7']!.type).toBe('DiTSample');
    expect(runsOf('adapter_static')).toBe(1);
    expect(runsOf('adapter_time')).toBe(3);
    expect(runsOf('flux')).toBe(3);
  });

  it('re-runs only TextEncode and what follows when only the prompt changes', async () => {
    const executor = new Executor({ registry, services, logger: { info: () => {}, warn: () => {} } });
    await executor.run(workflow());
    const staticBefore = runsOf('adapter_static');
    const result = await executor.run(workflow({ 6: { prompt: 'the same character, reading in a library' } }));
    expect(result.status).toBe('done');
    const ran = Object.entries(result.nodes).filter(([, o]) => o.status === 'done').map(([id]) => id).sort();
    expect(ran).toEqual(['6', '7', '8', '9']);
    expect(runsOf('adapter_static')).toBe(staticBefore);
  });

  it('gives the same image for the same seed, and another for another seed', async () => {
    const pixels = async (seed: number) => {
      const executor = new Executor({ registry, services, logger: { info: () => {}, warn: () => {} } });
      const r = await executor.run(workflow({ 7: { seed } }));
      const name = (r.outputs['9'] as { images: { filename: string }[] }).images[0]!.filename;
      return sharp(join(paths.outputs, name)).raw().toBuffer();
    };
    const a = await pixels(7);
    expect((await pixels(7)).equals(a)).toBe(true);
    expect((await pixels(8)).equals(a)).toBe(false);
  });

  it('rejects bad input with errors that name the node', async () => {
    const executor = new Executor({ registry, services, logger: { info: () => {}, warn: () => {} } });
    mkdirSync(paths.inputs, { recursive: true });
    writeFileSync(join(paths.inputs, 'corrupt.png'), Buffer.from('not a png at all'));
    copyFileSync(join(PACKAGE_ROOT, 'workflows/assets/character.png'), join(paths.inputs, 'ok.png'));
    const failures: [Record<string, Record<string, unknown>>, string, RegExp][] = [
      [{ 2: { path: 'missing.png' } }, '2', /not found/],
      [{ 2: { path: 'corrupt.png' } }, '2', /not a readable image/],
      [{ 2: { path: '../../etc/passwd' } }, '2', /not found|outside/],
      [{ 2: { path: '/etc/hostname' } }, '2', /outside/],
      [{ 1: { set: 'no-such-set' } }, '1', /not found/],
    ];
    for (const [changes, nodeId, message] of failures) {
      const r = await executor.run(workflow(changes));
      expect(r.status).toBe('failed');
      const outcome = r.nodes[nodeId]!;
      expect(outcome.status).toBe('failed');
      if (outcome.status === 'failed') expect(outcome.message).toMatch(message);
    }
    const bad = validateWorkflow({ ...structuredClone(base), nodes: { ...structuredClone(base).nodes, 7: { ...base.nodes['7'], inputs: { ...base.nodes['7']!.inputs, width: 100 } } } }, registry);
    expect(bad.ok).toBe(false);
    expect(bad.errors[0]!.message).toMatch(/node 7 \(DiTSample\).*width/);
  });

  it('runs a float16 model set through the same nodes (the host side stays float32)', async () => {
    await writeModelSet({ ...tinySpec(), name: 'tiny16', dtype: 'float16' }, join(paths.models, 'tiny16'));
    const executor = new Executor({ registry, services, logger: { info: () => {}, warn: () => {} } });
    const result = await executor.run(workflow({ 1: { set: 'tiny16' } }));
    expect(result.status, JSON.stringify(result.nodes)).toBe('done');
    const name = (result.outputs['9'] as { images: { filename: string }[] }).images[0]!.filename;
    const meta = await sharp(join(paths.outputs, name)).metadata();
    expect([meta.width, meta.height]).toEqual([96, 64]);
  });
});
