// Run-time LoRAs: the LoRA-capable variant of a set's graph (made once per graph file, cached on disk)
// and the factor feeds of a LoRA stack for it. A strength change or a swap is a new set of feeds; the
// variant graph and its base weights stay loaded.
import { createHash } from 'node:crypto';
import { existsSync, linkSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync, closeSync, openSync, writeSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { type LinearSite, addLoraBranches, externalLocations, linearSites, loraDownName, loraUpName } from './graph.ts';
import { type LoraComponent, type LoraTable, type LoraUpdate, clipLoraTable, fluxLoraTable, t5LoraTable } from './keys.ts';
import type { FluxConfig } from '../flux.ts';
import type { Tensor } from '../tensor.ts';

/** Bumped when the variant's layout changes (old cached variants are then rebuilt). */
const VARIANT_VERSION = 1;

const blockCount = (sites: readonly LinearSite[], prefix: string): number =>
  sites.reduce((n, s) => Math.max(n, ...s.modules.map((m) => (m.startsWith(prefix) ? Number(m.slice(prefix.length).split('.')[0]) + 1 : 0))), 0);

function siteDims(sites: readonly LinearSite[], module: string): [number, number] {
  const s = sites.find((x) => x.modules.length === 1 && x.modules[0] === module);
  if (!s) throw new Error(`the graph has no Linear '${module}'`);
  return [s.out, s.in];
}

/**
 * The key table of a built graph, from its own Linears: the architecture's sizes are read off the sites
 * (a FLUX table only depends on the width C, the block counts and the embedders' sizes).
 */
export function tableForSites(component: LoraComponent, sites: readonly LinearSite[]): LoraTable {
  if (component === 't5') {
    const p = 'encoder.block.0.layer';
    const gated = sites.some((s) => s.name === `${p}.1.DenseReluDense.wi_0`);
    const [inner, dModel] = siteDims(sites, `${p}.0.SelfAttention.q`);
    return t5LoraTable(blockCount(sites, 'encoder.block.'), dModel, inner, siteDims(sites, `${p}.1.DenseReluDense.${gated ? 'wi_0' : 'wi'}`)[0], gated);
  }
  if (component === 'clip') {
    const p = 'text_model.encoder.layers.0';
    return clipLoraTable(blockCount(sites, 'text_model.encoder.layers.'), siteDims(sites, `${p}.self_attn.q_proj`)[0], siteDims(sites, `${p}.mlp.fc1`)[0]);
  }
  const [C, inChannels] = siteDims(sites, 'x_embedder');
  const cfg: FluxConfig = {
    patchSize: 1,
    inChannels,
    outChannels: siteDims(sites, 'proj_out')[0],
    numLayers: blockCount(sites, 'transformer_blocks.'),
    numSingleLayers: blockCount(sites, 'single_transformer_blocks.'),
    // Only the width C = heads * headDim shapes a Linear.
    numHeads: 1,
    headDim: C,
    jointAttentionDim: siteDims(sites, 'context_embedder')[1],
    pooledProjectionDim: siteDims(sites, 'time_text_embed.text_embedder.linear_1')[1],
    guidanceEmbeds: sites.some((s) => s.name === 'time_text_embed.guidance_embedder.linear_1'),
    axesDimsRope: [C],
    ropeTheta: 10000,
  };
  return fluxLoraTable(cfg);
}

/** Module -> [out, in] of every module a table targets. */
export function tableModules(table: LoraTable): Map<string, { out: number; in: number }> {
  const out = new Map<string, { out: number; in: number }>();
  for (const ts of table.values()) for (const t of ts) out.set(t.module, { out: t.out, in: t.in });
  return out;
}

/** A graph's LoRA sites and key table (what planning needs), and where its LoRA-capable variant goes. */
export interface LoraGraph {
  component: LoraComponent;
  /** The set's plain graph. */
  source: string;
  /** The variant's path (made by loraVariant). */
  path: string;
  /** Its LoRA sites, in graph order. */
  sites: LinearSite[];
  table: LoraTable;
}

/** A LoraGraph whose variant file exists. */
export type LoraVariant = LoraGraph;

/** `to` names `from`'s data: a hard link (same file system: ORT sees a plain file), else a symbolic link. */
function linkData(from: string, to: string): void {
  const exists = (err: unknown) => (err as NodeJS.ErrnoException).code === 'EEXIST'; // another process made it
  try {
    linkSync(from, to);
  } catch (err) {
    if (exists(err)) return;
    try {
      symlinkSync(from, to);
    } catch (err2) {
      if (!exists(err2)) throw err2;
    }
  }
}

function writeAtomic(file: string, chunks: readonly Uint8Array[]): void {
  const tmp = `${file}.${process.pid}.${Date.now()}.partial`;
  try {
    const fd = openSync(tmp, 'w');
    try {
      for (const c of chunks) {
        let written = 0;
        while (written < c.length) written += writeSync(fd, c, written, c.length - written);
      }
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, file);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw err;
  }
}

/** A file in the graph's cache folder, keyed by the graph file's path, size and mtime. */
function cacheDir(modelPath: string, cacheRoot: string): { path: string; dir: string } {
  const path = resolve(modelPath);
  const st = statSync(path);
  const key = createHash('sha256').update(`${VARIANT_VERSION}\n${path}\n${st.size}\n${st.mtimeMs}`).digest('hex').slice(0, 16);
  return { path, dir: join(cacheRoot, `${basename(path).replace(/\.onnx$/i, '')}-${key}`) };
}

/** Graphs whose sites and table this process has built (the FLUX table takes a while to build). */
const opened = new Map<string, LoraGraph>();

/** The LoRA sites of `modelPath` (cached beside its variant; the graph file is read once per change of it). */
export function loraGraph(modelPath: string, component: LoraComponent, cacheRoot: string): LoraGraph {
  const { path, dir } = cacheDir(modelPath, cacheRoot);
  const meta = join(dir, 'sites.json');
  const file = join(dir, basename(path));
  const known = opened.get(`${component}|${dir}`);
  if (known && existsSync(meta)) return known;
  const remember = (g: LoraGraph): LoraGraph => {
    opened.set(`${component}|${dir}`, g);
    if (opened.size > 32) opened.delete(opened.keys().next().value!);
    return g;
  };
  if (existsSync(meta)) {
    const sites = JSON.parse(readFileSync(meta, 'utf8')) as LinearSite[];
    return remember({ component, source: path, path: file, sites, table: tableForSites(component, sites) });
  }
  const all = linearSites(readFileSync(path));
  const table = tableForSites(component, all);
  const modules = tableModules(table);
  const sites = all.filter((s) => s.modules.every((m) => modules.has(m)));
  if (!sites.length) throw new Error(`${path}: no Linear of this ${component} graph can take a LoRA`);
  mkdirSync(dir, { recursive: true });
  writeFileSync(`${meta}.${process.pid}.partial`, JSON.stringify(sites));
  renameSync(`${meta}.${process.pid}.partial`, meta);
  return remember({ component, source: path, path: file, sites, table });
}

/**
 * The LoRA-capable variant of a graph: made once per graph file (reads it once; weights held in external
 * data are linked beside the variant, not copied), then reused.
 */
export function loraVariant(g: LoraGraph): LoraVariant {
  if (existsSync(g.path)) return g;
  const bytes = readFileSync(g.source);
  const names = new Set(g.sites.map((s) => s.name));
  const { chunks, sites } = addLoraBranches(bytes, (s) => names.has(s.name));
  if (sites.length !== g.sites.length) throw new Error(`${g.source}: the graph changed while its LoRA variant was made; run again`);
  for (const loc of externalLocations(bytes)) {
    linkData(join(dirname(g.source), loc), join(dirname(g.path), loc));
  }
  writeAtomic(g.path, chunks); // last: a variant file exists only with its data beside it
  return g;
}

/** The factor feeds of a LoRA stack for a variant's sites, and their bytes (float32). */
export interface LoraFeeds {
  feeds: Record<string, Tensor>;
  bytes: number;
  /** Sites that got a branch of rank > 0. */
  applied: number;
}

/**
 * lora_down.<site> = A^T [in, R] and lora_up.<site> = B^T [R, out] for every site: the updates on the
 * site's modules, one block of rows per group (the pieces of a fused LoRA module share their A), with the
 * scale folded into B and each module's B in its own output columns. Sites without updates get one zero rank.
 */
export function loraFeeds(variant: LoraGraph, updates: readonly LoraUpdate[]): LoraFeeds {
  const modules = tableModules(variant.table);
  const feeds: Record<string, Tensor> = {};
  let bytes = 0;
  let applied = 0;
  const byModule = new Map<string, LoraUpdate[]>();
  for (const u of updates) {
    if (u.target.component !== variant.component) continue;
    byModule.set(u.target.module, [...(byModule.get(u.target.module) ?? []), u]);
  }
  for (const site of variant.sites) {
    const cols = new Map<string, number>();
    let off = 0;
    for (const m of site.modules) {
      cols.set(m, off);
      off += modules.get(m)!.out;
    }
    if (off !== site.out) throw new Error(`LoRA site '${site.name}': its modules are ${off} wide, the graph's Linear ${site.out}`);
    const groups = new Map<string, LoraUpdate[]>();
    for (const m of site.modules) for (const u of byModule.get(m) ?? []) groups.set(u.group, [...(groups.get(u.group) ?? []), u]);
    const rank = [...groups.values()].reduce((n, us) => n + us[0]!.rank, 0);
    // A site no LoRA touches gets one zero rank rather than none: every execution provider runs that (a
    // zero-size MatMul works on the CPU, but not every GPU provider takes it), and x 0 + y is y bit for bit.
    const R = Math.max(1, rank);
    const down = new Float32Array(site.in * R); // [in, R]
    const up = new Float32Array(R * site.out); // [R, out]
    let r0 = 0;
    for (const us of groups.values()) {
      const { rank, down: A } = us[0]!;
      for (let j = 0; j < rank; j++) for (let i = 0; i < site.in; i++) down[i * R + r0 + j] = A[j * site.in + i]!;
      for (const u of us) {
        const c0 = cols.get(u.target.module)!;
        for (let o = 0; o < u.target.out; o++) {
          for (let j = 0; j < rank; j++) up[(r0 + j) * site.out + c0 + o]! += u.scale * u.up[o * rank + j]!;
        }
      }
      r0 += rank;
    }
    if (rank > 0) applied++;
    feeds[loraDownName(site.name)] = { dtype: 'float32', dims: [site.in, R], data: down };
    feeds[loraUpName(site.name)] = { dtype: 'float32', dims: [R, site.out], data: up };
    bytes += 4 * (down.length + up.length);
  }
  return { feeds, bytes, applied };
}
