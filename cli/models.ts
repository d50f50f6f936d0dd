// `charflow models ...`: model sets in the models folder. `tiny` writes the generated test set.
import { type Command, InvalidArgumentError } from 'commander';
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { CliError, commandAction, ensureDataDirs, EXIT, pathsFor, withDataOption, type CliContext } from './context.ts';
import { modelSetComplete } from '../models/modelset.ts';
import { chooseAccuracyLevel } from '../models/quant/accuracy.ts';
import { tinySetName, writeTinyModelSet } from '../models/tiny.ts';
import { type WeightFormat, parseWeightFormat } from '../models/quant/formats.ts';
import { checkBlock } from '../models/quant/quantize.ts';
import { listModelSets, type ModelSetInfo } from '../models/modelsets.ts';
import { formatBytes } from '../engine/fsutil.ts';

/** Writes the tiny set unless it is there already (or `force`); returns its folder. */
export async function ensureTinySet(ctx: CliContext, modelsRoot: string, force = false, weights: WeightFormat = 'fp32', block?: number): Promise<string> {
  const name = tinySetName(weights);
  const dir = join(modelsRoot, name);
  // A tiny set from an older charflow lacks newer graphs (e.g. the VAE encoder) or the fused attention: it is
  // generated, so rewrite it.
  if (!force && modelSetComplete(modelsRoot, name)) return dir;
  if (force && existsSync(dir)) rmSync(dir, { recursive: true, force: true });
  const started = Date.now();
  ctx.stderr.write(`writing the tiny model set${weights === 'fp32' ? '' : ` with ${weights} weights`} (random weights, for tests and the demo) to ${dir}\n`);
  if (weights === 'int8' || weights === 'int4') {
    const choice = chooseAccuracyLevel();
    ctx.stderr.write(`  MatMulNBits accuracy_level ${choice.level}: ${choice.why}\n`);
  }
  try {
    await writeTinyModelSet(dir, (component, index, total) => {
      if (index < total) ctx.stderr.write(`  [${index + 1}/${total}] ${component}\n`);
    }, { weights, block });
  } catch (err) {
    throw new CliError(`cannot write the tiny model set to ${dir}: ${(err as Error).message}`, EXIT.nodeFailed);
  }
  ctx.stderr.write(`done in ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
  return dir;
}

/** The sets a running server lists at /api/models (with what it has loaded). */
async function serverSets(url: string, token: string | undefined): Promise<(ModelSetInfo & { loaded: number })[]> {
  const target = new URL('/api/models', url);
  let res: Response;
  try {
    res = await fetch(target, { headers: token ? { authorization: `Bearer ${token}` } : {} });
  } catch (err) {
    throw new CliError(`cannot reach ${target.origin}: ${(err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message}`, EXIT.nodeFailed);
  }
  if (!res.ok) throw new CliError(`${target}: HTTP ${res.status}${res.status === 401 ? ' (set CHARFLOW_TOKEN to the server\'s token)' : ''}`, EXIT.nodeFailed);
  return ((await res.json()) as { sets: (ModelSetInfo & { loaded: number })[] }).sets;
}

export function tinyWeightsArg(value: string): WeightFormat {
  try {
    return parseWeightFormat(value);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message.replace(/^--weights: /, ''));
  }
}

function tinyBlockArg(value: string): number {
  try {
    checkBlock(Number(value));
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
  return Number(value);
}

export function registerModels(program: Command, ctx: CliContext): Command {
  const models = program.command('models').description('manage model sets in the models folder');
  withDataOption(
    models.command('tiny')
      .description('write the tiny model set: every architecture at a small size with seeded random weights')
      .option('--models <dir>', 'models folder (default: $CHARFLOW_MODELS or <data>/models)')
      .option('--force', 'rewrite it even if it exists')
      .option('--weights <format>', 'fp32 (the set "tiny"), fp16, int8 or int4 (the sets "tiny-int8", "tiny-int4": Linears as MatMulNBits)', tinyWeightsArg, 'fp32' as WeightFormat)
      .option('--block <n>', 'int8/int4: weights per quantization block, a power of two (default 128)', tinyBlockArg),
  ).action(commandAction(ctx, async (opts: { data?: string; models?: string; force?: boolean; weights: WeightFormat; block?: number }) => {
    const paths = pathsFor(ctx, opts);
    await ensureDataDirs(paths);
    if (opts.block !== undefined && opts.weights !== 'int8' && opts.weights !== 'int4') throw new CliError('--block applies to --weights int8 or int4', EXIT.invalid);
    const dir = await ensureTinySet(ctx, paths.models, opts.force ?? false, opts.weights, opts.block);
    ctx.stdout.write(`${dir}\n`);
  }));
  withDataOption(
    models.command('list')
      .description('list the installed model sets: format, size on disk, complete or not (and loaded or not, with --server)')
      .option('--models <dir>', 'models folder (default: $CHARFLOW_MODELS or <data>/models)')
      .option('--server <url>', 'ask a running `charflow serve` instead, which also knows what it has loaded (token: $CHARFLOW_TOKEN)')
      .option('--json', 'print them as JSON'),
  ).action(commandAction(ctx, async (opts: { data?: string; models?: string; server?: string; json?: boolean }) => {
    const { models: root } = pathsFor(ctx, opts);
    const where = opts.server ?? root;
    const sets: (ModelSetInfo & { loaded?: number })[] = opts.server ? await serverSets(opts.server, ctx.env.CHARFLOW_TOKEN) : listModelSets(root);
    if (opts.json) {
      ctx.stdout.write(`${JSON.stringify(opts.server ? { server: opts.server, sets } : { models: root, sets }, null, 2)}\n`);
      return;
    }
    if (!sets.length) {
      ctx.stdout.write(`no model sets in ${where}: \`charflow models tiny\` writes the test set, \`charflow models pull\` the real one\n`);
      return;
    }
    const width = Math.max(4, ...sets.map((s) => s.name.length));
    ctx.stdout.write(`${'name'.padEnd(width)}  format  ${'size'.padStart(9)}  state\n`);
    for (const s of sets) {
      let state = s.problem ?? (s.complete ? 'ok' : 'incomplete (from an older charflow)');
      if (s.loaded !== undefined) state += s.loaded ? `, loaded (${s.loaded} graph${s.loaded === 1 ? '' : 's'})` : ', not loaded';
      const format = s.formats.length > 1 ? `${s.format}+` : s.format;
      ctx.stdout.write(`${s.name.padEnd(width)}  ${format.padEnd(6)}  ${formatBytes(s.bytes).padStart(9)}  ${state}\n`);
    }
    ctx.stdout.write(`(in ${where})\n`);
  }));
  return models;
}
