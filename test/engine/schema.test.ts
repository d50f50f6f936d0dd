import { readFileSync } from 'node:fs';
import { Ajv } from 'ajv';
import { describe, expect, it } from 'vitest';
import { checkSchema, workflowSchema } from '../../engine/workflow/schema.ts';
import { migrateWorkflow, type Migration } from '../../engine/workflow/migrate.ts';
import { validateWorkflow } from '../../engine/workflow/validate.ts';
import { link, testRegistry, wf } from '../helpers/testnodes.ts';

const reg = testRegistry();

describe('workflow JSON Schema', () => {
  it('is a valid JSON Schema stored in the repo', () => {
    const file = new URL('../../engine/workflow/workflow.schema.json', import.meta.url);
    const schema = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
    expect(workflowSchema()).toEqual(schema);
    expect(new Ajv({ allowUnionTypes: true }).validateSchema(schema)).toBe(true);
  });

  it('accepts the documented example', () => {
    const example = {
      format: 'charflow.workflow',
      version: 1,
      nodes: {
        '1': { type: 'LoadCharacter', inputs: { path: 'workflows/assets/character.png' }, ui: { pos: [40, 80], size: [260, 120] } },
        '2': { type: 'SigLIPEncode', inputs: { image: { node: '1', output: 'image' } } },
      },
      groups: [],
      meta: {},
    };
    expect(checkSchema(example)).toEqual([]);
  });

  it('rejects structural problems with one line each', () => {
    const bad = {
      format: 'charflow.workflow',
      version: 1,
      nodes: {
        '1': { type: 'Add', inputs: { a: [1], b: { node: '4' }, c: { node: '4', output: 'x', extra: 1 } }, ui: { pos: [1] }, extra: true },
        '2': { type: '' },
        'a.b': { type: 'Const' },
      },
      bogus: 1,
    };
    expect(checkSchema(bad)).toEqual([
      { code: 'schema', message: 'workflow: unknown property "bogus"' },
      { code: 'schema', message: 'workflow "nodes": node id "a.b" is not allowed (use 1 to 64 letters, digits, "_", ":" or "-")', field: 'nodes' },
      { code: 'schema', nodeId: '1', nodeType: 'Add', message: 'node 1 (Add): unknown property "extra"' },
      {
        code: 'schema',
        nodeId: '1',
        nodeType: 'Add',
        field: 'a',
        message: 'node 1 (Add) input "a": must be a constant (string, number, boolean) or a link {"node": id, "output": name}, got an array',
      },
      {
        code: 'schema',
        nodeId: '1',
        nodeType: 'Add',
        field: 'b',
        message: 'node 1 (Add) input "b": link is missing "output" (a link is {"node": id, "output": name})',
      },
      {
        code: 'schema',
        nodeId: '1',
        nodeType: 'Add',
        field: 'c',
        message: 'node 1 (Add) input "c": link has unknown property "extra" (a link is {"node": id, "output": name})',
      },
      { code: 'schema', nodeId: '1', nodeType: 'Add', field: 'ui', message: 'node 1 (Add) "ui.pos": must have 2 items, got 1' },
      { code: 'schema', nodeId: '2', field: 'type', message: 'node 2 "type": must not be empty' },
    ]);
  });

  it('top-level shape errors', () => {
    expect(checkSchema([])).toEqual([{ code: 'schema', message: 'workflow: must be an object, got an array' }]);
    expect(checkSchema({ format: 'other', version: 1.5, nodes: [] }).map((e) => e.message)).toEqual([
      'workflow "format": must be "charflow.workflow", got "other"',
      'workflow "version": must be an integer, got a number',
      'workflow "nodes": must be an object, got an array',
    ]);
    expect(checkSchema({}).map((e) => e.message)).toEqual([
      'workflow: missing "format"',
      'workflow: missing "version"',
      'workflow: missing "nodes"',
    ]);
  });

  it('recognises ComfyUI files given by mistake', () => {
    expect(checkSchema({ '3': { class_type: 'KSampler', inputs: {} } })).toEqual([
      { code: 'schema', message: 'workflow: this is a ComfyUI API workflow, not a charflow workflow ("format": "charflow.workflow")' },
    ]);
    expect(checkSchema({ last_node_id: 3, nodes: [], links: [] })[0]!.message).toBe(
      'workflow: this is a ComfyUI editor workflow, not a charflow workflow ("format": "charflow.workflow")',
    );
  });

  it('validateWorkflow reports schema errors and semantic errors of the other nodes together', () => {
    const w = wf({ '1': ['Const', { value: [1] as never }], '2': ['Nope'] });
    const r = validateWorkflow(w, reg);
    expect(r.errors.map((e) => e.code)).toEqual(['schema', 'unknown_type']);
  });
});

describe('versions and migration', () => {
  it('refuses newer versions clearly', () => {
    const r = validateWorkflow({ format: 'charflow.workflow', version: 3, nodes: {} }, reg);
    expect(r).toEqual({
      ok: false,
      errors: [
        {
          code: 'unsupported_version',
          field: 'version',
          message: 'workflow version 3 is newer than this charflow supports (version 1); update charflow to open it',
        },
      ],
    });
  });

  it('refuses versions without a migration path', () => {
    const r = validateWorkflow({ format: 'charflow.workflow', version: 0, nodes: {} }, reg);
    expect(r.errors[0]!.message).toBe('workflow version 0 is not supported (this charflow reads versions 1 to 1)');
  });

  it('current version passes through unchanged', () => {
    const w = wf({ '1': ['Const'] });
    expect(migrateWorkflow(w)).toEqual({ ok: true, workflow: w, from: 1 });
  });

  it('migrates step by step, keyed by the version migrated from, without mutating the input', () => {
    // A pretend history: v1 called the field "params", v2 renamed the Sum node to Add, v3 is current.
    const migrations = new Map<number, Migration>([
      [
        1,
        (w) => {
          const nodes: Record<string, unknown> = {};
          for (const [id, n] of Object.entries(w.nodes as Record<string, { type: string; params?: unknown }>)) {
            nodes[id] = { type: n.type, inputs: n.params ?? {} };
          }
          return { ...w, nodes };
        },
      ],
      [
        2,
        (w) => {
          const nodes: Record<string, unknown> = {};
          for (const [id, n] of Object.entries(w.nodes as Record<string, { type: string }>)) {
            nodes[id] = { ...n, type: n.type === 'Sum' ? 'Add' : n.type };
          }
          return { ...w, nodes };
        },
      ],
    ]);
    const old = {
      format: 'charflow.workflow',
      version: 1,
      nodes: { '1': { type: 'Const', params: { value: 2 } }, '2': { type: 'Sum', params: { a: { node: '1', output: 'value' } } } },
    };
    const copy = structuredClone(old);
    const r = migrateWorkflow(old, { migrations, current: 3 });
    expect(r).toEqual({
      ok: true,
      from: 1,
      workflow: {
        format: 'charflow.workflow',
        version: 3,
        nodes: { '1': { type: 'Const', inputs: { value: 2 } }, '2': { type: 'Add', inputs: { a: link('1', 'value') } } },
      },
    });
    expect(old).toEqual(copy);
    // A file of version 2 needs only the last step; version 0 has no path.
    expect(migrateWorkflow({ ...old, version: 2 }, { migrations, current: 3 }).ok).toBe(true);
    const r0 = migrateWorkflow({ ...old, version: 0 }, { migrations, current: 3 });
    expect(r0.ok ? '' : r0.error.message).toBe('workflow version 0 is not supported (this charflow reads versions 1 to 3)');
  });

  it('non-workflow values are left for the schema to describe', () => {
    expect(migrateWorkflow('x')).toEqual({ ok: true, workflow: 'x' });
    expect(migrateWorkflow({ version: 'one' })).toEqual({ ok: true, workflow: { version: 'one' } });
  });
});
