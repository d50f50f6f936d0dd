// `charflow serve` as a real child process: killed with SIGKILL in the middle of a run, restarted,
// the job finishes exactly once; SIGTERM stops it cleanly; start-up refusals are clear.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { JobQueue } from '../../engine/queue/index.ts';
import { writeTinyModelSet } from '../../models/tiny.ts';
import { PACKAGE_ROOT } from '../../nodes/services.ts';
import { TestClient } from './client.ts';

const BIN = join(PACKAGE_ROOT, 'bin', 'charflow.js');
const DEFAULT = JSON.parse(readFileSync(join(PACKAGE_ROOT, 'workflows/instantcharacter.json'), 'utf8')) as {
  nodes: Record<string, { inputs: Record<string, unknown> }>;
};

let root: string;
let models: string;
const children = new Set<ChildProcess>();

interface Child {
  proc: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<number | null>;
}

function serve(args: string[]): Child {
  const proc = spawn(process.execPath, [BIN, 'serve', '--device', 'cpu', '--models', models, ...args], {
    cwd: root,
    env: { ...process.env, CHARFLOW_TOKEN: '' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(proc);
  let out = '';
  let err = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((resolve) =>
    proc.once('exit', (code) => {
      children.delete(proc);
      resolve(code);
    }),
  );
  return { proc, stdout: () => out, stderr: () => err, exited };
}

async function until<T>(what: string, fn: () => T | undefined | Promise<T | undefined>, ms: number, child?: Child): Promise<T> {
  const t0 = Date.now();
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}${child ? `\nstdout: ${child.stdout()}\nstderr: ${child.stderr()}` : ''}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function ready(child: Child): Promise<string> {
  return until(
    'the server to listen',
    () => {
      if (child.proc.exitCode !== null) throw new Error(`serve exited with ${child.proc.exitCode}: ${child.stderr()}`);
      return /charflow editor: (http:\/\/\S+)/.exec(child.stdout())?.[1];
    },
    120_000,
    child,
  );
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'charflow-crash-'));
  models = join(root, 'models');
  await writeTinyModelSet(join(models, 'tiny'));
}, 120_000);

afterAll(() => {
  for (const c of children) c.kill('SIGKILL');
  if (root) rmSync(root, { recursive: true, force: true });
});

describe('charflow serve', () => {
  it('finishes a job exactly once after a SIGKILL mid-run and a restart; SIGTERM stops cleanly', async () => {
    const data = join(root, 'data');
    const port = await freePort();
    const args = ['--port', String(port), '--data', data];

    const first = serve(args);
    const url = await ready(first);
    expect(url).toBe(`http://127.0.0.1:${port}/`);
    const c = await TestClient.connect(`ws://127.0.0.1:${port}/ws/editor`);
    const wf = structuredClone(DEFAULT);
    Object.assign(wf.nodes['7']!.inputs, { width: 96, height: 64, steps: 25 });
    const reply = await c.request({ type: 'run', workflow: wf });
    if (reply.type !== 'queued') throw new Error(JSON.stringify(reply));
    const runId = reply.runId;
    await c.event(runId, 'node_progress', (e) => e.event.type === 'node_progress' && e.event.nodeId === '7');
    first.proc.kill('SIGKILL');
    await first.exited;
    await c.close();
    expect(readdirSync(join(data, 'outputs')).filter((f) => f.endsWith('.png'))).toEqual([]);

    const second = serve(args);
    await ready(second);
    expect(second.stderr()).toMatch(/1 job\(s\) interrupted by the last stop will run again/);
    type Item = { id: string; status: string; outputs: Record<string, { images?: { filename: string }[] }> };
    const history = await until(
      'the job in the history',
      async () => {
        const body = (await (await fetch(`${url}api/jobs/history`)).json()) as { items: Item[] };
        return body.items.some((i) => i.id === runId) ? body.items : undefined;
      },
      120_000,
      second,
    );
    expect(history.filter((i) => i.id === runId).map((i) => i.status)).toEqual(['done']);
    const queue = (await (await fetch(`${url}api/jobs`)).json()) as { running: unknown[]; pending: unknown[] };
    expect(queue).toEqual({ running: [], pending: [] });

    // A second server on the same data folder is refused while this one holds it.
    const third = serve(['--port', '0', '--data', data]);
    expect(await third.exited).toBe(1);
    expect(third.stderr()).toContain(`${join(data, 'queue.db')}: the queue database is locked by another process`);

    second.proc.kill('SIGTERM');
    expect(await second.exited).toBe(0);
    expect(second.stderr()).toMatch(/SIGTERM: stopping/);

    const q = JobQueue.open(join(data, 'queue.db'));
    try {
      const job = q.get(runId)!;
      expect([job.status, job.attempts]).toEqual(['done', 2]);
      expect(q.history().filter((j) => j.id === runId)).toHaveLength(1);
      const pngs = readdirSync(join(data, 'outputs')).filter((f) => f.endsWith('.png'));
      expect(pngs).toEqual([job.outputs['9']!.images![0]!.filename]);
    } finally {
      q.close();
    }
  }, 300_000);

  it('refuses to start on a corrupt database, naming the file', async () => {
    const data = join(root, 'corrupt');
    mkdirSync(data, { recursive: true });
    writeFileSync(join(data, 'queue.db'), 'SQLite format 2\0 this is no database at all'.repeat(50));
    const child = serve(['--port', '0', '--data', data]);
    expect(await child.exited).toBe(1);
    expect(child.stderr()).toContain(`${join(data, 'queue.db')}: the queue database is corrupt or not a database`);
    expect(readFileSync(join(data, 'queue.db'), 'utf8')).toMatch(/^SQLite format 2/); // left as it was
  }, 120_000);

  it('refuses a non-loopback address without a token', async () => {
    const child = serve(['--host', '0.0.0.0', '--port', '0', '--data', join(root, 'exposed')]);
    expect(await child.exited).toBe(1);
    expect(child.stderr()).toMatch(/refusing to listen on 0\.0\.0\.0 without a token/);
  }, 120_000);
});
