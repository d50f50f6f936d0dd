// Runs pipeline nodes one by one, outside the executor, on services over a temporary data folder,
// recording every model run (which graph, what went in, what came out): how the golden pipeline
// tests replay an official pipeline step by step.
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { NodeContext, NodeDef } from '../../engine/node.ts';
import { resolvePaths, type DataPaths } from '../../engine/paths.ts';
import { createServices, type OwnedServices, type Services } from '../../nodes/services.ts';
import type { Tensor } from '../../models/tensor.ts';

/** One model run through the pool. */
export interface PoolRun {
  model: string;
  feeds: Record<string, Tensor>;
  out: Record<string, Tensor>;
}

export interface NodeHarness {
  dir: string;
  services: OwnedServices;
  /** Every pool run so far, in order. */
  runs: PoolRun[];
  /** Runs one node with its parameters' defaults under `inputs`; returns output `output`. */
  run<T>(def: NodeDef<Services>, inputs: Record<string, unknown>, output: string): Promise<T>;
  close(): Promise<void>;
}

/**
 * A data folder in tmp (`prefix`), filled by `prepare` (model sets, input pictures), and CPU services
 * over it whose pool records its runs.
 */
export async function openNodeHarness(prefix: string, prepare: (paths: DataPaths) => Promise<void>): Promise<NodeHarness> {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const paths = resolvePaths({ data: dir });
  mkdirSync(paths.inputs, { recursive: true });
  await prepare(paths);
  const services = await createServices(paths, { device: 'cpu' });
  const runs: PoolRun[] = [];
  const pool = services.pool;
  const realRun = pool.run.bind(pool);
  pool.run = async (model, feeds, opts) => {
    const out = await realRun(model, feeds, opts);
    runs.push({ model, feeds, out });
    return out;
  };
  const ctx = (nodeId: string): NodeContext<Services> => ({
    nodeId, signal: new AbortController().signal, progress: () => {}, services, workflow: {},
    log: { info: () => {}, warn: () => {} },
  });
  return {
    dir,
    services,
    runs,
    async run<T>(def: NodeDef<Services>, inputs: Record<string, unknown>, output: string): Promise<T> {
      const withDefaults: Record<string, unknown> = {};
      for (const [k, p] of Object.entries(def.params)) withDefaults[k] = p.default;
      return (await def.run(ctx(def.type), { ...withDefaults, ...inputs }))[output] as T;
    },
    async close() {
      await services.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
