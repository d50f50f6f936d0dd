// What remote workers (charflow worker, scale-out on BullMQ) need from the server, behind the same
// Host/token checks as every other route: a WebSocket (/ws/worker) that relays their run events to
// the editor and ComfyUI clients and carries cancels back; input images by content hash; and output
// images uploaded back into this server's data folder. Workers share no filesystem with the server.
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import express from 'express';
import type { WebSocket } from 'ws';
import type { BullmqDispatcher, WorkerLink } from '../../engine/queue/bullmq-dispatcher.ts';
import type { InputRef, WorkerMessage } from '../../engine/queue/bullmq.ts';
import type { NodeDef } from '../../engine/node.ts';
import type { ValidWorkflow } from '../../engine/workflow/types.ts';
import { resolveImagePath } from '../../nodes/load_character.ts';
import type { Services } from '../../nodes/services.ts';
import type { ServerContext } from './context.ts';
import { FileRequestError, IMAGE_TYPES } from './files.ts';
import { characterRef } from './characters.ts';
import { outputParts, storeWorkerOutput } from './worker-outputs.ts';

const SHA256_RE = /^[0-9a-f]{64}$/;
const NAME_RE = /^[A-Za-z0-9_.:-]{1,128}$/;

/** The model set a workflow's jobs go to: its first LoadModels node's set (the default when none). */
export function modelSetOf(workflow: ValidWorkflow, registry: ReadonlyMap<string, NodeDef<Services>>): string {
  const ids = Object.keys(workflow.nodes).sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
  for (const id of ids) {
    const node = workflow.nodes[id]!;
    if (node.type !== 'LoadModels') continue;
    const set = node.inputs.set;
    if (typeof set === 'string') return set;
  }
  const fallback = registry.get('LoadModels')?.params.set?.default;
  return typeof fallback === 'string' ? fallback : 'tiny';
}

/** The image parameters of a workflow that this server can read, with their content hashes. */
export async function inputRefs(workflow: ValidWorkflow, registry: ReadonlyMap<string, NodeDef<Services>>, services: Services): Promise<InputRef[]> {
  const refs: InputRef[] = [];
  for (const [nodeId, node] of Object.entries(workflow.nodes)) {
    const def = registry.get(node.type);
    if (!def) continue;
    for (const [field, schema] of Object.entries(def.params)) {
      const value = node.inputs[field];
      if (schema.format === 'character' && typeof value === 'string') {
        const ref = await characterRef(services, nodeId, field, value);
        if (ref) refs.push(ref);
        continue;
      }
      if (schema.format !== 'image' || typeof value !== 'string' || value === '') continue;
      try {
        const file = await resolveImagePath(services, value);
        const bytes = await readFile(file);
        const ext = path.extname(file).toLowerCase();
        refs.push({ nodeId, field, path: value, sha256: createHash('sha256').update(bytes).digest('hex'), ext: IMAGE_TYPES[ext] ? ext : '.bin' });
      } catch {
        // Not readable here: the worker's node reports it (same message as on one machine).
      }
    }
  }
  return refs;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

const strings = (v: unknown): v is string[] => Array.isArray(v) && v.length <= 256 && v.every((x) => typeof x === 'string' && x.length <= 128);

/** A worker frame, shape-checked; undefined for anything else. */
export function parseWorkerMessage(text: string): WorkerMessage | undefined {
  let m: unknown;
  try {
    m = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (!isObject(m) || typeof m.type !== 'string') return undefined;
  const id = (v: unknown): v is string => typeof v === 'string' && NAME_RE.test(v);
  switch (m.type) {
    case 'hello':
      return id(m.name) && typeof m.device === 'string' && m.device.length <= 64 && strings(m.sets) && strings(m.loaded) ? (m as WorkerMessage) : undefined;
    case 'status':
      return strings(m.loaded) && (m.current === null || id(m.current)) ? (m as WorkerMessage) : undefined;
    case 'started':
    case 'finished':
      return id(m.jobId) ? (m as WorkerMessage) : undefined;
    case 'event':
      return id(m.jobId) && isObject(m.event) && typeof m.event.type === 'string' && m.event.runId === m.jobId ? (m as WorkerMessage) : undefined;
    default:
      return undefined;
  }
}

/** A name fixed per job, node and index (kept for tools that want one; uploads are numbered, see worker-outputs.ts). */
export function outputName(workerName: string, jobId: string, nodeId: string, index: number): string {
  const { stem, ext } = outputParts(workerName);
  const safe = (s: string): string => s.replace(/[^A-Za-z0-9_-]/g, '-');
  return `${stem}_${safe(jobId)}_${safe(nodeId)}_${index}${ext}`;
}

/** Mounts the worker API (scale-out mode only). */
export function mountWorkerApi(ctx: ServerContext, dispatcher: BullmqDispatcher): void {
  const { app, paths, queue, services, limits, log } = ctx;

  // Input images by content hash: only a file this server resolves for the given image path (inputs
  // folder or bundled examples, realpath-checked) and whose bytes hash to the requested value.
  app.get('/api/worker/inputs/:sha256', async (req, res, next) => {
    try {
      const sha = req.params.sha256;
      const p = req.query.path;
      if (!SHA256_RE.test(sha) || typeof p !== 'string' || p === '' || p.length > 1024) {
        throw new FileRequestError(400, 'invalid_request', 'expected /api/worker/inputs/<sha256>?path=<image path>');
      }
      let bytes: Buffer;
      try {
        bytes = await readFile(await resolveImagePath(services, p));
      } catch {
        throw new FileRequestError(404, 'not_found', `no input "${p}" here`);
      }
      if (createHash('sha256').update(bytes).digest('hex') !== sha) throw new FileRequestError(409, 'changed', `input "${p}" changed since the job was queued`);
      res.type('application/octet-stream').send(bytes);
    } catch (err) {
      next(err);
    }
  });

  // An output image of a running job, into the outputs (or temp) folder, numbered as the embedded runner does.
  app.put('/api/worker/outputs', express.raw({ type: () => true, limit: limits.uploadBytes }), async (req, res, next) => {
    try {
      const { job: jobId, node, index, type, name } = req.query as Record<string, unknown>;
      if (typeof jobId !== 'string' || !NAME_RE.test(jobId) || typeof node !== 'string' || !NAME_RE.test(node) || typeof name !== 'string' || name.length > 255) {
        throw new FileRequestError(400, 'invalid_request', 'expected ?job=&node=&index=&type=output|temp&name=');
      }
      if (type !== 'output' && type !== 'temp') throw new FileRequestError(400, 'invalid_request', 'type must be output or temp');
      const i = Number(index);
      if (!Number.isInteger(i) || i < 0 || i > 10_000) throw new FileRequestError(400, 'invalid_request', 'index must be a whole number');
      const job = queue.get(jobId);
      if (!job || job.finishedAt !== null) throw new FileRequestError(409, 'not_running', `job ${jobId} is not running`);
      if (!Buffer.isBuffer(req.body) || req.body.length === 0) throw new FileRequestError(400, 'invalid_upload', 'the body must be the image bytes');
      const dir = type === 'output' ? paths.outputs : paths.temp;
      // The embedded runner's numbered names (issue 25); a retried job's upload overwrites its own file.
      const filename = await storeWorkerOutput(dir, name, jobId, node, i, req.body);
      res.json({ filename, subfolder: '', type });
    } catch (err) {
      next(err);
    }
  });

  app.get('/api/workers', (_req, res) => {
    res.json({ queue: dispatcher.kind, workers: dispatcher.workers() });
  });

  ctx.websocket('/ws/worker', (ws: WebSocket) => {
    const link: WorkerLink = {
      send: (m) => {
        if (ws.readyState === ws.OPEN) ws.send(JSON.stringify(m));
      },
    };
    let hello = false;
    ws.on('message', (data, isBinary) => {
      const msg = isBinary ? undefined : parseWorkerMessage(data.toString());
      if (!msg) {
        log('warning: worker websocket: a malformed message; closing');
        ws.close(1008, 'malformed message');
        return;
      }
      if (msg.type === 'hello') {
        if (hello) return;
        hello = true;
        dispatcher.workerConnected(link, msg);
        return;
      }
      if (!hello) {
        ws.close(1008, 'say hello first');
        return;
      }
      dispatcher.workerMessage(link, msg);
    });
    ws.on('close', () => dispatcher.workerDisconnected(link));
    ws.on('error', (err) => log(`worker websocket: ${err.message}`));
  });
}
