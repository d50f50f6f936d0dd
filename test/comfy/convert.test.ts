// The API-prompt <-> workflow conversion and the error mapping, without a server or models.
import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { validateWorkflow } from '../../engine/workflow/index.ts';
import type { Workflow } from '../../engine/workflow/types.ts';
import { nodeRegistry } from '../../nodes/registry.ts';
import { PACKAGE_ROOT } from '../../nodes/services.ts';
import { apiToWorkflow, workflowToApi } from '../../editor/server/comfy/convert.ts';
import { errorBody, issuesFromValidation } from '../../editor/server/comfy/errors.ts';
import { inputConfig } from '../../editor/server/comfy/object-info.ts';

const registry = nodeRegistry();
const DEFAULT = JSON.parse(readFileSync(join(PACKAGE_ROOT, 'workflows/instantcharacter.json'), 'utf8')) as Workflow;

describe('API prompt conversion', () => {
  it('turns a workflow into an API prompt and back: links by output index, titles in _meta', () => {
    const api = workflowToApi(DEFAULT, registry);
    expect(api['7']).toMatchObject({ class_type: 'DiTSample', inputs: { models: ['1', 0], conditioning: ['6', 0], character: ['5', 0], steps: DEFAULT.nodes['7']!.inputs!.steps }, _meta: { title: 'DiT Sample' } });
    const back = apiToWorkflow(api, registry);
    expect(back.issues).toEqual([]);
    for (const [id, node] of Object.entries(DEFAULT.nodes)) {
      expect(back.workflow!.nodes[id]).toMatchObject({ type: node.type, inputs: node.inputs });
    }
    expect(validateWorkflow(back.workflow, registry).ok).toBe(true);
  });

  it('unwraps {"__value__": [...]} and reports malformed links and nodes', () => {
    const conv = apiToWorkflow(
      {
        1: { class_type: 'LoadModels', inputs: { set: 'tiny' } },
        2: { class_type: 'TextEncode', inputs: { models: ['1', 0, 'x'], prompt: { __value__: ['a'] } } },
        3: { class_type: 'TextEncode', inputs: { models: [1, 0] } },
        4: { inputs: {} },
        5: { class_type: 'TextEncode', inputs: { models: ['1', -1] } },
      },
      registry,
    );
    expect(conv.workflow!.nodes['2']!.inputs).toEqual({ prompt: ['a'] });
    expect(conv.workflow!.nodes['3']!.inputs).toEqual({ models: { node: '1', output: 'models' } }); // numeric source ids are fine
    expect(conv.issues.map((i) => [i.nodeId, i.field, i.type])).toEqual([
      ['2', 'models', 'bad_linked_input'],
      ['4', undefined, 'invalid_prompt'],
      ['5', 'models', 'bad_linked_input'],
    ]);
    expect(apiToWorkflow([], registry).issues[0]!.type).toBe('invalid_prompt');
  });

  it('maps charflow validation codes to ComfyUI error types, with dependent outputs', () => {
    const api = workflowToApi(DEFAULT, registry);
    Object.assign(api['7']!.inputs, { steps: 500, width: 100, guidance: -1 });
    api['9']!.inputs.filename_prefix = 'bad name!';
    const conv = apiToWorkflow(api, registry);
    const v = validateWorkflow(conv.workflow, registry);
    const body = errorBody(issuesFromValidation(v.errors, conv.workflow, registry), conv.workflow, registry, (t, f) => inputConfig(registry, t, f));
    expect(body.error.type).toBe('prompt_outputs_failed_validation');
    expect(body.node_errors['7']!.errors.map((e) => [e.extra_info.input_name, e.type])).toEqual([
      ['steps', 'value_bigger_than_max'],
      ['width', 'custom_validation_failed'],
      ['guidance', 'value_smaller_than_min'],
    ]);
    expect(body.node_errors['7']!.dependent_outputs).toEqual(['9']);
    expect(body.node_errors['9']!.errors[0]).toMatchObject({ type: 'custom_validation_failed', extra_info: { input_name: 'filename_prefix', received_value: 'bad name!' } });
  });
});
