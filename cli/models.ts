// `charflow models ...`: model sets in the models folder. `tiny` writes the generated test set.
import type { Command } from 'commander';
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { ensureDirs } from '../engine/paths.ts';
import { pathsFor, withDataOption, type CliContext } from './context.ts';
import { modelSetExists } from '../models/modelset.ts';
import { TINY_SET_NAME, writeTinyModelSet } from '../models/tiny.ts';

/** Writes the tiny set unless it is there already (or `force`); returns its folder. */
export async function ensureTinySet(ctx: CliContext, modelsRoot: string, force = false): Promise<string> {
  const dir = join(modelsRoot, TINY_SET_NAME);
  if (!force && modelSetExists(modelsRoot, TINY_SET_NAME)) return dir;
  if (force && existsSync(dir)) rmSync(dir, { recursive: true, force: true });
  const started = Date.now();
  ctx.stderr.write(`writing the tiny model set (random weights, for tests and the demo) to ${dir}\n`);
  await writeTinyModelSet(dir, (component, index, total) => {
    if (index < total) ctx.stderr.write(`  [${index + 1}/${total}] ${component}\n`);
  });
  ctx.stderr.write(`done in ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
  return dir;
}

export function registerModels(program: Command, ctx: CliContext): Command {
  const models = program.command('models').description('manage model sets in the models folder');
  withDataOption(
    models.command('tiny')
      .description('write the tiny model set: every architecture at a small size with seeded random weights')
      .option('--models <dir>', 'models folder (default: $CHARFLOW_MODELS or <data>/models)')
      .option('--force', 'rewrite it even if it exists'),
  ).action(async (opts: { data?: string; models?: string; force?: boolean }) => {
    const paths = pathsFor(ctx, opts);
    await ensureDirs(paths);
    const dir = await ensureTinySet(ctx, paths.models, opts.force ?? false);
    ctx.stdout.write(`${dir}\n`);
  });
  return models;
}
