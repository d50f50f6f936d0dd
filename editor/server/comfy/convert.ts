// ComfyUI's API prompt format <-> charflow workflows. In the API format a node is
// {class_type, inputs, _meta?}; an input is a constant or a link [source id, output index], and
// array constants are wrapped as {"__value__": [...]}. Output index i names the i-th output of the
// source type in declaration order. Conversion is structural only: validateWorkflow judges the result.
import type { NodeDef } from '../../../engine/node.ts';
import { WORKFLOW_FORMAT, WORKFLOW_VERSION, isLink, type InputValue, type Workflow, type WorkflowNode } from '../../../engine/workflow/types.ts';
import type { Issue } from './errors.ts';

export interface ApiNode {
  class_type: string;
  inputs: Record<string, unknown>;
  _meta?: { title?: string };
}

export type ApiPrompt = Record<string, ApiNode>;

type Registry = ReadonlyMap<string, NodeDef<unknown>>;

export interface Converted {
  /** The workflow to validate; absent when the prompt is not even shaped like one. */
  workflow?: Workflow;
  /** Problems the conversion itself found (malformed nodes and links), ComfyUI-typed. */
  issues: Issue[];
}

/** True for a value that is a charflow workflow file rather than an API prompt. */
export function isCharflowWorkflow(v: unknown): boolean {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && (v as { format?: unknown }).format === WORKFLOW_FORMAT;
}

/** Output names of a node type in declaration order: index i of an API link names outputNames[i]. */
export function outputNames(def: NodeDef<unknown> | undefined): string[] {
  return def ? Object.keys(def.outputs) : [];
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Marks an output index the source does not have; validation then names it as unknown. */
const badOutput = (index: number): string => `#${index}`;

/** Converts an API prompt to a charflow workflow (not yet validated). */
export function apiToWorkflow(prompt: unknown, registry: Registry): Converted {
  if (!isObject(prompt)) {
    return { issues: [{ type: 'invalid_prompt', message: 'Invalid prompt', details: 'the prompt must be an object of nodes keyed by id' }] };
  }
  const issues: Issue[] = [];
  const nodes: Record<string, WorkflowNode> = {};
  for (const [id, raw] of Object.entries(prompt)) {
    if (!isObject(raw) || typeof raw.class_type !== 'string' || raw.class_type === '') {
      issues.push({
        type: 'invalid_prompt',
        message: 'Cannot execute because a node is missing the class_type property.',
        details: `Node ID '#${id}'`,
        nodeId: id,
      });
      continue;
    }
    const type = raw.class_type;
    const rawInputs = raw.inputs === undefined ? {} : raw.inputs;
    if (!isObject(rawInputs)) {
      issues.push({ type: 'invalid_prompt', message: 'Invalid node inputs', details: `node ${id}: "inputs" must be an object`, nodeId: id, nodeType: type });
      continue;
    }
    const inputs: Record<string, InputValue> = {};
    for (const [name, value] of Object.entries(rawInputs)) {
      const v = convertInput(value, prompt, registry);
      if ('issue' in v) {
        issues.push({ type: 'bad_linked_input', message: 'Bad linked input, must be a length-2 list of [node_id, slot_index]', details: `node ${id} input "${name}": ${v.issue}`, nodeId: id, nodeType: type, field: name });
        continue;
      }
      // Anything that is not a constant or link stays as is: the schema check names it.
      inputs[name] = v.value as InputValue;
    }
    const node: WorkflowNode = { type, inputs };
    const meta = raw._meta;
    if (isObject(meta) && typeof meta.title === 'string' && meta.title !== '') node.ui = { title: meta.title };
    nodes[id] = node;
  }
  return { workflow: { format: WORKFLOW_FORMAT, version: WORKFLOW_VERSION, nodes }, issues };
}

function convertInput(value: unknown, prompt: Record<string, unknown>, registry: Registry): { value: unknown } | { issue: string } {
  if (isObject(value) && '__value__' in value && Object.keys(value).length === 1) return { value: value.__value__ };
  if (!Array.isArray(value)) return { value };
  if (value.length !== 2 || !(typeof value[0] === 'string' || typeof value[0] === 'number')) {
    return { issue: `${JSON.stringify(value).slice(0, 60)} is neither a link nor a constant (wrap array constants as {"__value__": [...]})` };
  }
  const [src, index] = value as [string | number, unknown];
  if (typeof index !== 'number' || !Number.isInteger(index) || index < 0) return { issue: `the output index must be an integer >= 0, got ${JSON.stringify(index)}` };
  const node = String(src);
  const upstream = prompt[node];
  const upType = isObject(upstream) && typeof upstream.class_type === 'string' ? upstream.class_type : undefined;
  const names = outputNames(upType === undefined ? undefined : registry.get(upType));
  // Unknown source node or type: validation reports the node itself; keep the link so it can.
  return { value: { node, output: names[index] ?? badOutput(index) } };
}

/** Converts a charflow workflow to an API prompt (for /queue and /history listings and PNG metadata). */
export function workflowToApi(workflow: Workflow, registry: Registry): ApiPrompt {
  const out: ApiPrompt = {};
  for (const [id, node] of Object.entries(workflow.nodes)) {
    const inputs: Record<string, unknown> = {};
    for (const [name, v] of Object.entries(node.inputs ?? {})) {
      if (isLink(v)) {
        const up = workflow.nodes[v.node];
        const i = outputNames(up ? registry.get(up.type) : undefined).indexOf(v.output);
        inputs[name] = [v.node, Math.max(0, i)];
      } else {
        inputs[name] = v;
      }
    }
    const def = registry.get(node.type);
    out[id] = { inputs, class_type: node.type, _meta: { title: node.ui?.title ?? def?.displayName ?? node.type } };
  }
  return out;
}
