// Style LoRAs merged into the weights at conversion time (`--lora FILE:WEIGHT`), as diffusers' fuse_lora does:
//   W' = W + w * (alpha / rank) * B A
// The key table (kohya, diffusers/PEFT, BFL dotted, XLabs; fused BFL modules split by rows) is the run-time
// LoRAs' own: models/lora/keys.ts. The merge happens when the builder reads a key.
import { openWeights } from '../weights/open.ts';
import type { WeightSource } from '../weights/source.ts';
import { toFloat32 } from '../tensor.ts';
import type { FluxConfig } from '../flux.ts';
import type { ClipTextConfig } from '../clip.ts';
import type { T5Config } from '../t5.ts';
import { type LoraComponent, type LoraInput, type LoraTable, type LoraUpdate, addLowRank, clipLoraTable, fluxLoraTable, joinTables, planLoras, t5LoraTable } from '../lora/keys.ts';

export interface LoraSpec {
  path: string;
  weight: number;
}

/** Parses "FILE:WEIGHT" (weight defaults to 1; the last colon splits, so Windows drive letters survive). */
export function parseLoraArg(arg: string): LoraSpec {
  const m = /^(.*):(-?\d*\.?\d+(?:e-?\d+)?)$/i.exec(arg);
  if (!m) return { path: arg, weight: 1 };
  return { path: m[1]!, weight: Number(m[2]) };
}

const TEXT_ENCODER = /^(lora_te\d?_|text_encoder(_2)?\.|te\d?\.)/;

/** A view of `base` with the updates of `component` added to the weights they target (others untouched). */
function mergedView(base: WeightSource, updates: readonly LoraUpdate[], component: LoraComponent): { source: WeightSource; targets: string[] } {
  const plan = new Map<string, LoraUpdate[]>();
  for (const u of updates) {
    if (u.target.component !== component) continue;
    const key = `${u.target.module}.weight`;
    plan.set(key, [...(plan.get(key) ?? []), u]);
  }
  const source: WeightSource = {
    keys: () => base.keys(),
    shape: (key) => base.shape(key),
    get: (key) => {
      const t = base.get(key);
      const mine = plan.get(key);
      if (!mine) return t;
      const [out, inF] = t.dims as [number, number];
      const { out: wantOut, in: wantIn } = mine[0]!.target;
      if (out !== wantOut || inF !== wantIn) throw new Error(`${mine[0]!.file}: '${key}' is [${t.dims}] in the checkpoint, the LoRA was planned for [${wantOut}, ${wantIn}]`);
      const w = t.dtype === 'float32' ? Float32Array.from(t.data as Float32Array) : toFloat32(t);
      for (const u of mine) addLowRank(w, u.up, u.down, out, u.rank, inF, u.scale);
      return { dtype: 'float32', dims: [out, inF], data: w };
    },
    close: () => base.close?.(),
  };
  return { source, targets: [...plan.keys()] };
}

export interface LoraMerge {
  /** The transformer with the LoRAs merged into the keys they target. */
  source: WeightSource;
  /** Diffusers weight keys that change. */
  targets: string[];
  /** A text encoder's checkpoint with the LoRAs' part for it merged (identity for an encoder not planned). */
  mergeText(component: 'clip' | 't5', base: WeightSource): { source: WeightSource; targets: string[] };
  close(): void;
}

/**
 * A view of the (diffusers-named) transformer `base` with every LoRA of `loras` merged at its weight; with the
 * text encoders' configs, their part is planned (and checked) too, for mergeText. Without them, text-encoder
 * tensors are ignored with a warning. Untargeted keys pass through untouched (same tensor, same dtype).
 */
export function mergeLoras(
  base: WeightSource, loras: readonly LoraSpec[], cfg: FluxConfig, warn: (msg: string) => void = () => {},
  text?: { clip: ClipTextConfig; t5: T5Config },
): LoraMerge {
  const files = loras.map((l) => ({ spec: l, source: openWeights(l.path) }));
  try {
    const tables: LoraTable[] = [fluxLoraTable(cfg)];
    if (text) {
      const { clip, t5 } = text;
      tables.push(clipLoraTable(clip.numLayers, clip.hiddenSize, clip.intermediateSize), t5LoraTable(t5.numLayers, t5.dModel, t5.numHeads * t5.dKv, t5.dFf, t5.gated));
    }
    const inputs: LoraInput[] = files.map((f) => {
      const w = f.spec.weight;
      if (text) return { path: f.spec.path, source: f.source, strength: { flux: w, clip: w, t5: w } };
      const keys = f.source.keys();
      const ignored = keys.filter((k) => TEXT_ENCODER.test(k));
      if (ignored.length) warn(`${f.spec.path}: ${ignored.length} text-encoder LoRA tensors ignored (only the FLUX transformer part is merged)`);
      const rest = keys.filter((k) => !TEXT_ENCODER.test(k));
      return { path: f.spec.path, source: { ...f.source, keys: () => rest, shape: (k) => f.source.shape(k), get: (k) => f.source.get(k) }, strength: { flux: w, clip: 0, t5: 0 } };
    });
    const { updates } = planLoras(inputs, joinTables(...tables), warn);
    const flux = mergedView(base, updates, 'flux');
    return { ...flux, mergeText: (component, b) => mergedView(b, updates, component), close: () => {} };
  } finally {
    files.forEach((f) => f.source.close?.());
  }
}
