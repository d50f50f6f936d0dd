// Small statistics and timing helpers. The machine is shared and noisy, so every figure is a
// median of several runs, and comparisons are ratios of runs made side by side.
import { performance } from 'node:perf_hooks';

export function median(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

export function min(xs: readonly number[]): number {
  return xs.length ? Math.min(...xs) : NaN;
}

/** Relative spread (max - min) / median: a quick disturbance indicator. */
export function spread(xs: readonly number[]): number {
  if (xs.length < 2) return 0;
  return (Math.max(...xs) - Math.min(...xs)) / median(xs);
}

/** The q-quantile (0..1), linear between order statistics. */
export function quantile(xs: readonly number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  const pos = (s.length - 1) * q;
  const lo = Math.floor(pos);
  return s[lo]! + (s[Math.min(lo + 1, s.length - 1)]! - s[lo]!) * (pos - lo);
}

/**
 * Relative uncertainty of the median: the half-width of a box plot's notch (1.58 IQR / sqrt(n)),
 * over the median. Robust to a few disturbed samples, unlike the spread.
 */
export function medianUncertainty(xs: readonly number[]): number {
  if (xs.length < 3) return Infinity;
  return (1.58 * (quantile(xs, 0.75) - quantile(xs, 0.25))) / Math.sqrt(xs.length) / Math.abs(median(xs));
}

/** Milliseconds `fn` takes. */
export async function timed<T>(fn: () => Promise<T> | T): Promise<[number, T]> {
  const t = performance.now();
  const r = await fn();
  return [performance.now() - t, r];
}

export interface RepeatOptions {
  /** Repetitions always made. */
  min: number;
  /** More are made while the median is less certain than `tolerance` (relative), up to this many. */
  max: number;
  tolerance: number;
  /** Stop adding repetitions once this returns false (the global time budget). */
  mayExtend?: () => boolean;
}

/**
 * Calls `rep(i)` (one side-by-side measurement returning its key sample) `min` times, then again
 * while the median is uncertain (disturbed samples), at most `max` times in all.
 */
export async function repeatUntilSteady(rep: (i: number) => Promise<number>, opts: RepeatOptions): Promise<number[]> {
  const samples: number[] = [];
  for (let i = 0; i < opts.max; i++) {
    if (i >= opts.min && (medianUncertainty(samples) <= opts.tolerance || !(opts.mayExtend?.() ?? true))) break;
    samples.push(await rep(i));
  }
  return samples;
}

export const fmtMs = (ms: number): string => (ms >= 10_000 ? `${(ms / 1000).toFixed(1)} s` : ms >= 100 ? `${ms.toFixed(0)} ms` : `${ms.toFixed(1)} ms`);
