// Real processes for the scale-out tests and benchmark: a redis-server of its own (free port,
// temporary folder, never 6379, noeviction, AOF), `charflow worker` child processes, and the tiny
// model set written once into a shared models folder (workers on real machines each have their own).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';

export const ROOT = path.resolve(import.meta.dirname, '../..');
const BIN = path.join(ROOT, 'bin', 'charflow.js');

/** Children still running when this process exits are killed with it (a failed test leaves no orphans). */
const children = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});
function track(c: ChildProcess): void {
  children.add(c);
  c.once('exit', () => children.delete(c));
}

export function tempDir(prefix: string): string {
  return mkdtempSync(path.join(tmpdir(), `charflow-${prefix}-`));
}

export async function freePort(): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const s = createServer();
      s.once('error', reject);
      s.listen(0, '127.0.0.1', () => {
        const p = (s.address() as { port: number }).port;
        s.close(() => resolve(p));
      });
    });
    if (port !== 6379) return port;
  }
}

export async function waitFor<T>(what: string, fn: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs = 30_000, everyMs = 50): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

export interface RedisProcess {
  url: string;
  port: number;
  dir: string;
  pid: number;
  /** SIGTERM (Redis writes its AOF and exits) and waits for the exit. */
  stop(): Promise<void>;
}

/** Starts redis-server on `port` (default a free one) with its files in `dir` (default a new temp folder). */
export async function startRedis(opts: { port?: number; dir?: string; aof?: boolean } = {}): Promise<RedisProcess> {
  const port = opts.port ?? (await freePort());
  const dir = opts.dir ?? tempDir('redis');
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--maxmemory-policy', 'noeviction', '--daemonize', 'no'];
  if (opts.aof !== false) args.push('--appendonly', 'yes', '--appendfsync', 'always');
  const child = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  track(child);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.once('error', (err) => (out += `\nspawn failed: ${err.message} (is the Debian package redis-server installed?)`));
  await waitFor(`redis-server on port ${port}: ${out}`, () => out.includes('Ready to accept connections') || (child.exitCode !== null ? Promise.reject(new Error(`redis-server exited: ${out}`)) : false), 15_000);
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    dir,
    pid: child.pid!,
    stop: async () => {
      if (child.exitCode === null) process.kill(child.pid!, 'SIGTERM');
      await exited;
    },
  };
}

export interface WorkerProcess {
  name: string;
  child: ChildProcess;
  output(): string;
  exited: Promise<number | null>;
  /** SIGTERM and wait (graceful). */
  stop(): Promise<void>;
  kill9(): void;
}

export function startWorker(
  name: string,
  o: { queue: string; server: string; token?: string; models: string; data?: string; threads?: number; sets?: string; env?: Record<string, string> },
): WorkerProcess {
  const args = [BIN, 'worker', '--queue', o.queue, '--server', o.server, '--models', o.models, '--data', o.data ?? tempDir(`worker-${name}`), '--device', 'cpu', '--name', name];
  if (o.token) args.push('--worker-token', o.token);
  if (o.threads) args.push('--threads', String(o.threads));
  if (o.sets) args.push('--sets', o.sets);
  const child = spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...o.env } });
  track(child);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return {
    name,
    child,
    output: () => out,
    exited,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
    },
    kill9: () => {
      child.kill('SIGKILL');
    },
  };
}

/** The tiny model set, written once per models folder. */
export async function tinyModels(dir: string): Promise<string> {
  const { TINY_SET_NAME, writeTinyModelSet } = await import('../../models/tiny.ts');
  const { modelSetDir, modelSetExists } = await import('../../models/modelset.ts');
  if (!modelSetExists(dir, TINY_SET_NAME)) await writeTinyModelSet(modelSetDir(dir, TINY_SET_NAME));
  return dir;
}
