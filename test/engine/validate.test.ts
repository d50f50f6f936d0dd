import { describe, expect, it } from 'vitest';
import { validateWorkflow } from '../../engine/workflow/validate.ts';
import type { ValidationError, Workflow } from '../../engine/workflow/types.ts';
import { link, testRegistry, wf } from '../helpers/testnodes.ts';

const reg = testRegistry();

function errorsOf(w: unknown, opts = {}): ValidationError[] {
  const r = validateWorkflow(w, reg, opts);
  expect(r.ok).toBe(false);
  expect(r.workflow).toBeUndefined();
  return r.errors;
}

function only(w: unknown): ValidationError {
  const errs = errorsOf(w);
  expect(errs).toHaveLength(1);
  return errs[0]!;
}

describe('validateWorkflow: semantic checks', () => {
  it('accepts a valid workflow and fills parameter defaults', () => {
    const input = wf({ '1': ['MakeImage', { prompt: 'a cat', width: 128 }], '2': ['ShowImage', { image: link('1', 'image') }] });
    const before = JSON.stringify(input);
    const r = validateWorkflow(input, reg);
    expect(r).toEqual({
      ok: true,
      errors: [],
      workflow: {
        format: 'charflow.workflow',
        version: 1,
        nodes: {
          '1': {
            type: 'MakeImage',
            inputs: { prompt: 'a cat', width: 128, scale: 1, mode: 'rgb', color: '#000000', flip: false },
          },
          '2': { type: 'ShowImage', inputs: { image: { node: '1', output: 'image' } } },
        },
      },
    });
    expect(JSON.stringify(input)).toBe(before); // the argument is not modified
  });

  it('keeps ui, groups and meta but does not need them', () => {
    const w: Workflow = {
      ...wf({ '1': ['Const', { value: 2 }] }),
      groups: [{ title: 'g', bounding: [0, 0, 10, 10] }],
      meta: { author: 'me' },
    };
    w.nodes['1']!.ui = { pos: [40, 80], size: [260, 120] };
    const r = validateWorkflow(w, reg);
    expect(r.ok).toBe(true);
    expect(r.workflow!.nodes['1']!.ui).toEqual({ pos: [40, 80], size: [260, 120] });
    expect(r.workflow!.groups).toEqual([{ title: 'g', bounding: [0, 0, 10, 10] }]);
    expect(r.workflow!.meta).toEqual({ author: 'me' });
  });

  it('unknown node type, with a suggestion when close', () => {
    expect(only(wf({ '5': ['Nope'] }))).toEqual({
      nodeId: '5',
      nodeType: 'Nope',
      code: 'unknown_type',
      message: 'node 5 (Nope): unknown node type "Nope"',
    });
    expect(only(wf({ '10': ['Cosnt'] })).message).toBe('node 10 (Cosnt): unknown node type "Cosnt" (did you mean "Const"?)');
  });

  it('unknown input', () => {
    expect(only(wf({ '3': ['Const', { value: 1, valeu: 2 }] }))).toEqual({
      nodeId: '3',
      nodeType: 'Const',
      field: 'valeu',
      code: 'unknown_input',
      message: 'node 3 (Const) input "valeu": unknown input (Const has value)',
    });
  });

  it('unknown output', () => {
    const e = only(wf({ '4': ['Const'], '6': ['Add', { b: link('4', 'nope') }] }));
    expect(e).toEqual({
      nodeId: '6',
      nodeType: 'Add',
      field: 'b',
      code: 'unknown_output',
      message: 'node 6 (Add) input "b": node 4 (Const) has no output "nope" (it has value)',
    });
  });

  it('missing required inputs: link-only and parameters without default', () => {
    const errs = errorsOf(wf({ '11': ['ShowImage'], '12': ['MakeImage'] }));
    expect(errs).toEqual([
      {
        nodeId: '11',
        nodeType: 'ShowImage',
        field: 'image',
        code: 'missing_input',
        message: 'node 11 (ShowImage) input "image": required input is missing (link an IMAGE output to it)',
      },
      {
        nodeId: '12',
        nodeType: 'MakeImage',
        field: 'prompt',
        code: 'missing_input',
        message: 'node 12 (MakeImage) input "prompt": required value is missing (a string)',
      },
    ]);
  });

  it('optional inputs may be left out', () => {
    const r = validateWorkflow(wf({ '1': ['MakeImage', { prompt: '' }], '2': ['ShowImage', { image: link('1', 'image') }] }), reg);
    expect(r.ok).toBe(true);
    expect('title' in r.workflow!.nodes['1']!.inputs).toBe(false);
    expect('mask' in r.workflow!.nodes['2']!.inputs).toBe(false);
  });

  it('type mismatch on a link', () => {
    expect(only(wf({ '4': ['Const'], '3': ['ShowImage', { image: link('4', 'value') }] }))).toEqual({
      nodeId: '3',
      nodeType: 'ShowImage',
      field: 'image',
      code: 'type_mismatch',
      message: 'node 3 (ShowImage) input "image": node 4 (Const) output "value" is FLOAT, but this input takes IMAGE',
    });
  });

  it('a parameter may be fed by a link of its socket type; "*" accepts anything', () => {
    const ok = wf({ '1': ['Const', { value: 1 }], '2': ['Add', { a: link('1', 'value') }], '3': ['Collect', { value: link('2', 'sum') }] });
    expect(validateWorkflow(ok, reg).ok).toBe(true);
    const bad = wf({ '1': ['ReadText', { path: 'x' }], '2': ['Add', { a: link('1', 'text') }] });
    expect(only(bad).message).toBe('node 2 (Add) input "a": node 1 (ReadText) output "text" is STRING, but this input takes FLOAT');
  });

  it('a constant for a link-only input', () => {
    expect(only(wf({ '2': ['ShowImage', { image: 'foo' }] }))).toEqual({
      nodeId: '2',
      nodeType: 'ShowImage',
      field: 'image',
      code: 'link_required',
      message: 'node 2 (ShowImage) input "image": needs a link from an IMAGE output, got the constant "foo"',
    });
  });

  it('link to a missing node', () => {
    expect(only(wf({ '6': ['Add', { a: link('99', 'sum') }] }))).toEqual({
      nodeId: '6',
      nodeType: 'Add',
      field: 'a',
      code: 'missing_node',
      message: 'node 6 (Add) input "a": links to node 99, which does not exist',
    });
  });

  it('constants: range, multipleOf, enum, pattern, maxLength, wrong type', () => {
    const w = wf({
      '7': ['MakeImage', { prompt: 'x', width: 0 }],
      '8': ['MakeImage', { prompt: 'x', width: 5000, scale: 0.3 }],
      '9': ['MakeImage', { prompt: 'x', mode: 'cmyk', color: 'red', title: 'much too long' }],
      '10': ['MakeImage', { prompt: 3, width: 2.5, flip: 1, scale: 'big' }],
    });
    expect(errorsOf(w).map((e) => [e.code, e.message])).toEqual([
      ['value_out_of_range', 'node 7 (MakeImage) input "width": 0 is below the minimum 1'],
      ['value_out_of_range', 'node 8 (MakeImage) input "width": 5000 is above the maximum 4096'],
      ['value_out_of_range', 'node 8 (MakeImage) input "scale": 0.3 is not a multiple of 0.25'],
      ['value_not_in_list', 'node 9 (MakeImage) input "mode": "cmyk" is not one of "rgb", "gray"'],
      ['pattern_mismatch', 'node 9 (MakeImage) input "color": "red" does not match the pattern ^#[0-9a-f]{6}$'],
      ['value_too_long', 'node 9 (MakeImage) input "title": is 13 characters long, more than the maximum 8'],
      ['wrong_type', 'node 10 (MakeImage) input "prompt": must be a string, got 3'],
      ['wrong_type', 'node 10 (MakeImage) input "width": must be an integer, got 2.5'],
      ['wrong_type', 'node 10 (MakeImage) input "flip": must be true or false, got 1'],
      ['wrong_type', 'node 10 (MakeImage) input "scale": must be a number, got "big"'],
    ]);
  });

  it('maxLength counts characters, not UTF-16 units', () => {
    const r = validateWorkflow(wf({ '1': ['MakeImage', { prompt: '', title: '😀😀😀😀😀😀😀😀' }] }), reg);
    expect(r.ok).toBe(true);
  });

  it('cycles name every node in the cycle, in data-flow order', () => {
    const errs = errorsOf(
      wf({
        '1': ['Const'],
        '7': ['Add', { a: link('8', 'sum'), b: link('1', 'value') }],
        '8': ['Add', { a: link('9', 'sum') }],
        '9': ['Add', { b: link('7', 'sum') }],
        '20': ['Add', { a: link('20', 'sum') }],
      }),
    );
    expect(errs).toEqual([
      {
        nodeId: '7',
        nodeType: 'Add',
        field: 'a',
        code: 'cycle',
        message: 'node 7 (Add) input "a": links form a cycle: node 7 (Add) -> node 9 (Add) -> node 8 (Add) -> node 7 (Add)',
      },
      {
        nodeId: '20',
        nodeType: 'Add',
        field: 'a',
        code: 'cycle',
        message: 'node 20 (Add) input "a": links form a cycle: node 20 (Add) -> node 20 (Add)',
      },
    ]);
  });

  it('reports all errors at once, each naming node, type and field', () => {
    const w = wf({
      '1': ['MakeImage', { width: 0 }],
      '2': ['ShowImage', { image: link('1', 'imag') }],
      '3': ['Nope'],
      '4': ['Add', { a: link('5', 'sum'), c: 1 }],
    });
    const errs = errorsOf(w);
    expect(errs.map((e) => e.message)).toEqual([
      'node 1 (MakeImage) input "width": 0 is below the minimum 1',
      'node 1 (MakeImage) input "prompt": required value is missing (a string)',
      'node 2 (ShowImage) input "image": node 1 (MakeImage) has no output "imag" (it has image)',
      'node 3 (Nope): unknown node type "Nope"',
      'node 4 (Add) input "a": links to node 5, which does not exist',
      'node 4 (Add) input "c": unknown input (Add has a, b)',
    ]);
    for (const e of errs) {
      expect(e.nodeId).toBeDefined();
      expect(e.nodeType).toBeDefined();
    }
  });

  it('links into a node of unknown type are not reported twice', () => {
    const errs = errorsOf(wf({ '1': ['Nope'], '2': ['Add', { a: link('1', 'x') }] }));
    expect(errs.map((e) => e.code)).toEqual(['unknown_type']);
  });

  it('names of Object.prototype members are not mistaken for inputs, outputs or nodes', () => {
    const text = '{"format":"charflow.workflow","version":1,"nodes":{"__proto__":{"type":"Const"},"1":{"type":"Const","inputs":{"constructor":1,"__proto__":2}},"2":{"type":"Add","inputs":{"a":{"node":"1","output":"toString"}}}}}';
    const errs = errorsOf(JSON.parse(text));
    expect(errs.map((e) => e.message)).toEqual([
      'workflow "nodes": node id "__proto__" is not allowed',
      'node 1 (Const) input "constructor": unknown input (Const has value)',
      'node 1 (Const) input "__proto__": unknown input (Const has value)',
      'node 2 (Add) input "a": node 1 (Const) has no output "toString" (it has value)',
    ]);
  });

  it('limits the node count with a clear error', () => {
    const nodes: Record<string, [string]> = {};
    for (let i = 0; i < 11; i++) nodes[String(i)] = ['Const'];
    expect(errorsOf(wf(nodes), { maxNodes: 10 })).toEqual([
      { code: 'too_many_nodes', field: 'nodes', message: 'workflow has 11 nodes, more than the limit of 10' },
    ]);
    expect(validateWorkflow(wf(nodes), reg, { maxNodes: 11 }).ok).toBe(true);
  });

  it('handles 10,000+ nodes by default', () => {
    const nodes: Record<string, [string, Record<string, unknown>?]> = { '0': ['Const'] };
    for (let i = 1; i < 12_000; i++) nodes[String(i)] = ['Add', { a: link(String(i - 1), i === 1 ? 'value' : 'sum') }];
    const r = validateWorkflow(wf(nodes as never), reg);
    expect(r.errors).toEqual([]);
    expect(Object.keys(r.workflow!.nodes)).toHaveLength(12_000);
  });

  it('finds a cycle in a very long chain without overflowing the stack', () => {
    const nodes: Record<string, [string, Record<string, unknown>]> = {};
    const n = 15_000;
    for (let i = 0; i < n; i++) nodes[String(i)] = ['Add', { a: link(String((i + 1) % n), 'sum') }];
    const errs = errorsOf(wf(nodes as never));
    expect(errs).toHaveLength(1);
    expect(errs[0]!.code).toBe('cycle');
    expect(errs[0]!.message.startsWith('node 0 (Add) input "a": links form a cycle: node 0 (Add) -> node 14999 (Add) -> ')).toBe(true);
  });
});

describe('migration happens once', () => {
  it('validateWorkflow migrates a file once; validateMigrated takes the migrated workflow as it is', async () => {
    const { migrateWorkflow } = await import('../../engine/workflow/migrate.ts');
    const { validateMigrated } = await import('../../engine/workflow/validate.ts');
    let calls = 0;
    // Version 0 stored the prompt under another name; the migration renames it.
    const migrations = new Map([[0, (w: Record<string, unknown>) => {
      calls++;
      const nodes = structuredClone(w.nodes) as Record<string, { type: string; inputs: Record<string, unknown> }>;
      for (const n of Object.values(nodes)) if ('text' in n.inputs) { n.inputs.prompt = n.inputs.text; delete n.inputs.text; }
      return { ...w, nodes };
    }]]);
    const old = { ...wf({ '1': ['MakeImage', { text: 'a cat' }] }), version: 0 };
    const r = validateWorkflow(old, reg, { migrations });
    expect(r.ok).toBe(true);
    expect(calls).toBe(1);
    const migrated = migrateWorkflow(old, { migrations });
    expect(calls).toBe(2);
    expect(migrated.ok).toBe(true);
    const again = validateMigrated(migrated.ok ? migrated.workflow : undefined, reg, { migrations });
    expect(calls).toBe(2);
    expect(again).toEqual(r);
    // Handing it the unmigrated file shows that it does not migrate: the old field is unknown.
    expect(validateMigrated(old, reg, { migrations }).ok).toBe(false);
  });
});
