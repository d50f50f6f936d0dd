// Structural check of a workflow against workflow.schema.json (ajv), with ajv's errors rewritten as
// one-line messages that name the node, like every other validation message.
import { readFileSync } from 'node:fs';
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import { nodeLabel, userText, type ValidationError } from './types.ts';

let schemaCache: Record<string, unknown> | undefined;
let validatorCache: ValidateFunction | undefined;

/** The JSON Schema of the workflow file (engine/workflow/workflow.schema.json). */
export function workflowSchema(): Record<string, unknown> {
  schemaCache ??= JSON.parse(readFileSync(new URL('./workflow.schema.json', import.meta.url), 'utf8')) as Record<
    string,
    unknown
  >;
  return schemaCache;
}

function validator(): ValidateFunction {
  if (!validatorCache) {
    const ajv = new Ajv({ allErrors: true, strict: true, allowUnionTypes: true });
    validatorCache = ajv.compile(workflowSchema());
  }
  return validatorCache;
}

function decodePointer(p: string): string[] {
  if (p === '') return [];
  return p
    .slice(1)
    .split('/')
    .map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
}

function joinPath(segs: readonly string[]): string {
  let out = '';
  for (const s of segs) out += /^\d+$/.test(s) ? `[${s}]` : out ? `.${s}` : s;
  return out;
}

interface Where {
  prefix: string;
  nodeId?: string;
  nodeType?: string;
  field?: string;
  /** What the failing value is, for wording ("link", "input", ...). */
  kind: 'root' | 'node' | 'input' | 'link' | 'other';
}

function locate(segs: string[], raw: unknown): Where {
  if (segs[0] !== 'nodes' || segs.length < 2) {
    return { prefix: segs.length ? `workflow "${joinPath(segs)}"` : 'workflow', kind: segs.length ? 'other' : 'root' };
  }
  const nodeId = segs[1]!;
  const node = (raw as { nodes: Record<string, unknown> }).nodes[nodeId];
  const t = typeof node === 'object' && node !== null ? (node as { type?: unknown }).type : undefined;
  const nodeType = typeof t === 'string' && t !== '' ? t : undefined;
  const base = nodeLabel(nodeId, nodeType);
  const rest = segs.slice(2);
  if (rest.length === 0) return { prefix: base, nodeId, nodeType, kind: 'node' };
  if (rest[0] === 'inputs' && rest.length >= 2) {
    const field = rest[1]!;
    const deeper = rest.slice(2);
    return {
      prefix: `${base} input "${userText(field)}"${deeper.length ? ` link "${joinPath(deeper)}"` : ''}`,
      nodeId,
      nodeType,
      field,
      kind: deeper.length ? 'other' : 'input',
    };
  }
  return { prefix: `${base} "${joinPath(rest)}"`, nodeId, nodeType, field: rest[0], kind: 'other' };
}

function showValue(v: unknown): string {
  if (v === undefined) return 'nothing';
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

function typeName(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object') return 'an object';
  if (v === undefined) return 'nothing';
  return `a ${typeof v}`;
}

function valueAt(raw: unknown, segs: readonly string[]): unknown {
  let v = raw;
  for (const s of segs) v = typeof v === 'object' && v !== null ? (v as Record<string, unknown>)[s] : undefined;
  return v;
}

/** A ComfyUI file given by mistake gets one clear error instead of a page of schema errors. */
function comfyKind(raw: unknown): 'API' | 'editor' | undefined {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw) || 'format' in raw) return undefined;
  const r = raw as Record<string, unknown>;
  if (Array.isArray(r.nodes) && ('links' in r || 'last_node_id' in r)) return 'editor';
  const values = Object.values(r);
  if (values.length > 0 && values.every((n) => typeof n === 'object' && n !== null && 'class_type' in n)) return 'API';
  return undefined;
}

function describe(e: ErrorObject, raw: unknown): ValidationError | undefined {
  // `if` only repeats what its `then` branch reports; pattern errors of property names are
  // reported once through `propertyNames`.
  if (e.keyword === 'if' || e.propertyName !== undefined) return undefined;
  const segs = decodePointer(e.instancePath);
  const where = locate(segs, raw);
  const value = valueAt(raw, segs);
  const p = e.params as Record<string, unknown>;
  let what: string;
  switch (e.keyword) {
    case 'required':
      what =
        where.kind === 'input'
          ? `link is missing "${String(p.missingProperty)}" (a link is {"node": id, "output": name})`
          : `missing "${String(p.missingProperty)}"`;
      break;
    case 'additionalProperties':
      what =
        where.kind === 'input'
          ? `link has unknown property "${userText(String(p.additionalProperty))}" (a link is {"node": id, "output": name})`
          : `unknown property "${userText(String(p.additionalProperty))}"`;
      break;
    case 'type':
      what =
        where.kind === 'input'
          ? `must be a constant (string, number, boolean) or a link {"node": id, "output": name}, got ${typeName(value)}`
          : `must be ${[p.type].flat().map((t) => (t === 'integer' ? 'an integer' : t === 'object' || t === 'array' ? `an ${String(t)}` : `a ${String(t)}`)).join(' or ')}, got ${typeName(value)}`;
      break;
    case 'const':
      what = `must be ${JSON.stringify(p.allowedValue)}, got ${showValue(value)}`;
      break;
    case 'propertyNames':
      what =
        p.propertyName === '__proto__'
          ? 'node id "__proto__" is not allowed'
          : `node id "${userText(String(p.propertyName))}" is not allowed (use 1 to 64 letters, digits, "_", ":" or "-")`;
      break;
    case 'minLength':
      what = p.limit === 1 ? 'must not be empty' : `must be at least ${String(p.limit)} characters`;
      break;
    case 'minimum':
      what = `${JSON.stringify(value)} is below the minimum ${String(p.limit)}`;
      break;
    case 'minItems':
    case 'maxItems':
      what = `must have ${String(p.limit)} items, got ${Array.isArray(value) ? value.length : 0}`;
      break;
    default:
      what = e.message ?? `fails the "${e.keyword}" rule`;
  }
  const out: ValidationError = { code: 'schema', message: `${where.prefix}: ${what}` };
  if (where.nodeId !== undefined) out.nodeId = where.nodeId;
  if (where.nodeType !== undefined) out.nodeType = where.nodeType;
  const field = where.field ?? (segs.length === 1 ? segs[0] : undefined);
  if (field !== undefined) out.field = field;
  return out;
}

/** All structural problems of `raw` (empty when it matches the schema). */
export function checkSchema(raw: unknown): ValidationError[] {
  const validate = validator();
  if (validate(raw)) return [];
  const comfy = comfyKind(raw);
  if (comfy) {
    const message = `workflow: this is a ComfyUI ${comfy} workflow, not a charflow workflow ("format": "charflow.workflow")`;
    return [{ code: 'schema', message }];
  }
  const out: ValidationError[] = [];
  const seen = new Set<string>();
  for (const e of validate.errors ?? []) {
    const d = describe(e, raw);
    if (d && !seen.has(d.message)) {
      seen.add(d.message);
      out.push(d);
    }
  }
  return out;
}
