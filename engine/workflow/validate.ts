// Validation: migrate, JSON Schema, then the checks that need the node registry. Every problem is
// reported (not just the first), each as one line that names node id, type and field.
import { PARAM_SOCKET, type NodeDef, type ParamSchema } from '../node.ts';
import { migrateWorkflow, type MigrateOptions } from './migrate.ts';
import { checkSchema } from './schema.ts';
import {
  DEFAULT_MAX_NODES,
  isLink,
  nodeLabel,
  socketsMatch,
  userText,
  type InputValue,
  type ValidationCode,
  type ValidationError,
  type ValidationResult,
  type ValidWorkflow,
  type WorkflowNode,
} from './types.ts';

export interface ValidateOptions extends MigrateOptions {
  /** Refuse workflows with more nodes than this (default 20,000). */
  maxNodes?: number;
}

type Registry<S> = ReadonlyMap<string, NodeDef<S>>;

/** Shows a value in a message, shortened so one line stays one line. */
export function showValue(v: unknown): string {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

function showList(items: readonly unknown[], quote = true): string {
  const shown = items.slice(0, 20).map((x) => (quote ? showValue(x) : String(x)));
  return shown.join(', ') + (items.length > 20 ? `, ... (${items.length - 20} more)` : '');
}

function article(socket: string): string {
  return /^[AEIOU]/i.test(socket) ? `an ${socket}` : `a ${socket}`;
}

const patternCache = new Map<string, RegExp | null>();
function compilePattern(p: string): RegExp | null {
  let re = patternCache.get(p);
  if (re === undefined) {
    try {
      re = new RegExp(p, 'u');
    } catch {
      re = null;
    }
    patternCache.set(p, re);
  }
  return re;
}

const TYPE_WORD: Record<ParamSchema['type'], string> = {
  number: 'a number',
  integer: 'an integer',
  string: 'a string',
  boolean: 'true or false',
};

/** Checks one constant against its parameter schema; returns what is wrong, if anything. */
export function checkConstant(schema: ParamSchema, value: unknown): { code: ValidationCode; what: string } | undefined {
  const ok =
    schema.type === 'integer'
      ? typeof value === 'number' && Number.isInteger(value)
      : schema.type === 'number'
        ? typeof value === 'number' && Number.isFinite(value)
        : typeof value === schema.type;
  if (!ok) return { code: 'wrong_type', what: `must be ${TYPE_WORD[schema.type]}, got ${showValue(value)}` };
  if (schema.enum && !schema.enum.includes(value as string | number)) {
    return { code: 'value_not_in_list', what: `${showValue(value)} is not one of ${showList(schema.enum)}` };
  }
  if (typeof value === 'number') {
    if (schema.minimum !== undefined && value < schema.minimum) {
      return { code: 'value_out_of_range', what: `${value} is below the minimum ${schema.minimum}` };
    }
    if (schema.maximum !== undefined && value > schema.maximum) {
      return { code: 'value_out_of_range', what: `${value} is above the maximum ${schema.maximum}` };
    }
    if (schema.multipleOf !== undefined && schema.multipleOf > 0) {
      const q = value / schema.multipleOf;
      if (Math.abs(q - Math.round(q)) > 1e-9 * Math.max(1, Math.abs(q))) {
        return { code: 'value_out_of_range', what: `${value} is not a multiple of ${schema.multipleOf}` };
      }
    }
  }
  if (typeof value === 'string') {
    if (schema.maxLength !== undefined && value.length > schema.maxLength) {
      const chars = [...value].length; // JSON Schema counts code points, not UTF-16 units
      if (chars > schema.maxLength) {
        return { code: 'value_too_long', what: `is ${chars} characters long, more than the maximum ${schema.maxLength}` };
      }
    }
    if (schema.pattern !== undefined) {
      const re = compilePattern(schema.pattern);
      if (re && !re.test(value)) {
        return { code: 'pattern_mismatch', what: `${showValue(value)} does not match the pattern ${schema.pattern}` };
      }
    }
  }
  return undefined;
}

/** An own property only: names like "constructor" must not find Object.prototype members. */
export function own<T>(rec: Record<string, T>, key: string): T | undefined {
  return Object.prototype.hasOwnProperty.call(rec, key) ? rec[key] : undefined;
}

/** The socket type an input accepts: its declared type, or the socket of a parameter's type. */
function inputSocket<S>(def: NodeDef<S>, name: string): string | undefined {
  const decl = own(def.inputs, name);
  if (decl) return decl.type;
  const param = own(def.params, name);
  return param ? PARAM_SOCKET[param.type] : undefined;
}

export { socketsMatch } from './types.ts';

function isConstant(v: unknown): v is string | number | boolean {
  return typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean';
}

interface Edge {
  from: number; // upstream node index
  input: string; // input of the downstream node it feeds
}

/**
 * Validates a parsed workflow (any JSON value) against the registry. On success `workflow` is the
 * migrated, normalised copy with parameter defaults filled in; the argument is never modified.
 */
export function validateWorkflow<S>(raw: unknown, registry: Registry<S>, opts: ValidateOptions = {}): ValidationResult {
  const tooMany = nodeLimit(raw, opts);
  if (tooMany) return tooMany;
  const migrated = migrateWorkflow(raw, opts);
  if (!migrated.ok) return { ok: false, errors: [migrated.error] };
  return validateMigrated(migrated.workflow, registry, opts);
}

/** Refuses a workflow with more nodes than the limit before any other work. */
function nodeLimit(raw: unknown, opts: ValidateOptions): ValidationResult | undefined {
  const maxNodes = opts.maxNodes ?? DEFAULT_MAX_NODES;
  const rawNodes = typeof raw === 'object' && raw !== null ? (raw as { nodes?: unknown }).nodes : undefined;
  if (typeof rawNodes === 'object' && rawNodes !== null && !Array.isArray(rawNodes)) {
    const count = Object.keys(rawNodes).length;
    if (count > maxNodes) {
      const message = `workflow has ${count} nodes, more than the limit of ${maxNodes}`;
      return { ok: false, errors: [{ code: 'too_many_nodes', field: 'nodes', message }] };
    }
  }
  return undefined;
}

/**
 * validateWorkflow for a workflow its caller has already brought to the current version with
 * migrateWorkflow (the CLI migrates before applying --set), so nothing is migrated twice.
 */
export function validateMigrated<S>(wf: unknown, registry: Registry<S>, opts: ValidateOptions = {}): ValidationResult {
  const tooMany = nodeLimit(wf, opts);
  if (tooMany) return tooMany;
  const errors = checkSchema(wf);
  const nodes = typeof wf === 'object' && wf !== null ? (wf as { nodes?: unknown }).nodes : undefined;
  if (typeof nodes !== 'object' || nodes === null || Array.isArray(nodes)) return { ok: false, errors };
  const nodeMap = nodes as Record<string, unknown>;

  const ids = Object.keys(nodeMap);
  const index = new Map<string, number>();
  for (let i = 0; i < ids.length; i++) index.set(ids[i]!, i);
  const typeOf = (id: string): string | undefined => {
    const n = nodeMap[id];
    const t = typeof n === 'object' && n !== null ? (n as { type?: unknown }).type : undefined;
    return typeof t === 'string' ? t : undefined;
  };

  const edges: Edge[][] = ids.map(() => []);
  const normalised: ValidWorkflow['nodes'] = {};

  for (let i = 0; i < ids.length; i++) {
    const id = ids[i]!;
    const node = nodeMap[id];
    if (typeof node !== 'object' || node === null) continue; // schema reported it
    const type = (node as { type?: unknown }).type;
    if (typeof type !== 'string') continue;
    const label = nodeLabel(id, type);
    const push = (code: ValidationCode, field: string | undefined, what: string): void => {
      if (field === undefined) errors.push({ nodeId: id, nodeType: type, code, message: `${label}: ${what}` });
      else errors.push({ nodeId: id, nodeType: type, field, code, message: `${label} input "${userText(field)}": ${what}` });
    };
    const def = registry.get(type);
    if (!def) {
      push('unknown_type', undefined, `unknown node type "${userText(type)}"${suggest(type, registry)}`);
      continue;
    }
    const rawInputs = (node as { inputs?: unknown }).inputs;
    const inputs: Record<string, unknown> =
      typeof rawInputs === 'object' && rawInputs !== null && !Array.isArray(rawInputs)
        ? (rawInputs as Record<string, unknown>)
        : {};
    const filled: Record<string, InputValue> = {};

    for (const name in inputs) {
      const value = inputs[name];
      const decl = own(def.inputs, name);
      const param = own(def.params, name);
      if (!decl && !param) {
        const known = [...Object.keys(def.inputs), ...Object.keys(def.params)];
        push('unknown_input', name, `unknown input (${type} has ${known.length ? showList(known, false) : 'no inputs'})`);
        continue;
      }
      if (isLink(value)) {
        filled[name] = value;
        const from = index.get(value.node);
        if (from === undefined) {
          push('missing_node', name, `links to node ${value.node}, which does not exist`);
          continue;
        }
        edges[i]!.push({ from, input: name });
        const upType = typeOf(value.node);
        const upDef = upType === undefined ? undefined : registry.get(upType);
        if (!upDef) continue; // its own error says why
        const out = own(upDef.outputs, value.output);
        if (!out) {
          const outs = Object.keys(upDef.outputs);
          push(
            'unknown_output',
            name,
            `${nodeLabel(value.node, upType)} has no output "${userText(value.output)}" (it has ${outs.length ? showList(outs, false) : 'no outputs'})`,
          );
          continue;
        }
        const want = inputSocket(def, name)!;
        if (!socketsMatch(out.type, want)) {
          push(
            'type_mismatch',
            name,
            `${nodeLabel(value.node, upType)} output "${userText(value.output)}" is ${out.type}, but this input takes ${want}`,
          );
        }
      } else if (isConstant(value)) {
        filled[name] = value;
        if (decl) {
          push('link_required', name, `needs a link from ${article(decl.type)} output, got the constant ${showValue(value)}`);
          continue;
        }
        const bad = checkConstant(param!, value);
        if (bad) push(bad.code, name, bad.what);
      }
      // Anything else is malformed; the schema check has reported it.
    }

    for (const name in def.inputs) {
      const decl = def.inputs[name]!;
      if (!decl.optional && !(name in inputs)) {
        push('missing_input', name, `required input is missing (link ${article(decl.type)} output to it)`);
      }
    }
    for (const name in def.params) {
      if (name in inputs) continue;
      const p = def.params[name]!;
      if (p.default !== undefined) filled[name] = p.default;
      else if (!p.optional) push('missing_input', name, `required value is missing (${TYPE_WORD[p.type]})`);
    }

    const ui = (node as WorkflowNode).ui;
    normalised[id] = ui === undefined ? { type, inputs: filled } : { type, inputs: filled, ui };
  }

  for (const cycle of findCycles(edges)) errors.push(describeCycle(cycle, edges, ids, typeOf));

  if (errors.length > 0) return { ok: false, errors };
  const src = wf as ValidWorkflow;
  const workflow: ValidWorkflow = { format: src.format, version: src.version, nodes: normalised };
  if (src.groups !== undefined) workflow.groups = src.groups;
  if (src.meta !== undefined) workflow.meta = src.meta;
  return { ok: true, errors: [], workflow };
}

/** " (did you mean "X"?)" when a registered type is a small edit away. */
function suggest<S>(type: string, registry: Registry<S>): string {
  let best: string | undefined;
  let bestD = Math.max(2, Math.floor(type.length / 3)) + 1;
  const lower = type.toLowerCase();
  for (const name of registry.keys()) {
    const d = editDistance(lower, name.toLowerCase(), bestD);
    if (d < bestD) {
      bestD = d;
      best = name;
    }
  }
  return best ? ` (did you mean "${best}"?)` : '';
}

function editDistance(a: string, b: string, cap: number): number {
  if (Math.abs(a.length - b.length) >= cap) return cap;
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length]!;
}

/**
 * Strongly connected components that contain a cycle (size > 1, or a node linked to itself), via an
 * iterative Tarjan so that long chains cannot overflow the stack. Edges point upstream.
 */
export function findCycles(edges: readonly (readonly Edge[])[]): number[][] {
  const n = edges.length;
  const order = new Int32Array(n).fill(-1);
  const low = new Int32Array(n);
  const onStack = new Uint8Array(n);
  const stack: number[] = [];
  const cycles: number[][] = [];
  let counter = 0;
  const callStack: { v: number; e: number }[] = [];
  for (let root = 0; root < n; root++) {
    if (order[root] !== -1) continue;
    callStack.push({ v: root, e: 0 });
    order[root] = low[root] = counter++;
    stack.push(root);
    onStack[root] = 1;
    while (callStack.length) {
      const frame = callStack[callStack.length - 1]!;
      const out = edges[frame.v]!;
      if (frame.e < out.length) {
        const w = out[frame.e++]!.from;
        if (order[w] === -1) {
          order[w] = low[w] = counter++;
          stack.push(w);
          onStack[w] = 1;
          callStack.push({ v: w, e: 0 });
        } else if (onStack[w]) {
          low[frame.v] = Math.min(low[frame.v]!, order[w]!);
        }
        continue;
      }
      callStack.pop();
      const v = frame.v;
      if (callStack.length) {
        const parent = callStack[callStack.length - 1]!.v;
        low[parent] = Math.min(low[parent]!, low[v]!);
      }
      if (low[v] === order[v]) {
        const comp: number[] = [];
        let w: number;
        do {
          w = stack.pop()!;
          onStack[w] = 0;
          comp.push(w);
        } while (w !== v);
        if (comp.length > 1 || edges[v]!.some((e) => e.from === v)) cycles.push(comp.sort((a, b) => a - b));
      }
    }
  }
  return cycles.sort((a, b) => a[0]! - b[0]!);
}

/** Names one concrete cycle through the component's first node, in data-flow order. */
function describeCycle(
  comp: readonly number[],
  edges: readonly (readonly Edge[])[],
  ids: readonly string[],
  typeOf: (id: string) => string | undefined,
): ValidationError {
  const inComp = new Set(comp);
  const start = comp[0]!;
  // Breadth-first upstream from start until we come back to it: the shortest cycle through it.
  const prev = new Map<number, number>();
  let queue = [start];
  let closing = -1;
  search: while (queue.length) {
    const next: number[] = [];
    for (const v of queue) {
      for (const e of edges[v]!) {
        if (e.from === start) {
          closing = v;
          break search;
        }
        if (inComp.has(e.from) && !prev.has(e.from)) {
          prev.set(e.from, v);
          next.push(e.from);
        }
      }
    }
    queue = next;
  }
  // Upstream path start <- ... <- closing <- start, reversed into data-flow order.
  const upstream: number[] = [];
  for (let v = closing; v !== start && v !== -1; v = prev.get(v)!) upstream.push(v);
  const flow = [start, ...upstream, start];
  const label = (i: number): string => nodeLabel(ids[i]!, typeOf(ids[i]!));
  const firstHop = flow[flow.length - 2]!; // the node that feeds start
  const field = edges[start]!.find((e) => e.from === firstHop)?.input;
  const id = ids[start]!;
  const err: ValidationError = {
    code: 'cycle',
    nodeId: id,
    message: `${label(start)} input "${userText(String(field))}": links form a cycle: ${flow.map(label).join(' -> ')}`,
  };
  const type = typeOf(id);
  if (type !== undefined) err.nodeType = type;
  if (field !== undefined) err.field = field;
  return err;
}
