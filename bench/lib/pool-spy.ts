// Records when each session run of a pool happened inside its worker (ORT's own start and end),
// by wrapping pool.run for the duration of a measurement.
import { basename } from 'node:path';
import type { SessionPool } from '../../engine/runtime/pool.ts';

export interface RunInterval {
  /** Model file name without .onnx. */
  model: string;
  /** Epoch ms inside the worker around session.run. */
  start: number;
  end: number;
}

export function spyRuns(pool: SessionPool): { runs: RunInterval[]; restore(): void } {
  const original = pool.run;
  const runs: RunInterval[] = [];
  pool.run = async (path, feeds, opts) => {
    const r = await pool.runWithInfo(path, feeds, opts);
    runs.push({ model: basename(path).replace(/\.onnx$/, ''), start: r.info.startedAt, end: r.info.endedAt });
    return r.outputs;
  };
  return { runs, restore: () => { pool.run = original; } };
}

/** How much of the shorter of two runs the other overlapped (0..1). */
export function overlap(a: RunInterval, b: RunInterval): number {
  const shared = Math.max(0, Math.min(a.end, b.end) - Math.max(a.start, b.start));
  return shared / Math.min(a.end - a.start, b.end - b.start);
}
