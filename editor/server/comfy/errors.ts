// Validation problems in ComfyUI's response shape: 400 {error, node_errors}, where node_errors maps a
// node id to {errors: [{type, message, details, extra_info}], dependent_outputs, class_type}.
// charflow's ValidationError codes map onto ComfyUI's error types; `details` keeps charflow's own
// one-line message, which names node, type and field.
import type { NodeDef, ParamSchema } from '../../../engine/node.ts';
import { isLink, type ValidationError, type Workflow } from '../../../engine/workflow/types.ts';

export type ComfyErrorType =
  | 'required_input_missing'
  | 'return_type_mismatch'
  | 'value_smaller_than_min'
  | 'value_bigger_than_max'
  | 'value_not_in_list'
  | 'invalid_input_type'
  | 'bad_linked_input'
  | 'custom_validation_failed'
  | 'dependency_cycle'
  | 'unknown_input'
  | 'invalid_prompt'
  | 'prompt_no_outputs'
  | 'prompt_outputs_failed_validation'
  | 'no_prompt'
  | 'invalid_prompt_id'
  | 'queue_full';

/** One problem, ComfyUI-typed. Without nodeId (or with type invalid_prompt) it concerns the whole prompt. */
export interface Issue {
  type: ComfyErrorType;
  /** ComfyUI's short wording. */
  message: string;
  /** charflow's one-line explanation. */
  details: string;
  nodeId?: string;
  nodeType?: string;
  field?: string;
  extra?: Record<string, unknown>;
}

export interface ComfyError {
  type: string;
  message: string;
  details: string;
  extra_info: Record<string, unknown>;
}

export interface ComfyNodeErrors {
  errors: ComfyError[];
  dependent_outputs: string[];
  class_type: string;
}

export interface ComfyErrorBody {
  error: ComfyError;
  node_errors: Record<string, ComfyNodeErrors>;
}

type Registry = ReadonlyMap<string, NodeDef<unknown>>;

/** A node of a submitted workflow, read defensively: a refused charflow workflow may be any JSON. */
function rawNode(workflow: Workflow | undefined, id: string): { type?: unknown; inputs?: Record<string, unknown> } | undefined {
  const nodes: unknown = workflow?.nodes;
  if (typeof nodes !== 'object' || nodes === null || !Object.hasOwn(nodes, id)) return undefined;
  const node = (nodes as Record<string, unknown>)[id];
  if (typeof node !== 'object' || node === null) return undefined;
  const { type, inputs } = node as { type?: unknown; inputs?: unknown };
  return { type, ...(typeof inputs === 'object' && inputs !== null ? { inputs: inputs as Record<string, unknown> } : {}) };
}

function rawIds(workflow: Workflow): string[] {
  const nodes: unknown = workflow.nodes;
  return typeof nodes === 'object' && nodes !== null ? Object.keys(nodes) : [];
}

const SHORT: Record<ComfyErrorType, string> = {
  required_input_missing: 'Required input is missing',
  return_type_mismatch: 'Return type mismatch between linked nodes',
  value_smaller_than_min: 'Value smaller than min',
  value_bigger_than_max: 'Value bigger than max',
  value_not_in_list: 'Value not in list',
  invalid_input_type: 'Invalid input type',
  bad_linked_input: 'Bad linked input, must be a length-2 list of [node_id, slot_index]',
  custom_validation_failed: 'Value is not valid',
  dependency_cycle: 'Dependency cycle detected',
  unknown_input: 'Unknown input',
  invalid_prompt: 'Invalid prompt',
  prompt_no_outputs: 'Prompt has no outputs',
  prompt_outputs_failed_validation: 'Prompt outputs failed validation',
  no_prompt: 'No prompt provided',
  invalid_prompt_id: 'Invalid prompt_id',
  queue_full: 'The queue is full',
};

/** A whole-prompt error body (no per-node errors). */
export function promptError(type: ComfyErrorType, details: string, message = SHORT[type]): ComfyErrorBody {
  return { error: { type, message, details, extra_info: {} }, node_errors: {} };
}

function paramOf(def: NodeDef<unknown> | undefined, field: string | undefined): ParamSchema | undefined {
  return def && field !== undefined && Object.hasOwn(def.params, field) ? def.params[field] : undefined;
}

/** The ComfyUI type of one charflow validation error. */
function typeOf(e: ValidationError, value: unknown, param: ParamSchema | undefined): ComfyErrorType {
  switch (e.code) {
    case 'missing_input':
      return 'required_input_missing';
    case 'type_mismatch':
      return 'return_type_mismatch';
    case 'value_out_of_range':
      if (typeof value === 'number' && param?.minimum !== undefined && value < param.minimum) return 'value_smaller_than_min';
      if (typeof value === 'number' && param?.maximum !== undefined && value > param.maximum) return 'value_bigger_than_max';
      return 'custom_validation_failed'; // multipleOf: ComfyUI has no such rule
    case 'value_not_in_list':
      return 'value_not_in_list';
    case 'wrong_type':
      return 'invalid_input_type';
    case 'link_required':
    case 'missing_node':
    case 'unknown_output':
      return 'bad_linked_input';
    case 'value_too_long':
    case 'pattern_mismatch':
      return 'custom_validation_failed';
    case 'cycle':
      return 'dependency_cycle';
    case 'unknown_input':
      return 'unknown_input';
    case 'schema':
      return e.nodeId !== undefined && e.field !== undefined ? 'invalid_input_type' : 'invalid_prompt';
    default: // file, invalid_json, unsupported_version, too_many_nodes, unknown_type, unknown_target
      return 'invalid_prompt';
  }
}

/** ComfyUI-typed issues for charflow validation errors of `workflow` (the workflow as submitted). */
export function issuesFromValidation(errors: readonly ValidationError[], workflow: Workflow | undefined, registry: Registry): Issue[] {
  return errors.map((e) => {
    const node = e.nodeId !== undefined ? rawNode(workflow, e.nodeId) : undefined;
    const value = e.field !== undefined && node?.inputs && Object.hasOwn(node.inputs, e.field) ? node.inputs[e.field] : undefined;
    const def = e.nodeType !== undefined ? registry.get(e.nodeType) : undefined;
    const param = paramOf(def, e.field);
    const type = typeOf(e, value, param);
    const issue: Issue = { type, message: SHORT[type], details: e.message };
    if (e.nodeId !== undefined) issue.nodeId = e.nodeId;
    if (e.nodeType !== undefined) issue.nodeType = e.nodeType;
    if (e.field !== undefined) issue.field = e.field;
    if (type === 'invalid_prompt' && e.code === 'unknown_type') issue.message = `Cannot execute because node ${e.nodeType} does not exist.`;
    if (value !== undefined && !isLink(value)) issue.extra = { received_value: value };
    return issue;
  });
}

/**
 * A node's dependent_outputs lists at most this many (the first in sorted order): a chain of
 * thousands of output nodes would otherwise make the body grow with the square of the node count.
 */
export const MAX_DEPENDENT_OUTPUTS = 50;

/** Merges sorted, duplicate-free lists into the first `max` distinct entries, sorted. */
function mergeSorted(lists: readonly (readonly string[])[], max: number): string[] {
  if (lists.length === 1) return lists[0]!.slice(0, max);
  const all = new Set<string>();
  for (const l of lists) for (const x of l) all.add(x);
  return [...all].sort().slice(0, max);
}

/**
 * Output nodes downstream of each node (itself included when it is one), following links: the first
 * MAX_DEPENDENT_OUTPUTS in sorted order. Each node's list is made once from its consumers' lists
 * (memoised, iterative), so the cost is linear in nodes and links; a link that closes a cycle adds
 * nothing (such a workflow is refused for the cycle anyway).
 */
export function dependentOutputs(workflow: Workflow, registry: Registry): (id: string) => string[] {
  const down = new Map<string, string[]>();
  for (const id of rawIds(workflow)) {
    for (const v of Object.values(rawNode(workflow, id)?.inputs ?? {})) {
      if (!isLink(v)) continue;
      const list = down.get(v.node) ?? [];
      list.push(id);
      down.set(v.node, list);
    }
  }
  const isOutput = (id: string): boolean => {
    const type = rawNode(workflow, id)?.type;
    return typeof type === 'string' && registry.get(type)?.output === true;
  };
  const memo = new Map<string, string[]>();
  const onStack = new Set<string>();
  const EMPTY: string[] = [];
  return (start) => {
    if (memo.has(start)) return [...memo.get(start)!];
    // Post-order walk: a node's list is made after its consumers' lists.
    const stack: { id: string; next: number }[] = [{ id: start, next: 0 }];
    onStack.add(start);
    while (stack.length) {
      const top = stack[stack.length - 1]!;
      const consumers = down.get(top.id) ?? EMPTY;
      if (top.next < consumers.length) {
        const c = consumers[top.next++]!;
        if (!memo.has(c) && !onStack.has(c)) {
          onStack.add(c);
          stack.push({ id: c, next: 0 });
        }
        continue;
      }
      const lists: string[][] = isOutput(top.id) ? [[top.id]] : [];
      for (const c of new Set(consumers)) {
        const l = memo.get(c);
        if (l && l.length) lists.push(l);
      }
      memo.set(top.id, lists.length ? mergeSorted(lists, MAX_DEPENDENT_OUTPUTS) : EMPTY);
      onStack.delete(top.id);
      stack.pop();
    }
    return [...memo.get(start)!];
  };
}

/** The top-level summary lists this many problems at most; node_errors has every one. */
export const MAX_SUMMARY_LINES = 100;

function joinDetails(issues: readonly Issue[]): string {
  const lines = issues.slice(0, MAX_SUMMARY_LINES).map((i) => i.details);
  if (issues.length > MAX_SUMMARY_LINES) lines.push(`... and ${issues.length - MAX_SUMMARY_LINES} more (see node_errors)`);
  return lines.join('\n');
}

/**
 * The 400 body for a refused prompt: node-level issues under node_errors; the top-level error is
 * the first whole-prompt issue, or ComfyUI's "prompt_outputs_failed_validation" summary.
 */
export function errorBody(
  issues: readonly Issue[],
  workflow: Workflow | undefined,
  registry: Registry,
  inputConfig: (nodeType: string, field: string) => unknown,
): ComfyErrorBody {
  const deps = workflow ? dependentOutputs(workflow, registry) : () => [];
  const nodeErrors: Record<string, ComfyNodeErrors> = {};
  const whole: Issue[] = [];
  for (const i of issues) {
    if (i.nodeId === undefined || i.type === 'invalid_prompt') {
      whole.push(i);
      if (i.nodeId === undefined) continue;
    }
    const entry = (nodeErrors[i.nodeId] ??= {
      errors: [],
      dependent_outputs: deps(i.nodeId),
      class_type: i.nodeType ?? String(rawNode(workflow, i.nodeId)?.type ?? ''),
    });
    const extra: Record<string, unknown> = { ...i.extra };
    if (i.field !== undefined) {
      extra.input_name = i.field;
      const cfg = i.nodeType !== undefined ? inputConfig(i.nodeType, i.field) : undefined;
      if (cfg !== undefined) extra.input_config = cfg;
    }
    entry.errors.push({ type: i.type, message: i.message, details: i.details, extra_info: extra });
  }
  const details = joinDetails(issues);
  const first = whole[0];
  const error: ComfyError = first
    ? { type: first.type, message: first.message, details: joinDetails(whole), extra_info: {} }
    : { type: 'prompt_outputs_failed_validation', message: SHORT.prompt_outputs_failed_validation, details, extra_info: {} };
  return { error, node_errors: nodeErrors };
}
