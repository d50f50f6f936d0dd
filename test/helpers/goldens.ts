// Access to the reference tensors in test/goldens (or $CHARFLOW_GOLDENS) and comparison helpers.
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { expect } from 'vitest';
import { readSafetensors } from '../../models/weights/safetensors.ts';
import { SafetensorsFile } from '../../models/weights/safetensors.ts';
import { type Tensor, toFloat32 } from '../../models/tensor.ts';

export const GOLDENS = resolve(process.env.CHARFLOW_GOLDENS ?? join(import.meta.dirname, '../goldens'));

export function goldenPath(...parts: string[]): string {
  const p = join(GOLDENS, ...parts);
  if (!existsSync(p)) throw new Error(`golden file missing: ${p} (set CHARFLOW_GOLDENS to the goldens folder)`);
  return p;
}

export function goldenConfig(caseName: string, file = 'config.json'): Record<string, unknown> {
  return JSON.parse(readFileSync(goldenPath(caseName, file), 'utf8')) as Record<string, unknown>;
}

export function goldenTensors(caseName: string, file: string): Map<string, Tensor> {
  return readSafetensors(goldenPath(caseName, file));
}

export function goldenWeights(caseName: string, file = 'model.safetensors'): SafetensorsFile {
  return new SafetensorsFile(goldenPath(caseName, file));
}

/** A golden tensor that must be there, failing with its name otherwise. */
export function need(map: Map<string, Tensor>, key: string): Tensor {
  const t = map.get(key);
  if (!t) throw new Error(`golden tensor ${key} missing`);
  return t;
}

/** Max |a - b| over all elements; shapes must match. */
export function maxAbsDiff(actual: Tensor, expected: Tensor): number {
  expect(actual.dims, 'shape').toEqual(expected.dims);
  const a = toFloat32(actual);
  const b = toFloat32(expected);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    if (!(d <= m)) m = d; // NaN propagates as a failure
  }
  return m;
}

/** Asserts that two tensors agree within `tol` (max abs), naming the tensor on failure. */
export function expectClose(actual: Tensor | undefined, expected: Tensor | undefined, tol: number, name: string): number {
  if (!actual) throw new Error(`output ${name} was not produced`);
  if (!expected) throw new Error(`golden ${name} is missing`);
  const d = maxAbsDiff(actual, expected);
  expect(d, `${name}: max abs diff ${d} > ${tol}`).toBeLessThanOrEqual(tol);
  return d;
}

/** A weight-shape table lists exactly the golden checkpoint's keys, each with its stored shape. */
export function expectGoldenShapes(caseName: string, shapes: Record<string, readonly number[]>): void {
  const w = goldenWeights(caseName);
  try {
    expect(Object.keys(shapes).sort()).toEqual(w.keys().sort());
    for (const [k, dims] of Object.entries(shapes)) expect(w.shape(k), k).toEqual(dims);
  } finally {
    w.close();
  }
}
