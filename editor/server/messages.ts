// The editor protocol on the server side: ajv validation of every client frame, and executor
// events turned into what the browser gets (previews as data URLs, images as /api/view URLs).
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import type { RunEvent } from '../../engine/executor/events.ts';
import { imagesOf } from '../../engine/queue/runner.ts';
import type { ClientMessage, ImageRef, RunEventMessage } from '../protocol.ts';
import { userText } from '../../engine/workflow/types.ts';
import { viewUrl } from './files.ts';

const id = { type: 'string', minLength: 1, maxLength: 128 };
const name = { type: 'string', minLength: 1, maxLength: 256 };
const workflow = { type: 'object' };

function message(type: string, props: Record<string, unknown> = {}, required: string[] = []): Record<string, unknown> {
  return {
    type: 'object',
    properties: { id, type: { const: type }, ...props },
    required: ['id', 'type', ...required],
  };
}

/** One schema per message type (extra properties are ignored, for forward compatibility). */
const SCHEMAS: Record<ClientMessage['type'], Record<string, unknown>> = {
  catalog: message('catalog'),
  'workflows.list': message('workflows.list'),
  'workflows.load': message('workflows.load', { name }, ['name']),
  'workflows.save': message('workflows.save', { name, workflow, etag: { type: ['string', 'null'], maxLength: 128 } }, ['name', 'workflow', 'etag']),
  'workflows.rename': message('workflows.rename', { from: name, to: name }, ['from', 'to']),
  'workflows.delete': message('workflows.delete', { name }, ['name']),
  run: message('run', { workflow, targets: { type: 'array', items: { type: 'string', maxLength: 256 }, maxItems: 100_000 } }, ['workflow']),
  cancel: message('cancel', { runId: id }, ['runId']),
  queue: message('queue'),
  history: message('history', { limit: { type: 'integer', minimum: 1, maximum: 1000 } }),
  'history.load': message('history.load', { runId: id }, ['runId']),
  'jobs.delete': message('jobs.delete', { runIds: { type: 'array', items: id, minItems: 1, maxItems: 1000 } }, ['runIds']),
};

let validators: Map<string, ValidateFunction> | undefined;

function validatorFor(type: string): ValidateFunction | undefined {
  if (!validators) {
    const ajv = new Ajv({ allErrors: false, strict: true, allowUnionTypes: true });
    validators = new Map(Object.entries(SCHEMAS).map(([t, s]) => [t, ajv.compile(s)]));
  }
  return validators.get(type);
}

function describe(e: ErrorObject): string {
  const where = e.instancePath ? `"${e.instancePath.slice(1).replace(/\//g, '.')}"` : 'the message';
  if (e.keyword === 'required') return `${where} lacks "${(e.params as { missingProperty: string }).missingProperty}"`;
  return `${where} ${e.message ?? 'is invalid'}`;
}

export type Parsed = { ok: true; msg: ClientMessage } | { ok: false; id: string | null; message: string };

/** Parses and validates one text frame. */
export function parseClientMessage(text: string): Parsed {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return { ok: false, id: null, message: 'the message is not valid JSON' };
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    return { ok: false, id: null, message: 'a message must be a JSON object with "id" and "type"' };
  }
  const r = raw as Record<string, unknown>;
  const msgId = typeof r.id === 'string' && r.id.length > 0 && r.id.length <= 128 ? r.id : null;
  if (typeof r.type !== 'string') return { ok: false, id: msgId, message: 'the message lacks a "type"' };
  const validate = validatorFor(r.type);
  if (!validate) {
    return { ok: false, id: msgId, message: `unknown message type "${userText(r.type)}" (known: ${Object.keys(SCHEMAS).join(', ')})` };
  }
  if (!validate(raw)) {
    return { ok: false, id: msgId, message: `invalid "${r.type}" message: ${(validate.errors ?? []).map(describe).join('; ')}` };
  }
  return { ok: true, msg: raw as ClientMessage };
}

function imageRefs(outputs: Record<string, unknown> | undefined): ImageRef[] | undefined {
  const images = imagesOf(outputs);
  if (!images || images.length === 0) return undefined;
  return images.map((i) => ({ ...i, url: viewUrl(i) }));
}

/**
 * An executor event as the browser sees it. `previews: false` leaves previews out (a client that
 * does not keep up gets progress without pictures).
 */
export function toEventMessage(e: RunEvent, previews = true): RunEventMessage {
  switch (e.type) {
    case 'run_started':
      return { type: 'run_started', nodeIds: e.nodes };
    case 'node_started':
      return { type: 'node_started', nodeId: e.nodeId, nodeType: e.nodeType };
    case 'node_progress': {
      const m: RunEventMessage = { type: 'node_progress', nodeId: e.nodeId, step: e.step, total: e.total };
      if (previews && e.preview) {
        const mime = e.preview.format === 'png' ? 'image/png' : 'image/jpeg';
        m.preview = `data:${mime};base64,${Buffer.from(e.preview.data).toString('base64')}`;
      }
      return m;
    }
    case 'node_cached': {
      const images = imageRefs(e.outputs);
      return { type: 'node_cached', nodeId: e.nodeId, ...(images ? { images } : {}), ...(e.summary ? { summary: e.summary } : {}) };
    }
    case 'node_finished': {
      const images = imageRefs(e.outputs);
      return { type: 'node_finished', nodeId: e.nodeId, ms: e.ms, ...(images ? { images } : {}), ...(e.summary ? { summary: e.summary } : {}) };
    }
    case 'node_failed':
      return { type: 'node_failed', nodeId: e.nodeId, nodeType: e.nodeType, message: e.message, ...(e.field !== undefined ? { field: e.field } : {}) };
    case 'node_skipped':
      return { type: 'node_skipped', nodeId: e.nodeId, because: e.because };
    case 'run_finished':
      return { type: 'run_finished', status: e.status, ms: e.ms };
    case 'run_cancelled':
      return { type: 'run_cancelled' };
  }
}
