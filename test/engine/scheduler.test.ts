import { describe, expect, it } from 'vitest';
import { Executor } from '../../engine/executor/executor.ts';
import { IndexHeap, planRun } from '../../engine/executor/scheduler.ts';
import { validateWorkflow } from '../../engine/workflow/validate.ts';
import { WorkflowError, type ValidWorkflow, type Workflow } from '../../engine/workflow/types.ts';
import { createTestServices, link, testRegistry, wf, type TestServices } from '../helpers/testnodes.ts';

const reg = testRegistry();

function valid(w: Workflow): ValidWorkflow {
  const r = validateWorkflow(w, reg);
  expect(r.errors).toEqual([]);
  return r.workflow!;
}

function executor(concurrency: number, services: TestServices = createTestServices()): Executor<TestServices> {
  return new Executor({ registry: reg, services, concurrency });
}

/** Two output branches: 1,2 -> 3 -> 4 (Collect) and 5 -> 6 (Collect), plus 7 feeding nothing. */
const twoBranches = (): ValidWorkflow =>
  valid(
    wf({
      '1': ['Const', { value: 1 }],
      '2': ['Const', { value: 2 }],
      '3': ['Add', { a: link('1', 'value'), b: link('2', 'value') }],
      '4': ['Collect', { value: link('3', 'sum') }],
      '5': ['Const', { value: 5 }],
      '6': ['Collect', { value: link('5', 'value') }],
      '7': ['Const', { value: 7 }],
    }),
  );

describe('planRun', () => {
  it('orders dependencies first, depth-first from each target, and prunes to the targets', () => {
    const plan = planRun(twoBranches(), reg);
    expect(plan.targets).toEqual(['4', '6']);
    expect(plan.nodes.map((n) => n.id)).toEqual(['1', '2', '3', '4', '5', '6']);
    const three = plan.nodes[plan.index.get('3')!]!;
    expect(three.links).toEqual([
      { input: 'a', from: 0, output: 'value' },
      { input: 'b', from: 1, output: 'value' },
    ]);
    expect(three.upstream).toEqual([0, 1]);
    expect(plan.nodes[0]!.dependants).toEqual([2]);
    expect(three.consts).toEqual({});
    expect(plan.nodes.filter((n) => n.target).map((n) => n.id)).toEqual(['4', '6']);
  });

  it('named targets run only what feeds them', () => {
    const plan = planRun(twoBranches(), reg, ['3']);
    expect(plan.nodes.map((n) => n.id)).toEqual(['1', '2', '3']);
    expect(planRun(twoBranches(), reg, ['7']).nodes.map((n) => n.id)).toEqual(['7']);
  });

  it('rejects unknown targets', () => {
    expect(() => planRun(twoBranches(), reg, ['99'])).toThrowError(WorkflowError);
    expect(() => planRun(twoBranches(), reg, ['99'])).toThrowError('run target node 99 does not exist');
  });

  it('handles a 20,000-node chain without recursion', () => {
    const nodes: Record<string, [string, Record<string, unknown>?]> = { '0': ['Const'] };
    for (let i = 1; i < 20_000; i++) nodes[String(i)] = ['Add', { a: link(String(i - 1), i === 1 ? 'value' : 'sum') }];
    const plan = planRun(valid(wf(nodes as never)), reg, ['19999']);
    expect(plan.nodes).toHaveLength(20_000);
    expect(plan.nodes[0]!.id).toBe('0');
    expect(plan.nodes[19_999]!.id).toBe('19999');
  });
});

describe('scheduling', () => {
  it('with concurrency 1 runs in plan order, each node after its inputs', async () => {
    const s = createTestServices();
    const r = await executor(1, s).run(twoBranches());
    expect(r.status).toBe('done');
    expect(s.log).toEqual(['1', '2', '3', '4', '5', '6'].flatMap((id) => [`start:${id}`, `end:${id}`]));
    expect(s.maxRunning).toBe(1);
    expect(Object.keys(r.nodes)).toEqual(['1', '2', '3', '4', '5', '6']); // 7 feeds no output
    expect(s.calls['7']).toBeUndefined();
    expect(r.outputs).toEqual({ '4': { value: 3 }, '6': { value: 5 } });
    expect(s.collected).toEqual([
      { nodeId: '4', value: 3 },
      { nodeId: '6', value: 5 },
    ]);
  });

  it('never starts a node before all of its inputs ended', async () => {
    const s = createTestServices();
    const w = twoBranches();
    await executor(4, s).run(w);
    const plan = planRun(w, reg);
    for (const n of plan.nodes) {
      for (const u of n.upstream) {
        expect(s.log.indexOf(`end:${plan.nodes[u]!.id}`)).toBeLessThan(s.log.indexOf(`start:${n.id}`));
      }
    }
  });

  it.each([1, 2, 3])('runs independent branches concurrently, at most %i at a time', async (limit) => {
    const nodes: Record<string, [string, Record<string, unknown>?]> = {};
    for (let b = 0; b < 8; b++) {
      nodes[`d${b}`] = ['Delay', { value: b, ms: 2 }];
      nodes[`c${b}`] = ['Collect', { value: link(`d${b}`, 'value') }];
    }
    const s = createTestServices();
    const r = await executor(limit, s).run(valid(wf(nodes as never)));
    expect(r.status).toBe('done');
    expect(r.counts.done).toBe(16);
    expect(s.maxRunning).toBe(limit);
  });

  it('defaults to a concurrency of 2', async () => {
    const nodes: Record<string, [string]> = {};
    for (let i = 0; i < 6; i++) nodes[String(i)] = ['Const'];
    const s = createTestServices();
    const ex = new Executor({ registry: reg, services: s });
    expect(ex.concurrency).toBe(2);
    await ex.run(valid(wf(nodes)), { targets: Object.keys(nodes) });
    expect(s.maxRunning).toBe(2);
  });

  it('a run may name its targets', async () => {
    const s = createTestServices();
    const r = await executor(2, s).run(twoBranches(), { targets: ['3', '7'] });
    expect(Object.keys(r.nodes).sort()).toEqual(['1', '2', '3', '7']);
    expect(r.outputs).toEqual({ '3': { sum: 3 }, '7': { value: 7 } });
    expect(s.collected).toEqual([]);
  });

  it('a workflow without output nodes runs nothing', async () => {
    const r = await executor(2).run(valid(wf({ '1': ['Const'] })));
    expect(r).toMatchObject({ status: 'done', nodes: {}, outputs: {} });
  });
});

describe('IndexHeap', () => {
  it('pops in ascending order', () => {
    const h = new IndexHeap();
    const values = [5, 3, 9, 1, 7, 2, 8, 0, 6, 4];
    for (const v of values) h.push(v);
    const out: number[] = [];
    while (h.size) out.push(h.pop()!);
    expect(out).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(h.pop()).toBeUndefined();
  });
});
