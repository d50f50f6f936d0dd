// Shared by commands that take a workflow file: find it, read it, report problems.
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { DataPaths } from '../engine/paths.ts';
import { readWorkflowFile } from '../engine/workflow/load.ts';
import { migrateWorkflow } from '../engine/workflow/migrate.ts';
import type { ValidationError } from '../engine/workflow/types.ts';
import type { CliContext } from './context.ts';

/** A path as given (relative to the working folder); failing that, a name in <data>/workflows. */
export function resolveWorkflowPath(ctx: CliContext, file: string, paths: DataPaths): string {
  const direct = path.resolve(ctx.cwd, file);
  if (existsSync(direct) || path.isAbsolute(file)) return direct;
  const saved = path.join(paths.workflows, file);
  return existsSync(saved) ? saved : direct;
}

/** Reads and migrates a workflow file; errors come back as validation errors (file, JSON, version). */
export async function readAndMigrate(file: string): Promise<{ ok: true; raw: unknown } | { ok: false; errors: ValidationError[] }> {
  const parsed = await readWorkflowFile(file);
  if (!parsed.ok) return { ok: false, errors: [parsed.error] };
  const migrated = migrateWorkflow(parsed.value);
  if (!migrated.ok) return { ok: false, errors: [migrated.error] };
  return { ok: true, raw: migrated.workflow };
}

/** Prints errors one per line, as `charflow validate` and `charflow run` do. */
export function printErrors(out: { write(s: string): unknown }, errors: readonly ValidationError[]): void {
  for (const e of errors) out.write(`${e.message}\n`);
}
