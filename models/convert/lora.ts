// Style LoRAs for FLUX, merged into the transformer weights at conversion time, as diffusers' fuse_lora does:
//   W' = W + w * (alpha / rank) * B A        (B = lora_B / lora_up [out, r], A = lora_A / lora_down [r, in])
// Accepted key styles:
//   diffusers / PEFT:  transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight, .lora_B.weight (alpha = rank)
//   kohya:             lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight, .lora_up.weight, .alpha
//                      (BFL module names; also lora_transformer_<diffusers name>)
//   BFL dotted:        diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight
// A LoRA on a fused BFL module (qkv, linear1) is split over the diffusers modules exactly like the weight:
// the rows of B follow the rows of the fused weight. The merge happens when the builder reads a key.
import { openWeights } from '../weights/open.ts';
import type { WeightSource } from '../weights/source.ts';
import { type Tensor, toFloat32 } from '../tensor.ts';
import { type FluxConfig, fluxWeightShapes } from '../flux.ts';
import { bflFluxKeyMap } from './keymaps.ts';
import type { Piece } from './views.ts';

export interface LoraSpec {
  path: string;
  weight: number;
}

/** One low-rank update of one diffusers module. */
interface LoraUpdate {
  file: string;
  /** How B's rows are taken from the file's lora_up (the fused module's row ranges). */
  up: { key: string; rows?: readonly [number, number] }[];
  down: string;
  scale: number;
}

/** Parses "FILE:WEIGHT" (weight defaults to 1; the last colon splits, so Windows drive letters survive). */
export function parseLoraArg(arg: string): LoraSpec {
  const m = /^(.*):(-?\d*\.?\d+(?:e-?\d+)?)$/i.exec(arg);
  if (!m) return { path: arg, weight: 1 };
  return { path: m[1]!, weight: Number(m[2]) };
}

const PREFIXES = ['base_model.model.', 'model.diffusion_model.', 'diffusion_model.', 'transformer.'];
const TEXT_ENCODER = /^(lora_te\d?_|text_encoder|te\d?\.|lora_te_)/;
const SUFFIXES: [RegExp, 'down' | 'up' | 'alpha'][] = [
  [/\.lora_A\.weight$/, 'down'], [/\.lora_B\.weight$/, 'up'], [/\.lora_down\.weight$/, 'down'], [/\.lora_up\.weight$/, 'up'],
  [/\.lora\.down\.weight$/, 'down'], [/\.lora\.up\.weight$/, 'up'], [/\.alpha$/, 'alpha'],
];

/** Where a LoRA module lands: the diffusers modules it updates, each with B's row range. */
interface ModuleTarget {
  module: string;
  pieces: readonly Piece[];
}

/** Every module name a FLUX LoRA may use (diffusers and BFL, dotted and kohya-underscored) -> its targets. */
function moduleTable(cfg: FluxConfig): Map<string, ModuleTarget[]> {
  const table = new Map<string, ModuleTarget[]>();
  const add = (name: string, t: ModuleTarget) => {
    for (const n of [name, `lora_unet_${name.replace(/\./g, '_')}`, `lora_transformer_${name.replace(/\./g, '_')}`]) {
      table.set(n, [...(table.get(n) ?? []), t]);
    }
  };
  const shapes = fluxWeightShapes(cfg);
  for (const [key, dims] of Object.entries(shapes)) {
    if (dims.length === 2 && key.endsWith('.weight')) {
      const module = key.slice(0, -'.weight'.length);
      add(module, { module, pieces: [{ key: module }] });
    }
  }
  for (const [key, m] of bflFluxKeyMap(cfg)) {
    if (!key.endsWith('.weight') || shapes[key]?.length !== 2) continue;
    const module = key.slice(0, -'.weight'.length);
    const sources = new Set(m.pieces.map((p) => p.key));
    if (sources.size !== 1) continue;
    const source = [...sources][0]!.slice(0, -'.weight'.length);
    add(source, { module, pieces: m.pieces.map((p) => ({ key: source, rows: p.rows })) });
  }
  return table;
}

function scalarOf(t: Tensor): number {
  const v = toFloat32(t)[0];
  if (v === undefined || !Number.isFinite(v)) throw new Error('alpha is not a finite scalar');
  return v;
}

/** Reads a LoRA file's key names and sorts its updates by the diffusers weight key they change. */
function planLora(lora: LoraSpec, source: WeightSource, cfg: FluxConfig, warn: (msg: string) => void): Map<string, LoraUpdate[]> {
  const table = moduleTable(cfg);
  const modules = new Map<string, { down?: string; up?: string; alpha?: string }>();
  const unknownSuffix: string[] = [];
  let textEncoderKeys = 0;
  for (const key of source.keys()) {
    let name = key;
    for (const p of PREFIXES) if (name.startsWith(p)) name = name.slice(p.length);
    if (TEXT_ENCODER.test(name)) {
      textEncoderKeys++;
      continue;
    }
    const hit = SUFFIXES.find(([re]) => re.test(name));
    if (!hit) {
      unknownSuffix.push(key);
      continue;
    }
    const module = name.replace(hit[0], '');
    const entry = modules.get(module) ?? {};
    entry[hit[1]] = key;
    modules.set(module, entry);
  }
  if (unknownSuffix.length) {
    throw new Error(`${lora.path}: unsupported LoRA tensors (only lora_A/lora_B, lora_down/lora_up and alpha are merged; LoKr, LoHa, DoRA and full diffs are not): ${unknownSuffix.slice(0, 5).join(', ')}${unknownSuffix.length > 5 ? ', ...' : ''}`);
  }
  if (textEncoderKeys) warn(`${lora.path}: ${textEncoderKeys} text-encoder LoRA tensors ignored (only the FLUX transformer part is merged)`);

  const plan = new Map<string, LoraUpdate[]>();
  const unmatched: string[] = [];
  for (const [module, e] of modules) {
    if (!e.down || !e.up) throw new Error(`${lora.path}: LoRA module '${module}' has ${e.down ? 'no up (lora_B)' : 'no down (lora_A)'} matrix`);
    const targets = table.get(module);
    if (!targets) {
      unmatched.push(module);
      continue;
    }
    const rank = source.shape(e.down)?.[0];
    if (!rank) throw new Error(`${lora.path}: tensor '${e.down}' is not a [rank, in] matrix`);
    const alpha = e.alpha ? scalarOf(source.get(e.alpha)) : rank;
    for (const t of targets) {
      const key = `${t.module}.weight`;
      const update: LoraUpdate = {
        file: lora.path,
        up: t.pieces.map((p) => ({ key: e.up!, rows: p.rows })),
        down: e.down,
        scale: lora.weight * (alpha / rank),
      };
      plan.set(key, [...(plan.get(key) ?? []), update]);
    }
  }
  if (unmatched.length) {
    if (!plan.size) throw new Error(`${lora.path}: no LoRA module matches a FLUX transformer layer (e.g. '${unmatched[0]}'); is this a FLUX LoRA?`);
    warn(`${lora.path}: ${unmatched.length} LoRA modules match no FLUX layer and are ignored (e.g. '${unmatched[0]}')`);
  }
  return plan;
}

/** out[o, :] += scale * sum_j up[o, j] * down[j, :] for up [out, r] and down [r, in]. */
function addLowRank(w: Float32Array, up: Float32Array, down: Float32Array, out: number, rank: number, inF: number, scale: number): void {
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

/** B for one target: the rows of lora_up its pieces select, stacked. */
function gatherUp(source: WeightSource, u: LoraUpdate, rank: number): { data: Float32Array; rows: number } {
  const parts = u.up.map((p) => {
    const full = toFloat32(source.get(p.key));
    const [start, end] = p.rows ?? [0, full.length / rank];
    return full.subarray(start * rank, end * rank);
  });
  const rows = parts.reduce((n, p) => n + p.length / rank, 0);
  const data = new Float32Array(rows * rank);
  let off = 0;
  for (const p of parts) {
    data.set(p, off);
    off += p.length;
  }
  return { data, rows };
}

export interface LoraMerge {
  /** The transformer with the LoRAs merged into the keys they target. */
  source: WeightSource;
  /** Diffusers weight keys that change. */
  targets: string[];
  close(): void;
}

/**
 * A view of the (diffusers-named) transformer `base` with every LoRA of `loras` merged at its weight.
 * Untargeted keys pass through untouched (same tensor, same dtype).
 */
export function mergeLoras(base: WeightSource, loras: readonly LoraSpec[], cfg: FluxConfig, warn: (msg: string) => void = () => {}): LoraMerge {
  const files = loras.map((l) => ({ spec: l, source: openWeights(l.path) }));
  const plan = new Map<string, { source: WeightSource; update: LoraUpdate }[]>();
  try {
    for (const f of files) {
      for (const [key, updates] of planLora(f.spec, f.source, cfg, warn)) {
        plan.set(key, [...(plan.get(key) ?? []), ...updates.map((update) => ({ source: f.source, update }))]);
      }
    }
  } catch (err) {
    files.forEach((f) => f.source.close?.());
    throw err;
  }
  const source: WeightSource = {
    keys: () => base.keys(),
    shape: (key) => base.shape(key),
    get: (key) => {
      const t = base.get(key);
      const updates = plan.get(key);
      if (!updates) return t;
      const [out, inF] = t.dims as [number, number];
      const w = t.dtype === 'float32' ? Float32Array.from(t.data as Float32Array) : toFloat32(t);
      for (const { source: src, update: u } of updates) {
        const downShape = src.shape(u.down)!;
        const rank = downShape[0]!;
        if (downShape.length !== 2 || downShape[1] !== inF) {
          throw new Error(`${u.file}: LoRA tensor '${u.down}' has shape [${downShape}] but '${key}' takes ${inF} inputs`);
        }
        const upShape = src.shape(u.up[0]!.key)!;
        if (upShape.length !== 2 || upShape[1] !== rank) {
          throw new Error(`${u.file}: LoRA tensor '${u.up[0]!.key}' has shape [${upShape}], expected [out, ${rank}] to match '${u.down}'`);
        }
        const up = gatherUp(src, u, rank);
        if (up.rows !== out) throw new Error(`${u.file}: LoRA tensor '${u.up[0]!.key}' gives ${up.rows} output rows for '${key}', which has ${out}`);
        addLowRank(w, up.data, toFloat32(src.get(u.down)), out, rank, inF, u.scale);
      }
      return { dtype: 'float32', dims: [out, inF], data: w };
    },
    close: () => base.close?.(),
  };
  return { source, targets: [...plan.keys()], close: () => files.forEach((f) => f.source.close?.()) };
}
