// Tiny ONNX models for the runtime tests, built with the project's Graph builder into a temp folder.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Graph } from '../../models/onnx/graph.ts';
import { f32, type Tensor } from '../../models/tensor.ts';

export function tempDir(prefix = 'charflow-runtime-'): { dir: string; cleanup(): void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Integer-valued weights, so float32 results are exact. */
export function intMatrix(rows: number, cols: number, seed: number): Tensor {
  const data = new Float32Array(rows * cols);
  for (let i = 0; i < data.length; i++) data[i] = ((i * 7 + seed * 13) % 9) - 4;
  return f32([rows, cols], data);
}

/** y = x @ w + b with x [2, k], w [k, n], b [n]. Returns the path and a reference function. */
export function affineModel(dir: string, name: string, k = 3, n = 4, seed = 1, external = false): { path: string; w: Tensor; b: Tensor } {
  const g = new Graph({ name, external: external ? { dir, file: `${name}.data` } : undefined });
  const x = g.input('x', 'float32', [2, k]);
  const w = intMatrix(k, n, seed);
  const b = intMatrix(1, n, seed + 1);
  b.dims = [n];
  const y = g.node('Add', [g.node('MatMul', [x, g.weight('w', w)]), g.weight('b', b)]);
  g.output(y, 'y', 'float32', [2, n]);
  const path = join(dir, `${name}.onnx`);
  g.save(path);
  return { path, w, b };
}

export function affineReference(x: Tensor, w: Tensor, b: Tensor): Float32Array {
  const [m, k] = x.dims as [number, number];
  const n = w.dims[1]!;
  const out = new Float32Array(m * n);
  const xd = x.data as Float32Array;
  const wd = w.data as Float32Array;
  const bd = b.data as Float32Array;
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = bd[j]!;
      for (let t = 0; t < k; t++) s += xd[i * k + t]! * wd[t * n + j]!;
      out[i * n + j] = s;
    }
  }
  return out;
}

/**
 * A model slow enough to observe (some 100+ ms on one thread): `steps` chained MatMuls of an
 * [size, size] input with one [size, size] weight, scaled to stay finite. Output y [size, size].
 */
export function heavyModel(dir: string, name: string, size = 768, steps = 4): string {
  const g = new Graph({ name });
  const x = g.input('x', 'float32', [size, size]);
  const w = g.weight('w', f32([size, size], new Float32Array(size * size).fill(1 / size)));
  let h = x;
  for (let i = 0; i < steps; i++) h = g.node('MatMul', [h, w]);
  g.output(h, 'y', 'float32', [size, size]);
  const path = join(dir, `${name}.onnx`);
  g.save(path);
  return path;
}

export function heavyInput(size = 768): Tensor {
  return f32([size, size], new Float32Array(size * size).fill(1));
}
