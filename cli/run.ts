// `charflow run <workflow.json>`: validate, then execute with progress; exit 0 done, 1 a node
// failed, 2 invalid workflow or arguments, 130 cancelled.
import path from 'node:path';
import { Option, type Command } from 'commander';
import { Executor } from '../engine/executor/executor.ts';
import type { NodeDef } from '../engine/node.ts';
import { validateMigrated } from '../engine/workflow/validate.ts';
import { nodeLabel, WorkflowError } from '../engine/workflow/types.ts';
import { CliError, commandAction, ensureDataDirs, EXIT, pathsFor, withDataOption, type CliContext } from './context.ts';
import { toJsonLine } from './format.ts';
import { importSetPictures } from './inputs.ts';
import { printErrors, readAndMigrate, resolveWorkflowPath } from './load.ts';
import { parseMemoryBudget } from '../nodes/services.ts';
import { barReporter, jsonReporter, plainReporter, type Reporter } from './progress.ts';

export const DEVICES = ['auto', 'cpu', 'cuda', 'webgpu'] as const;

export interface RunCommandOptions {
  set?: string[];
  target?: string[];
  out?: string;
  device?: (typeof DEVICES)[number];
  models?: string;
  data?: string;
  json?: boolean;
  concurrency?: string;
  memoryBudget?: string;
}

export interface SetAssignment {
  node: string;
  input: string;
  value: unknown;
  text: string;
}

/** `<node>.<input>=<value>`; the value is JSON when it parses, else the plain string. */
export function parseSet(text: string): SetAssignment {
  const m = /^([^.=]+)\.([^=]+)=(.*)$/s.exec(text);
  if (!m) throw new CliError(`--set "${text}": expected <node>.<input>=<value>, e.g. --set 7.steps=20`);
  const raw = m[3]!;
  let value: unknown;
  try {
    value = JSON.parse(raw);
  } catch {
    value = raw;
  }
  return { node: m[1]!, input: m[2]!, value, text };
}

/**
 * Applies --set assignments to a parsed workflow (in place). Returns one message per assignment
 * that names a node or input that does not exist.
 */
export function applySets(raw: unknown, sets: readonly SetAssignment[], registry: ReadonlyMap<string, NodeDef<unknown>>): string[] {
  const problems: string[] = [];
  const nodes = (typeof raw === 'object' && raw !== null ? (raw as { nodes?: unknown }).nodes : undefined) as
    | Record<string, { type?: unknown; inputs?: Record<string, unknown> }>
    | undefined;
  for (const s of sets) {
    const node = nodes && typeof nodes === 'object' && Object.prototype.hasOwnProperty.call(nodes, s.node) ? nodes[s.node] : undefined;
    if (!node || typeof node !== 'object') {
      problems.push(`--set ${s.text}: there is no node ${s.node}`);
      continue;
    }
    const type = typeof node.type === 'string' ? node.type : undefined;
    const def = type === undefined ? undefined : registry.get(type);
    if (def && !Object.hasOwn(def.params, s.input) && !Object.hasOwn(def.inputs, s.input)) {
      const known = [...Object.keys(def.inputs), ...Object.keys(def.params)];
      problems.push(`--set ${s.text}: ${nodeLabel(s.node, type)} has no input "${s.input}" (it has ${known.join(', ') || 'none'})`);
      continue;
    }
    const inputs = typeof node.inputs === 'object' && node.inputs !== null ? node.inputs : {};
    node.inputs = { ...inputs, [s.input]: s.value };
  }
  return problems;
}

function parseConcurrency(v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 64) throw new CliError(`--concurrency ${v}: expected a whole number from 1 to 64`);
  return n;
}

export async function runCommand(ctx: CliContext, file: string, opts: RunCommandOptions): Promise<number> {
  const sets = (opts.set ?? []).map(parseSet);
  const targets = opts.target ?? [];
  const concurrency = parseConcurrency(opts.concurrency);
  let memoryBudgetBytes: number | undefined;
  try {
    memoryBudgetBytes = opts.memoryBudget === undefined ? undefined : parseMemoryBudget(opts.memoryBudget, '--memory-budget');
  } catch (err) {
    throw new CliError((err as Error).message);
  }
  const paths = pathsFor(ctx, opts);
  const registry = await ctx.registry();
  const fail = (lines: readonly string[]): number => {
    if (opts.json) ctx.stdout.write(`${toJsonLine({ type: 'validation_failed', errors: lines.map((message) => ({ message })) })}\n`);
    for (const l of lines) ctx.stderr.write(`${l}\n`);
    return EXIT.invalid;
  };

  const read = await readAndMigrate(resolveWorkflowPath(ctx, file, paths), registry, paths);
  if (!read.ok) return fail(read.errors.map((e) => e.message));
  if (read.converted === 'comfy') ctx.stderr.write(`${file}: a ComfyUI API prompt, converted to a charflow workflow\n`);
  if (sets.some((s) => typeof s.value === 'string')) {
    await ensureDataDirs(paths);
    await importSetPictures(sets, read.raw, registry, paths, ctx.cwd, ctx.stderr);
  }
  const setProblems = applySets(read.raw, sets, registry);
  if (setProblems.length) return fail(setProblems);
  const result = validateMigrated(read.raw, registry); // readAndMigrate migrated it: once is enough
  if (!result.ok) {
    if (opts.json) ctx.stdout.write(`${toJsonLine({ type: 'validation_failed', errors: result.errors })}\n`);
    printErrors(ctx.stderr, result.errors);
    return EXIT.invalid;
  }

  const outputDir = opts.out === undefined ? undefined : path.resolve(ctx.cwd, opts.out);
  await ensureDataDirs(paths, outputDir ? [outputDir] : []);
  let services: { close(): Promise<void> };
  try {
    services = await ctx.createServices(paths, {
      device: opts.device ?? 'auto',
      ...(outputDir ? { outputDir } : {}),
      ...(memoryBudgetBytes !== undefined ? { memoryBudgetBytes } : {}),
    });
  } catch (err) {
    throw new CliError(`cannot start: ${(err as Error).message ?? String(err)}`, EXIT.nodeFailed);
  }

  const reporter: Reporter = opts.json
    ? jsonReporter(ctx.stdout, ctx.stderr)
    : ctx.stderr.isTTY
      ? barReporter(ctx.stderr)
      : plainReporter(ctx.stderr);
  const interrupt = ctx.interrupt();
  try {
    const executor = new Executor({ registry, services, logger: reporter.logger, ...(concurrency ? { concurrency } : {}) });
    const run = await executor.run(result.workflow!, {
      signal: interrupt.signal,
      onEvent: (e) => reporter.onEvent(e),
      ...(targets.length ? { targets } : {}),
    });
    reporter.close();
    if (!opts.json) {
      for (const [id, outputs] of Object.entries(run.outputs)) {
        const type = result.workflow!.nodes[id]!.type;
        if (Object.keys(outputs).length) ctx.stdout.write(`${nodeLabel(id, type)}: ${toJsonLine(outputs)}\n`);
      }
    }
    // Last, so that it is what a user sees: where every picture went.
    const written = picturesWritten(run.outputs, { output: outputDir ?? paths.outputs, temp: paths.temp });
    if (written.length && !opts.json) ctx.stdout.write(`${written.length === 1 ? 'picture' : 'pictures'} written:\n${written.map((f) => `  ${f}\n`).join('')}`);
    return run.status === 'done' ? EXIT.ok : run.status === 'cancelled' ? EXIT.cancelled : EXIT.nodeFailed;
  } catch (err) {
    reporter.close();
    if (err instanceof WorkflowError) throw new CliError(err.message);
    throw err;
  } finally {
    interrupt.dispose();
    await services.close();
  }
}

/** The absolute file of every image output nodes report ({images: [{filename, subfolder, type}]}), in node order. */
export function picturesWritten(outputs: Record<string, Record<string, unknown>>, folders: { output: string; temp: string }): string[] {
  const files: string[] = [];
  for (const out of Object.values(outputs)) {
    const images = out.images;
    if (!Array.isArray(images)) continue;
    for (const img of images as { filename?: unknown; subfolder?: unknown; type?: unknown }[]) {
      if (typeof img?.filename !== 'string') continue;
      const root = img.type === 'temp' ? folders.temp : folders.output;
      files.push(path.resolve(root, typeof img.subfolder === 'string' ? img.subfolder : '', img.filename));
    }
  }
  return files;
}

const collect = (v: string, prev: string[] | undefined): string[] => [...(prev ?? []), v];

export function registerRun(program: Command, ctx: CliContext): void {
  withDataOption(
    program
      .command('run')
      .description('run a workflow')
      .argument('<workflow>', 'workflow: a file (.json, a ComfyUI API prompt, or a PNG that carries one), or a name in <data>/workflows or the bundled workflows (.json optional)')
      .option('--set <node.input=value>', 'set a constant input (value parsed as JSON when possible); repeatable', collect)
      .option('--target <node>', 'run only what this node needs (default: every output node); repeatable', collect)
      .option('--out <dir>', 'folder for outputs (default: <data>/outputs)')
      .addOption(new Option('--device <device>', 'where models run').choices(DEVICES).default('auto'))
      .option('--models <dir>', 'models folder (default: $CHARFLOW_MODELS or <data>/models)')
      .option('--concurrency <n>', 'nodes run at once (default 2)')
      .option('--memory-budget <GiB>', 'models loaded at once stay under this (default: $CHARFLOW_MEMORY_BUDGET or 75% of RAM)')
      .option('--json', 'print one JSON event per line instead of progress bars'),
  ).action(commandAction(ctx, (file: string, opts: RunCommandOptions) => runCommand(ctx, file, opts)));
}
