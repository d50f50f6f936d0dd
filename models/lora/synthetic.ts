// Seeded kohya-format LoRAs for a given architecture size: every FLUX Linear under its BFL name (fused qkv
// and linear1 whole, as community LoRAs carry them) and, optionally, every CLIP-L encoder Linear. For the
// tests and examples on the tiny set and for the bench; not for real styles.
import type { Tensor } from '../tensor.ts';
import type { FluxConfig } from '../flux.ts';
import type { ClipTextConfig } from '../clip.ts';
import { clipLoraTable, fluxLoraTable } from './keys.ts';
import { randomWeights } from '../tiny.ts';

/**
 * lora_unet_* (BFL module names) and lora_te1_* tensors of rank `rank`: down ~ N(0, 1/in), up ~ `amp` * N(0, 1/rank),
 * alpha = rank (so strength 1 adds B A as it is).
 */
export function syntheticKohyaLora(flux: FluxConfig, clip: ClipTextConfig | undefined, rank: number, seed: number, amp = 0.5): Map<string, Tensor> {
  const shapes: Record<string, number[]> = {};
  const add = (name: string, inF: number, upRows: number) => {
    shapes[`${name}.lora_down.weight`] = [rank, inF];
    shapes[`${name}.lora_up.weight`] = [upRows, rank];
  };
  for (const [name, targets] of fluxLoraTable(flux)) {
    // The BFL names: kohya spells them lora_unet_<bfl module, dots as underscores>.
    if (!/^lora_unet_(double_blocks|single_blocks|img_in|txt_in|time_in|vector_in|guidance_in|final_layer)/.test(name)) continue;
    add(name, targets[0]!.in, targets[0]!.upRows);
  }
  if (clip) {
    for (const [name, targets] of clipLoraTable(clip.numLayers, clip.hiddenSize, clip.intermediateSize)) {
      if (name.startsWith('lora_te1_')) add(name, targets[0]!.in, targets[0]!.upRows);
    }
  }
  const out = randomWeights(shapes, seed);
  for (const [key, t] of out) {
    if (key.endsWith('.lora_up.weight')) for (let i = 0; i < t.data.length; i++) (t.data as Float32Array)[i]! *= amp;
  }
  for (const key of Object.keys(shapes)) {
    if (key.endsWith('.lora_down.weight')) out.set(key.replace(/\.lora_down\.weight$/, '.alpha'), { dtype: 'float32', dims: [], data: Float32Array.of(rank) });
  }
  return out;
}
