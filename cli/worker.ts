// `charflow worker`: runs jobs of a `charflow serve --queue redis://...` server on this machine.
// It pulls from BullMQ (nothing pushes to it), needs no filesystem shared with the server (the
// workflow travels with the job, inputs come by content hash over HTTP, outputs go back over
// HTTP), and stops gracefully on Ctrl-C / SIGTERM (its running job goes back to the queue at once).
import { readdirSync } from 'node:fs';
import { hostname } from 'node:os';
import path from 'node:path';
import type { Command } from 'commander';
import { CliError, type CliContext } from './context.ts';
import { resolvePaths, ensureDirs } from '../engine/paths.ts';
import type { PoolOptions } from '../engine/runtime/pool.ts';

const DEVICES = ['auto', 'cpu', 'cuda', 'webgpu'];

export interface WorkerOptions {
  queue?: string;
  server?: string;
  /** The server's worker token (`--worker-token`; `--token` is an alias). */
  token?: string;
  workerToken?: string;
  models?: string;
  data?: string;
  device: string;
  name?: string;
  sets?: string;
  threads?: string;
  memoryBudget?: string;
}

/** Model sets in a models folder (folders with a manifest). */
function setsIn(modelsDir: string, exists: (root: string, name: string) => boolean): string[] {
  let names: string[];
  try {
    names = readdirSync(modelsDir);
  } catch {
    return [];
  }
  return names.filter((n) => /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(n) && exists(modelsDir, n)).sort();
}

/** Runs a worker until `stop` resolves; returns when it has stopped: false when Redis was unreachable then and its connections were dropped. */
export async function runWorker(o: WorkerOptions, ctx: CliContext, stop: Promise<unknown>): Promise<boolean> {
  const queueUrl = o.queue ?? ctx.env.CHARFLOW_QUEUE;
  const server = o.server ?? ctx.env.CHARFLOW_SERVER;
  if (!queueUrl) throw new CliError('--queue redis://host:port is required (or set CHARFLOW_QUEUE)');
  if (!server) throw new CliError('--server http://host:port is required (or set CHARFLOW_SERVER)');
  if (!DEVICES.includes(o.device)) throw new CliError(`--device must be one of ${DEVICES.join(', ')}, got "${o.device}"`);
  const threads = o.threads === undefined ? undefined : Number(o.threads);
  if (threads !== undefined && (!Number.isInteger(threads) || threads < 1 || threads > 256)) throw new CliError(`--threads must be a whole number from 1 to 256, got "${o.threads}"`);
  const name = o.name ?? `${hostname()}-${process.pid}`;
  if (!/^[A-Za-z0-9_.:-]{1,128}$/.test(name)) throw new CliError(`--name may have letters, digits, "_", ".", ":" and "-" (1-128), got "${name}"`);
  const token = o.workerToken ?? o.token ?? ctx.env.CHARFLOW_WORKER_TOKEN;
  const log = (m: string): void => void ctx.stderr.write(`${m}\n`);

  const { checkRedis, RedisUnreachableError, timingFromEnv } = await import('../engine/queue/bullmq.ts');
  const { HttpServerLink } = await import('../engine/queue/server-link.ts');
  const { QueueWorker } = await import('../engine/queue/bullmq-worker.ts');
  const { modelSetExists, modelSetDir } = await import('../models/modelset.ts');
  const { TINY_SET_NAME, writeTinyModelSet } = await import('../models/tiny.ts');
  const { createServices, parseMemoryBudget } = await import('../nodes/services.ts');
  const { nodeRegistry } = await import('../nodes/registry.ts');

  let timing;
  const coldDelay = ctx.env.CHARFLOW_COLD_DELAY_MS;
  if (coldDelay !== undefined && !/^\d{1,6}$/.test(coldDelay)) throw new CliError(`CHARFLOW_COLD_DELAY_MS must be a whole number of milliseconds, got "${coldDelay}"`);
  try {
    timing = timingFromEnv(ctx.env);
    for (const w of (await checkRedis(queueUrl)).warnings) log(`warning: ${w}`);
  } catch (err) {
    throw new CliError((err as Error).message, err instanceof RedisUnreachableError ? 1 : 2);
  }
  const paths = resolvePaths({ data: o.data, models: o.models, env: ctx.env, cwd: ctx.cwd });
  await ensureDirs(paths);
  let sets = o.sets ? o.sets.split(',').map((s) => s.trim()).filter(Boolean) : setsIn(paths.models, modelSetExists);
  if (sets.length === 0) {
    const dir = modelSetDir(paths.models, TINY_SET_NAME);
    log(`no model sets in ${paths.models}: writing the tiny set (random weights) to ${dir}`);
    await writeTinyModelSet(dir);
    sets = [TINY_SET_NAME];
  }
  for (const s of sets) if (!modelSetExists(paths.models, s)) throw new CliError(`--sets: model set "${s}" is not in ${paths.models}`);

  const link = new HttpServerLink({ server, ...(token ? { token } : {}), inputsDir: paths.inputs, outputsDir: paths.outputs, tempDir: paths.temp, log });
  try {
    await link.open();
  } catch (err) {
    throw new CliError((err as Error).message, 1);
  }
  const memoryBudgetBytes = o.memoryBudget !== undefined ? parseMemoryBudget(o.memoryBudget, '--memory-budget') : undefined;
  const services = await createServices(paths, {
    device: o.device as PoolOptions['device'],
    log,
    ...(threads !== undefined ? { intraOpThreads: threads } : {}),
    ...(memoryBudgetBytes !== undefined ? { memoryBudgetBytes } : {}),
  });
  // A set is warm when one of its models is loaded now.
  const loadedSets = (): string[] => {
    const loaded = services.pool.stats().loaded;
    return sets.filter((s) => {
      const dir = modelSetDir(paths.models, s) + path.sep;
      return loaded.some((p) => p.startsWith(dir));
    });
  };
  const worker = new QueueWorker({
    url: queueUrl,
    name,
    device: services.pool.device,
    sets,
    loadedSets,
    registry: nodeRegistry(),
    services,
    link,
    timing,
    ...(coldDelay !== undefined ? { coldDelayMs: Number(coldDelay) } : {}),
    logger: { info: log, warn: (m) => log(`warning: ${m}`) },
    unloadModels: async () => {
      await Promise.all(services.pool.stats().loaded.map((p) => services.pool.unload(p)));
    },
  });
  await worker.start();
  ctx.stdout.write(`charflow worker ${name}: ${services.pool.device}, sets ${sets.join(', ')}, taking jobs from ${queueUrl.replace(/\/\/[^@/]*@/, '//***@')}\n`);
  await stop;
  log(`charflow worker ${name}: stopping (a running job goes back to the queue)`);
  const clean = await worker.stop();
  link.close();
  await services.close();
  return clean;
}

/** Adds `charflow worker --queue URL --server URL [--token T] [--models DIR] [--device D] ...`. */
export function registerWorker(program: Command, ctx: CliContext): Command {
  const cmd = program
    .command('worker')
    .description('run jobs of a `charflow serve --queue` server on this machine (scale-out)')
    .option('--queue <url>', 'the Redis the server uses: redis://[user:pass@]host:port[/db] or rediss:// (default: $CHARFLOW_QUEUE)')
    .option('--server <url>', 'the server: http(s)://host:port, for inputs, outputs and live events (default: $CHARFLOW_SERVER)')
    .option('--worker-token <secret>', "the server's worker token (its --worker-token; default: $CHARFLOW_WORKER_TOKEN); the client token does not work")
    .option('--token <secret>', 'same as --worker-token')
    .option('--models <dir>', 'models folder (default: $CHARFLOW_MODELS or <data>/models)')
    .option('--data <dir>', "this worker's own folder: input cache, scratch (default: $CHARFLOW_DATA or ./data)")
    .option('--device <device>', `where models run: ${DEVICES.join(', ')}`, 'auto')
    .option('--name <name>', 'name shown in /queue, /history and /system_stats (default: <host>-<pid>)')
    .option('--sets <a,b>', 'model sets to take jobs for (default: every set in the models folder)')
    .option('--threads <n>', 'intra-op threads per model (default: ONNX Runtime\'s)')
    .option('--memory-budget <GiB>', 'models loaded at once stay under this (default: $CHARFLOW_MEMORY_BUDGET)');
  cmd.action(async (o: WorkerOptions) => {
    let resolveStop!: () => void;
    const stop = new Promise<void>((r) => (resolveStop = r));
    let seen = false;
    const on = (): void => {
      if (seen) process.exit(130);
      seen = true;
      resolveStop();
    };
    process.on('SIGINT', on);
    process.on('SIGTERM', on);
    let clean = true;
    try {
      clean = await runWorker(o, ctx, stop);
    } finally {
      process.off('SIGINT', on);
      process.off('SIGTERM', on);
    }
    // Dropped Redis connections keep retrying: nothing is left to wait for then.
    setTimeout(() => process.exit(process.exitCode ?? 0), clean ? 5000 : 0).unref();
  });
  return cmd;
}
