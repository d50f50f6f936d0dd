// The workflow file format, shared by the editor, the CLI and the server.

export const WORKFLOW_FORMAT = 'charflow.workflow';
/** The version this charflow writes; older files are migrated on load (see migrate.ts). */
export const WORKFLOW_VERSION = 1;
/** Default limit on the number of nodes in one workflow. */
export const DEFAULT_MAX_NODES = 20_000;
/** Default limit on the size of a workflow file. */
export const DEFAULT_MAX_WORKFLOW_BYTES = 16 * 1024 * 1024;

/** An input fed by another node's output. */
export interface Link {
  node: string;
  output: string;
}

export type Constant = string | number | boolean;
export type InputValue = Constant | Link;

export interface NodeUi {
  pos?: [number, number];
  size?: [number, number];
  title?: string;
  color?: string;
  collapsed?: boolean;
  [key: string]: unknown;
}

export interface WorkflowNode {
  type: string;
  inputs?: Record<string, InputValue>;
  ui?: NodeUi;
}

export interface WorkflowGroup {
  title?: string;
  bounding?: [number, number, number, number];
  color?: string;
  nodes?: string[];
  [key: string]: unknown;
}

export interface Workflow {
  format: typeof WORKFLOW_FORMAT;
  version: number;
  nodes: Record<string, WorkflowNode>;
  groups?: WorkflowGroup[];
  meta?: Record<string, unknown>;
}

/**
 * A workflow that passed validateWorkflow: current version, every node has `inputs` with parameter
 * defaults filled in, links point at existing outputs of matching type, no cycles.
 */
export interface ValidWorkflow extends Workflow {
  nodes: Record<string, WorkflowNode & { inputs: Record<string, InputValue> }>;
  /** Brand: only validateWorkflow produces these. */
  readonly __valid?: true;
}

export type ValidationCode =
  | 'file' // the file cannot be read (missing, too large, not a file)
  | 'invalid_json'
  | 'schema' // the JSON Schema rejected the structure
  | 'unsupported_version'
  | 'too_many_nodes'
  | 'unknown_type'
  | 'unknown_input'
  | 'unknown_output'
  | 'missing_input'
  | 'missing_node'
  | 'type_mismatch' // a link's output type does not fit the input
  | 'link_required' // a constant given for a link-only input
  | 'wrong_type' // a constant of the wrong JSON type for its parameter
  | 'value_out_of_range' // minimum, maximum, multipleOf
  | 'value_not_in_list' // enum
  | 'value_too_long' // maxLength
  | 'pattern_mismatch'
  | 'cycle'
  | 'unknown_target'; // a run names a node that does not exist

export interface ValidationError {
  nodeId?: string;
  nodeType?: string;
  field?: string;
  code: ValidationCode;
  /** One line a person can act on, naming node id, type and field, e.g.
   *  `node 7 (DiTSample) input "steps": 0 is below the minimum 1`. */
  message: string;
}

export interface ValidationResult {
  ok: boolean;
  errors: ValidationError[];
  /** The normalised workflow (defaults filled, migrated); present exactly when ok. */
  workflow?: ValidWorkflow;
}

/** Thrown where a caller needs an exception (e.g. Executor.run on a bad target). */
export class WorkflowError extends Error {
  constructor(readonly errors: ValidationError[]) {
    super(errors.map((e) => e.message).join('\n') || 'invalid workflow');
    this.name = 'WorkflowError';
  }
}

export function isLink(v: unknown): v is Link {
  return typeof v === 'object' && v !== null && typeof (v as Link).node === 'string' && typeof (v as Link).output === 'string';
}

/** Text a user sent, shown inside a message: control characters escaped, at most `max` characters. */
export function userText(s: string, max = 64): string {
  return JSON.stringify(s.length > max ? `${s.slice(0, max)}...` : s).slice(1, -1);
}

/** `node 7 (DiTSample)`, or `node 7` when the type is unknown. */
export function nodeLabel(id: string, type?: string): string {
  const shown = /^[\w.-]+$/.test(id) ? id : JSON.stringify(id.length > 64 ? `${id.slice(0, 64)}...` : id);
  return type ? `node ${shown} (${userText(type)})` : `node ${shown}`;
}

/** Numeric-aware id order: "2" < "10" < "a". */
export function compareIds(a: string, b: string): number {
  const na = /^\d+$/.test(a);
  const nb = /^\d+$/.test(b);
  if (na && nb) return a.length - b.length || (a < b ? -1 : a > b ? 1 : 0);
  if (na !== nb) return na ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * Socket types that connect: equal names, '*' on either side, or an input that lists several types
 * ('CHARACTER,CHARACTERS'); case matters, unlike litegraph's default. The validator and the editor both use it.
 */
export function socketsMatch(output: string, input: string): boolean {
  return output === input || output === '*' || input === '*' || (input.includes(',') && input.split(',').includes(output));
}
