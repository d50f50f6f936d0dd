import { describe, expect, it } from 'vitest';
import type { RunEvent } from '../../engine/executor/events.ts';
import { RunEvents } from '../../engine/executor/events.ts';
import { execute, Executor } from '../../engine/executor/executor.ts';
import type { Logger, NodeDef } from '../../engine/node.ts';
import { validateWorkflow } from '../../engine/workflow/validate.ts';
import type { ValidWorkflow, Workflow } from '../../engine/workflow/types.ts';
import { createTestServices, link, testRegistry, wf, type TestServices } from '../helpers/testnodes.ts';

const reg = testRegistry();

function valid(w: Workflow, registry: ReadonlyMap<string, NodeDef<TestServices>> = reg): ValidWorkflow {
  const r = validateWorkflow(w, registry);
  expect(r.errors).toEqual([]);
  return r.workflow!;
}

/** Events without the fields that vary between runs (time, ms, runId). */
function shape(e: RunEvent): Record<string, unknown> {
  const { time: _t, runId: _r, ...rest } = e as RunEvent & { ms?: unknown };
  if ('ms' in rest) rest.ms = typeof rest.ms === 'number' ? 'ms' : rest.ms;
  return rest;
}

const quietLogger = (): Logger & { lines: string[] } => {
  const lines: string[] = [];
  return { lines, info: (m) => void lines.push(`info ${m}`), warn: (m) => void lines.push(`warn ${m}`) };
};

describe('events', () => {
  it('reports a run in order: started, per-node events, finished with counts', async () => {
    const events: RunEvent[] = [];
    const r = await execute(
      valid(wf({ '1': ['Delay', { value: 4, steps: 3, ms: 3 }], '2': ['Collect', { value: link('1', 'value') }] })),
      { registry: reg, services: createTestServices(), concurrency: 1, onEvent: (e) => void events.push(e), runId: 'r1' },
    );
    expect(r.runId).toBe('r1');
    expect(events.every((e) => e.runId === 'r1' && typeof e.time === 'number')).toBe(true);
    expect(events.map(shape)).toEqual([
      { type: 'run_started', nodes: ['1', '2'], targets: ['2'] },
      { type: 'node_started', nodeId: '1', nodeType: 'Delay' },
      { type: 'node_progress', nodeId: '1', nodeType: 'Delay', step: 1, total: 3 },
      { type: 'node_progress', nodeId: '1', nodeType: 'Delay', step: 2, total: 3 },
      { type: 'node_progress', nodeId: '1', nodeType: 'Delay', step: 3, total: 3 },
      { type: 'node_finished', nodeId: '1', nodeType: 'Delay', ms: 'ms' },
      { type: 'node_started', nodeId: '2', nodeType: 'Collect' },
      { type: 'node_finished', nodeId: '2', nodeType: 'Collect', ms: 'ms', outputs: { value: 4 } },
      { type: 'run_finished', status: 'done', ms: 'ms', counts: { done: 2, cached: 0, failed: 0, skipped: 0, cancelled: 0 } },
    ]);
  });

  it('executor.events reaches every run; on() returns an unsubscribe function', async () => {
    const ex = new Executor({ registry: reg, services: createTestServices() });
    const finished: string[] = [];
    const all: string[] = [];
    const off = ex.events.on('node_finished', (e) => void finished.push(e.nodeId));
    ex.events.onAny((e) => void all.push(e.type));
    const w = valid(wf({ '1': ['Const'], '2': ['Collect', { value: link('1', 'value') }] }));
    await ex.run(w);
    off();
    await ex.run(valid(wf({ '1': ['Const', { value: 9 }], '2': ['Collect', { value: link('1', 'value') }] })));
    expect(finished).toEqual(['1', '2']);
    expect(all.filter((t) => t === 'run_finished')).toHaveLength(2);
  });

  it('waits for async listeners before resolving', async () => {
    const seen: string[] = [];
    const slow = async (e: RunEvent): Promise<void> => {
      await new Promise((r) => setTimeout(r, 5));
      seen.push(e.type);
    };
    await execute(valid(wf({ '1': ['Const'], '2': ['Collect', { value: link('1', 'value') }] })), {
      registry: reg,
      services: createTestServices(),
      onEvent: slow,
    });
    expect(seen).toHaveLength(6);
    expect(seen).toContain('run_finished');
  });

  it('a throwing listener is logged and does not disturb the run', async () => {
    const log = quietLogger();
    const r = await execute(valid(wf({ '1': ['Const'], '2': ['Collect', { value: link('1', 'value') }] })), {
      registry: reg,
      services: createTestServices(),
      logger: log,
      onEvent: (e) => {
        if (e.type === 'node_started') throw new Error('listener bug');
      },
    });
    expect(r.status).toBe('done');
    expect(log.lines).toEqual(['warn event listener failed: listener bug', 'warn event listener failed: listener bug']);
  });

  it('RunEvents delivers type listeners then any-listeners, once each', () => {
    const ev = new RunEvents();
    const got: string[] = [];
    const l = (): void => void got.push('typed');
    ev.on('run_started', l);
    ev.on('run_started', l);
    ev.onAny(() => void got.push('any'));
    expect(ev.listenerCount).toBe(2);
    ev.emit({ type: 'run_started', runId: 'x', time: 0, nodes: [], targets: [] });
    ev.emit({ type: 'run_cancelled', runId: 'x', time: 0, ms: 0, counts: { done: 0, cached: 0, failed: 0, skipped: 0, cancelled: 0 } });
    expect(got).toEqual(['typed', 'any', 'any']);
  });
});

describe('nodes see their context', () => {
  it('passes services, workflow, node id and a prefixed logger', async () => {
    const seen: unknown[] = [];
    const Probe: NodeDef<TestServices> = {
      type: 'Probe',
      version: 1,
      category: 'test',
      description: '',
      output: true,
      inputs: {},
      params: {},
      outputs: {},
      async run(ctx) {
        seen.push(ctx.services, ctx.workflow, ctx.nodeId, ctx.signal.aborted);
        ctx.log.info('hello');
        return {};
      },
    };
    const registry = new Map([['Probe', Probe]]);
    const services = createTestServices();
    const w = valid(wf({ '8': ['Probe'] }), registry);
    const log = quietLogger();
    await execute(w, { registry, services, logger: log });
    expect(seen).toEqual([services, w, '8', false]);
    expect(log.lines).toEqual(['info [node 8 (Probe)] hello']);
  });
});

describe('failure isolation', () => {
  const graph = (): ValidWorkflow =>
    valid(
      wf({
        '1': ['Fail', { message: 'boom' }],
        '2': ['Add', { a: link('1', 'value') }],
        '3': ['Collect', { value: link('2', 'sum') }],
        '4': ['Const', { value: 4 }],
        '5': ['Collect', { value: link('4', 'value') }],
        '6': ['Add', { a: link('4', 'value'), b: link('2', 'sum') }],
        '7': ['Collect', { value: link('6', 'sum') }],
      }),
    );

  it('a failing node stops only what depends on it', async () => {
    const s = createTestServices();
    const events: RunEvent[] = [];
    const r = await execute(graph(), { registry: reg, services: s, onEvent: (e) => void events.push(e), concurrency: 1 });
    expect(r.status).toBe('failed');
    expect(r.nodes).toEqual({
      '1': { status: 'failed', message: 'node 1 (Fail) failed: boom', error: 'boom' },
      '2': { status: 'skipped', because: '1', message: 'node 2 (Add) skipped: upstream node 1 (Fail) failed' },
      '3': { status: 'skipped', because: '1', message: 'node 3 (Collect) skipped: upstream node 1 (Fail) failed' },
      '4': { status: 'done', ms: expect.any(Number) },
      '5': { status: 'done', ms: expect.any(Number) },
      '6': { status: 'skipped', because: '1', message: 'node 6 (Add) skipped: upstream node 1 (Fail) failed' },
      '7': { status: 'skipped', because: '1', message: 'node 7 (Collect) skipped: upstream node 1 (Fail) failed' },
    });
    expect(r.counts).toEqual({ done: 2, cached: 0, failed: 1, skipped: 4, cancelled: 0 });
    expect(r.outputs).toEqual({ '5': { value: 4 } });
    const failed = events.find((e) => e.type === 'node_failed');
    expect(failed).toMatchObject({ nodeId: '1', nodeType: 'Fail', message: 'node 1 (Fail) failed: boom', error: 'boom' });
    expect(failed && 'stack' in failed && typeof failed.stack).toBe('string');
    expect(events.filter((e) => e.type === 'node_skipped').map((e) => (e as { nodeId: string }).nodeId).sort()).toEqual(['2', '3', '6', '7']);
    expect(events.at(-1)).toMatchObject({ type: 'run_finished', status: 'failed' });
    expect(s.calls).toEqual({ '1': 1, '4': 1, '5': 1 });
  });

  it('independent branches finish under any concurrency', async () => {
    for (const concurrency of [1, 2, 4]) {
      const r = await execute(graph(), { registry: reg, services: createTestServices(), concurrency });
      expect(r.nodes['5']!.status).toBe('done');
    }
  });

  it('a NodeInputError names the field', async () => {
    const events: RunEvent[] = [];
    const r = await execute(valid(wf({ '3': ['Fail', { field: 'value', message: 'must be positive' }] })), {
      registry: reg,
      services: createTestServices(),
      targets: ['3'],
      onEvent: (e) => void events.push(e),
    });
    expect(r.nodes['3']).toEqual({ status: 'failed', field: 'value', error: 'must be positive', message: 'node 3 (Fail) input "value": must be positive' });
    expect(events.find((e) => e.type === 'node_failed')).toEqual(
      expect.objectContaining({ field: 'value', message: 'node 3 (Fail) input "value": must be positive' }),
    );
    expect(events.find((e) => e.type === 'node_failed')).not.toHaveProperty('stack');
  });

  it('a node that does not return a declared output fails clearly', async () => {
    const Broken: NodeDef<TestServices> = {
      type: 'Broken',
      version: 1,
      category: 'test',
      description: '',
      inputs: {},
      params: {},
      outputs: { image: { type: 'IMAGE' } },
      run: async () => ({ imgae: 1 }),
    };
    const registry = new Map([['Broken', Broken]]);
    const r = await execute(valid(wf({ '1': ['Broken'] }), registry), { registry, services: createTestServices(), targets: ['1'] });
    expect(r.nodes['1']).toEqual({ status: 'failed', error: 'did not return its output "image"', message: 'node 1 (Broken) failed: did not return its output "image"' });
  });
});

describe('cancellation', () => {
  const chain = (): ValidWorkflow =>
    valid(
      wf({
        '1': ['Const', { value: 1 }],
        '2': ['Add', { a: link('1', 'value'), b: 1 }],
        '3': ['Add', { a: link('2', 'sum'), b: 1 }],
        '4': ['Collect', { value: link('3', 'sum') }],
      }),
    );

  it('stops between nodes', async () => {
    const ac = new AbortController();
    const s = createTestServices();
    const events: string[] = [];
    const r = await execute(chain(), {
      registry: reg,
      services: s,
      concurrency: 1,
      signal: ac.signal,
      onEvent: (e) => {
        events.push(e.type);
        if (e.type === 'node_finished' && e.nodeId === '2') ac.abort();
      },
    });
    expect(r.status).toBe('cancelled');
    expect(Object.fromEntries(Object.entries(r.nodes).map(([k, v]) => [k, v.status]))).toEqual({
      '1': 'done',
      '2': 'done',
      '3': 'cancelled',
      '4': 'cancelled',
    });
    expect(r.counts).toEqual({ done: 2, cached: 0, failed: 0, skipped: 0, cancelled: 2 });
    expect(s.calls).toEqual({ '1': 1, '2': 1 });
    expect(events.at(-1)).toBe('run_cancelled');
    expect(events).not.toContain('run_finished');
  });

  it('stops inside a long node through ctx.signal', async () => {
    const ac = new AbortController();
    const s = createTestServices();
    const w = valid(
      wf({
        '1': ['Delay', { value: 1, ms: 600_000, steps: 100_000 }],
        '2': ['Collect', { value: link('1', 'value') }],
      }),
    );
    const r = await execute(w, {
      registry: reg,
      services: s,
      signal: ac.signal,
      onEvent: (e) => {
        if (e.type === 'node_progress' && e.step === 2) ac.abort();
      },
    });
    expect(r.status).toBe('cancelled');
    expect(r.nodes).toEqual({ '1': { status: 'cancelled' }, '2': { status: 'cancelled' } });
    expect(s.log).toEqual(['start:1', 'end:1']);
  });

  it('an already aborted signal runs nothing', async () => {
    const s = createTestServices();
    const r = await execute(chain(), { registry: reg, services: s, signal: AbortSignal.abort() });
    expect(r.status).toBe('cancelled');
    expect(r.counts.cancelled).toBe(4);
    expect(s.calls).toEqual({});
  });

  it('cancelled work is not cached, finished work is', async () => {
    const ac = new AbortController();
    const s = createTestServices();
    const ex = new Executor({ registry: reg, services: s, concurrency: 1 });
    await ex.run(chain(), {
      signal: ac.signal,
      onEvent: (e) => {
        if (e.type === 'node_finished' && e.nodeId === '2') ac.abort();
      },
    });
    const r = await ex.run(chain());
    expect(Object.fromEntries(Object.entries(r.nodes).map(([k, v]) => [k, v.status]))).toEqual({
      '2': 'cached',
      '3': 'done',
      '4': 'done',
    });
  });
});
