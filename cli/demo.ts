// `charflow demo`: the default InstantCharacter workflow on the tiny model set, headless, writing a
// PNG to the data folder's outputs (or --out), like `run`. The tiny weights are random: it proves
// the pipeline, not the art.
import type { Command } from 'commander';
import { existsSync } from 'node:fs';
import { basename, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CliError, commandAction, ensureDataDirs, EXIT, pathsFor, withDataOption, type CliContext } from './context.ts';
import type { WeightFormat } from '../models/quant/formats.ts';
import { ensureTinySet, tinyWeightsArg } from './models.ts';
import { runCommand } from './run.ts';

const DEFAULT_WORKFLOW = fileURLToPath(new URL('../workflows/instantcharacter.json', import.meta.url));
/** The id of DiTSample in the default workflow. */
const SAMPLER_NODE = '7';
/** The id of LoadCharacter in the default workflow. */
const CHARACTER_NODE = '2';
/** The id of LoadModels in the default workflow. */
const MODELS_NODE = '1';

function positive(name: string, v: string, max: number): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > max) throw new CliError(`--${name} ${v}: expected a whole number from 1 to ${max}`);
  return n;
}

export function registerDemo(program: Command, ctx: CliContext): void {
  withDataOption(
    program.command('demo')
      .description('generate the tiny model set if needed and run the default workflow; writes a PNG to <data>/outputs')
      .option('--width <n>', 'image width (multiple of 16)', '512')
      .option('--height <n>', 'image height (multiple of 16)', '512')
      .option('--steps <n>', 'sampling steps', '8')
      .option('--prompt <text>', 'prompt')
      .option('--character <picture>', 'the character\'s reference picture, from anywhere (copied into <data>/inputs)')
      .option('--out <dir>', 'folder for the PNG (default: <data>/outputs)')
      .option('--models <dir>', 'models folder (default: $CHARFLOW_MODELS or <data>/models)')
      .option('--device <device>', 'auto, cpu, cuda or webgpu', 'auto')
      .option('--weights <format>', 'the tiny set to run: fp32 ("tiny"), fp16, int8 ("tiny-int8") or int4 ("tiny-int4")', tinyWeightsArg, 'fp32' as WeightFormat)
      .option('--json', 'one JSON event per line'),
  ).action(commandAction(ctx, async (opts: { width: string; height: string; steps: string; prompt?: string; character?: string; out?: string; models?: string; data?: string; device: 'auto' | 'cpu' | 'cuda' | 'webgpu'; json?: boolean; weights: WeightFormat }) => {
    const paths = pathsFor(ctx, opts);
    const set = [
      `${SAMPLER_NODE}.width=${positive('width', opts.width, 4096)}`,
      `${SAMPLER_NODE}.height=${positive('height', opts.height, 4096)}`,
      `${SAMPLER_NODE}.steps=${positive('steps', opts.steps, 200)}`,
    ];
    if (opts.prompt !== undefined) set.push(`6.prompt=${JSON.stringify(opts.prompt)}`);
    if (opts.character !== undefined) {
      const picture = resolve(ctx.cwd, opts.character);
      if (!existsSync(picture)) throw new CliError(`--character ${opts.character}: no such file (${picture})`);
      set.push(`${CHARACTER_NODE}.path=${JSON.stringify(picture)}`); // run copies it into the inputs folder
    }
    await ensureDataDirs(paths);
    const setDir = await ensureTinySet(ctx, paths.models, false, opts.weights);
    set.push(`${MODELS_NODE}.set=${JSON.stringify(basename(setDir))}`);
    ctx.stderr.write('note: the tiny models have random weights; the picture is noise. It proves the pipeline, not the art.\n');
    // The same rule as `run`: the data folder's outputs unless --out says otherwise.
    const outputDir = opts.out === undefined ? paths.outputs : resolve(ctx.cwd, opts.out);
    const code = await runCommand(ctx, DEFAULT_WORKFLOW, {
      set, out: outputDir, data: opts.data, models: opts.models, device: opts.device, json: opts.json,
    });
    return code; // run ends with the absolute path of every picture written
  }));
}
