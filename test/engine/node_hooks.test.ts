// The executor's two node hooks used by DiTSample: preflight (checks before anything runs) and
// unusedInputs (a linked input a node will not read: its upstream runs only if something else needs it).
import { describe, expect, it } from 'vitest';
import { Executor } from '../../engine/executor/executor.ts';
import { NodeInputError, type Logger, type NodeDef } from '../../engine/node.ts';
import { validateWorkflow } from '../../engine/workflow/validate.ts';
import type { ValidWorkflow, Workflow } from '../../engine/workflow/types.ts';
import { createTestServices, link, testRegistry, wf, type TestServices } from '../helpers/testnodes.ts';

/** sum = a + (use_b ? b : 0); b is left unread when use_b is false; refuses a above 100 in its preflight. */
const Pick: NodeDef<TestServices> = {
  type: 'Pick',
  version: 1,
  category: 'test',
  description: 'a, plus b when use_b',
  inputs: { a: { type: 'FLOAT' }, b: { type: 'FLOAT', optional: true } },
  params: { use_b: { type: 'boolean', default: true }, limit: { type: 'number', default: 100 } },
  outputs: { sum: { type: 'FLOAT' } },
  output: true,
  preflight(consts, _services, upstream) {
    const a = upstream('a');
    if (typeof a?.value === 'number' && a.value > (consts.limit as number)) throw new NodeInputError('limit', `a's constant ${a.value} is above ${consts.limit}`);
  },
  unusedInputs: (consts): Record<string, string> => (consts.use_b ? {} : { b: 'use_b is off' }),
  async run(ctx, inputs) {
    ctx.services.calls[ctx.nodeId] = (ctx.services.calls[ctx.nodeId] ?? 0) + 1;
    return { sum: (inputs.a as number) + (inputs.b === undefined ? 0 : inputs.b as number) };
  },
};

const registry = new Map([...testRegistry(), ['Pick', Pick]]);

function valid(w: Workflow): ValidWorkflow {
  const r = validateWorkflow(w, registry);
  expect(r.errors).toEqual([]);
  return r.workflow!;
}

function logger(): Logger & { lines: string[] } {
  const lines: string[] = [];
  return { lines, info: (m) => void lines.push(m), warn: (m) => void lines.push(`warn ${m}`) };
}

describe('NodeDef.unusedInputs', () => {
  it('leaves the input out, does not run its upstream, and warns', async () => {
    const services = createTestServices();
    const log = logger();
    const r = await new Executor({ registry, services, logger: log }).run(valid(wf({
      '1': ['Const', { value: 2 }],
      '2': ['Delay', { value: 5, ms: 1 }],
      '3': ['Pick', { a: link('1', 'value'), b: link('2', 'value'), use_b: false }],
    })));
    expect(r.status).toBe('done');
    expect(r.outputs['3']).toEqual({ sum: 2 });
    expect(services.calls['2']).toBeUndefined();
    expect(r.nodes['2']).toBeUndefined();
    expect(log.lines.join('\n')).toMatch(/warn .*3.*input "b" is connected but not used: use_b is off/);
  });

  it('still runs the upstream when another node needs it, and the node does not wait for it', async () => {
    const services = createTestServices();
    const r = await new Executor({ registry, services, logger: logger(), concurrency: 1 }).run(valid(wf({
      '1': ['Const', { value: 2 }],
      '2': ['Delay', { value: 5, ms: 20 }],
      '3': ['Pick', { a: link('1', 'value'), b: link('2', 'value'), use_b: false }],
      '4': ['Collect', { value: link('2', 'value') }],
    })), { targets: ['3', '4'] });
    expect(r.status).toBe('done');
    expect(r.outputs['3']).toEqual({ sum: 2 });
    expect(r.outputs['4']).toEqual({ value: 5 });
    expect(services.calls['3']).toBe(1);
  });

  it('passes the input when it is used', async () => {
    const r = await new Executor({ registry, services: createTestServices(), logger: logger() }).run(valid(wf({
      '1': ['Const', { value: 2 }],
      '2': ['Const', { value: 5 }],
      '3': ['Pick', { a: link('1', 'value'), b: link('2', 'value') }],
    })));
    expect(r.outputs['3']).toEqual({ sum: 7 });
  });
});

describe('NodeDef.preflight', () => {
  it('fails the node before anything runs, naming the field, with the upstream constants at hand', async () => {
    const services = createTestServices();
    const r = await new Executor({ registry, services, logger: logger() }).run(valid(wf({
      '1': ['Const', { value: 200 }],
      '3': ['Pick', { a: link('1', 'value') }],
    })));
    expect(r.status).toBe('failed');
    expect(r.nodes['3']).toMatchObject({ status: 'failed', field: 'limit' });
    expect(services.calls).toEqual({}); // not even the Const ran
  });
});
