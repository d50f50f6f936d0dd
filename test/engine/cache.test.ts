import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { estimateSize, OutputCache } from '../../engine/executor/cache.ts';
import { Executor } from '../../engine/executor/executor.ts';
import type { NodeDef } from '../../engine/node.ts';
import { validateWorkflow } from '../../engine/workflow/validate.ts';
import type { ValidWorkflow, Workflow } from '../../engine/workflow/types.ts';
import { Const, createTestServices, link, testRegistry, wf, type TestServices } from '../helpers/testnodes.ts';

const reg = testRegistry();

function valid(w: Workflow, registry: ReadonlyMap<string, NodeDef<TestServices>> = reg): ValidWorkflow {
  const r = validateWorkflow(w, registry);
  expect(r.errors).toEqual([]);
  return r.workflow!;
}

const statuses = (r: { nodes: Record<string, { status: string }> }): Record<string, string> =>
  Object.fromEntries(Object.entries(r.nodes).map(([id, o]) => [id, o.status]));

describe('OutputCache', () => {
  it('evicts the least recently used entries to stay within the budget', () => {
    const c = new OutputCache(100);
    expect(c.set('a', { v: 1 }, 40)).toBe(true);
    expect(c.set('b', { v: 2 }, 40)).toBe(true);
    expect(c.get('a')).toEqual({ v: 1 }); // a is now the most recent
    expect(c.set('c', { v: 3 }, 40)).toBe(true); // evicts b
    expect(c.keys()).toEqual(['a', 'c']);
    expect(c.get('b')).toBeUndefined();
    expect(c.stats).toEqual({ entries: 2, bytes: 80, budget: 100, hits: 1, misses: 1, evictions: 1 });
  });

  it('does not store an entry larger than the budget', () => {
    const c = new OutputCache(100);
    c.set('a', { v: 1 }, 50);
    expect(c.set('big', { v: 2 }, 101)).toBe(false);
    expect(c.keys()).toEqual(['a']);
    expect(c.set('exact', { v: 3 }, 100)).toBe(true);
    expect(c.keys()).toEqual(['exact']);
  });

  it('replacing a key updates the byte count', () => {
    const c = new OutputCache(100);
    c.set('a', {}, 30);
    c.set('a', {}, 60);
    expect(c.stats.bytes).toBe(60);
    c.delete('a');
    expect(c.stats.bytes).toBe(0);
  });

  it('estimateSize counts typed arrays, buffers and strings, shared objects once', () => {
    expect(estimateSize(new Float32Array(10))).toBe(64 + 40);
    expect(estimateSize(Buffer.alloc(100))).toBe(64 + 100);
    expect(estimateSize(new ArrayBuffer(8))).toBe(64 + 8);
    expect(estimateSize('abcd')).toBe(16 + 8);
    expect(estimateSize(3)).toBe(8);
    const shared = new Uint8Array(1000);
    expect(estimateSize([shared, shared])).toBe(32 + 64 + 1000 + 8); // the same array twice counts once
    const obj = { data: new Uint8Array(10) };
    expect(estimateSize([obj, obj])).toBe(32 + (32 + 16 + 8 + 74) + 8);
  });
});

describe('caching across runs', () => {
  const chain = (ids: [string, string, string], b = 5): Workflow =>
    wf({
      [ids[0]]: ['Const', { value: 1 }],
      [ids[1]]: ['Add', { a: link(ids[0], 'value'), b }],
      [ids[2]]: ['Collect', { value: link(ids[1], 'sum') }],
    });

  it('a second identical run is served from the cache without touching upstream', async () => {
    const s = createTestServices();
    const ex = new Executor({ registry: reg, services: s });
    const first = await ex.run(valid(chain(['1', '2', '3'])));
    expect(statuses(first)).toEqual({ '1': 'done', '2': 'done', '3': 'done' });
    const events: string[] = [];
    const second = await ex.run(valid(chain(['1', '2', '3'])), { onEvent: (e) => void events.push(e.type) });
    expect(statuses(second)).toEqual({ '3': 'cached' });
    expect(second.outputs).toEqual({ '3': { value: 6 } });
    expect(events).toEqual(['run_started', 'node_cached', 'run_finished']);
    expect(s.calls).toEqual({ '1': 1, '2': 1, '3': 1 });
  });

  it('a changed constant re-runs that node and what depends on it; upstream is a hit', async () => {
    const s = createTestServices();
    const ex = new Executor({ registry: reg, services: s });
    await ex.run(valid(chain(['1', '2', '3'])));
    const r = await ex.run(valid(chain(['1', '2', '3'], 6)));
    expect(statuses(r)).toEqual({ '1': 'cached', '2': 'done', '3': 'done' });
    expect(r.outputs['3']).toEqual({ value: 7 });
  });

  it('renumbered nodes still hit', async () => {
    const s = createTestServices();
    const ex = new Executor({ registry: reg, services: s });
    await ex.run(valid(chain(['1', '2', '3'])));
    const r = await ex.run(valid(chain(['30', '10', '20'])));
    expect(statuses(r)).toEqual({ '20': 'cached' });
    expect(r.outputs).toEqual({ '20': { value: 6 } });
  });

  it('explicit default values and input order do not change the key', async () => {
    const s = createTestServices();
    const ex = new Executor({ registry: reg, services: s });
    await ex.run(valid(wf({ '1': ['Add', { a: 2 }] })), { targets: ['1'] });
    const w = wf({ '1': ['Add', { b: 0, a: 2 }] });
    expect(statuses(await ex.run(valid(w), { targets: ['1'] }))).toEqual({ '1': 'cached' });
  });

  it('a new declaration version misses', async () => {
    const s = createTestServices();
    const ex1 = new Executor({ registry: reg, services: s });
    await ex1.run(valid(wf({ '1': ['Const', { value: 1 }] })), { targets: ['1'] });
    const reg2 = new Map(reg);
    reg2.set('Const', { ...Const, version: 2 });
    const ex2 = new Executor({ registry: reg2, services: s, cache: ex1.cache });
    const r = await ex2.run(valid(wf({ '1': ['Const', { value: 1 }] }), reg2), { targets: ['1'] });
    expect(statuses(r)).toEqual({ '1': 'done' });
  });

  it('evicts by byte budget (least recently used first)', async () => {
    const s = createTestServices();
    // Each Blob of 256 floats is 1024 bytes; the budget holds two.
    const ex = new Executor({ registry: reg, services: s, cacheBudgetBytes: 2100 });
    const w = valid(wf({ '1': ['Blob', { fill: 1 }], '2': ['Blob', { fill: 2 }], '3': ['Blob', { fill: 3 }] }));
    const run = async (t: string): Promise<string> => (await ex.run(w, { targets: [t] })).nodes[t]!.status;
    expect([await run('1'), await run('2'), await run('1')]).toEqual(['done', 'done', 'cached']);
    expect(await run('3')).toBe('done'); // evicts 2, the least recently used
    expect(ex.cache.stats).toMatchObject({ entries: 2, bytes: 2048, evictions: 1 });
    expect([await run('1'), await run('3'), await run('2')]).toEqual(['cached', 'cached', 'done']);
    expect(s.calls).toEqual({ '1': 1, '2': 2, '3': 1 });
  });

  it('an output bigger than the budget is not cached', async () => {
    const s = createTestServices();
    const ex = new Executor({ registry: reg, services: s, cacheBudgetBytes: 2100 });
    const w = valid(wf({ '1': ['Blob', { n: 1024 }] }));
    await ex.run(w, { targets: ['1'] });
    const r = await ex.run(w, { targets: ['1'] });
    expect(statuses(r)).toEqual({ '1': 'done' });
    expect(ex.cache.stats.entries).toBe(0);
  });

  it('a budget of 0 disables caching', async () => {
    const s = createTestServices();
    const ex = new Executor({ registry: reg, services: s, cacheBudgetBytes: 0 });
    const w = valid(chain(['1', '2', '3']));
    await ex.run(w);
    expect(statuses(await ex.run(w))).toEqual({ '1': 'done', '2': 'done', '3': 'done' });
  });

  it('uncacheable nodes always run and make their dependants unique per run', async () => {
    const s = createTestServices();
    const ex = new Executor({ registry: reg, services: s });
    const w = valid(
      wf({
        '1': ['Random'],
        '2': ['Add', { a: link('1', 'value'), b: 1 }],
        '3': ['Collect', { value: link('2', 'sum') }],
        '4': ['Const', { value: 4 }],
        '5': ['Collect', { value: link('4', 'value') }],
      }),
    );
    const r1 = await ex.run(w);
    const r2 = await ex.run(w);
    expect(statuses(r2)).toEqual({ '1': 'done', '2': 'done', '3': 'done', '5': 'cached' });
    expect(r1.outputs['3']).not.toEqual(r2.outputs['3']);
    expect(s.calls).toEqual({ '1': 2, '2': 2, '3': 2, '4': 1, '5': 1 });
    expect(ex.cache.stats.entries).toBe(2); // only 4 and 5
  });

  describe('cacheKey (file content)', () => {
    let dir: string;
    beforeAll(async () => {
      dir = await mkdtemp(path.join(tmpdir(), 'charflow-cache-'));
    });
    afterAll(async () => {
      await rm(dir, { recursive: true, force: true });
    });

    it('hits while the file is unchanged and misses when its content changes', async () => {
      const file = path.join(dir, 'a.txt');
      await writeFile(file, 'hello');
      const s = createTestServices();
      const ex = new Executor({ registry: reg, services: s });
      const w = valid(wf({ '1': ['ReadText', { path: file }], '2': ['Collect', { value: link('1', 'text') }] }));
      expect((await ex.run(w)).outputs['2']).toEqual({ value: 'hello' });
      expect(statuses(await ex.run(w))).toEqual({ '2': 'cached' });
      await writeFile(file, 'changed');
      const r = await ex.run(w);
      expect(statuses(r)).toEqual({ '1': 'done', '2': 'done' });
      expect(r.outputs['2']).toEqual({ value: 'changed' });
    });

    it('with a linked input, the key is computed once the input value exists', async () => {
      const target = path.join(dir, 'target.txt');
      const pointer = path.join(dir, 'pointer.txt');
      await writeFile(target, 'inner');
      await writeFile(pointer, target);
      const s = createTestServices();
      const ex = new Executor({ registry: reg, services: s });
      const w = valid(
        wf({
          '1': ['ReadText', { path: pointer }],
          '2': ['ReadText', { path: link('1', 'text') }],
          '3': ['Collect', { value: link('2', 'text') }],
        }),
      );
      expect((await ex.run(w)).outputs['3']).toEqual({ value: 'inner' });
      expect(statuses(await ex.run(w))).toEqual({ '1': 'cached', '2': 'cached', '3': 'cached' });
      await writeFile(target, 'edited');
      const r = await ex.run(w);
      expect(statuses(r)).toEqual({ '1': 'cached', '2': 'done', '3': 'done' });
      expect(r.outputs['3']).toEqual({ value: 'edited' });
      expect(s.calls).toEqual({ '1': 1, '2': 2, '3': 2 });
    });

    it('a cacheKey that rejects its input fails the node, naming the field', async () => {
      const s = createTestServices();
      const ex = new Executor({ registry: reg, services: s });
      const missing = path.join(dir, 'missing.txt');
      const w = valid(
        wf({
          '1': ['ReadText', { path: missing }],
          '2': ['Collect', { value: link('1', 'text') }],
          '3': ['Const'],
          '4': ['Collect', { value: link('3', 'value') }],
        }),
      );
      const r = await ex.run(w);
      expect(r.status).toBe('failed');
      expect(r.nodes).toEqual({
        '1': { status: 'failed', field: 'path', error: `cannot read ${missing}`, message: `node 1 (ReadText) input "path": cannot read ${missing}` },
        '2': { status: 'skipped', because: '1', message: 'node 2 (Collect) skipped: upstream node 1 (ReadText) failed' },
        '3': { status: 'done', ms: expect.any(Number) },
        '4': { status: 'done', ms: expect.any(Number) },
      });
      expect(s.calls['1']).toBeUndefined();
    });
  });
});
