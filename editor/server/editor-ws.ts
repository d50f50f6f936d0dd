// The editor's WebSocket (/ws/editor): requests answered by id, run events and queue changes pushed
// to every tab (`mine` marks the tab that queued the run). A bad frame gets an `error` reply and the
// connection stays up; a slow tab gets progress without preview pictures rather than a growing buffer.
import { pingClients, trackPongs } from './heartbeat.ts';
import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { WebSocket } from 'ws';
import type { NodeDef } from '../../engine/node.ts';
import type { RunEvent } from '../../engine/executor/events.ts';
import { validateWorkflow } from '../../engine/workflow/index.ts';
import type { ValidationError } from '../../engine/workflow/types.ts';
import { QueueLimitError, type Job, type JobDispatcher, type JobQueue, type JobSummary } from '../../engine/queue/index.ts';
import type { CatalogNode, ClientMessage, QueueItem, ReplyBody, RunEventMessage, ServerMessage } from '../protocol.ts';
import { historyItems, queueItems } from './history-ws.ts';
import { parseClientMessage, toEventMessage } from './messages.ts';
import { StoreError, type WorkflowStore } from './workflows.ts';

/** Above this many unsent bytes a tab stops getting preview pictures until it catches up. */
const PREVIEW_BACKLOG_BYTES = 4 * 1024 * 1024;
const HEARTBEAT_MS = 30_000;
const CLIENT_ID_RE = /^[A-Za-z0-9_-]{8,64}$/;

export interface HubOptions<S> {
  queue: JobQueue;
  runner: JobDispatcher;
  registry: ReadonlyMap<string, NodeDef<S>>;
  store: WorkflowStore;
  catalog: () => CatalogNode[];
  serverVersion: string;
  /** Node limit for runs. */
  maxNodes: number;
  /** Requests one connection may have in progress at once. */
  maxInFlight?: number;
  log: (message: string) => void;
}

interface Client {
  ws: WebSocket;
  clientId: string;
  inFlight: number;
  alive: boolean;
}

type ErrorItem = { nodeId?: string; nodeType?: string; field?: string; message: string };

/** A request refused with a protocol error code. */
class Refused extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly errors?: ErrorItem[],
  ) {
    super(message);
  }
}

function errorItems(errors: readonly ValidationError[]): ErrorItem[] {
  return errors.map((e) => ({
    ...(e.nodeId !== undefined ? { nodeId: e.nodeId } : {}),
    ...(e.nodeType !== undefined ? { nodeType: e.nodeType } : {}),
    ...(e.field !== undefined ? { field: e.field } : {}),
    message: e.message,
  }));
}

export class EditorHub<S> {
  private readonly clients = new Set<Client>();
  private readonly unsubscribe: (() => void)[] = [];
  /** Active jobs -> their client id, to tell tabs about runs that vanish (deleted while pending). */
  private readonly active = new Map<string, string | null>();
  private queueTimer: NodeJS.Immediate | undefined;
  private workersTimer: NodeJS.Immediate | undefined;
  private readonly heartbeat: NodeJS.Timeout;
  private closed = false;

  constructor(private readonly o: HubOptions<S>) {
    for (const j of o.queue.active()) this.active.set(j.id, j.clientId);
    this.unsubscribe.push(
      o.queue.on('queued', (job) => {
        this.active.set(job.id, job.clientId);
        this.broadcastEvent(job, { type: 'run_queued', position: o.queue.position(job.id) ?? 0 });
      }),
      o.queue.on('finished', (job) => {
        this.active.delete(job.id);
        // A pending job cancelled never reaches the executor: say so, or tabs wait forever.
        if (job.startedAt === null) this.broadcastEvent(job, { type: 'run_cancelled' });
      }),
      o.queue.on('deleted', (ids) => {
        for (const id of ids) {
          if (!this.active.has(id)) continue;
          const clientId = this.active.get(id) ?? null;
          this.active.delete(id);
          this.broadcastEvent({ id, clientId, source: 'editor' }, { type: 'run_cancelled' });
        }
      }),
      o.queue.on('changed', () => this.scheduleQueueChanged()),
      o.runner.on('event', (job, e) => this.onRunEvent(job, e)),
      o.runner.on('workers_changed', () => this.scheduleWorkers()),
    );
    this.heartbeat = setInterval(() => this.ping(), HEARTBEAT_MS);
    this.heartbeat.unref();
  }

  get connections(): number {
    return this.clients.size;
  }

  /** Takes over an accepted WebSocket. */
  attach(ws: WebSocket, req: IncomingMessage): void {
    if (this.closed) {
      ws.close(1001, 'server stopping');
      return;
    }
    const asked = new URL(req.url ?? '/', 'http://x').searchParams.get('clientId');
    const client: Client = { ws, clientId: asked && CLIENT_ID_RE.test(asked) ? asked : randomUUID(), inFlight: 0, alive: true };
    this.clients.add(client);
    trackPongs(client);
    ws.on('close', () => this.clients.delete(client));
    ws.on('error', (err) => this.o.log(`editor websocket: ${err.message}`));
    ws.on('message', (data, isBinary) => {
      if (isBinary) {
        this.send(client, { id: null, ok: false, type: 'error', code: 'invalid_message', message: 'binary frames are not part of the protocol; send JSON text' });
        return;
      }
      void this.receive(client, data.toString());
    });
    this.send(client, { type: 'hello', serverVersion: this.o.serverVersion, clientId: client.clientId });
    this.send(client, { type: 'queue_changed', items: this.queueItems(this.o.queue.active(), client) });
    if (this.o.runner.kind === 'bullmq') this.send(client, this.workersMessage());
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.heartbeat);
    if (this.queueTimer) clearImmediate(this.queueTimer);
    if (this.workersTimer) clearImmediate(this.workersTimer);
    for (const u of this.unsubscribe.splice(0)) u();
    for (const c of this.clients) c.ws.close(1001, 'server stopping');
    this.clients.clear();
  }

  private ping(): void {
    pingClients(this.clients);
  }

  private send(c: Client, msg: ServerMessage): void {
    if (c.ws.readyState === WebSocket.OPEN) c.ws.send(JSON.stringify(msg));
  }

  // ---- pushes -----------------------------------------------------------------------------------

  private mine(c: Client, job: Pick<Job, 'clientId' | 'source'>): boolean {
    return job.source === 'editor' && job.clientId === c.clientId;
  }

  private broadcastEvent(job: Pick<Job, 'id' | 'clientId' | 'source'>, event: RunEventMessage): void {
    for (const c of this.clients) this.send(c, { type: 'event', runId: job.id, mine: this.mine(c, job), event });
  }

  private onRunEvent(job: Job, e: RunEvent): void {
    if (this.clients.size === 0) return;
    // Convert once (with and without the preview), then stamp `mine` per tab.
    let full: RunEventMessage | undefined;
    let lean: RunEventMessage | undefined;
    for (const c of this.clients) {
      const previews = c.ws.bufferedAmount < PREVIEW_BACKLOG_BYTES;
      const event = previews ? (full ??= toEventMessage(e, true)) : (lean ??= toEventMessage(e, false));
      this.send(c, { type: 'event', runId: job.id, mine: this.mine(c, job), event });
    }
  }

  private workersMessage(): ServerMessage {
    return { type: 'workers', items: this.o.runner.workers().map(({ name, device, sets, loaded, current }) => ({ name, device, sets, loaded, current })) };
  }

  /** Scale-out: the status line's worker list, once per tick however many changes came. */
  private scheduleWorkers(): void {
    if (this.workersTimer || this.closed) return;
    this.workersTimer = setImmediate(() => {
      this.workersTimer = undefined;
      const m = this.workersMessage();
      for (const c of this.clients) this.send(c, m);
    });
  }

  private scheduleQueueChanged(): void {
    if (this.queueTimer || this.closed) return;
    // Coalesce the bursts (queued + changed, started + changed) into one listing per tick.
    this.queueTimer = setImmediate(() => {
      this.queueTimer = undefined;
      if (this.clients.size === 0 || !this.o.queue.isOpen) return;
      const active = this.o.queue.active();
      for (const c of this.clients) this.send(c, { type: 'queue_changed', items: this.queueItems(active, c) });
    });
  }

  private queueItems(active: JobSummary[], c: Client): QueueItem[] {
    return queueItems(this.o.queue, active, (j) => this.mine(c, j));
  }

  // ---- requests ---------------------------------------------------------------------------------

  private async receive(c: Client, text: string): Promise<void> {
    const parsed = parseClientMessage(text);
    if (!parsed.ok) {
      this.send(c, { id: parsed.id, ok: false, type: 'error', code: 'invalid_message', message: parsed.message });
      return;
    }
    const msg = parsed.msg;
    if (c.inFlight >= (this.o.maxInFlight ?? 16)) {
      this.send(c, { id: msg.id, ok: false, type: 'error', code: 'limit', message: 'too many requests in progress on this connection; wait for replies' });
      return;
    }
    c.inFlight++;
    try {
      const body = await this.handle(c, msg);
      this.send(c, { id: msg.id, ok: true, ...body });
    } catch (err) {
      this.send(c, this.errorReply(msg.id, err));
    } finally {
      c.inFlight--;
    }
  }

  private errorReply(id: string, err: unknown): ServerMessage {
    if (err instanceof Refused) {
      return { id, ok: false, type: 'error', code: err.code, message: err.message, ...(err.errors ? { errors: err.errors } : {}) };
    }
    if (err instanceof StoreError) {
      return { id, ok: false, type: 'error', code: err.code, message: err.message, ...(err.errors.length ? { errors: errorItems(err.errors) } : {}) };
    }
    if (err instanceof QueueLimitError) return { id, ok: false, type: 'error', code: 'limit', message: err.message };
    this.o.log(`editor request failed: ${(err as Error)?.stack ?? String(err)}`);
    return { id, ok: false, type: 'error', code: 'internal', message: `internal error: ${(err as Error)?.message ?? String(err)}` };
  }

  private async handle(c: Client, msg: ClientMessage): Promise<ReplyBody> {
    const { store, queue } = this.o;
    switch (msg.type) {
      case 'catalog':
        return { type: 'catalog', nodes: this.o.catalog() };
      case 'workflows.list':
        return { type: 'workflows', items: await store.list() };
      case 'workflows.load': {
        const w = await store.load(msg.name);
        return { type: 'workflow', name: w.name, workflow: w.workflow, etag: w.etag };
      }
      case 'workflows.save': {
        const s = await store.save(msg.name, msg.workflow, msg.etag);
        return { type: 'saved', name: s.name, etag: s.etag };
      }
      case 'workflows.rename': {
        const r = await store.rename(msg.from, msg.to);
        return { type: 'renamed', from: r.from, to: r.to, etag: r.etag };
      }
      case 'workflows.delete':
        return { type: 'deleted', name: await store.delete(msg.name) };
      case 'run':
        return this.run(c, msg.workflow, msg.targets);
      case 'cancel': {
        const r = queue.cancel(msg.runId);
        if (r === 'not_found') throw new Refused('not_found', `run ${msg.runId} not found`);
        if (r === 'finished') throw new Refused('finished', `run ${msg.runId} has already finished`);
        return { type: 'cancelling', runId: msg.runId };
      }
      case 'queue':
        return { type: 'queue', items: this.queueItems(queue.active(), c) };
      case 'history':
        return { type: 'history', items: historyItems(queue, msg.limit ?? 50, (j) => this.mine(c, j)) };
      case 'history.load': {
        const job = queue.get(msg.runId);
        if (!job) throw new Refused('not_found', `run ${msg.runId} not found`);
        return { type: 'history_item', runId: job.id, workflow: job.workflow };
      }
      case 'jobs.delete': {
        // A running job cannot be deleted: it is cancelled (it then lands in the history as cancelled).
        for (const id of msg.runIds) if (queue.get(id)?.status === 'running') queue.cancel(id);
        return { type: 'jobs_deleted', deleted: queue.delete(msg.runIds) };
      }
    }
  }

  private run(c: Client, workflow: unknown, targets: string[] | undefined): ReplyBody {
    const v = validateWorkflow(workflow, this.o.registry, { maxNodes: this.o.maxNodes });
    if (!v.ok) {
      const n = v.errors.length;
      throw new Refused('invalid_workflow', `the workflow has ${n} problem${n === 1 ? '' : 's'}: ${v.errors[0]!.message}${n > 1 ? ' ...' : ''}`, errorItems(v.errors));
    }
    const wf = v.workflow!;
    const wanted = targets && targets.length ? [...new Set(targets)] : null;
    const unknown = (wanted ?? []).filter((t) => !Object.hasOwn(wf.nodes, t));
    if (unknown.length) {
      const errors = unknown.map((t) => ({ nodeId: t, message: `run target: node ${t} does not exist` }));
      throw new Refused('invalid_workflow', errors.map((e) => e.message).join('; '), errors);
    }
    const job = this.o.queue.enqueue({ workflow: wf, targets: wanted, clientId: c.clientId, source: 'editor' });
    return { type: 'queued', runId: job.id, position: this.o.queue.position(job.id) ?? 0 };
  }
}
