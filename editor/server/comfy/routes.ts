// ComfyUI's HTTP routes over charflow's queue, history, files and node registry. The router is
// mounted both at / and at /api/ (see index.ts); it shares the queue and runner with the editor.
import { cpus, freemem, platform, release, totalmem } from 'node:os';
import express, { type Request, type Response, type Router } from 'express';
import { QueueLimitError, type Job, type JsonValue } from '../../../engine/queue/index.ts';
import type { ValidWorkflow } from '../../../engine/workflow/types.ts';
import { nodeRegistry } from '../../../nodes/registry.ts';
import type { Services } from '../../../nodes/services.ts';
import { FileRequestError, listInputs, resolveView, storeUpload } from '../files.ts';
import type { ServerContext } from '../context.ts';
import { checkPrompt, type Accepted, type Refusal } from './check.ts';
import { PromptCheckThread, THREAD_MIN_NODES } from './check-thread.ts';
import { promptError } from './errors.ts';
import { historyEntry, queueItem, type ComfyExtra } from './history.ts';
import { allObjectInfo, inputConfig, objectInfo, type ParamChoices } from './object-info.ts';
import { savedCharacterNames } from '../characters.ts';
import { listModelSets } from '../../../models/modelsets.ts';
import { listLoras } from '../../../nodes/lib/lora.ts';
import type { ComfyHub } from './ws.ts';

/** Client-chosen prompt ids: what a UUID, a number or a simple name needs. */
const PROMPT_ID_RE = /^[A-Za-z0-9_.:-]{1,128}$/;
const CLIENT_ID_MAX = 128;
/** history without max_items: everything, up to the queue's own page limit. */
const HISTORY_ALL = 10_000;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function idList(v: unknown): string[] {
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [];
}

/** A non-negative integer query parameter, or undefined. */
function queryInt(v: unknown): number | undefined {
  if (typeof v !== 'string' || !/^\d{1,9}$/.test(v)) return undefined;
  return Number(v);
}


/** What /object_info offers for image, model-set, saved-character and LoRA parameters, read afresh per request. */
async function paramChoices(paths: ServerContext['paths']): Promise<ParamChoices> {
  return { images: await listInputs(paths), modelSets: listModelSets(paths.models).map((m) => m.name), characters: savedCharacterNames(paths), loras: listLoras(paths) };
}

export function comfyRouter(ctx: ServerContext, hub: ComfyHub<Services>): Router {
  const { queue, runner, registry, paths, limits } = ctx;
  const router = express.Router();
  // Some clients post JSON without a JSON content type; the app's parser has taken real JSON already.
  const anyJson = express.json({ type: () => true, limit: limits.jsonBodyBytes });
  const configOf = (type: string, field: string): unknown => inputConfig(registry, type, field);

  /** Validates a submitted prompt (API format or a charflow workflow); a refusal in ComfyUI's shape. */
  const accept = (prompt: unknown): Accepted | Refusal => checkPrompt(prompt, registry, limits.maxNodes);
  // Large prompts are checked off the event loop first, when the registry is the stock one (the thread builds that).
  const stock = nodeRegistry();
  const threadable = registry.size === stock.size && [...stock.keys()].every((k) => registry.has(k));
  const checker = new PromptCheckThread();
  ctx.onClose(() => checker.close());

  const postPrompt = async (req: Request, res: Response): Promise<void> => {
    const body: unknown = req.body;
    if (!isObject(body) || body.prompt === undefined || body.prompt === null) {
      return void res.status(400).json(promptError('no_prompt', 'the request body needs a "prompt": an API prompt or a charflow workflow'));
    }
    let id: string | undefined;
    if (body.prompt_id !== undefined && body.prompt_id !== null && body.prompt_id !== '') {
      if (typeof body.prompt_id !== 'string' || !PROMPT_ID_RE.test(body.prompt_id)) {
        return void res.status(400).json(promptError('invalid_prompt_id', 'prompt_id must be 1 to 128 letters, digits, "_", ".", ":" or "-"'));
      }
      if (queue.get(body.prompt_id)) return void res.status(400).json(promptError('invalid_prompt_id', `prompt_id ${body.prompt_id} is already in use`));
      id = body.prompt_id;
    }
    if (threadable && PromptCheckThread.size(body.prompt) >= THREAD_MIN_NODES) {
      const pre = await checker.check(body.prompt, limits.maxNodes);
      if (!pre.ok) return void res.status(pre.status).type('application/json').send(pre.json);
    }
    const accepted = accept(body.prompt);
    if ('status' in accepted) return void res.status(accepted.status).json(accepted.body);
    const { workflow, api, format } = accepted;

    let targets: string[] | null = null;
    const partial = body.partial_execution_targets;
    if (Array.isArray(partial) && partial.length) {
      targets = [...new Set(idList(partial))];
      const unknown = targets.filter((t) => !Object.hasOwn(workflow.nodes, t));
      if (unknown.length || targets.length === 0) {
        return void res.status(400).json(promptError('invalid_prompt', `partial_execution_targets names nodes that do not exist: ${unknown.join(', ')}`));
      }
    }
    const clientId = typeof body.client_id === 'string' && body.client_id !== '' && body.client_id.length <= CLIENT_ID_MAX ? body.client_id : null;
    const extraData: Record<string, JsonValue> = isObject(body.extra_data) ? { ...(body.extra_data as Record<string, JsonValue>) } : {};
    if (clientId !== null) extraData.client_id = clientId;
    extraData.create_time = Date.now();
    const extra: ComfyExtra = { comfy: { prompt: api, extra_data: extraData, format } };
    let job: Job;
    try {
      job = queue.enqueue({
        workflow,
        targets,
        clientId,
        source: 'api',
        extra: extra as unknown as JsonValue,
        front: body.front === true,
        ...(id !== undefined ? { id } : {}),
      });
    } catch (err) {
      if (err instanceof QueueLimitError) return void res.status(429).json(promptError('queue_full', err.message));
      throw err;
    }
    // enqueue() returns once the job is committed to the database.
    res.json({ prompt_id: job.id, number: job.number, node_errors: {} });
  };

  router.post('/prompt', anyJson, (req, res, next) => void postPrompt(req, res).catch(next));
  router.get('/prompt', (_req, res) => {
    res.json({ exec_info: { queue_remaining: hub.queueRemaining() } });
  });

  router.get('/queue', (_req, res) => {
    res.json({ queue_running: queue.running().map((j) => queueItem(j, registry)), queue_pending: queue.pending().map((j) => queueItem(j, registry)) });
  });
  router.post('/queue', anyJson, (req, res) => {
    const body: unknown = req.body;
    let deleted = 0;
    if (isObject(body) && body.clear === true) deleted += queue.clearPending();
    if (isObject(body) && body.delete !== undefined) {
      // Only waiting prompts leave the queue this way; a running one is stopped with /interrupt.
      const ids = idList(body.delete).filter((id) => queue.get(id)?.status === 'pending');
      deleted += ids.length ? queue.delete(ids) : 0;
    }
    res.json({ deleted });
  });

  router.get('/history', (req, res) => {
    const max = queryInt(req.query.max_items);
    const offset = queryInt(req.query.offset);
    const limit = Math.min(max ?? HISTORY_ALL, HISTORY_ALL);
    // ComfyUI lists oldest first: without an offset, the newest `max_items`; with one, from that position.
    const jobs = offset !== undefined ? queue.history({ order: 'oldest', offset, limit }) : queue.history({ order: 'newest', limit }).reverse();
    const out: Record<string, unknown> = {};
    for (const job of jobs) out[job.id] = historyEntry(job, registry);
    res.json(out);
  });
  router.get('/history/:id', (req, res) => {
    const job = queue.get(req.params.id!);
    res.json(job && job.finishedAt !== null ? { [job.id]: historyEntry(job, registry) } : {});
  });
  router.post('/history', anyJson, (req, res) => {
    const body: unknown = req.body;
    let deleted = 0;
    if (isObject(body) && body.clear === true) deleted += queue.clearHistory();
    if (isObject(body) && body.delete !== undefined) {
      const ids = idList(body.delete).filter((id) => queue.get(id)?.finishedAt != null);
      deleted += ids.length ? queue.delete(ids) : 0;
    }
    res.json({ deleted });
  });

  router.post('/interrupt', anyJson, (req, res) => {
    const body: unknown = req.body;
    const only = isObject(body) && typeof body.prompt_id === 'string' ? body.prompt_id : undefined;
    let interrupted = false;
    if (only === undefined) interrupted = runner.interrupt();
    else if (queue.get(only)?.status === 'running') interrupted = queue.cancel(only) === 'cancelling';
    res.json({ interrupted });
  });

  router.post('/free', anyJson, async (req, res, next) => {
    try {
      const body: unknown = req.body;
      // Wherever jobs run: here (embedded) or on every connected worker (scale-out).
      const r = await runner.free({ unloadModels: isObject(body) && body.unload_models === true, clearCache: isObject(body) && body.free_memory === true });
      res.json({ unloaded_models: r.unloadedModels, cache_cleared: r.cacheCleared });
    } catch (err) {
      next(err);
    }
  });

  router.get('/view', async (req, res, next) => {
    try {
      const { file, contentType } = await resolveView(paths, req.query as Record<string, unknown>);
      res.sendFile(file, { dotfiles: 'allow', headers: { 'Content-Type': contentType, 'Cache-Control': 'no-cache' } });
    } catch (err) {
      next(err);
    }
  });

  router.post('/upload/image', express.raw({ type: 'multipart/form-data', limit: limits.uploadBytes }), async (req, res, next) => {
    try {
      const form = await multipartForm(req);
      const file = form.get('image');
      if (!file || typeof file === 'string') throw new FileRequestError(400, 'invalid_upload', 'the form has no file in the field "image"');
      const type = form.get('type');
      if (typeof type === 'string' && type !== '' && type !== 'input') {
        throw new FileRequestError(400, 'invalid_upload', `uploads go to the inputs folder; type must be "input", got "${type}"`);
      }
      const subfolder = form.get('subfolder');
      const overwrite = ['true', '1'].includes(String(form.get('overwrite') ?? '').toLowerCase());
      const stored = await storeUpload(
        paths,
        { name: file.name || 'upload', bytes: new Uint8Array(await file.arrayBuffer()) },
        { subfolder: typeof subfolder === 'string' ? subfolder : undefined, overwrite },
      );
      res.json({ name: stored.name, subfolder: stored.subfolder, type: stored.type });
    } catch (err) {
      next(err);
    }
  });

  router.get('/object_info', async (_req, res, next) => {
    try {
      res.json(allObjectInfo(registry, await paramChoices(paths)));
    } catch (err) {
      next(err);
    }
  });
  router.get('/object_info/:type', async (req, res, next) => {
    try {
      const def = registry.get(req.params.type!);
      res.json(def ? { [def.type]: objectInfo(def, await paramChoices(paths)) } : {});
    } catch (err) {
      next(err);
    }
  });

  router.get('/system_stats', (_req, res) => {
    const pool = ctx.services.pool;
    const stats = pool.stats();
    const onCpu = pool.device === 'cpu';
    const total = onCpu ? totalmem() : stats.budgetBytes;
    const free = onCpu ? freemem() : Math.max(0, stats.budgetBytes - stats.residentBytes);
    res.json({
      system: {
        os: platform(),
        // There is no Python here: the runtime is Node.js.
        python_version: `n/a (Node.js ${process.versions.node})`,
        node_version: process.versions.node,
        embedded_python: false,
        comfyui_version: `charflow ${ctx.serverVersion}`,
        pytorch_version: 'n/a',
        argv: [],
        ram_total: totalmem(),
        ram_free: freemem(),
        os_release: release(),
      },
      devices: [
        {
          name: onCpu ? (cpus()[0]?.model ?? 'cpu') : pool.device,
          type: pool.device,
          index: 0,
          vram_total: total,
          vram_free: free,
          torch_vram_total: stats.residentBytes,
          torch_vram_free: 0,
        },
      ],
      // Scale-out: where jobs run. Embedded: this server; bullmq: the connected workers.
      queue: { kind: runner.kind, workers: runner.workers() },
    });
  });
  router.get('/embeddings', (_req, res) => {
    res.json([]);
  });
  router.get('/extensions', (_req, res) => {
    res.json([]);
  });
  return router;
}

/** The multipart body (size-limited by the raw parser) read with the fetch API's form parser. */
async function multipartForm(req: Request): Promise<FormData> {
  const type = req.headers['content-type'] ?? '';
  if (!type.startsWith('multipart/form-data') || !Buffer.isBuffer(req.body)) {
    throw new FileRequestError(400, 'invalid_upload', 'send the image as multipart/form-data with the field "image"');
  }
  try {
    const body = new Uint8Array(req.body.buffer as ArrayBuffer, req.body.byteOffset, req.body.length);
    return await new globalThis.Request('http://upload/', { method: 'POST', headers: { 'content-type': type }, body }).formData();
  } catch {
    throw new FileRequestError(400, 'invalid_upload', 'the multipart body could not be read');
  }
}
