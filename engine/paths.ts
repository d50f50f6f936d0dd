// The data folder: everything charflow writes lives under one root, so a user can move, back up or
// delete it as a unit. Only the models folder may live elsewhere (models are large and shared).
import { mkdir } from 'node:fs/promises';
import path from 'node:path';

export interface DataPaths {
  /** The data folder itself. */
  root: string;
  /** Model files (ONNX graphs, weights). `<root>/models` unless --models / CHARFLOW_MODELS. */
  models: string;
  /** What output nodes write. */
  outputs: string;
  /** Uploaded and user-provided input files (images). */
  inputs: string;
  /** Saved workflow files. */
  workflows: string;
  /** Scratch space; may be emptied at any time when nothing runs. */
  temp: string;
  /** The queue database file. */
  database: string;
}

export interface PathOptions {
  /** Data folder (--data). Falls back to CHARFLOW_DATA, then ./data. */
  data?: string;
  /** Models folder (--models). Falls back to CHARFLOW_MODELS, then <data>/models. */
  models?: string;
  /** Environment to read CHARFLOW_DATA / CHARFLOW_MODELS from (default process.env). */
  env?: Readonly<Record<string, string | undefined>>;
  /** Folder that relative paths are resolved against (default process.cwd()). */
  cwd?: string;
}

function nonEmpty(v: string | undefined): string | undefined {
  return v === undefined || v.trim() === '' ? undefined : v;
}

export function resolvePaths(opts: PathOptions = {}): DataPaths {
  const env = opts.env ?? process.env;
  const cwd = opts.cwd ?? process.cwd();
  const root = path.resolve(cwd, nonEmpty(opts.data) ?? nonEmpty(env.CHARFLOW_DATA) ?? 'data');
  const models = path.resolve(cwd, nonEmpty(opts.models) ?? nonEmpty(env.CHARFLOW_MODELS) ?? path.join(root, 'models'));
  return {
    root,
    models,
    outputs: path.join(root, 'outputs'),
    inputs: path.join(root, 'inputs'),
    workflows: path.join(root, 'workflows'),
    temp: path.join(root, 'temp'),
    database: path.join(root, 'queue.db'),
  };
}

/** Creates every folder of `paths` (and the database's folder) if missing. */
export async function ensureDirs(paths: DataPaths): Promise<void> {
  const dirs = [paths.root, paths.models, paths.outputs, paths.inputs, paths.workflows, paths.temp, path.dirname(paths.database)];
  for (const d of new Set(dirs)) await mkdir(d, { recursive: true });
}

/**
 * Resolves `relative` inside `base`, refusing anything that would land outside it (`..`, absolute
 * paths), so user-supplied names (uploads, image parameters) cannot reach other files.
 */
export function resolveInside(base: string, relative: string): string {
  const root = path.resolve(base);
  const full = path.resolve(root, relative);
  const rel = path.relative(root, full);
  if (relative.includes('\0') || rel === '' || rel.startsWith('..') || path.isAbsolute(rel)) {
    throw new Error(`path "${relative}" is outside ${root}`);
  }
  return full;
}
