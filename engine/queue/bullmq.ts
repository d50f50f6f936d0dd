// What the server (BullmqDispatcher) and the workers (QueueWorker) share when jobs go through
// BullMQ on Redis: the Redis URL, the start-up checks, the queue names (one queue per model set, so
// workers can take their warm sets' jobs first without BullMQ Pro groups), the job's payload, its
// small return value, and the messages of the worker <-> server WebSocket.
import { Redis } from 'ioredis';
import type { NodeOutcome } from '../executor/executor.ts';
import type { RunEvent } from '../executor/events.ts';
import type { ValidWorkflow } from '../workflow/types.ts';
import type { JobNodeOutput } from './types.ts';

/**
 * A worker holds its job's lock for this long and renews it every half of it. A worker that dies
 * (SIGKILL, power, network) stops renewing; after the lock expires, the next stalled check (every
 * STALLED_INTERVAL) moves the job back to waiting: another worker has it within about
 * LOCK_DURATION + 2 * STALLED_INTERVAL = 20 s. Shorter locks notice deaths sooner but risk a
 * healthy worker losing its lock during a long GC pause or a slow Redis.
 */
export const DEFAULT_LOCK_DURATION_MS = 10_000;
export const DEFAULT_STALLED_INTERVAL_MS = 5_000;
/** A job may be recovered from one stall; the second stall fails it (a job that kills workers). */
export const MAX_STALLED_COUNT = 1;
/** How long a worker without a set's models loaded leaves a new job of that set to warm workers. */
export const DEFAULT_COLD_DELAY_MS = 1_000;
/** Queue names: one per model set. */
export const QUEUE_PREFIX = 'charflow';
/** Finished BullMQ jobs stay this long so a restarted server can still read their results. */
export const KEEP_FINISHED_S = 7 * 24 * 3600;

export interface BullmqTiming {
  lockDurationMs: number;
  stalledIntervalMs: number;
}

/** Timing from CHARFLOW_LOCK_DURATION_MS / CHARFLOW_STALLED_INTERVAL_MS (server and workers must agree). */
export function timingFromEnv(env: Readonly<Record<string, string | undefined>>): BullmqTiming {
  const num = (name: string, fallback: number): number => {
    const v = env[name];
    if (v === undefined || v === '') return fallback;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 100) throw new Error(`${name} must be a whole number of milliseconds >= 100, got "${v}"`);
    return n;
  };
  return { lockDurationMs: num('CHARFLOW_LOCK_DURATION_MS', DEFAULT_LOCK_DURATION_MS), stalledIntervalMs: num('CHARFLOW_STALLED_INTERVAL_MS', DEFAULT_STALLED_INTERVAL_MS) };
}

/**
 * Stopping (a server, a worker) waits this long for Redis to hand a job back and close its
 * connections; past it the connections are dropped, so an unreachable Redis never holds a stop.
 */
export const STOP_GRACE_MS = 10_000;

/** Model set names (queue names are built from them): the LoadModels pattern. */
export const SET_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export function queueName(set: string): string {
  if (!SET_NAME_RE.test(set)) throw new Error(`"${set}" is not a valid model set name`);
  return `${QUEUE_PREFIX}.${set}`;
}

/** BullMQ custom ids may not contain ':' (prompt ids may); '~' never appears in a job id. */
export function bullId(id: string): string {
  return `j.${id.replace(/:/g, '~')}`;
}

/** The charflow job id of a BullMQ job id; undefined for ids charflow never makes (forged entries). */
export function jobIdOf(bull: string | undefined): string | undefined {
  if (bull === undefined || !/^j\.[A-Za-z0-9_.~-]{1,128}$/.test(bull)) return undefined;
  return bull.slice(2).replace(/~/g, ':');
}

/** An input image a job needs, by content hash: the worker fetches it from the server. */
export interface InputRef {
  nodeId: string;
  field: string;
  /** The parameter's value as the workflow has it (checked again on the worker). */
  path: string;
  sha256: string;
  /** File extension with its dot, e.g. '.png'. */
  ext: string;
  /** A saved character (a 'character' parameter naming <data>/characters/NAME.safetensors) instead of an input picture. */
  kind?: 'character';
}

/** The BullMQ job's data: the whole workflow travels with the job (no shared filesystem). */
export interface QueueJobData {
  workflow: ValidWorkflow;
  targets: string[] | null;
  number: number;
  set: string;
  inputs: InputRef[];
}

/**
 * The BullMQ return value: kept small (Redis stores it JSON-encoded; never put images or tensors
 * here). The event log reaches the server through the WebSocket relay instead.
 */
export interface QueueJobResult {
  status: 'done' | 'failed' | 'interrupted';
  error: string | null;
  outputs: Record<string, JobNodeOutput>;
  nodes: Record<string, NodeOutcome>;
  worker: string;
}

/** A RunEvent as it crosses the WebSocket: preview bytes as base64, node outputs reduced to images. */
export type WireEvent = Omit<RunEvent, 'preview' | 'outputs'> & {
  preview?: { format: 'png' | 'jpeg'; base64: string };
  outputs?: Record<string, unknown>;
};

/** Worker -> server (schemas: wire.ts). `lock`: the BullMQ lock token the worker holds the job with. */
export type WorkerMessage =
  | { type: 'hello'; name: string; device: string; sets: string[]; loaded: string[] }
  | { type: 'status'; loaded: string[]; current: string | null }
  | { type: 'started'; jobId: string; lock: string }
  | { type: 'event'; jobId: string; lock: string; event: WireEvent }
  /** Before the worker lets go of the lock: answered with `synced` once every earlier message was handled. */
  | { type: 'sync'; jobId: string; lock: string }
  /** Sent after BullMQ recorded the result: the server reads it from Redis. */
  | { type: 'finished'; jobId: string };

/** Server -> worker. */
export type ServerToWorker =
  | { type: 'welcome'; server: string }
  | { type: 'cancel'; jobId: string }
  | { type: 'synced'; jobId: string }
  | { type: 'free'; unloadModels: boolean; clearCache: boolean };

/** Why charflow cannot use the Redis given with --queue; the message says what to do. */
export class RedisUnreachableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RedisUnreachableError';
  }
}

/** Where Redis is: what both ioredis and BullMQ take as connection options. */
export interface RedisAddress {
  host: string;
  port: number;
  username?: string;
  password?: string;
  db?: number;
  tls?: Record<string, never>;
}

/** Connection options from redis://[user:pass@]host:port[/db] or rediss:// (TLS). */
export function redisOptions(url: string): RedisAddress {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new RedisUnreachableError(`--queue "${url}" is not a URL; expected redis://[user:pass@]host:port[/db] or rediss://...`);
  }
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') {
    throw new RedisUnreachableError(`--queue "${redact(url)}": the scheme must be redis:// or rediss://, got ${u.protocol}//`);
  }
  const db = u.pathname.replace(/^\//, '');
  if (db !== '' && !/^\d{1,2}$/.test(db)) throw new RedisUnreachableError(`--queue "${redact(url)}": the database must be a number, got "${db}"`);
  return {
    host: u.hostname.replace(/^\[|\]$/g, '') || '127.0.0.1',
    port: u.port ? Number(u.port) : 6379,
    ...(u.username ? { username: decodeURIComponent(u.username) } : {}),
    ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
    ...(db ? { db: Number(db) } : {}),
    ...(u.protocol === 'rediss:' ? { tls: {} } : {}),
  };
}

/** The URL without its password, for messages. */
export function redact(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return url;
  }
}

export interface RedisCheck {
  /** Warnings for production use (eviction policy, persistence). */
  warnings: string[];
  version: string;
}

/**
 * Connects once and reads INFO: throws RedisUnreachableError with what to do when Redis cannot be
 * reached in `timeoutMs`; warns unless maxmemory-policy is noeviction (BullMQ's keys must never be
 * evicted) and AOF persistence is on (a Redis restart must not lose accepted jobs).
 */
export async function checkRedis(url: string, timeoutMs = 5000): Promise<RedisCheck> {
  const opts = redisOptions(url);
  const where = `${opts.host}:${opts.port}`;
  const client = new Redis({ ...opts, lazyConnect: true, connectTimeout: timeoutMs, maxRetriesPerRequest: 0, retryStrategy: () => null, enableOfflineQueue: false });
  client.on('error', () => {}); // reported by connect() below
  try {
    await Promise.race([
      client.connect(),
      new Promise((_, reject) => setTimeout(() => reject(new Error(`no answer in ${timeoutMs} ms`)), timeoutMs).unref()),
    ]);
  } catch (err) {
    client.disconnect();
    throw new RedisUnreachableError(
      `cannot reach Redis at ${redact(url)} (${where}): ${(err as Error).message}. Start Redis (e.g. redis-server --appendonly yes --maxmemory-policy noeviction) or fix --queue / CHARFLOW_QUEUE.`,
    );
  }
  try {
    const info = await client.info();
    const field = (name: string): string | undefined => new RegExp(`^${name}:(.*)$`, 'm').exec(info)?.[1]?.trim();
    const warnings: string[] = [];
    const policy = field('maxmemory_policy');
    if (policy !== undefined && policy !== 'noeviction') {
      warnings.push(`Redis at ${where} has maxmemory-policy ${policy}: it may evict queued jobs. Set maxmemory-policy noeviction.`);
    }
    if (field('aof_enabled') !== '1') {
      warnings.push(`Redis at ${where} has no AOF persistence: a Redis restart can lose queued jobs. Start it with --appendonly yes.`);
    }
    return { warnings, version: field('redis_version') ?? 'unknown' };
  } catch (err) {
    throw new RedisUnreachableError(`Redis at ${where} refused INFO: ${(err as Error).message}`);
  } finally {
    client.disconnect();
  }
}

/** A RunEvent for the wire (see WireEvent); `images` maps the node outputs that are images. */
export function toWire(e: RunEvent, images?: unknown): WireEvent {
  const { preview, outputs, ...rest } = e as RunEvent & { preview?: { format: 'png' | 'jpeg'; data: Uint8Array }; outputs?: unknown };
  const w: WireEvent = { ...(rest as Omit<RunEvent, 'preview' | 'outputs'>) };
  if (preview) w.preview = { format: preview.format, base64: Buffer.from(preview.data).toString('base64') };
  if (outputs !== undefined && images !== undefined) w.outputs = { images };
  return w;
}

/** Back to a RunEvent on the server. */
export function fromWire(w: WireEvent): RunEvent {
  const { preview, ...rest } = w;
  const e = { ...rest } as Record<string, unknown>;
  if (preview) e.preview = { format: preview.format, data: Buffer.from(preview.base64, 'base64') };
  return e as unknown as RunEvent;
}
