// GGUF checkpoints as the converter's parts.
// - FLUX: ComfyUI-GGUF's files hold the BFL key names (double_blocks.N.img_attn.qkv.weight, ...) with
//   general.architecture = "flux"; the BFL key map of keymaps.ts applies as for flux1-dev.safetensors.
// - T5: llama.cpp's encoder names (gguf-py tensor_mapping.py; ComfyUI-GGUF maps them back the same way):
//     token_embd -> shared, enc.blk.N.attn_{q,k,v,o} -> encoder.block.N.layer.0.SelfAttention.{q,k,v,o},
//     enc.blk.N.attn_rel_b -> ...SelfAttention.relative_attention_bias, enc.blk.N.attn_norm -> layer.0.layer_norm,
//     enc.blk.N.ffn_gate -> layer.1.DenseReluDense.wi_0, ffn_up -> wi_1 (wi without a gate), ffn_down -> wo,
//     enc.blk.N.ffn_norm -> layer.1.layer_norm, enc.output_norm -> encoder.final_layer_norm.
//   The config comes from the tensor shapes; the metadata adds what shapes cannot say (layer norm epsilon).
import { resolve } from 'node:path';
import { GgufFile } from '../weights/gguf.ts';
import { type T5Config, t5ConfigFromJson } from '../t5.ts';
import { type KeyMap, mappedSource, renamed } from './views.ts';
import { countBlocks } from './keymaps.ts';
import type { WeightSource } from '../weights/source.ts';
export { storesBlocks } from '../weights/source.ts';

/** general.architecture values each part accepts (absent: accepted, as sd.cpp-style files lack it). */
export const GGUF_ARCHITECTURES = { flux: ['flux'], t5: ['t5', 't5encoder'] } as const;

/** Refuses a GGUF whose general.architecture says it is another model. */
export function checkGgufArchitecture(file: GgufFile, part: keyof typeof GGUF_ARCHITECTURES): void {
  const arch = file.architecture;
  const ok: readonly string[] = GGUF_ARCHITECTURES[part];
  if (arch !== undefined && !ok.includes(arch)) {
    throw new Error(`${file.path}: a GGUF of architecture "${arch}", not ${ok.map((a) => `"${a}"`).join(' or ')} (is it the right file for --${part}?)`);
  }
}

/** Whether a key list is llama.cpp's T5 encoder. */
export const GGUF_T5_PROBE = 'enc.output_norm.weight';

/** Hugging Face T5 encoder keys -> llama.cpp GGUF keys. */
export function ggufT5KeyMap(numLayers: number, gated: boolean): KeyMap {
  const map: KeyMap = new Map();
  map.set('shared.weight', renamed('token_embd.weight'));
  map.set('encoder.final_layer_norm.weight', renamed('enc.output_norm.weight'));
  map.set('encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight', renamed('enc.blk.0.attn_rel_b.weight'));
  for (let i = 0; i < numLayers; i++) {
    const t = `encoder.block.${i}.layer`;
    const s = `enc.blk.${i}`;
    for (const p of ['q', 'k', 'v', 'o']) map.set(`${t}.0.SelfAttention.${p}.weight`, renamed(`${s}.attn_${p}.weight`));
    map.set(`${t}.0.layer_norm.weight`, renamed(`${s}.attn_norm.weight`));
    if (gated) {
      map.set(`${t}.1.DenseReluDense.wi_0.weight`, renamed(`${s}.ffn_gate.weight`));
      map.set(`${t}.1.DenseReluDense.wi_1.weight`, renamed(`${s}.ffn_up.weight`));
    } else {
      map.set(`${t}.1.DenseReluDense.wi.weight`, renamed(`${s}.ffn_up.weight`));
    }
    map.set(`${t}.1.DenseReluDense.wo.weight`, renamed(`${s}.ffn_down.weight`));
    map.set(`${t}.1.layer_norm.weight`, renamed(`${s}.ffn_norm.weight`));
  }
  return map;
}

/** A T5 config (transformers' config.json fields) read from a llama.cpp T5 GGUF. */
export function t5ConfigFromGguf(file: GgufFile): T5Config {
  const need = (key: string): number[] => {
    const s = file.shape(key);
    if (!s) throw new Error(`${file.path}: missing tensor '${key}', needed to read the T5 encoder's size`);
    return s;
  };
  const [vocab, dModel] = need('token_embd.weight') as [number, number];
  const [buckets, heads] = need('enc.blk.0.attn_rel_b.weight') as [number, number];
  const gated = file.shape('enc.blk.0.ffn_gate.weight') !== undefined;
  const arch = file.architecture ?? 't5';
  return t5ConfigFromJson({
    vocab_size: vocab,
    d_model: dModel,
    d_kv: need('enc.blk.0.attn_q.weight')[0]! / heads,
    d_ff: need('enc.blk.0.ffn_up.weight')[0],
    num_layers: countBlocks(file.keys(), 'enc.blk'),
    num_heads: heads,
    relative_attention_num_buckets: buckets,
    // Not in the GGUF metadata; every T5 (v1.0, v1.1, XXL) uses 128.
    relative_attention_max_distance: 128,
    layer_norm_epsilon: file.number(`${arch}.attention.layer_norm_epsilon`) ?? 1e-6,
    // llama.cpp's T5 graph: a gated FFN is T5 v1.1's gated-gelu (gelu_new), an ungated one v1.0's relu.
    feed_forward_proj: gated ? 'gated-gelu' : 'relu',
  });
}

/** A llama.cpp / ComfyUI-GGUF T5 encoder file as a Hugging Face-named part (layouts.ts's Part). */
export function openT5Gguf(path: string): { cfg: T5Config; weights: WeightSource; files: string[]; describe: string } {
  const file = new GgufFile(path);
  try {
    checkGgufArchitecture(file, 't5');
    if (!file.shape(GGUF_T5_PROBE)) throw new Error(`${path}: no T5 encoder in this GGUF (no tensor '${GGUF_T5_PROBE}')`);
    const cfg = t5ConfigFromGguf(file);
    return { cfg, weights: mappedSource(file, ggufT5KeyMap(cfg.numLayers, cfg.gated), path), files: [resolve(path)], describe: `T5 text encoder (GGUF, ${path})` };
  } catch (err) {
    file.close();
    throw err;
  }
}
