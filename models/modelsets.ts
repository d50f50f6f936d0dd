// The installed model sets of a models folder, as a user picks among them: name, weight format, size
// on disk, and whether every graph this charflow needs is there. Read from the manifests only (no hashing).
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { COMPONENT_NAMES, MANIFEST_FILE, type FileEntry, type ModelSetManifest } from './modelset.ts';
import type { WeightFormat } from './quant/weight-format.ts';

export interface ModelSetInfo {
  name: string;
  /** The weight format of the set's transformer (the bulk of it), e.g. "int4". */
  format: WeightFormat;
  /** Every format its graphs use, largest part first (e.g. ["int4", "fp16", "fp32"] with --int8 t5 ...). */
  formats: WeightFormat[];
  /** Bytes on disk of the graphs and their external data (as the manifest records them). */
  bytes: number;
  /** Every graph this charflow writes is listed (older sets may lack newer graphs such as the VAE encoder). */
  complete: boolean;
  /** Why the set cannot be used, when it cannot (unreadable manifest). */
  problem?: string;
}

const entryBytes = (e: FileEntry): number => e.bytes + (e.data ?? []).reduce((n, d) => n + d.bytes, 0);

function entryFormat(e: FileEntry, setDtype: ModelSetManifest['dtype']): WeightFormat {
  if (e.weights) return e.weights;
  return (e.dtype ?? setDtype) === 'float16' ? 'fp16' : 'fp32';
}

/** One set's information from its manifest; undefined for a folder that is no model set. */
export function modelSetInfo(modelsRoot: string, name: string): ModelSetInfo | undefined {
  const file = join(modelsRoot, name, MANIFEST_FILE);
  try {
    if (!statSync(file).isFile()) return undefined;
  } catch {
    return undefined;
  }
  let m: ModelSetManifest;
  try {
    m = JSON.parse(readFileSync(file, 'utf8')) as ModelSetManifest;
  } catch (err) {
    return { name, format: 'fp32', formats: [], bytes: 0, complete: false, problem: `manifest.json is not valid JSON (${(err as Error).message})` };
  }
  const entries = Object.entries(m.files ?? {}) as [string, FileEntry][];
  const byFormat = new Map<WeightFormat, number>();
  for (const [, e] of entries) byFormat.set(entryFormat(e, m.dtype), (byFormat.get(entryFormat(e, m.dtype)) ?? 0) + entryBytes(e));
  const formats = [...byFormat.entries()].sort((a, b) => b[1] - a[1]).map(([f]) => f);
  const flux = m.files?.flux;
  return {
    name,
    format: flux ? entryFormat(flux, m.dtype) : formats[0] ?? 'fp32',
    formats,
    bytes: entries.reduce((n, [, e]) => n + entryBytes(e), 0),
    complete: COMPONENT_NAMES.every((c) => m.files?.[c] !== undefined),
  };
}

/** Every model set in the folder (sub-folders with a manifest), by name. */
export function listModelSets(modelsRoot: string): ModelSetInfo[] {
  let names: string[];
  try {
    names = readdirSync(modelsRoot, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name);
  } catch {
    return [];
  }
  return names.sort().flatMap((n) => modelSetInfo(modelsRoot, n) ?? []);
}
