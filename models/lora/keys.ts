// The one LoRA key table, for run-time LoRAs (models/lora/factors.ts) and conversion-time merging
// (models/convert/lora.ts). A LoRA file names low-rank pairs (down A [r, in], up B [out, r], optional alpha)
// by the module they update; this file maps every naming style to the modules the graphs are built from:
//   kohya / sd-scripts   lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight / .lora_up.weight / .alpha
//                        (BFL module names; lora_transformer_<diffusers name> too), lora_te1_text_model_... (CLIP-L)
//   diffusers / PEFT     transformer.transformer_blocks.0.attn.to_q.lora_A.weight / .lora_B.weight (alpha = rank),
//                        text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight
//   BFL dotted           diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight
//   XLabs                double_blocks.0.processor.qkv_lora1.down.weight / .up.weight (1 = image, 2 = text stream),
//                        proj_lora1/2, single_blocks.N.processor.qkv_lora / proj_lora
// A LoRA on a fused BFL module (qkv, linear1) covers the diffusers modules it was split into: the rows of B
// follow the rows of the fused weight, exactly as diffusers' converter (and so the official flux_load_lora)
// splits it. The update of one module is  W += strength * (alpha / rank) * B[rows] A.
import type { WeightSource } from '../weights/source.ts';
import { toFloat32 } from '../tensor.ts';
import { type FluxConfig, fluxWeightShapes } from '../flux.ts';
import { bflFluxKeyMap } from '../convert/keymaps.ts';

/** The graphs a LoRA can change. */
export type LoraComponent = 'flux' | 'clip' | 't5';
export const LORA_COMPONENTS: readonly LoraComponent[] = ['flux', 'clip', 't5'];
const COMPONENT_NAME: Record<LoraComponent, string> = { flux: 'FLUX transformer', clip: 'CLIP-L text encoder', t5: 'T5-XXL text encoder' };

/** One architecture module a LoRA module updates. */
export interface LoraTarget {
  component: LoraComponent;
  /** The module's key without '.weight' (diffusers names for FLUX, transformers names for CLIP). */
  module: string;
  out: number;
  in: number;
  /** Row ranges of the LoRA's B gathered in order for this module (undefined: all of B). */
  rows?: readonly (readonly [number, number])[];
  /** How many rows B must have (the fused module's height; `out` when not fused). */
  upRows: number;
}

/** LoRA module name (prefixes and the pair suffix removed) -> the modules it updates. */
export type LoraTable = Map<string, LoraTarget[]>;

const underscored = (name: string): string => name.replace(/\./g, '_');

function add(table: LoraTable, names: readonly string[], t: LoraTarget): void {
  for (const n of names) table.set(n, [...(table.get(n) ?? []), t]);
}

/** Every name a FLUX LoRA may use for a transformer Linear (diffusers, BFL, kohya, XLabs). */
export function fluxLoraTable(cfg: FluxConfig): LoraTable {
  const table: LoraTable = new Map();
  const names = (n: string) => [n, `lora_unet_${underscored(n)}`, `lora_transformer_${underscored(n)}`];
  const shapes = fluxWeightShapes(cfg);
  const dims = (module: string) => shapes[`${module}.weight`] as [number, number];
  for (const [key, d] of Object.entries(shapes)) {
    if (d.length !== 2 || !key.endsWith('.weight')) continue;
    const module = key.slice(0, -'.weight'.length);
    add(table, names(module), { component: 'flux', module, out: d[0]!, in: d[1]!, upRows: d[0]! });
  }
  // BFL names: each diffusers module takes its rows of the fused BFL weight.
  const fused = new Map<string, { module: string; rows: (readonly [number, number])[] }[]>();
  for (const [key, m] of bflFluxKeyMap(cfg)) {
    if (!key.endsWith('.weight') || shapes[key]?.length !== 2) continue;
    const sources = new Set(m.pieces.map((p) => p.key));
    if (sources.size !== 1) continue;
    const source = [...sources][0]!.slice(0, -'.weight'.length);
    const rows = m.pieces.map((p) => p.rows ?? [0, shapes[key]![0]!] as const);
    fused.set(source, [...(fused.get(source) ?? []), { module: key.slice(0, -'.weight'.length), rows }]);
  }
  for (const [source, parts] of fused) {
    const upRows = Math.max(...parts.flatMap((p) => p.rows.map((r) => r[1])));
    for (const p of parts) {
      const [out, inF] = dims(p.module);
      add(table, names(source), { component: 'flux', module: p.module, out, in: inF, rows: p.rows, upRows });
    }
  }
  // XLabs: attention LoRAs of the double blocks (1 = image stream, 2 = text stream) and the single blocks,
  // whose qkv LoRA covers only the q, k and v rows of linear1.
  const C = cfg.numHeads * cfg.headDim;
  const alias = (xlabs: string, bfl: string, only?: (t: LoraTarget) => boolean) => {
    for (const t of table.get(bfl) ?? []) {
      if (only && !only(t)) continue;
      add(table, [xlabs], { ...t, upRows: only ? 3 * C : t.upRows });
    }
  };
  for (let i = 0; i < cfg.numLayers; i++) {
    const p = `double_blocks.${i}`;
    alias(`${p}.processor.qkv_lora1`, `${p}.img_attn.qkv`);
    alias(`${p}.processor.qkv_lora2`, `${p}.txt_attn.qkv`);
    alias(`${p}.processor.proj_lora1`, `${p}.img_attn.proj`);
    alias(`${p}.processor.proj_lora2`, `${p}.txt_attn.proj`);
  }
  for (let i = 0; i < cfg.numSingleLayers; i++) {
    const p = `single_blocks.${i}`;
    alias(`${p}.processor.qkv_lora`, `${p}.linear1`, (t) => !t.module.endsWith('proj_mlp'));
    alias(`${p}.processor.proj_lora`, `${p}.linear2`);
  }
  return table;
}

/** CLIP-L's encoder Linears: transformers names, kohya lora_te1_ / lora_te_ names. */
export function clipLoraTable(layers: number, hidden: number, intermediate: number): LoraTable {
  const table: LoraTable = new Map();
  for (let i = 0; i < layers; i++) {
    const p = `text_model.encoder.layers.${i}`;
    const mods: [string, number, number][] = [
      ...['q_proj', 'k_proj', 'v_proj', 'out_proj'].map((n): [string, number, number] => [`${p}.self_attn.${n}`, hidden, hidden]),
      [`${p}.mlp.fc1`, intermediate, hidden],
      [`${p}.mlp.fc2`, hidden, intermediate],
    ];
    for (const [module, out, inF] of mods) {
      add(table, [module, `lora_te1_${underscored(module)}`, `lora_te_${underscored(module)}`], { component: 'clip', module, out, in: inF, upRows: out });
    }
  }
  return table;
}

/** T5-XXL's encoder Linears (FLUX kohya files call it te2): transformers names, lora_te2_ names. */
export function t5LoraTable(layers: number, dModel: number, inner: number, dFf: number, gated: boolean): LoraTable {
  const table: LoraTable = new Map();
  for (let i = 0; i < layers; i++) {
    const p = `encoder.block.${i}.layer`;
    const mods: [string, number, number][] = [
      ...['q', 'k', 'v'].map((n): [string, number, number] => [`${p}.0.SelfAttention.${n}`, inner, dModel]),
      [`${p}.0.SelfAttention.o`, dModel, inner],
      ...(gated ? ['wi_0', 'wi_1'] : ['wi']).map((n): [string, number, number] => [`${p}.1.DenseReluDense.${n}`, dFf, dModel]),
      [`${p}.1.DenseReluDense.wo`, dModel, dFf],
    ];
    for (const [module, out, inF] of mods) add(table, [module, `lora_te2_${underscored(module)}`], { component: 't5', module, out, in: inF, upRows: out });
  }
  return table;
}

/** Several tables as one (their names do not overlap). */
export function joinTables(...tables: LoraTable[]): LoraTable {
  const out: LoraTable = new Map();
  for (const t of tables) for (const [k, v] of t) out.set(k, [...(out.get(k) ?? []), ...v]);
  return out;
}

const PREFIXES = ['base_model.model.', 'model.diffusion_model.', 'diffusion_model.', 'transformer.', 'text_encoder.', 'text_encoder_2.', 'te1.', 'te2.', 'clip_l.', 't5xxl.'];
const SUFFIXES: [RegExp, 'down' | 'up' | 'alpha'][] = [
  [/\.lora_A(\.default)?\.weight$/, 'down'], [/\.lora_B(\.default)?\.weight$/, 'up'],
  [/\.lora_down\.weight$/, 'down'], [/\.lora_up\.weight$/, 'up'],
  [/\.lora\.down\.weight$/, 'down'], [/\.lora\.up\.weight$/, 'up'],
  [/\.down\.weight$/, 'down'], [/\.up\.weight$/, 'up'], // XLabs
  [/\.alpha$/, 'alpha'],
];
/** Other adapter kinds: merging them as plain LoRAs would be silently wrong. */
const UNSUPPORTED = /\.(lokr_|hada_|lora_mid|dora_scale|diff$|diff_b$|oft_)/;

/** A LoRA to apply: its file and its strength on each component. */
export interface LoraInput {
  path: string;
  source: WeightSource;
  strength: Record<LoraComponent, number>;
}

/** One module's low-rank update, read and checked. */
export interface LoraUpdate {
  file: string;
  /** The module as the file names it. */
  name: string;
  target: LoraTarget;
  /** A [rank, in] */
  down: Float32Array;
  /** B's rows for this module [out, rank] */
  up: Float32Array;
  rank: number;
  /** strength * alpha / rank */
  scale: number;
  /** Updates sharing one A (the pieces of a fused module): same group. */
  group: string;
}

export interface LoraPlan {
  updates: LoraUpdate[];
  /** float32 bytes of the factors read. */
  bytes: number;
}

function scalarOf(file: string, key: string, source: WeightSource): number {
  const v = toFloat32(source.get(key))[0];
  if (v === undefined || !Number.isFinite(v)) throw new Error(`${file}: '${key}' is not a finite scalar`);
  return v;
}

/**
 * Reads the LoRA files against `table` and returns every update, checked: a module whose shapes do not
 * match throws (naming the file, the module and both shapes), so nothing half-applies; a file of which
 * nothing applies throws; modules that match no layer are reported through `warn` (count and a few names).
 * Updates of a component with strength 0 are left out.
 */
export function planLoras(loras: readonly LoraInput[], table: LoraTable, warn: (msg: string) => void = () => {}): LoraPlan {
  const updates: LoraUpdate[] = [];
  let bytes = 0;
  loras.forEach((lora, index) => {
    const file = lora.path;
    const modules = new Map<string, { down?: string; up?: string; alpha?: string }>();
    const unknown: string[] = [];
    const unsupported: string[] = [];
    for (const key of lora.source.keys()) {
      if (UNSUPPORTED.test(key)) {
        unsupported.push(key);
        continue;
      }
      let name = key;
      for (const p of PREFIXES) if (name.startsWith(p)) name = name.slice(p.length);
      const hit = SUFFIXES.find(([re]) => re.test(name));
      if (!hit) {
        unknown.push(key);
        continue;
      }
      const module = name.replace(hit[0], '');
      const entry = modules.get(module) ?? {};
      entry[hit[1]] = key;
      modules.set(module, entry);
    }
    if (unsupported.length) {
      throw new Error(`${file}: unsupported LoRA tensors (only lora_A/lora_B, lora_down/lora_up and alpha are applied; LoKr, LoHa, DoRA and full diffs are not): ${unsupported.slice(0, 5).join(', ')}${unsupported.length > 5 ? ', ...' : ''}`);
    }
    const unmatched: string[] = [];
    const found: LoraUpdate[] = [];
    for (const [name, e] of modules) {
      const targets = table.get(name);
      if (!targets) {
        unmatched.push(...[e.down, e.up, e.alpha].filter((k): k is string => k !== undefined));
        continue;
      }
      if (!e.down || !e.up) throw new Error(`${file}: LoRA module '${name}' has ${e.down ? 'no up (lora_B)' : 'no down (lora_A)'} matrix`);
      const downShape = lora.source.shape(e.down)!;
      const upShape = lora.source.shape(e.up)!;
      const rank = downShape[0]!;
      const t0 = targets[0]!;
      const where = `${COMPONENT_NAME[t0.component]} module '${t0.module}'${targets.length > 1 ? ` (and ${targets.length - 1} more split from it)` : ''}`;
      if (downShape.length !== 2 || downShape[1] !== t0.in) {
        throw new Error(`${file}: LoRA module '${name}': down '${e.down}' has shape [${downShape}], but ${where} has weight [${t0.out}, ${t0.in}] and takes ${t0.in} inputs: expected [rank, ${t0.in}]`);
      }
      if (upShape.length !== 2 || upShape[1] !== rank || upShape[0] !== t0.upRows) {
        throw new Error(`${file}: LoRA module '${name}': up '${e.up}' has shape [${upShape}], but ${where} needs [${t0.upRows}, ${rank}] (down '${e.down}' is [${downShape}])`);
      }
      const alpha = e.alpha ? scalarOf(file, e.alpha, lora.source) : rank;
      const strength = lora.strength[t0.component];
      const down = toFloat32(lora.source.get(e.down));
      const upAll = toFloat32(lora.source.get(e.up));
      bytes += 4 * (down.length + upAll.length);
      for (const t of targets) {
        const ranges = t.rows ?? [[0, t.upRows] as const];
        const up = new Float32Array(t.out * rank);
        let off = 0;
        for (const [s, end] of ranges) {
          up.set(upAll.subarray(s * rank, end * rank), off);
          off += (end - s) * rank;
        }
        if (off !== up.length) throw new Error(`${file}: LoRA module '${name}' gives ${off / rank} rows for '${t.module}', which has ${t.out}`);
        found.push({ file, name, target: t, down, up, rank, scale: strength * (alpha / rank), group: `${index}:${e.down}` });
      }
    }
    if (!found.length) {
      const what = LORA_COMPONENTS.map((c) => COMPONENT_NAME[c]).join(' or ');
      throw new Error(`${file}: no LoRA module matches a FLUX transformer layer or a CLIP-L / T5 layer (e.g. '${unmatched[0] ?? unknown[0] ?? 'the file is empty'}'); is this a FLUX LoRA for the ${what}?`);
    }
    const ignored = [...unmatched, ...unknown];
    if (ignored.length) {
      warn(`${file}: ${ignored.length} LoRA tensors match no layer and are ignored (${ignored.slice(0, 3).join(', ')}${ignored.length > 3 ? ', ...' : ''})`);
    }
    updates.push(...found.filter((u) => u.scale !== 0));
  });
  return { updates, bytes };
}

/** delta[o, i] = sum over updates of scale * (B A)[o, i], in float64, for one module [out, in]. */
export function moduleDelta(updates: readonly LoraUpdate[], module: string, component: LoraComponent): Float64Array | undefined {
  const mine = updates.filter((u) => u.target.module === module && u.target.component === component);
  if (!mine.length) return undefined;
  const { out, in: inF } = mine[0]!.target;
  const d = new Float64Array(out * inF);
  for (const u of mine) addLowRank(d, u.up, u.down, out, u.rank, inF, u.scale);
  return d;
}

/** w[o, :] += scale * sum_j up[o, j] * down[j, :] for up [out, r] and down [r, in]. */
export function addLowRank(w: Float32Array | Float64Array, up: Float32Array, down: Float32Array, out: number, rank: number, inF: number, scale: number): void {
  for (let o = 0; o < out; o++) {
    const row = o * inF;
    for (let j = 0; j < rank; j++) {
      const c = scale * up[o * rank + j]!;
      if (c === 0) continue;
      const d = j * inF;
      for (let i = 0; i < inF; i++) w[row + i]! += c * down[d + i]!;
    }
  }
}
