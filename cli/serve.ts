// `charflow serve`: the editor and the API on one port, until Ctrl-C / SIGTERM stops it gracefully
// (the running job goes back to the queue and runs again at the next start).
import type { Command } from 'commander';
import { CliError, type CliContext, type OutStream } from './context.ts';
import { resolvePaths } from '../engine/paths.ts';
import type { PoolOptions } from '../engine/runtime/pool.ts';
// The server (express, ws, SQLite, models) loads only when `serve` runs, not for every command.
import type { RunningServer } from '../editor/server/server.ts';

export interface ServeOptions {
  host: string;
  port: string;
  token?: string;
  /** Scale-out: the workers' own token (`--worker-token`). */
  workerToken?: string;
  device: string;
  data?: string;
  models?: string;
  /** `--memory-budget <GiB>`, as for `run`. */
  memoryBudget?: string;
  /** redis:// URL: jobs go to BullMQ for `charflow worker` processes (scale-out). */
  queue?: string;
}

/** Where serve writes and what it reads; the CLI context when there is one, else the process. */
interface ServeIo {
  stdout: OutStream;
  stderr: OutStream;
  env: Readonly<Record<string, string | undefined>>;
  cwd: string;
}

const DEVICES = ['auto', 'cpu', 'cuda', 'webgpu'];

function parsePort(v: string): number {
  const n = Number(v);
  if (!/^\d+$/.test(v) || n > 65535) throw new CliError(`--port must be a number from 0 to 65535, got "${v}"`);
  return n;
}

/** Resolves on the first SIGINT or SIGTERM; a second one exits at once. */
function untilSignal(stderr: OutStream): { stopped: Promise<NodeJS.Signals>; dispose(): void } {
  let seen = false;
  let resolve!: (s: NodeJS.Signals) => void;
  const stopped = new Promise<NodeJS.Signals>((r) => (resolve = r));
  const on = (sig: NodeJS.Signals): void => {
    if (seen) {
      stderr.write('charflow: stopping now\n');
      process.exit(130);
    }
    seen = true;
    resolve(sig);
  };
  process.on('SIGINT', on);
  process.on('SIGTERM', on);
  return {
    stopped,
    dispose: () => {
      process.off('SIGINT', on);
      process.off('SIGTERM', on);
    },
  };
}

/** Fails with one line when `host:port` cannot be listened on (taken, not allowed): before anything is written. */
async function checkPortFree(host: string, port: number): Promise<void> {
  if (port === 0) return;
  const { createServer } = await import('node:net');
  await new Promise<void>((resolve, reject) => {
    const probe = createServer();
    probe.once('error', (err: NodeJS.ErrnoException) => {
      const why = err.code === 'EADDRINUSE' ? 'is in use by another program (another charflow serve?)' : `cannot be used (${err.code ?? err.message})`;
      reject(new CliError(`port ${port} on ${host} ${why}; pick another with --port`, 1));
    });
    probe.listen(port, host, () => probe.close(() => resolve()));
  });
}

/** Starts the server as `charflow serve` does (tiny set written if missing); resolves once listening. */
export async function serve(o: ServeOptions, io: ServeIo): Promise<RunningServer> {
  if (!DEVICES.includes(o.device)) throw new CliError(`--device must be one of ${DEVICES.join(', ')}, got "${o.device}"`);
  const port = parsePort(o.port);
  let memoryBudgetBytes: number | undefined;
  if (o.memoryBudget !== undefined) {
    const { parseMemoryBudget } = await import('../nodes/services.ts');
    try {
      memoryBudgetBytes = parseMemoryBudget(o.memoryBudget, '--memory-budget');
    } catch (err) {
      throw new CliError((err as Error).message);
    }
  }
  const paths = resolvePaths({ data: o.data, models: o.models, env: io.env, cwd: io.cwd });
  const token = o.token ?? io.env.CHARFLOW_TOKEN;
  const workerToken = o.workerToken ?? io.env.CHARFLOW_WORKER_TOKEN;
  const queueUrl = o.queue ?? io.env.CHARFLOW_QUEUE;
  // What can fail in a second is checked before a model is written (which takes a while).
  await checkPortFree(o.host, port);
  if (queueUrl) {
    const { checkRedis } = await import('../engine/queue/bullmq.ts');
    try {
      await checkRedis(queueUrl);
    } catch (err) {
      throw new CliError((err as Error).message, 1);
    }
  }
  const { modelSetDir, modelSetComplete } = await import('../models/modelset.ts');
  const { TINY_SET_NAME, writeTinyModelSet } = await import('../models/tiny.ts');
  const { startServer } = await import('../editor/server/server.ts');
  // The default workflow uses the tiny set: make it so a first-time user can press Run.
  if (!modelSetComplete(paths.models, TINY_SET_NAME)) { // missing, or from a charflow without some graph
    const dir = modelSetDir(paths.models, TINY_SET_NAME);
    io.stderr.write(`writing the tiny model set (random weights) to ${dir}, so the default workflow can run\n`);
    try {
      await writeTinyModelSet(dir);
    } catch (err) {
      throw new CliError(`cannot write the tiny model set to ${dir}: ${(err as Error).message}`, 1);
    }
  }
  try {
    return await startServer({
      ...(queueUrl ? { queueUrl } : {}),
      paths,
      host: o.host,
      port,
      ...(token ? { token } : {}),
      ...(workerToken ? { workerToken } : {}),
      device: o.device as PoolOptions['device'],
      ...(memoryBudgetBytes !== undefined ? { memoryBudgetBytes } : {}),
      log: (m) => void io.stderr.write(`${m}\n`),
    });
  } catch (err) {
    throw new CliError((err as Error).message, 1);
  }
}

/** Adds `charflow serve [--host] [--port] [--token] [--device] [--data] [--models] [--memory-budget]`. */
export function registerServe(program: Command, ctx?: CliContext): Command {
  const io: ServeIo = ctx ?? { stdout: process.stdout, stderr: process.stderr, env: process.env, cwd: process.cwd() };
  const cmd = program
    .command('serve')
    .description('start the browser editor and the API (HTTP + WebSocket) on one port')
    .option('--host <address>', 'address to listen on; anything but loopback needs a token', '127.0.0.1')
    .option('--port <n>', 'port (0: any free port)', '8188')
    .option('--token <secret>', 'require this token on every request (default: $CHARFLOW_TOKEN)')
    .option('--device <device>', `where models run: ${DEVICES.join(', ')}`, 'auto')
    .option('--data <dir>', 'data folder (default: $CHARFLOW_DATA or ./data)')
    .option('--models <dir>', 'models folder (default: $CHARFLOW_MODELS or <data>/models)')
    .option('--queue <url>', 'scale-out: put jobs on BullMQ at redis://[user:pass@]host:port[/db] for `charflow worker` (default: $CHARFLOW_QUEUE; none: run them here)')
    .option('--memory-budget <GiB>', 'models loaded at once stay under this (default: $CHARFLOW_MEMORY_BUDGET or 75% of RAM)')
    .option('--worker-token <secret>', 'scale-out: the token workers use, the only one /ws/worker and /api/worker/* take (default: $CHARFLOW_WORKER_TOKEN)');
  cmd.action(async (o: ServeOptions) => {
    const signals = untilSignal(io.stderr);
    let server: RunningServer;
    try {
      server = await serve(o, io);
    } catch (err) {
      signals.dispose();
      throw err;
    }
    io.stdout.write(`charflow editor: ${server.url}\n`);
    if (o.token ?? io.env.CHARFLOW_TOKEN) io.stdout.write('the server requires the token: open the URL once with ?token=<your token>\n');
    const sig = await signals.stopped;
    io.stderr.write(`charflow: ${sig}: stopping (a running job goes back to the queue)\n`);
    await server.close();
    signals.dispose();
    // Whatever may still hold the event loop (a stuck native call) must not keep a stopped server alive.
    setTimeout(() => process.exit(process.exitCode ?? 0), 5000).unref();
  });
  return cmd;
}
