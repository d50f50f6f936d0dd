// The machine's MatMul peak: the best rate of one large fp32 MatMul through charflow's pool (ORT
// time inside the worker), with a given number of intra-op threads. Sections size their models
// from it so that their checks mean the same on a slow and a fast machine.
import type { DataPaths } from '../../engine/paths.ts';
import { createServices } from '../../nodes/services.ts';
import { ensureMatMulGraph } from './fixtures.ts';
import { noise } from './tensors.ts';

export interface MatMulPeak {
  gflops: number;
  threads: number;
  n: number;
  /** ORT run times, ms. */
  samplesMs: number[];
}

export async function measureMatMulPeak(paths: DataPaths, threads: number, n = 2048, reps = 5): Promise<MatMulPeak> {
  const services = await createServices(paths, { device: 'cpu', intraOpThreads: threads, log: () => {} });
  try {
    const path = await ensureMatMulGraph(n);
    const feeds = { a: noise([n, n], 9) };
    const ortMs = async (): Promise<number> => {
      const r = await services.pool.runWithInfo(path, feeds);
      return r.info.endedAt - r.info.startedAt;
    };
    // The first runs grow ORT's memory arena (page faults): not the peak.
    for (let i = 0; i < 2; i++) await ortMs();
    const samplesMs: number[] = [];
    for (let i = 0; i < reps; i++) samplesMs.push(await ortMs());
    // The best run: disturbances only slow a run down, and a higher peak only makes the models larger.
    return { gflops: (2 * n * n * n) / Math.min(...samplesMs) / 1e6, threads: services.pool.intraOpThreads, n, samplesMs };
  } finally {
    await services.close();
  }
}
