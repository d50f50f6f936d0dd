// Shared by commands that take a workflow: find it (a path, a saved or bundled name with or without
// `.json`), read it (a charflow workflow, a ComfyUI API prompt, or a PNG that carries either), report problems.
import { existsSync, readdirSync } from 'node:fs';
import { open, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { NodeDef } from '../engine/node.ts';
import type { DataPaths } from '../engine/paths.ts';
import { parseWorkflowJson, readWorkflowFile, type ParseResult } from '../engine/workflow/load.ts';
import { migrateWorkflow } from '../engine/workflow/migrate.ts';
import type { ValidationError } from '../engine/workflow/types.ts';
import { apiToWorkflow, isCharflowWorkflow } from '../editor/server/comfy/convert.ts';
import { readPngText } from '../nodes/lib/image.ts';
import type { CliContext } from './context.ts';

/** The bundled workflows (the editor's templates). */
export const BUNDLED_WORKFLOWS = fileURLToPath(new URL('../workflows', import.meta.url));

/** PNGs above this size are not read for their embedded workflow. */
const MAX_PNG_BYTES = 64 * 1024 * 1024;
const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/**
 * A path as given (relative to the working folder); failing that, a name in <data>/workflows, then in the
 * bundled workflows, each with `.json` added when the name has no extension.
 */
export function resolveWorkflowPath(ctx: CliContext, file: string, paths: DataPaths): string {
  const direct = path.resolve(ctx.cwd, file);
  if (existsSync(direct) || path.isAbsolute(file)) return direct;
  const names = path.extname(file) ? [file] : [file, `${file}.json`];
  for (const dir of [paths.workflows, BUNDLED_WORKFLOWS]) {
    for (const n of names) if (existsSync(path.join(dir, n))) return path.join(dir, n);
  }
  if (!path.extname(file) && existsSync(`${direct}.json`)) return `${direct}.json`;
  return direct;
}

/** The workflow names (without `.json`) offered in the data folder and the bundled workflows. */
export function workflowNames(paths: DataPaths): string[] {
  const names = new Set<string>();
  for (const dir of [paths.workflows, BUNDLED_WORKFLOWS]) {
    try {
      for (const f of readdirSync(dir)) if (f.endsWith('.json')) names.add(f.slice(0, -5));
    } catch {
      // a folder that is not there offers nothing
    }
  }
  return [...names].sort();
}

/** Levenshtein distance. */
export function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = cur;
  }
  return prev[b.length]!;
}

/** The nearest of `names` to `wanted` when it is a plausible typo (a third of its length or 2 edits), else undefined. */
export function nearest(wanted: string, names: readonly string[]): string | undefined {
  const w = wanted.toLowerCase();
  let best: string | undefined;
  let bestD = Math.max(2, Math.floor(w.length / 3)) + 1;
  for (const n of names) {
    const d = n.toLowerCase().includes(w) || w.includes(n.toLowerCase()) ? 1 : editDistance(w, n.toLowerCase());
    if (d < bestD) [best, bestD] = [n, d];
  }
  return best;
}

/** Reads the embedded workflow of a PNG (charflow's `workflow`, else ComfyUI's `prompt`). */
async function readPngWorkflow(file: string): Promise<ParseResult> {
  const size = (await stat(file)).size;
  if (size > MAX_PNG_BYTES) return { ok: false, error: { code: 'file', message: `${file}: ${size} bytes, over the ${MAX_PNG_BYTES} byte limit for a PNG` } };
  let text: Record<string, string>;
  try {
    text = readPngText(await readFile(file));
  } catch (err) {
    return { ok: false, error: { code: 'file', message: `${file}: not a readable PNG (${(err as Error).message})` } };
  }
  const embedded = text.workflow ?? text.prompt;
  if (embedded === undefined) {
    return { ok: false, error: { code: 'file', message: `${file}: the PNG carries no workflow (charflow's Save Image and ComfyUI embed one)` } };
  }
  return parseWorkflowJson(embedded, `${file} (embedded workflow)`);
}

async function isPng(file: string): Promise<boolean> {
  try {
    const fh = await open(file, 'r');
    try {
      const buf = Buffer.alloc(8);
      const { bytesRead } = await fh.read(buf, 0, 8, 0);
      return bytesRead === 8 && buf.equals(PNG_SIGNATURE);
    } finally {
      await fh.close();
    }
  } catch {
    return false;
  }
}

/** A ComfyUI API prompt: every value a node with a class_type (also inside a /prompt body's `prompt`). */
function comfyPrompt(v: unknown): Record<string, unknown> | undefined {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return undefined;
  const inner = (v as { prompt?: unknown }).prompt;
  const p = (typeof inner === 'object' && inner !== null ? inner : v) as Record<string, unknown>;
  const nodes = Object.values(p);
  const isNode = (n: unknown): boolean => typeof n === 'object' && n !== null && typeof (n as { class_type?: unknown }).class_type === 'string';
  return nodes.length > 0 && nodes.every(isNode) ? p : undefined;
}

/**
 * Reads and migrates a workflow: a charflow workflow file, a ComfyUI API prompt (converted with the
 * registry's node types), or a PNG carrying either. Problems come back as validation errors.
 */
export async function readAndMigrate(
  file: string,
  registry?: ReadonlyMap<string, NodeDef<unknown>>,
  suggestFrom?: DataPaths,
): Promise<{ ok: true; raw: unknown; converted?: 'comfy' } | { ok: false; errors: ValidationError[] }> {
  const parsed = (await isPng(file)) ? await readPngWorkflow(file) : await readWorkflowFile(file);
  if (!parsed.ok) {
    if (parsed.error.code === 'file' && suggestFrom && !existsSync(file)) {
      const near = nearest(path.basename(file).replace(/\.json$/, ''), workflowNames(suggestFrom));
      if (near) return { ok: false, errors: [{ ...parsed.error, message: `${parsed.error.message} (did you mean "${near}"? \`charflow run ${near}\`)` }] };
    }
    return { ok: false, errors: [parsed.error] };
  }
  let value = parsed.value;
  let converted: 'comfy' | undefined;
  const api = isCharflowWorkflow(value) || !registry ? undefined : comfyPrompt(value);
  if (api) {
    const conv = apiToWorkflow(api, registry!);
    if (!conv.workflow || conv.issues.length) {
      return { ok: false, errors: conv.issues.map((i) => ({ code: 'schema', message: `${file} (ComfyUI API prompt): ${i.details}` })) };
    }
    value = conv.workflow;
    converted = 'comfy';
  }
  const migrated = migrateWorkflow(value);
  if (!migrated.ok) return { ok: false, errors: [migrated.error] };
  return converted ? { ok: true, raw: migrated.workflow, converted } : { ok: true, raw: migrated.workflow };
}

/** Prints errors one per line, as `charflow validate` and `charflow run` do. */
export function printErrors(out: { write(s: string): unknown }, errors: readonly ValidationError[]): void {
  for (const e of errors) out.write(`${e.message}\n`);
}
