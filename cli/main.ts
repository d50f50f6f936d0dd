// The CLI entry: builds the commander program from COMMANDS and returns the exit code (it never
// calls process.exit, so tests and other hosts can call it in-process).
import { readFileSync } from 'node:fs';
import { Command, CommanderError } from 'commander';
import { FileError } from '../engine/fsutil.ts';
import { COMMANDS } from './commands.ts';
import { CliError, EXIT, processInterrupt, type CliContext, type CommandRegistrar } from './context.ts';

export type { CliContext, CommandRegistrar } from './context.ts';
export { CliError, EXIT, pathsFor, withDataOption } from './context.ts';

function version(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version?: string };
    return pkg.version ?? '0.0.0';
  } catch {
    return '0.0.0';
  }
}

function defaultContext(overrides: Partial<CliContext>): CliContext {
  const stderr = overrides.stderr ?? process.stderr;
  return {
    stdout: process.stdout,
    stderr,
    env: process.env,
    cwd: process.cwd(),
    registry: async () => (await import('../nodes/registry.ts')).nodeRegistry(),
    createServices: async (paths, opts) => (await import('../nodes/services.ts')).createServices(paths, opts),
    interrupt: () => processInterrupt(stderr),
    exitCode: EXIT.ok,
    ...overrides,
  };
}

/** The commander program with every command registered (exposed for help text and tests). */
export function buildProgram(ctx: CliContext, commands: readonly CommandRegistrar[] = COMMANDS): Command {
  const program = new Command('charflow')
    .description('node-graph workflows for character personalisation with InstantCharacter')
    .version(version(), '-v, --version')
    .exitOverride()
    .showSuggestionAfterError()
    .configureOutput({
      writeOut: (s) => void ctx.stdout.write(s),
      writeErr: (s) => void ctx.stderr.write(s),
    });
  for (const register of commands) register(program, ctx);
  return program;
}

/**
 * Runs the CLI with `argv` (without node and script) and returns the exit code: 0 success,
 * 1 a node failed, 2 invalid workflow or arguments, 130 cancelled.
 */
export async function main(argv: readonly string[], overrides: Partial<CliContext> = {}): Promise<number> {
  const ctx = defaultContext(overrides);
  const program = buildProgram(ctx);
  try {
    await program.parseAsync([...argv], { from: 'user' });
    return ctx.exitCode;
  } catch (err) {
    if (err instanceof CommanderError) {
      // Commander has printed its message (or the help) already.
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version') return EXIT.ok;
      return err.exitCode === 0 ? EXIT.ok : EXIT.invalid;
    }
    if (err instanceof CliError) {
      ctx.stderr.write(`charflow: ${err.message}\n`);
      return err.exitCode;
    }
    if (err instanceof FileError) {
      ctx.stderr.write(`charflow: ${err.message}\n`);
      return EXIT.invalid;
    }
    const e = err as Error;
    ctx.stderr.write(`charflow: internal error: ${e?.message ?? String(err)}\n`);
    if (ctx.env.CHARFLOW_DEBUG) ctx.stderr.write(`${e?.stack ?? ''}\n`);
    else ctx.stderr.write('(set CHARFLOW_DEBUG=1 to see the stack trace)\n');
    return EXIT.nodeFailed;
  }
}
