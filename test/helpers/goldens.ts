// Access to the reference tensors in test/goldens (or $CHARFLOW_GOLDENS) and comparison helpers.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
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

// ---------------------------------------------------------------------------------------------------------------
// Values a golden test reads from the case's own files, so that any case set in the same layout can be checked
// (CHARFLOW_GOLDENS): nothing about the shared cases is written into the tests.

/** Max |x| over a tensor. A loop: spreading a large array into Math.max overflows the call stack. */
export function maxAbs(t: Tensor): number {
  const a = toFloat32(t);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const v = Math.abs(a[i]!);
    if (!(v <= m)) m = v; // NaN propagates
  }
  return m;
}

/** The only value of a one-element tensor (any numeric dtype). */
export function scalarOf(t: Tensor): number {
  if (t.data.length !== 1) throw new Error(`expected a one-element tensor, got [${t.dims.join(', ')}]`);
  const v = t.data[0]!;
  return typeof v === 'bigint' ? Number(v) : t.dtype === 'float16' ? toFloat32(t)[0]! : v;
}

/**
 * A float the pipeline was called with, as Python had it: cases store it as float32 (0.6 -> 0.6000000238...),
 * and the shortest decimal that rounds to the stored float32 recovers the Python float (e.g. for
 * int(N - N * strength)).
 */
export function pythonFloat(t: Tensor): number {
  const v = scalarOf(t);
  for (let digits = 1; digits <= 9; digits++) {
    const d = Number(v.toPrecision(digits));
    if (Math.fround(d) === v) return d;
  }
  return v;
}

/** The tensors named `<base>.scale_<s>`, s parsed as a number, in ascending scale. */
export function scaledVariants(map: Map<string, Tensor>, base: string): { key: string; scale: number; tensor: Tensor }[] {
  const prefix = `${base}.scale_`;
  const found = [...map.keys()].filter((k) => k.startsWith(prefix)).map((key) => {
    const scale = Number(key.slice(prefix.length));
    if (!Number.isFinite(scale)) throw new Error(`golden tensor ${key}: cannot read a scale from its name`);
    return { key, scale, tensor: map.get(key)! };
  });
  if (found.length === 0) throw new Error(`no golden tensor named ${prefix}<s>`);
  return found.sort((a, b) => a.scale - b.scale);
}

/** The number of denoising steps recorded as `step.<i>.<name>` (indices must run 0..N-1). */
export function goldenStepCount(map: Map<string, Tensor>): number {
  const steps = new Set<number>();
  for (const k of map.keys()) {
    const m = /^step\.(\d+)\./.exec(k);
    if (m) steps.add(Number(m[1]));
  }
  const n = steps.size;
  for (let i = 0; i < n; i++) if (!steps.has(i)) throw new Error(`golden steps are not numbered 0..${n - 1}: step ${i} missing`);
  return n;
}

/** The indices i of the tensors named `<base>.<i>` (e.g. hidden_states.<i>, timesteps.<k>), ascending. */
export function indexedNames(map: Map<string, Tensor>, base: string): number[] {
  const re = new RegExp(`^${base.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\.(\\d+)$`);
  return [...map.keys()].flatMap((k) => {
    const m = re.exec(k);
    return m ? [Number(m[1])] : [];
  }).sort((a, b) => a - b);
}

/** The one file of a case whose name matches `pattern` (e.g. the stage PNGs, whose names carry their size). */
export function goldenFind(caseName: string, pattern: RegExp): string {
  const dir = goldenPath(caseName);
  const hits = readdirSync(dir).filter((f) => pattern.test(f));
  if (hits.length !== 1) throw new Error(`expected one file matching ${pattern} in ${dir}, found ${hits.length}`);
  return join(dir, hits[0]!);
}

/** A case README's text. */
export function goldenReadme(caseName: string): string {
  return readFileSync(goldenPath(caseName, 'README.md'), 'utf8');
}

/**
 * The first markdown table after the heading `## <heading>` of a case README, as rows keyed by the header
 * cells (backticks stripped from cells). For values that no file of the case holds otherwise.
 */
export function goldenReadmeTable(caseName: string, heading: string): Record<string, string>[] {
  const lines = goldenReadme(caseName).split('\n');
  const at = lines.findIndex((l) => l.trim() === `## ${heading}`);
  if (at < 0) throw new Error(`${caseName}/README.md has no section "## ${heading}"`);
  const table: string[][] = [];
  for (let i = at + 1; i < lines.length && !lines[i]!.startsWith('## '); i++) {
    const l = lines[i]!.trim();
    if (l.startsWith('|')) table.push(l.slice(1, l.endsWith('|') ? -1 : undefined).split('|').map((c) => c.trim().replace(/`/g, '')));
    else if (table.length > 0) break;
  }
  if (table.length < 2) throw new Error(`${caseName}/README.md: no table under "## ${heading}"`);
  const [header, , ...rows] = table;
  return rows.map((r) => Object.fromEntries(header!.map((h, j) => [h, r[j] ?? ''])));
}

/**
 * CLIP's BOS and EOS ids as a case's input_ids [B, T] use them: every row starts with BOS and ends with EOS
 * (EOS also pads). The config's bos/eos_token_id are the legacy values, not the ids the tokenizer writes.
 */
export function clipSpecialIds(ids: Tensor): { bos: number; eos: number } {
  const [B, T] = ids.dims as [number, number];
  const at = (b: number, t: number) => Number(ids.data[b * T + t]!);
  const bos = at(0, 0);
  const eos = at(0, T - 1);
  for (let b = 0; b < B; b++) {
    if (at(b, 0) !== bos || at(b, T - 1) !== eos) throw new Error(`input_ids row ${b} does not start with BOS ${bos} and end with EOS ${eos}`);
  }
  return { bos, eos };
}

/** The latent grid that FLUX image ids (0, row, col) [L, 3] number: rows x cols. */
export function imageIdGrid(ids: Tensor): { rows: number; cols: number } {
  const a = toFloat32(ids);
  let rows = 0;
  let cols = 0;
  for (let i = 0; i < a.length; i += 3) {
    rows = Math.max(rows, a[i + 1]! + 1);
    cols = Math.max(cols, a[i + 2]! + 1);
  }
  return { rows, cols };
}

/** The `<base>.scale_<s>` tensor whose s is `scale` (compared in float32, as the inputs store scales). */
export function scaledVariant(map: Map<string, Tensor>, base: string, scale: number): Tensor {
  const hit = scaledVariants(map, base).find((v) => Math.fround(v.scale) === Math.fround(scale));
  if (!hit) throw new Error(`no golden tensor ${base}.scale_<s> with s = ${scale}`);
  return hit.tensor;
}
