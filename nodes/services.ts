// What the pipeline nodes get from their host through ctx.services: folders, the session pool and
// the opened model sets. The engine passes this object through without looking inside.
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import type { DataPaths } from '../engine/paths.ts';
import { SessionPool, type PoolOptions } from '../engine/runtime/pool.ts';
import { type ModelSet, openModelSet } from '../models/modelset.ts';

/** The package root: example assets under workflows/ are readable from here. */
export const PACKAGE_ROOT = fileURLToPath(new URL('..', import.meta.url));

export interface ServiceOptions {
  device?: PoolOptions['device'];
  /** Where output nodes write (default: the data folder's outputs). */
  outputDir?: string;
  memoryBudgetBytes?: number;
  intraOpThreads?: number;
  log?: (message: string) => void;
}

export interface Services {
  paths: DataPaths;
  pool: SessionPool;
  outputDir: string;
  /** Folders LoadCharacter may read from; paths are checked with realpath against them. */
  imageRoots: string[];
  /** Opens a model set by name (manifests are read once per process). */
  modelSet(name: string): ModelSet;
}

export interface OwnedServices extends Services {
  close(): Promise<void>;
}

/** A memory budget in GiB (`--memory-budget`, CHARFLOW_MEMORY_BUDGET) as bytes. */
export function parseMemoryBudget(gib: string, source: string): number {
  const n = Number(gib);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`${source} ${JSON.stringify(gib)}: expected a number of GiB above 0, e.g. 16`);
  return Math.round(n * 1024 ** 3);
}

export async function createServices(paths: DataPaths, opts: ServiceOptions = {}): Promise<OwnedServices> {
  const envBudget = process.env.CHARFLOW_MEMORY_BUDGET;
  const pool = await SessionPool.create({
    device: opts.device ?? 'auto',
    memoryBudgetBytes: opts.memoryBudgetBytes ?? (envBudget ? parseMemoryBudget(envBudget, 'CHARFLOW_MEMORY_BUDGET') : undefined),
    intraOpThreads: opts.intraOpThreads,
    cacheDir: join(paths.root, 'cache', 'ort'),
    // An optimised copy doubles a model's disk use: worth it for start-up, not for the 24 GB transformer.
    cacheMaxBytes: 2 * 1024 ** 3,
    log: opts.log,
  });
  const sets = new Map<string, ModelSet>();
  return {
    paths,
    pool,
    outputDir: opts.outputDir ?? paths.outputs,
    imageRoots: [paths.inputs, join(PACKAGE_ROOT, 'workflows')],
    modelSet(name) {
      let set = sets.get(name);
      if (!set) {
        set = openModelSet(paths.models, name);
        sets.set(name, set);
      }
      return set;
    },
    close: () => pool.close(),
  };
}
