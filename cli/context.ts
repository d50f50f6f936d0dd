// What every CLI command gets: its output streams, environment, the node registry and a services
// factory, all replaceable so that tests (and other hosts) can run main() in-process.
import { mkdir } from 'node:fs/promises';
import type { Command } from 'commander';
import type { NodeDef } from '../engine/node.ts';
import { ensureDirs, resolvePaths, type DataPaths } from '../engine/paths.ts';
import type { ServiceOptions } from '../nodes/services.ts';

/** The subset of a writable stream the CLI uses. */
export interface OutStream {
  write(chunk: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

/** Options for createServices: the lead's ServiceOptions plus where output nodes write. */
export interface RunServiceOptions extends ServiceOptions {
  /** `--out DIR`: folder for output nodes (default: the data folder's outputs). */
  outputDir?: string;
}

/** Ctrl-C handling for one long operation. */
export interface InterruptHandle {
  /** Aborted on the first Ctrl-C. */
  signal: AbortSignal;
  /** Stops listening (call when the operation ends). */
  dispose(): void;
}

export interface CliContext {
  stdout: OutStream;
  stderr: OutStream;
  env: Readonly<Record<string, string | undefined>>;
  cwd: string;
  /** The node types (default: nodes/registry.ts, imported on first use). */
  registry(): Promise<ReadonlyMap<string, NodeDef<unknown>>>;
  /** Creates the services for a run (default: nodes/services.ts createServices). */
  createServices(paths: DataPaths, opts: RunServiceOptions): Promise<{ close(): Promise<void> }>;
  /** Starts Ctrl-C handling: first Ctrl-C aborts the signal, a second one exits the process. */
  interrupt(): InterruptHandle;
  /** The exit code main() returns; only commandAction() sets it (see there). */
  exitCode: number;
}

/** A user error: printed as one line (no stack), main() returns exitCode. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode = 2,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

/** Registers a command (or several) on the program. One file per command; see commands.ts. */
export type CommandRegistrar = (program: Command, ctx: CliContext) => void;

export const EXIT = { ok: 0, nodeFailed: 1, invalid: 2, cancelled: 130 } as const;

/**
 * The one way a command reports its outcome: its action returns an exit code (nothing means 0) or
 * throws (a CliError carries its code; main() maps every other error). The code goes to main(),
 * which returns it to bin/charflow.js; no command writes process.exitCode itself.
 */
export function commandAction<A extends unknown[]>(ctx: CliContext, fn: (...args: A) => Promise<number | void>): (...args: A) => Promise<void> {
  return async (...args: A) => {
    ctx.exitCode = (await fn(...args)) ?? EXIT.ok;
  };
}

/** Adds `--data DIR`, which every command takes. */
export function withDataOption(cmd: Command): Command {
  return cmd.option('--data <dir>', 'data folder (default: $CHARFLOW_DATA or ./data)');
}

/** The data paths for a command's options (--data, and --models where the command has it). */
export function pathsFor(ctx: CliContext, opts: { data?: string; models?: string }): DataPaths {
  return resolvePaths({ data: opts.data, models: opts.models, env: ctx.env, cwd: ctx.cwd });
}

/**
 * Creates the data folders (and `extra` folders, such as an --out folder). One that cannot be made
 * (no permission, a file in the way, a full disk) ends the command with one line and exit code 1.
 */
export async function ensureDataDirs(paths: DataPaths, extra: readonly string[] = []): Promise<void> {
  let current = paths.root;
  try {
    await ensureDirs(paths);
    for (const dir of extra) {
      current = dir;
      await mkdir(dir, { recursive: true });
    }
  } catch (err) {
    throw new CliError(`cannot create the folder ${current}: ${(err as Error).message}`, EXIT.nodeFailed);
  }
}

/** Default Ctrl-C handling on the real process. */
export function processInterrupt(stderr: OutStream): InterruptHandle {
  const ac = new AbortController();
  const onSigint = (): void => {
    if (!ac.signal.aborted) {
      stderr.write('\ncancelling... (press Ctrl-C again to quit now)\n');
      ac.abort(new Error('cancelled by Ctrl-C'));
    } else {
      process.exit(130);
    }
  };
  process.on('SIGINT', onSigint);
  return { signal: ac.signal, dispose: () => void process.off('SIGINT', onSigint) };
}
