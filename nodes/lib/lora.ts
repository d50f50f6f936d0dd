// Run-time LoRAs on a model set: LoraLoader returns the set with a LoRA stack attached; the model nodes
// downstream run the stack's LoRA-capable graph variants with the stack's factors bound in the model's
// worker (engine/runtime/pool.ts BoundFeeds). A set without LoRAs runs its plain graphs, untouched.
import { createHash } from 'node:crypto';
import { readdirSync, realpathSync, statSync } from 'node:fs';
import { join, relative, isAbsolute, sep } from 'node:path';
import type { DataPaths } from '../../engine/paths.ts';
import type { BoundFeeds, RunOptions } from '../../engine/runtime/pool.ts';
import type { ComponentName, ModelSet } from '../../models/modelset.ts';
import { type LoraComponent, type LoraTable, type LoraUpdate, LORA_COMPONENTS, joinTables, planLoras } from '../../models/lora/keys.ts';
import { type LoraGraph, type LoraVariant, loraFeeds, loraGraph, loraVariant } from '../../models/lora/runtime.ts';
import { openWeights } from '../../models/weights/open.ts';

/** One LoRA of a stack, as the node names it. */
export interface LoraEntry {
  /** File name inside the loras folder. */
  name: string;
  path: string;
  /** Content identity (size and mtime) of the file when it was read. */
  stamp: string;
  strength: Record<LoraComponent, number>;
}

interface LoraComponentState {
  variant: LoraVariant;
  bound: BoundFeeds;
  /** Sites with a branch of rank > 0. */
  applied: number;
}

/** A model set with LoRAs: what LoraLoader puts on its MODELS output. */
export interface LoraModelSet extends ModelSet {
  lora: {
    /** The set without LoRAs. */
    base: ModelSet;
    stack: LoraEntry[];
    components: Partial<Record<LoraComponent, LoraComponentState>>;
    /** Bytes of every component's factors (counted in the memory budget while bound). */
    bytes: number;
  };
}

export function loraState(models: ModelSet): LoraModelSet['lora'] | undefined {
  return (models as Partial<LoraModelSet>).lora;
}

/** Pool options that bind a component's LoRA factors (none for a set without LoRAs on it). */
export function loraRunOptions(models: ModelSet, component: ComponentName): Pick<RunOptions, 'bound'> {
  const state = loraState(models)?.components[component as LoraComponent];
  return state ? { bound: state.bound } : {};
}

/** The loras folder of a data folder. */
export function lorasDir(paths: DataPaths): string {
  return join(paths.root, 'loras');
}

const LORA_EXT = /\.(safetensors|bin|pt|pth|ckpt)$/i;

/** LoRA files in the loras folder (sub-folders included), as paths relative to it with '/' separators. */
export function listLoras(paths: DataPaths): string[] {
  const root = lorasDir(paths);
  const out: string[] = [];
  const walk = (dir: string, depth: number) => {
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch {
      return;
    }
    for (const n of names.sort()) {
      const p = join(dir, n);
      let st;
      try {
        st = statSync(p);
      } catch {
        continue;
      }
      if (st.isDirectory() && depth < 4) walk(p, depth + 1);
      else if (st.isFile() && LORA_EXT.test(n)) out.push(relative(root, p).split(sep).join('/'));
    }
  };
  walk(root, 0);
  return out;
}

/** The file a lora_name names, checked to lie inside the loras folder. */
export function resolveLora(paths: DataPaths, name: string): string {
  if (!name || isAbsolute(name)) throw new Error(`"${name}" is not a file name inside the loras folder`);
  const root = lorasDir(paths);
  let real: string;
  let realRoot: string;
  try {
    realRoot = realpathSync(root);
    real = realpathSync(join(root, name));
  } catch {
    throw new Error(`no LoRA file "${name}" in ${root}`);
  }
  const rel = relative(realRoot, real);
  if (rel.startsWith('..') || isAbsolute(rel)) throw new Error(`"${name}" is outside the loras folder`);
  if (!statSync(real).isFile()) throw new Error(`"${name}" in ${root} is not a file`);
  return real;
}

export function fileStamp(path: string): string {
  const st = statSync(path);
  return `${st.size}:${st.mtimeMs}`;
}

/** The identity of a stack on a base set (cache keys, bound-feed keys). */
export function stackDigest(base: ModelSet, stack: readonly LoraEntry[]): string {
  return createHash('sha256').update(JSON.stringify([base.digest, stack.map((e) => [e.path, e.stamp, e.strength])])).digest('hex').slice(0, 16);
}

/** A LoRA file read against a set's tables, at strength 1 on every component, with the warnings it gave. */
interface FilePlan {
  updates: LoraUpdate[];
  warnings: string[];
}

/**
 * The last few files read: a strength change, or a stack that keeps a LoRA, reuses their factors instead of
 * reading and checking the file again (keyed by the file's identity and the tables').
 */
const filePlans = new Map<string, FilePlan>();
const FILE_PLANS_KEPT = 4;

function filePlan(entry: LoraEntry, table: LoraTable, tablesKey: string): FilePlan {
  const key = `${entry.path}|${entry.stamp}|${tablesKey}`;
  let plan = filePlans.get(key);
  if (plan) {
    filePlans.delete(key); // most recent last
  } else {
    const source = openWeights(entry.path);
    try {
      const warnings: string[] = [];
      const { updates } = planLoras([{ path: entry.path, source, strength: { flux: 1, clip: 1, t5: 1 } }], table, (m) => warnings.push(m));
      plan = { updates, warnings };
    } finally {
      source.close?.();
    }
  }
  filePlans.set(key, plan);
  if (filePlans.size > FILE_PLANS_KEPT) filePlans.delete(filePlans.keys().next().value!);
  return plan;
}

/**
 * `models` with `entry` added to its LoRA stack. Reads and checks the new LoRA (nothing is applied when it
 * does not fit), makes or reuses the LoRA-capable graph of each component the stack touches, and computes the
 * factor feeds. Nothing is loaded into a session here.
 */
export function withLora(models: ModelSet, entry: LoraEntry, cacheRoot: string, warn: (msg: string) => void): LoraModelSet {
  const prev = loraState(models);
  const base = prev?.base ?? models;
  const stack = [...(prev?.stack ?? []), entry];
  const graphs: Partial<Record<LoraComponent, LoraGraph>> = {};
  for (const c of LORA_COMPONENTS) graphs[c] = loraGraph(base.path(c), c, cacheRoot);
  const table = joinTables(...Object.values(graphs).map((v) => v.table));
  const tablesKey = Object.values(graphs).map((g) => g.path).join('|');
  const updates: LoraUpdate[] = [];
  stack.forEach((e, i) => {
    const plan = filePlan(e, table, tablesKey);
    // Warnings for the LoRA this node adds: the ones before it warned at their own node.
    if (e === entry) plan.warnings.forEach(warn);
    for (const u of plan.updates) {
      const scale = u.scale * e.strength[u.target.component];
      if (scale !== 0) updates.push({ ...u, scale, group: `${i}:${u.group}` });
    }
  });
  const digest = stackDigest(base, stack);
  const components: LoraModelSet['lora']['components'] = {};
  let bytes = 0;
  for (const c of LORA_COMPONENTS) {
    if (!updates.some((u) => u.target.component === c)) continue;
    // Only the components the stack changes get (and load) their LoRA-capable graph.
    const variant = loraVariant(graphs[c]!);
    const f = loraFeeds(variant, updates);
    components[c] = { variant, bound: { key: `${digest}:${c}`, feeds: f.feeds, bytes: f.bytes }, applied: f.applied };
    bytes += f.bytes;
  }
  return {
    ...base,
    digest,
    path: (c) => components[c as LoraComponent]?.variant.path ?? base.path(c),
    dtype: (c) => base.dtype(c),
    tokenizerPath: (k) => base.tokenizerPath(k),
    tokenizer: (k) => base.tokenizer(k),
    lora: { base, stack, components, bytes },
  };
}
