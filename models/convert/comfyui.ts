// `--comfyui DIR`: the parts of a conversion found in a ComfyUI models folder, by ComfyUI's folder names:
//   flux   unet/ or diffusion_models/        (a FLUX transformer: safetensors, fp8 or GGUF)
//   clip   clip/ or text_encoders/           (CLIP-L: text_model.* keys)
//   t5     clip/ or text_encoders/           (T5 encoder: encoder.* keys, or llama.cpp's enc.* in a GGUF)
//   vae    vae/                              (the FLUX autoencoder, LDM or diffusers names)
//   siglip clip_vision/                      (SigLIP so400m vision weights, e.g. sigclip_vision_patch14_384.safetensors)
//   loras  loras/                            (--lora names resolve there)
// A part the user names (a file name or a path) is looked up there when it is not a path that exists; a part
// not named is taken when exactly one file in its folders fits it (its tensors say what it is), and otherwise
// the error lists the candidates. Only headers are read here.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { openWeights } from '../weights/open.ts';
import { findPrefix } from './views.ts';
import { FLUX_PROBE, LDM_VAE_PROBE } from './keymaps.ts';
import { GGUF_T5_PROBE } from './gguf-layouts.ts';
import { FULL_SIGLIP, siglipWeightShapes } from '../siglip.ts';

export type ComfyPart = 'flux' | 'clip' | 't5' | 'vae' | 'siglip';

export const COMFY_FOLDERS: Record<ComfyPart | 'loras', readonly string[]> = {
  flux: ['unet', 'diffusion_models'],
  clip: ['clip', 'text_encoders'],
  t5: ['clip', 'text_encoders'],
  vae: ['vae'],
  siglip: ['clip_vision'],
  loras: ['loras'],
};

const WEIGHT_FILE = /\.(safetensors|sft|gguf)$/i;

/** The weight files in a part's folders (recursively: ComfyUI users sort files into subfolders). */
function filesIn(dir: string, folders: readonly string[]): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const n of readdirSync(d).sort()) {
      const p = join(d, n);
      if (statSync(p).isDirectory()) walk(p);
      else if (WEIGHT_FILE.test(n)) out.push(p);
    }
  };
  for (const f of folders) if (existsSync(join(dir, f)) && statSync(join(dir, f)).isDirectory()) walk(join(dir, f));
  return out;
}

/** The SigLIP vision tensor that identifies the architecture, and so400m's shapes that identify the size. */
const SIGLIP_PROBE = 'vision_model.post_layernorm.weight';

/** Why a file does not fit a part (undefined: it fits), from its tensor names and shapes. */
export function misfit(path: string, part: ComfyPart): string | undefined {
  let src;
  try {
    src = openWeights(path);
  } catch (err) {
    return (err as Error).message;
  }
  try {
    const keys = src.keys();
    const has = (probe: string) => findPrefix(keys, probe) !== undefined;
    switch (part) {
      case 'flux': return has(FLUX_PROBE.bfl) || has(FLUX_PROBE.diffusers) ? undefined : 'no FLUX transformer tensors';
      case 'clip': return has('text_model.final_layer_norm.weight') ? undefined : 'no CLIP text encoder tensors';
      case 't5': return has('encoder.final_layer_norm.weight') || keys.includes(GGUF_T5_PROBE) ? undefined : 'no T5 encoder tensors';
      case 'vae': return has(LDM_VAE_PROBE) || has('decoder.conv_in.weight') ? undefined : 'no VAE tensors';
      case 'siglip': {
        const prefix = findPrefix(keys, SIGLIP_PROBE);
        if (prefix === undefined) return 'no SigLIP vision tensors';
        // The so400m vision tower: every tensor charflow reads, with its shape (any other SigLIP is refused).
        for (const [k, dims] of Object.entries(siglipWeightShapes(FULL_SIGLIP))) {
          const s = src.shape(`${prefix}${k}`);
          if (!s || s.length !== dims.length || s.some((d, i) => d !== dims[i])) {
            return `not the SigLIP so400m-patch14-384 vision tower ('${k}' is ${s ? `[${s}]` : 'missing'}, so400m has [${dims}])`;
          }
        }
        return undefined;
      }
    }
  } finally {
    src.close?.();
  }
}

/** A named file: the path itself when it exists, else that name inside the part's folders. */
function named(dir: string, part: ComfyPart | 'loras', name: string): string {
  if (existsSync(name)) return name;
  const hits = filesIn(dir, COMFY_FOLDERS[part]).filter((p) => p.endsWith(`/${name}`) || basename(p) === name);
  if (hits.length === 1) return hits[0]!;
  const where = COMFY_FOLDERS[part].map((f) => `${f}/`).join(' or ');
  if (hits.length > 1) throw new Error(`--${part} ${name}: several files of that name under ${where} of ${dir}: ${hits.join(', ')}`);
  throw new Error(`--${part} ${name}: no such file, nor under ${where} of ${dir}`);
}

/** The one file of the part's folders that fits it, or an error listing the candidates. */
function pick(dir: string, part: ComfyPart): string {
  const where = COMFY_FOLDERS[part].map((f) => `${f}/`).join(' or ');
  const files = filesIn(dir, COMFY_FOLDERS[part]);
  const fits = files.filter((p) => misfit(p, part) === undefined);
  if (fits.length === 1) return fits[0]!;
  if (fits.length > 1) throw new Error(`--comfyui ${dir}: ${fits.length} files under ${where} fit --${part}; name one with --${part}: ${fits.map((p) => basename(p)).join(', ')}`);
  const seen = files.map((p) => `${basename(p)} (${misfit(p, part)})`);
  throw new Error(`--comfyui ${dir}: no file under ${where} fits --${part}${seen.length ? `; looked at ${seen.join(', ')}` : ''}`);
}

export interface ComfyResolved {
  flux: string;
  clip: string;
  t5: string;
  vae: string;
  siglip?: string;
  /** --lora names resolved to paths. */
  loras: string[];
}

/**
 * Resolves the parts in a ComfyUI models folder. `given` holds what the user named (names or paths);
 * siglip is resolved only when asked for (`wantSiglip`) or named, since it may come from elsewhere.
 */
export function resolveComfyui(dir: string, given: Partial<Record<ComfyPart, string>> & { loras?: readonly string[] }, wantSiglip: boolean): ComfyResolved {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new Error(`--comfyui ${dir}: no such folder`);
  const get = (part: ComfyPart): string => {
    const name = given[part];
    const path = name !== undefined ? named(dir, part, name) : pick(dir, part);
    const why = misfit(path, part);
    if (why) throw new Error(`--${part} ${path}: ${why}`);
    return path;
  };
  return {
    flux: get('flux'),
    clip: get('clip'),
    t5: get('t5'),
    vae: get('vae'),
    siglip: wantSiglip || given.siglip !== undefined ? get('siglip') : undefined,
    loras: (given.loras ?? []).map((l) => named(dir, 'loras', l)),
  };
}
