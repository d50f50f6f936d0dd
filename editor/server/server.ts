// The charflow server: the editor's static bundle, an HTTP API (catalogue, images, uploads,
// workflows) and the editor WebSocket, in front of the durable job queue and its one runner.
// Other layers (the ComfyUI-compatible API) plug in through ServerPlugin and share the same queue.
import { readFileSync } from 'node:fs';
import http, { type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import path from 'node:path';
import express, { type NextFunction, type Request, type Response } from 'express';
import { WebSocketServer, type WebSocket } from 'ws';
import type { NodeDef } from '../../engine/node.ts';
import { ensureDirs, type DataPaths } from '../../engine/paths.ts';
import { DEFAULT_MAX_NODES, userText } from '../../engine/workflow/types.ts';
import { JobQueue, QueueRunner, type Job, type JobDispatcher, type JobSummary } from '../../engine/queue/index.ts';
import { BullmqDispatcher } from '../../engine/queue/bullmq-dispatcher.ts';
import { redact, timingFromEnv, type BullmqTiming } from '../../engine/queue/bullmq.ts';
import type { PoolOptions } from '../../engine/runtime/pool.ts';
import { nodeRegistry } from '../../nodes/registry.ts';
import { createServices, PACKAGE_ROOT, type Services } from '../../nodes/services.ts';
import { buildCatalog } from './catalog.ts';
import type { ServerContext, ServerLimits, ServerPlugin } from './context.ts';
import { mountComfyApi } from './comfy/index.ts';
import { rationLargePrompts } from './comfy/check-thread.ts';
import { EditorHub } from './editor-ws.ts';
import { FileRequestError, listInputs, resolveView, storeUpload } from './files.ts';
import { registerLoraRoutes } from './loras.ts';
import { Guard, isLoopbackHost, type Refusal } from './security.ts';
import { StoreError, WorkflowStore } from './workflows.ts';
import { inputRefs, modelSetOf, mountWorkerApi, setsIn } from './workers.ts';
import { mountCharacterApi } from './characters.ts';
import { mountModelsApi } from './models.ts';
import { mountTemplatesApi } from './templates.ts';
import { sendTokenPage, wantsTokenPage } from './token-page.ts';

export type { ServerContext, ServerLimits, ServerPlugin } from './context.ts';

export const DEFAULT_LIMITS: ServerLimits = {
  jsonBodyBytes: 32 * 1024 * 1024,
  uploadBytes: 50 * 1024 * 1024,
  wsMessageBytes: 32 * 1024 * 1024,
  maxNodes: DEFAULT_MAX_NODES,
  maxPendingPerClient: 100,
  maxConnections: 64,
  maxConnectionsPerClient: 32,
  maxWorkerConnections: 64,
  keepHistory: 10_000,
};

export interface ServerOptions {
  paths: DataPaths;
  /** Default 127.0.0.1. Anything not loopback requires a token. */
  host?: string;
  /** Default 8188; 0 picks a free port. */
  port?: number;
  /** Required on every request when set (Bearer header, ?token= or the cookie ?token= sets). */
  token?: string;
  /** Scale-out: the workers' own token, the only one /ws/worker and /api/worker/* take (see docs/scale-out.md). */
  workerToken?: string;
  /** For services made here (default 'auto'). */
  device?: PoolOptions['device'];
  /** For services made here: models loaded at once stay under this (default: CHARFLOW_MEMORY_BUDGET or the device's). */
  memoryBudgetBytes?: number;
  /** Host services to use (not closed by close()); default: made with createServices. */
  services?: Services;
  registry?: ReadonlyMap<string, NodeDef<Services>>;
  limits?: Partial<ServerLimits>;
  /** More Host header names to accept (reverse proxies). */
  allowedHosts?: readonly string[];
  /**
   * Static files served at /. undefined: the editor bundle (editorStaticDir() of editor/build.ts);
   * null: a small placeholder page.
   */
  staticDir?: string | null;
  /** false: the runner starts paused (tests); call server.runner.start(). Default true. */
  startRunner?: boolean;
  plugins?: readonly ServerPlugin[];
  log?: (message: string) => void;
  /**
   * redis:// or rediss:// URL: jobs go on BullMQ and `charflow worker` processes run them
   * (scale-out). Undefined: this process runs them from the embedded SQLite queue.
   */
  queueUrl?: string;
  /** BullMQ lock and stalled-check timing (default from CHARFLOW_LOCK_DURATION_MS / CHARFLOW_STALLED_INTERVAL_MS). */
  timing?: BullmqTiming;
}

export interface RunningServer {
  /** http://host:port/ to open in a browser (loopback when listening on every address). */
  url: string;
  host: string;
  port: number;
  app: express.Express;
  httpServer: http.Server;
  queue: JobQueue;
  /** The embedded runner (throws in scale-out mode, where `dispatcher` is a BullmqDispatcher). */
  runner: QueueRunner<Services>;
  /** Whatever runs the jobs: the embedded runner or BullMQ workers. */
  dispatcher: JobDispatcher;
  services: Services;
  /** Graceful stop: no new jobs, the running one back to pending, connections closed, db closed. */
  close(): Promise<void>;
}

export function serverVersion(): string {
  try {
    return (JSON.parse(readFileSync(path.join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version?: string }).version ?? '0.0.0';
  } catch {
    return '0.0.0';
  }
}

/** The editor bundle's folder, or why there is none. */
async function editorBundle(): Promise<{ dir?: string; why?: string }> {
  try {
    const mod = (await import('../build.ts')) as { editorStaticDir?: () => string };
    if (typeof mod.editorStaticDir !== 'function') return { why: 'editor/build.ts has no editorStaticDir()' };
    return { dir: mod.editorStaticDir() };
  } catch (err) {
    return { why: `the editor bundle could not be built: ${(err as Error).message.split('\n')[0]}` };
  }
}

function placeholderPage(why: string): string {
  const esc = why.replace(/[&<>"]/g, (ch) => `&#${ch.charCodeAt(0)};`);
  return `<!doctype html><meta charset="utf-8"><title>charflow</title>
<body style="font-family:system-ui;margin:3em;max-width:40em">
<h1>charflow server is running</h1><p>The browser editor is not available: ${esc}</p>
<p>The API works: <a href="/api/nodes">/api/nodes</a>, WebSocket <code>/ws/editor</code>.</p></body>`;
}

function sendRefusal(res: Response, r: Refusal): void {
  res.status(r.status).json({ error: r.code, message: r.message });
}

/** Writes an HTTP error on a raw upgrade socket and closes it. */
function refuseUpgrade(socket: Duplex, status: number, message: string): void {
  const text = http.STATUS_CODES[status] ?? 'Error';
  const body = JSON.stringify({ error: text, message });
  socket.end(`HTTP/1.1 ${status} ${text}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
}

function listen(server: http.Server, port: number, host: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException): void => {
      server.off('listening', onListening);
      if (err.code === 'EADDRINUSE') reject(new Error(`port ${port} on ${host} is already in use; pick another with --port`));
      else if (err.code === 'EADDRNOTAVAIL') reject(new Error(`cannot listen on ${host}: no such address on this machine`));
      else if (err.code === 'EACCES') reject(new Error(`not allowed to listen on ${host}:${port} (ports below 1024 need privileges)`));
      else reject(err);
    };
    const onListening = (): void => {
      server.off('error', onError);
      resolve();
    };
    server.once('error', onError);
    server.once('listening', onListening);
    server.listen(port, host);
  });
}

function urlHost(host: string): string {
  if (host === '0.0.0.0' || host === '::' || host === '') return '127.0.0.1';
  return host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
}

function summary(j: JobSummary | Job): Record<string, unknown> {
  return {
    id: j.id,
    number: j.number,
    status: j.status,
    source: j.source,
    createdAt: new Date(j.createdAt).toISOString(),
    startedAt: j.startedAt === null ? null : new Date(j.startedAt).toISOString(),
    ...('finishedAt' in j
      ? { finishedAt: j.finishedAt === null ? null : new Date(j.finishedAt).toISOString(), error: j.error, outputs: j.outputs }
      : {}),
  };
}

export async function startServer(opts: ServerOptions): Promise<RunningServer> {
  const host = opts.host ?? '127.0.0.1';
  const port = opts.port ?? 8188;
  const token = opts.token === '' ? undefined : opts.token;
  const workerToken = opts.workerToken === '' ? undefined : opts.workerToken;
  if (workerToken !== undefined && workerToken === token) throw new Error('the worker token must differ from the client token: workers are not clients');
  const limits: ServerLimits = { ...DEFAULT_LIMITS, ...opts.limits };
  const log = opts.log ?? ((m: string) => process.stderr.write(`${m}\n`));
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`port must be an integer 0-65535, got ${port}`);
  if (!isLoopbackHost(host) && !token) {
    throw new Error(
      `refusing to listen on ${host} without a token: anyone who can reach that address could run jobs and read your images. ` +
        'Pass --token <secret> (or set CHARFLOW_TOKEN), or listen on 127.0.0.1.',
    );
  }
  const { paths } = opts;
  await ensureDirs(paths);
  const registry = opts.registry ?? nodeRegistry();
  const queueUrl = opts.queueUrl === '' ? undefined : opts.queueUrl;
  if (queueUrl !== undefined && !workerToken && !isLoopbackHost(host)) {
    throw new Error(`refusing scale-out on ${host} without a worker token: pass --worker-token <secret> (or set CHARFLOW_WORKER_TOKEN) and give it to the workers`);
  }
  if (queueUrl !== undefined) {
    // Before anything is opened: an unreachable Redis is a clear error at start (RedisUnreachableError).
    for (const w of await BullmqDispatcher.check(queueUrl)) log(`warning: ${w}`);
  }
  const timing = opts.timing ?? timingFromEnv(process.env);
  const queue = JobQueue.open(paths.database, { maxPendingPerClient: limits.maxPendingPerClient, running: queueUrl === undefined ? 'requeue' : 'keep' });
  const rec = queue.recovered;
  if (rec.requeued.length) log(`charflow: ${rec.requeued.length} job(s) interrupted by the last stop will run again`);
  if (rec.cancelled.length) log(`charflow: ${rec.cancelled.length} job(s) being cancelled at the last stop are cancelled`);
  if (rec.failed.length) log(`charflow: ${rec.failed.length} job(s) that stopped the server repeatedly are marked failed`);

  let services: Services;
  let ownedClose: (() => Promise<void>) | undefined;
  try {
    if (opts.services) services = opts.services;
    else {
      const owned = await createServices(paths, {
        device: opts.device ?? 'auto',
        log,
        ...(opts.memoryBudgetBytes !== undefined ? { memoryBudgetBytes: opts.memoryBudgetBytes } : {}),
      });
      services = owned;
      ownedClose = () => owned.close();
    }
  } catch (err) {
    queue.close();
    throw err;
  }

  const svc = services;
  const runner: QueueRunner<Services> | BullmqDispatcher =
    queueUrl === undefined
      ? new QueueRunner<Services>({
          queue,
          registry,
          services,
          maxNodes: limits.maxNodes,
          keepHistory: { maxCount: limits.keepHistory },
          logger: { info: log, warn: (m) => log(`warning: ${m}`) },
        })
      : new BullmqDispatcher({
          queue,
          url: queueUrl,
          timing,
          modelSetOf: (wf) => modelSetOf(wf, registry),
          inputsOf: (wf) => inputRefs(wf, registry, svc),
          knownSets: () => setsIn(paths.models),
          keepHistory: { maxCount: limits.keepHistory },
          log,
        });
  if (queueUrl !== undefined) log(`charflow: jobs go to BullMQ on ${redact(queueUrl)}; start workers with charflow worker`);
  const guard = new Guard({ host, port, token, ...(workerToken ? { workerToken } : {}), allowedHosts: opts.allowedHosts });
  const version = serverVersion();
  const store = new WorkflowStore(paths.workflows);
  const catalog = buildCatalog(registry);
  const app = express();
  const httpServer = http.createServer(app);
  const closers: (() => void | Promise<void>)[] = [];
  const wsRoutes = new Map<string, WebSocketServer>();
  const hub = new EditorHub<Services>({
    queue,
    runner,
    registry,
    store,
    catalog: () => catalog,
    serverVersion: version,
    maxNodes: limits.maxNodes,
    log,
  });

  // Clients and workers have separate socket budgets (a client flood cannot keep workers out), and
  // one client address gets at most maxConnectionsPerClient of the clients' budget.
  let clientSockets = 0;
  let workerSockets = 0;
  const perAddress = new Map<string, number>();
  const addressOf = (req: IncomingMessage): string => req.socket.remoteAddress ?? '?';
  const websocket = (pathname: string, onConnection: (ws: WebSocket, req: IncomingMessage) => void): void => {
    if (wsRoutes.has(pathname)) throw new Error(`a WebSocket handler for ${pathname} exists already`);
    const wss = new WebSocketServer({ noServer: true, maxPayload: limits.wsMessageBytes });
    wss.on('connection', (ws, req) => {
      if (Guard.isWorkerPath(pathname)) {
        workerSockets++;
        ws.once('close', () => workerSockets--);
      } else {
        const addr = addressOf(req);
        clientSockets++;
        perAddress.set(addr, (perAddress.get(addr) ?? 0) + 1);
        ws.once('close', () => {
          clientSockets--;
          const left = (perAddress.get(addr) ?? 1) - 1;
          if (left > 0) perAddress.set(addr, left);
          else perAddress.delete(addr);
        });
      }
      onConnection(ws, req);
    });
    wsRoutes.set(pathname, wss);
  };
  websocket('/ws/editor', (ws, req) => hub.attach(ws, req));

  httpServer.on('upgrade', (req, socket, head) => {
    socket.on('error', () => {});
    const pathname = new URL(req.url ?? '/', 'http://x').pathname;
    const wss = wsRoutes.get(pathname);
    if (!wss) return refuseUpgrade(socket, 404, `no WebSocket at ${pathname}`);
    const refusal = guard.checkAll(req, { origin: true });
    if (refusal) return refuseUpgrade(socket, refusal.status, refusal.message);
    if (Guard.isWorkerPath(pathname)) {
      if (workerSockets >= (limits.maxWorkerConnections ?? DEFAULT_LIMITS.maxWorkerConnections!)) return refuseUpgrade(socket, 503, 'too many workers connected');
    } else {
      if (clientSockets >= limits.maxConnections) return refuseUpgrade(socket, 503, 'too many open connections');
      if ((perAddress.get(addressOf(req)) ?? 0) >= (limits.maxConnectionsPerClient ?? DEFAULT_LIMITS.maxConnectionsPerClient!)) {
        return refuseUpgrade(socket, 429, 'too many connections from this address');
      }
    }
    wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
  });

  // ---- HTTP ---------------------------------------------------------------------------------
  app.disable('x-powered-by');
  app.set('query parser', 'simple');
  app.use((req: Request, res: Response, next: NextFunction) => {
    res.setHeader('X-Content-Type-Options', 'nosniff');
    res.setHeader('Referrer-Policy', 'no-referrer'); // a ?token= URL must not leak through Referer
    res.setHeader('Content-Security-Policy', "frame-ancestors 'none'");
    const stateChanging = !['GET', 'HEAD', 'OPTIONS'].includes(req.method);
    const refusal = guard.checkAll(req, { origin: stateChanging });
    if (refusal?.code === 'unauthorized' && wantsTokenPage(req)) return sendTokenPage(res, refusal.message);
    if (refusal) return sendRefusal(res, refusal);
    if (guard.token !== undefined && req.method === 'GET' && !Guard.isWorkerPath(req.path) && guard.queryToken(req) !== undefined) {
      res.setHeader('Set-Cookie', guard.tokenCookie()!);
    }
    next();
  });
  app.use(['/prompt', '/api/prompt'], rationLargePrompts()); // before the body is read: see comfy/check-thread.ts
  app.use(express.json({ limit: limits.jsonBodyBytes }));

  app.get('/api/nodes', (_req, res) => {
    res.json({ nodes: catalog });
  });

  app.get('/api/view', async (req, res, next) => {
    try {
      const { file, contentType } = await resolveView(paths, req.query as Record<string, unknown>);
      res.sendFile(file, {
        dotfiles: 'allow', // checked above; the data folder itself may live under a dot folder
        headers: { 'Content-Type': contentType, 'Cache-Control': 'no-cache' },
      });
    } catch (err) {
      next(err);
    }
  });

  mountModelsApi(app, paths, services.pool); // /api/models (issue 25: model sets you can pick)
  mountTemplatesApi(app); // /api/templates: the bundled workflows
  registerLoraRoutes(app, paths);

  app.get('/api/inputs', async (_req, res, next) => {
    try {
      res.json({ files: await listInputs(paths) });
    } catch (err) {
      next(err);
    }
  });

  app.post('/api/upload', express.raw({ type: 'multipart/form-data', limit: limits.uploadBytes }), async (req, res, next) => {
    try {
      const type = req.headers['content-type'] ?? '';
      if (!type.startsWith('multipart/form-data') || !Buffer.isBuffer(req.body)) {
        throw new FileRequestError(400, 'invalid_upload', 'send the image as multipart/form-data with the field "image"');
      }
      let form: FormData;
      try {
        // The fetch API's multipart parser: no extra dependency, and the body is size-limited above.
        const body = new Uint8Array(req.body.buffer as ArrayBuffer, req.body.byteOffset, req.body.length);
        form = await new globalThis.Request('http://upload/', { method: 'POST', headers: { 'content-type': type }, body }).formData();
      } catch {
        throw new FileRequestError(400, 'invalid_upload', 'the multipart body could not be read');
      }
      const file = form.get('image');
      if (!file || typeof file === 'string') throw new FileRequestError(400, 'invalid_upload', 'the form has no file in the field "image"');
      const overwrite = ['true', '1'].includes(String(form.get('overwrite') ?? '').toLowerCase());
      const subfolder = form.get('subfolder');
      const result = await storeUpload(
        paths,
        { name: file.name || 'upload', bytes: new Uint8Array(await file.arrayBuffer()) },
        { subfolder: typeof subfolder === 'string' ? subfolder : undefined, overwrite },
      );
      res.json(result);
    } catch (err) {
      next(err);
    }
  });

  // Workflows over plain HTTP (the WebSocket offers the same); ETag / If-Match for concurrent edits.
  app.get('/api/workflows', async (_req, res, next) => {
    try {
      res.json({ items: await store.list() });
    } catch (err) {
      next(err);
    }
  });
  app.get('/api/workflows/:name', async (req, res, next) => {
    try {
      const w = await store.load(req.params.name);
      res.setHeader('ETag', `"${w.etag}"`);
      res.json(w.workflow);
    } catch (err) {
      next(err);
    }
  });
  app.put('/api/workflows/:name', async (req, res, next) => {
    try {
      const ifMatch = req.headers['if-match'];
      const ifNone = req.headers['if-none-match'];
      let etag: string | null | undefined;
      if (typeof ifMatch === 'string') etag = ifMatch.replace(/^W\//, '').replace(/"/g, '');
      else if (ifNone === '*') etag = null;
      // Neither header: overwrite unconditionally.
      const s = await store.save(req.params.name, req.body, etag);
      res.setHeader('ETag', `"${s.etag}"`);
      res.json(s);
    } catch (err) {
      next(err);
    }
  });
  app.delete('/api/workflows/:name', async (req, res, next) => {
    try {
      res.json({ deleted: await store.delete(req.params.name) });
    } catch (err) {
      next(err);
    }
  });

  // Jobs in charflow's own shape. (/api/queue, /api/history, /prompt... are left to the ComfyUI layer.)
  app.get('/api/jobs', (_req, res) => {
    res.json({ running: queue.running().map(summary), pending: queue.active().filter((j) => j.status === 'pending').map(summary) });
  });
  app.get('/api/jobs/history', (req, res) => {
    const limit = Math.max(1, Math.min(1000, Number(req.query.limit) || 100));
    const offset = Math.max(0, Number(req.query.offset) || 0);
    res.json({ items: queue.history({ limit, offset }).map(summary) });
  });
  app.get('/api/jobs/:id', (req, res) => {
    const job = queue.get(req.params.id);
    if (!job) return void res.status(404).json({ error: 'not_found', message: `job "${userText(req.params.id)}" not found` });
    res.json({ ...summary(job), attempts: job.attempts, targets: job.targets, nodes: job.nodes, workflow: job.workflow });
  });

  const ctx: ServerContext = {
    app,
    httpServer,
    paths,
    registry,
    services,
    queue,
    runner,
    guard,
    limits,
    serverVersion: version,
    log,
    websocket,
    onClose: (fn) => void closers.push(fn),
  };

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> =>
    (closing ??= (async () => {
      hub.close();
      for (const wss of wsRoutes.values()) {
        for (const ws of wss.clients) ws.close(1001, 'server stopping');
        wss.close();
      }
      const serverClosed = new Promise<void>((resolve) => httpServer.close(() => resolve()));
      httpServer.closeIdleConnections();
      await runner.stop();
      for (const fn of closers) {
        try {
          await fn();
        } catch (err) {
          log(`warning: ${(err as Error).message}`);
        }
      }
      queue.close();
      httpServer.closeAllConnections();
      for (const wss of wsRoutes.values()) for (const ws of wss.clients) ws.terminate();
      await serverClosed;
      await ownedClose?.();
    })());

  try {
    mountComfyApi(ctx); // ComfyUI's HTTP and WebSocket API over the same queue (editor/server/comfy)
    mountCharacterApi(ctx, runner instanceof BullmqDispatcher); // saved characters (editor/server/characters.ts)
    if (runner instanceof BullmqDispatcher) mountWorkerApi(ctx, runner);
    for (const plugin of opts.plugins ?? []) await plugin(ctx);

    // Static editor (or placeholder) last, after every API route.
    const bundle = opts.staticDir === null ? { why: 'no static folder configured' } : opts.staticDir ? { dir: opts.staticDir } : await editorBundle();
    if (bundle.dir) app.use(express.static(bundle.dir, { index: 'index.html', dotfiles: 'ignore' }));
    else {
      log(`charflow: ${bundle.why}; serving a placeholder page at /`);
      app.get('/', (_req, res) => {
        res.type('html').send(placeholderPage(bundle.why ?? 'unknown'));
      });
    }

    app.use((req, res) => {
      res.status(404).json({ error: 'not_found', message: `no such path: ${req.method} ${req.path}` });
    });
    app.use((err: unknown, _req: Request, res: Response, _next: NextFunction) => {
      const e = err as { type?: string; status?: number; message?: string };
      if (err instanceof FileRequestError) return void res.status(err.status).json({ error: err.code, message: err.message });
      if (err instanceof StoreError) {
        const status = { not_found: 404, conflict: 412, exists: 412, invalid_name: 400, invalid_workflow: 400, too_large: 413, io: 500 }[err.code];
        return void res.status(status).json({ error: err.code, message: err.message, errors: err.errors });
      }
      if (e?.type === 'entity.too.large') return void res.status(413).json({ error: 'too_large', message: 'the request body is larger than the limit' });
      if (e?.type === 'entity.parse.failed') return void res.status(400).json({ error: 'invalid_json', message: 'the request body is not valid JSON' });
      if (typeof e?.status === 'number' && e.status >= 400 && e.status < 500) {
        return void res.status(e.status).json({ error: 'bad_request', message: e.message ?? 'bad request' });
      }
      log(`charflow: request failed: ${(err as Error)?.stack ?? String(err)}`);
      res.status(500).json({ error: 'internal', message: 'internal error (see the server log)' });
    });

    await listen(httpServer, port, host);
  } catch (err) {
    await close().catch(() => {});
    throw err;
  }
  const actualPort = (httpServer.address() as AddressInfo).port;
  guard.setPort(actualPort);
  if (opts.startRunner !== false) runner.start();
  return {
    url: `http://${urlHost(host)}:${actualPort}/`,
    host,
    port: actualPort,
    app,
    httpServer,
    queue,
    get runner(): QueueRunner<Services> {
      if (runner instanceof QueueRunner) return runner;
      throw new Error('this server runs jobs on BullMQ workers; use dispatcher');
    },
    dispatcher: runner,
    services,
    close,
  };
}
