// Format versions. A later charflow that changes the file format bumps WORKFLOW_VERSION and adds a
// step to MIGRATIONS keyed by the version it upgrades FROM; files are migrated one step at a time.
import { WORKFLOW_VERSION, type ValidationError } from './types.ts';

/** Upgrades a workflow object of version `key` to version `key + 1`. Must not mutate its argument. */
export type Migration = (workflow: Record<string, unknown>) => Record<string, unknown>;

/** No older format exists yet: version 1 is the first. */
export const MIGRATIONS: ReadonlyMap<number, Migration> = new Map();

export interface MigrateOptions {
  migrations?: ReadonlyMap<number, Migration>;
  /** The version to migrate to (default WORKFLOW_VERSION). */
  current?: number;
}

export type MigrateResult =
  | { ok: true; workflow: unknown; from?: number }
  | { ok: false; error: ValidationError };

/**
 * Brings a parsed workflow to the current version. Values that are not workflow-shaped (no
 * integer version) are returned unchanged for the schema check to describe.
 */
export function migrateWorkflow(raw: unknown, opts: MigrateOptions = {}): MigrateResult {
  const migrations = opts.migrations ?? MIGRATIONS;
  const current = opts.current ?? WORKFLOW_VERSION;
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return { ok: true, workflow: raw };
  const version = (raw as { version?: unknown }).version;
  if (typeof version !== 'number' || !Number.isInteger(version)) return { ok: true, workflow: raw };
  if (version > current) {
    return {
      ok: false,
      error: {
        code: 'unsupported_version',
        field: 'version',
        message: `workflow version ${version} is newer than this charflow supports (version ${current}); update charflow to open it`,
      },
    };
  }
  let wf = raw as Record<string, unknown>;
  for (let v = version; v < current; v++) {
    const step = migrations.get(v);
    if (!step) {
      return {
        ok: false,
        error: {
          code: 'unsupported_version',
          field: 'version',
          message: `workflow version ${version} is not supported (this charflow reads versions ${firstSupported(migrations, current)} to ${current})`,
        },
      };
    }
    wf = { ...step(wf), version: v + 1 };
  }
  return { ok: true, workflow: wf, from: version };
}

/** The oldest version that an unbroken chain of migrations connects to `current`. */
function firstSupported(migrations: ReadonlyMap<number, Migration>, current: number): number {
  let v = current;
  while (migrations.has(v - 1)) v--;
  return v;
}
