// One ajv schema per message of the worker <-> server link, and for what workers leave in Redis (a
// job's result). Both ends validate with these before using anything: the server every worker frame
// and every result it reads from Redis, the worker every server frame. Nothing from the network is
// trusted until it passed; a frame that fails closes that connection with the reason.
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import { SET_NAME_RE, type QueueJobResult, type ServerToWorker, type WorkerMessage } from './bullmq.ts';

/** A worker may serve at most this many model sets (each costs Redis connections on the server). */
export const MAX_SETS_PER_WORKER = 16;
/** Job ids, worker names, lock tokens. */
const ID_PATTERN = '^[A-Za-z0-9_.:-]{1,128}$';

const id = { type: 'string', pattern: ID_PATTERN };
const text = (max: number): Record<string, unknown> => ({ type: 'string', maxLength: max });
const setName = { type: 'string', pattern: SET_NAME_RE.source };
const setList = { type: 'array', items: setName, maxItems: MAX_SETS_PER_WORKER, uniqueItems: true };
const nodeId = text(256);
const int = { type: 'integer', minimum: 0, maximum: Number.MAX_SAFE_INTEGER };
const num = { type: 'number', minimum: 0 };
const image = {
  type: 'object',
  properties: { filename: text(255), subfolder: text(255), type: { enum: ['output', 'temp', 'input'] } },
  required: ['filename', 'subfolder', 'type'],
  additionalProperties: false,
};
const images = { type: 'object', properties: { images: { type: 'array', items: image, maxItems: 1024 } }, additionalProperties: false };
const counts = {
  type: 'object',
  properties: { done: int, cached: int, failed: int, skipped: int, cancelled: int },
  required: ['done', 'cached', 'failed', 'skipped', 'cancelled'],
  additionalProperties: false,
};
/** Node summaries are small JSON objects (NodeDef.summary). */
const summary = { type: 'object', maxProperties: 64 };

function obj(props: Record<string, unknown>, required: string[]): Record<string, unknown> {
  return { type: 'object', properties: props, required, additionalProperties: false };
}

function event(type: string, props: Record<string, unknown> = {}, required: string[] = [], node = true): Record<string, unknown> {
  const base: Record<string, unknown> = { type: { const: type }, runId: id, time: num };
  if (node) Object.assign(base, { nodeId, nodeType: text(128) });
  return obj({ ...base, ...props }, ['type', 'runId', 'time', ...(node ? ['nodeId', 'nodeType'] : []), ...required]);
}

/** Run events as they cross the link (WireEvent): previews as base64, outputs reduced to images. */
const EVENT_SCHEMAS: Record<string, Record<string, unknown>> = {
  run_started: event('run_started', { nodes: { type: 'array', items: nodeId, maxItems: 100_000 }, targets: { type: 'array', items: nodeId, maxItems: 100_000 } }, ['nodes', 'targets'], false),
  node_started: event('node_started'),
  node_progress: event(
    'node_progress',
    {
      step: int,
      total: int,
      preview: obj({ format: { enum: ['png', 'jpeg'] }, base64: { type: 'string', maxLength: 16 * 1024 * 1024, pattern: '^[A-Za-z0-9+/]*={0,2}$' } }, ['format', 'base64']),
    },
    ['step', 'total'],
  ),
  node_cached: event('node_cached', { outputs: images, summary }),
  node_finished: event('node_finished', { ms: num, outputs: images, summary }, ['ms']),
  node_failed: event('node_failed', { message: text(8192), error: text(8192), field: text(256), stack: text(16_384) }, ['message', 'error']),
  node_skipped: event('node_skipped', { because: nodeId, message: text(8192) }, ['because', 'message']),
  run_finished: event('run_finished', { status: { enum: ['done', 'failed'] }, ms: num, counts }, ['status', 'ms', 'counts'], false),
  run_cancelled: event('run_cancelled', { ms: num, counts }, ['ms', 'counts'], false),
};

/** `lock`: the BullMQ lock token the worker holds the job with (the server checks it in Redis). */
const WORKER_SCHEMAS: Record<WorkerMessage['type'], Record<string, unknown>> = {
  hello: obj({ type: { const: 'hello' }, name: id, device: text(64), sets: setList, loaded: setList }, ['type', 'name', 'device', 'sets', 'loaded']),
  status: obj({ type: { const: 'status' }, loaded: setList, current: { anyOf: [id, { type: 'null' }] } }, ['type', 'loaded', 'current']),
  started: obj({ type: { const: 'started' }, jobId: id, lock: id }, ['type', 'jobId', 'lock']),
  // The event itself is checked against EVENT_SCHEMAS by its own type.
  event: obj({ type: { const: 'event' }, jobId: id, lock: id, event: { type: 'object', properties: { type: { enum: Object.keys(EVENT_SCHEMAS) } }, required: ['type'] } }, ['type', 'jobId', 'lock', 'event']),
  sync: obj({ type: { const: 'sync' }, jobId: id, lock: id }, ['type', 'jobId', 'lock']),
  finished: obj({ type: { const: 'finished' }, jobId: id }, ['type', 'jobId']),
};

const SERVER_SCHEMAS: Record<ServerToWorker['type'], Record<string, unknown>> = {
  welcome: obj({ type: { const: 'welcome' }, server: text(64) }, ['type', 'server']),
  cancel: obj({ type: { const: 'cancel' }, jobId: id }, ['type', 'jobId']),
  synced: obj({ type: { const: 'synced' }, jobId: id }, ['type', 'jobId']),
  free: obj({ type: { const: 'free' }, unloadModels: { type: 'boolean' }, clearCache: { type: 'boolean' } }, ['type', 'unloadModels', 'clearCache']),
};

const outcome = {
  anyOf: [
    obj({ status: { const: 'done' }, ms: num }, ['status', 'ms']),
    obj({ status: { const: 'cached' } }, ['status']),
    obj({ status: { const: 'failed' }, message: text(8192), error: text(8192), field: text(256) }, ['status', 'message', 'error']),
    obj({ status: { const: 'skipped' }, because: nodeId, message: text(8192) }, ['status', 'because', 'message']),
    obj({ status: { const: 'cancelled' } }, ['status']),
  ],
};

/** The small return value a worker stores in Redis (QueueJobResult). */
const RESULT_SCHEMA = obj(
  {
    status: { enum: ['done', 'failed', 'interrupted'] },
    error: { anyOf: [text(8192), { type: 'null' }] },
    outputs: { type: 'object', additionalProperties: images, maxProperties: 100_000 },
    nodes: { type: 'object', additionalProperties: outcome, maxProperties: 100_000 },
    worker: id,
  },
  ['status', 'error', 'outputs', 'nodes', 'worker'],
);

interface Validators {
  worker: Map<string, ValidateFunction>;
  server: Map<string, ValidateFunction>;
  event: Map<string, ValidateFunction>;
  result: ValidateFunction;
}
let compiled: Validators | undefined;

function validators(): Validators {
  if (!compiled) {
    const ajv = new Ajv({ allErrors: false, strict: true, allowUnionTypes: true });
    const all = (m: Record<string, Record<string, unknown>>): Map<string, ValidateFunction> => new Map(Object.entries(m).map(([t, s]) => [t, ajv.compile(s)]));
    compiled = { worker: all(WORKER_SCHEMAS), server: all(SERVER_SCHEMAS), event: all(EVENT_SCHEMAS), result: ajv.compile(RESULT_SCHEMA) };
  }
  return compiled;
}

function describe(errors: ErrorObject[] | null | undefined): string {
  const e = errors?.[0];
  if (!e) return 'is invalid';
  const where = e.instancePath ? `"${e.instancePath.slice(1).replace(/\//g, '.')}"` : 'the message';
  if (e.keyword === 'required') return `${where} lacks "${(e.params as { missingProperty: string }).missingProperty}"`;
  if (e.keyword === 'additionalProperties') return `${where} has an unknown field "${(e.params as { additionalProperty: string }).additionalProperty}"`;
  return `${where} ${e.message ?? 'is invalid'}`;
}

export type Checked<T> = { ok: true; msg: T } | { ok: false; reason: string };

function parseWith<T>(text: string, table: Map<string, ValidateFunction>, check?: (m: Record<string, unknown>) => string | undefined): Checked<T> {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return { ok: false, reason: 'not valid JSON' };
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return { ok: false, reason: 'not a JSON object' };
  const m = raw as Record<string, unknown>;
  const validate = typeof m.type === 'string' ? table.get(m.type) : undefined;
  if (!validate) return { ok: false, reason: `unknown message type ${JSON.stringify(String(m.type)).slice(0, 40)}` };
  const type = String(m.type);
  if (!validate(m)) return { ok: false, reason: `invalid "${type}": ${describe(validate.errors)}` };
  const more = check?.(m);
  if (more) return { ok: false, reason: `invalid "${type}": ${more}` };
  return { ok: true, msg: m as T };
}

/** A worker -> server frame, schema-checked (the event inside an `event` against its own type's schema). */
export function parseWorkerMessage(text: string): Checked<WorkerMessage> {
  const v = validators();
  return parseWith<WorkerMessage>(text, v.worker, (m) => {
    if (m.type !== 'event') return undefined;
    const e = m.event as Record<string, unknown>;
    const validate = v.event.get(e.type as string)!;
    if (!validate(e)) return `event ${describe(validate.errors)}`;
    return e.runId === m.jobId ? undefined : 'the event names another job';
  });
}

/** A server -> worker frame, schema-checked. */
export function parseServerMessage(text: string): Checked<ServerToWorker> {
  return parseWith<ServerToWorker>(text, validators().server);
}

/** A job's return value as read from Redis: undefined with the reason when it is not a QueueJobResult. */
export function checkJobResult(value: unknown): Checked<QueueJobResult> {
  const validate = validators().result;
  if (!validate(value)) return { ok: false, reason: `the job's stored result is not valid: ${describe(validate.errors).replace('the message', 'the result')}` };
  return { ok: true, msg: value as QueueJobResult };
}
