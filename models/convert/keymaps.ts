// Key maps from other checkpoint layouts to the names the architecture files read:
// - the original Black Forest Labs FLUX layout (flux1-dev.safetensors: double_blocks.N.img_attn.qkv, ...),
//   with its fused q/k/v (and the single blocks' fused q/k/v/mlp) split and the final AdaLN halves swapped;
// - the original (LDM) autoencoder layout of ae.safetensors (decoder.mid.block_1, decoder.up.N.block.M, ...).
import type { FluxConfig } from '../flux.ts';
import type { VaeConfig } from '../vae.ts';
import { type KeyMap, type Mapping, renamed } from './views.ts';

/** Linear weight + bias under a new module name. */
function linearRename(map: KeyMap, target: string, source: string): void {
  map.set(`${target}.weight`, renamed(`${source}.weight`));
  map.set(`${target}.bias`, renamed(`${source}.bias`));
}

/** A fused linear whose output rows are the targets' outputs side by side. */
function linearSplit(map: KeyMap, targets: readonly string[], source: string, sizes: readonly number[]): void {
  let start = 0;
  targets.forEach((t, i) => {
    const rows = [start, start + sizes[i]!] as const;
    map.set(`${t}.weight`, { pieces: [{ key: `${source}.weight`, rows }] });
    map.set(`${t}.bias`, { pieces: [{ key: `${source}.bias`, rows }] });
    start += sizes[i]!;
  });
}

/** diffusers FluxTransformer2DModel keys -> BFL flux keys, for a given size. */
export function bflFluxKeyMap(cfg: FluxConfig): KeyMap {
  const C = cfg.numHeads * cfg.headDim;
  const M = 4 * C;
  const map: KeyMap = new Map();
  linearRename(map, 'x_embedder', 'img_in');
  linearRename(map, 'context_embedder', 'txt_in');
  const embedders: [string, string][] = [['timestep_embedder', 'time_in'], ['text_embedder', 'vector_in']];
  if (cfg.guidanceEmbeds) embedders.push(['guidance_embedder', 'guidance_in']);
  for (const [d, b] of embedders) {
    linearRename(map, `time_text_embed.${d}.linear_1`, `${b}.in_layer`);
    linearRename(map, `time_text_embed.${d}.linear_2`, `${b}.out_layer`);
  }
  for (let i = 0; i < cfg.numLayers; i++) {
    const t = `transformer_blocks.${i}`;
    const s = `double_blocks.${i}`;
    linearRename(map, `${t}.norm1.linear`, `${s}.img_mod.lin`);
    linearRename(map, `${t}.norm1_context.linear`, `${s}.txt_mod.lin`);
    linearSplit(map, [`${t}.attn.to_q`, `${t}.attn.to_k`, `${t}.attn.to_v`], `${s}.img_attn.qkv`, [C, C, C]);
    linearSplit(map, [`${t}.attn.add_q_proj`, `${t}.attn.add_k_proj`, `${t}.attn.add_v_proj`], `${s}.txt_attn.qkv`, [C, C, C]);
    map.set(`${t}.attn.norm_q.weight`, renamed(`${s}.img_attn.norm.query_norm.scale`));
    map.set(`${t}.attn.norm_k.weight`, renamed(`${s}.img_attn.norm.key_norm.scale`));
    map.set(`${t}.attn.norm_added_q.weight`, renamed(`${s}.txt_attn.norm.query_norm.scale`));
    map.set(`${t}.attn.norm_added_k.weight`, renamed(`${s}.txt_attn.norm.key_norm.scale`));
    linearRename(map, `${t}.attn.to_out.0`, `${s}.img_attn.proj`);
    linearRename(map, `${t}.attn.to_add_out`, `${s}.txt_attn.proj`);
    linearRename(map, `${t}.ff.net.0.proj`, `${s}.img_mlp.0`);
    linearRename(map, `${t}.ff.net.2`, `${s}.img_mlp.2`);
    linearRename(map, `${t}.ff_context.net.0.proj`, `${s}.txt_mlp.0`);
    linearRename(map, `${t}.ff_context.net.2`, `${s}.txt_mlp.2`);
  }
  for (let i = 0; i < cfg.numSingleLayers; i++) {
    const t = `single_transformer_blocks.${i}`;
    const s = `single_blocks.${i}`;
    linearSplit(map, [`${t}.attn.to_q`, `${t}.attn.to_k`, `${t}.attn.to_v`, `${t}.proj_mlp`], `${s}.linear1`, [C, C, C, M]);
    linearRename(map, `${t}.proj_out`, `${s}.linear2`);
    map.set(`${t}.attn.norm_q.weight`, renamed(`${s}.norm.query_norm.scale`));
    map.set(`${t}.attn.norm_k.weight`, renamed(`${s}.norm.key_norm.scale`));
    linearRename(map, `${t}.norm.linear`, `${s}.modulation.lin`);
  }
  linearRename(map, 'proj_out', 'final_layer.linear');
  // BFL's LastLayer chunks its modulation as (shift, scale); diffusers' AdaLayerNormContinuous as (scale, shift).
  const ada = 'final_layer.adaLN_modulation.1';
  for (const suffix of ['weight', 'bias']) {
    map.set(`norm_out.linear.${suffix}`, { pieces: [{ key: `${ada}.${suffix}`, rows: [C, 2 * C] }, { key: `${ada}.${suffix}`, rows: [0, C] }] });
  }
  return map;
}

/** Keys whose presence identifies each transformer layout. */
export const FLUX_PROBE = { diffusers: 'transformer_blocks.0.attn.to_q.weight', bfl: 'double_blocks.0.img_attn.qkv.weight' } as const;

/** Number of blocks `prefix.N.` in a key list. */
export function countBlocks(keys: readonly string[], prefix: string): number {
  let n = 0;
  const re = new RegExp(`^${prefix.replace(/\./g, '\\.')}\\.(\\d+)\\.`);
  for (const k of keys) {
    const m = re.exec(k);
    if (m) n = Math.max(n, Number(m[1]) + 1);
  }
  return n;
}

/**
 * The diffusers config.json of a transformer read from its weights (a single-file checkpoint has none).
 * FLUX's head dim is 128 in every released model.
 */
export function fluxConfigJsonFromShapes(shape: (key: string) => number[] | undefined, keys: readonly string[], layout: 'diffusers' | 'bfl'): Record<string, unknown> {
  const bfl = layout === 'bfl';
  const need = (key: string): number[] => {
    const s = shape(key);
    if (!s) throw new Error(`missing tensor '${key}', needed to read the transformer's size`);
    return s;
  };
  const [C, inChannels] = need(bfl ? 'img_in.weight' : 'x_embedder.weight') as [number, number];
  const headDim = 128;
  return {
    patch_size: 1,
    in_channels: inChannels,
    out_channels: need(bfl ? 'final_layer.linear.weight' : 'proj_out.weight')[0],
    num_layers: countBlocks(keys, bfl ? 'double_blocks' : 'transformer_blocks'),
    num_single_layers: countBlocks(keys, bfl ? 'single_blocks' : 'single_transformer_blocks'),
    attention_head_dim: headDim,
    num_attention_heads: C / headDim,
    joint_attention_dim: need(bfl ? 'txt_in.weight' : 'context_embedder.weight')[1],
    pooled_projection_dim: need(bfl ? 'vector_in.in_layer.weight' : 'time_text_embed.text_embedder.linear_1.weight')[1],
    guidance_embeds: shape(bfl ? 'guidance_in.in_layer.weight' : 'time_text_embed.guidance_embedder.linear_1.weight') !== undefined,
    axes_dims_rope: [16, 56, 56],
  };
}

// ---------------------------------------------------------------------------------------------
// Autoencoder: LDM names (BFL ae.safetensors, ComfyUI 'vae.' sections) -> diffusers AutoencoderKL decoder

/** Key whose presence identifies the LDM autoencoder layout. */
export const LDM_VAE_PROBE = 'decoder.mid.block_1.conv1.weight';

function resnetRename(map: KeyMap, target: string, source: string): void {
  for (const part of ['norm1', 'conv1', 'norm2', 'conv2']) {
    for (const s of ['weight', 'bias']) map.set(`${target}.${part}.${s}`, renamed(`${source}.${part}.${s}`));
  }
  for (const s of ['weight', 'bias']) map.set(`${target}.conv_shortcut.${s}`, renamed(`${source}.nin_shortcut.${s}`));
}

/** diffusers AutoencoderKL keys -> LDM keys (decoder and encoder). Attention projections are 1x1 convs there, linears here. */
export function ldmVaeKeyMap(cfg: VaeConfig): KeyMap {
  const map: KeyMap = new Map();
  const both = (t: string, s: string) => {
    for (const x of ['weight', 'bias']) map.set(`${t}.${x}`, renamed(`${s}.${x}`));
  };
  both('decoder.conv_in', 'decoder.conv_in');
  resnetRename(map, 'decoder.mid_block.resnets.0', 'decoder.mid.block_1');
  resnetRename(map, 'decoder.mid_block.resnets.1', 'decoder.mid.block_2');
  const attn = 'decoder.mid_block.attentions.0';
  both(`${attn}.group_norm`, 'decoder.mid.attn_1.norm');
  const toLinear: Mapping['reshape'] = (dims) => dims.slice(0, 2);
  for (const [t, s] of [['to_q', 'q'], ['to_k', 'k'], ['to_v', 'v'], ['to_out.0', 'proj_out']] as const) {
    map.set(`${attn}.${t}.weight`, { pieces: [{ key: `decoder.mid.attn_1.${s}.weight` }], reshape: toLinear });
    map.set(`${attn}.${t}.bias`, renamed(`decoder.mid.attn_1.${s}.bias`));
  }
  const levels = cfg.blockOutChannels.length;
  for (let j = 0; j < levels; j++) {
    const ldm = levels - 1 - j; // LDM numbers up blocks from the full-resolution end
    for (let r = 0; r <= cfg.layersPerBlock; r++) resnetRename(map, `decoder.up_blocks.${j}.resnets.${r}`, `decoder.up.${ldm}.block.${r}`);
    both(`decoder.up_blocks.${j}.upsamplers.0.conv`, `decoder.up.${ldm}.upsample.conv`);
  }
  both('decoder.conv_norm_out', 'decoder.norm_out');
  both('decoder.conv_out', 'decoder.conv_out');
  both('post_quant_conv', 'post_quant_conv');
  // The encoder: LDM numbers down blocks from the full-resolution end, as diffusers does.
  both('encoder.conv_in', 'encoder.conv_in');
  for (let j = 0; j < levels; j++) {
    for (let r = 0; r < cfg.layersPerBlock; r++) resnetRename(map, `encoder.down_blocks.${j}.resnets.${r}`, `encoder.down.${j}.block.${r}`);
    both(`encoder.down_blocks.${j}.downsamplers.0.conv`, `encoder.down.${j}.downsample.conv`);
  }
  resnetRename(map, 'encoder.mid_block.resnets.0', 'encoder.mid.block_1');
  resnetRename(map, 'encoder.mid_block.resnets.1', 'encoder.mid.block_2');
  const encAttn = 'encoder.mid_block.attentions.0';
  both(`${encAttn}.group_norm`, 'encoder.mid.attn_1.norm');
  for (const [t, s] of [['to_q', 'q'], ['to_k', 'k'], ['to_v', 'v'], ['to_out.0', 'proj_out']] as const) {
    map.set(`${encAttn}.${t}.weight`, { pieces: [{ key: `encoder.mid.attn_1.${s}.weight` }], reshape: toLinear });
    map.set(`${encAttn}.${t}.bias`, renamed(`encoder.mid.attn_1.${s}.bias`));
  }
  both('encoder.conv_norm_out', 'encoder.norm_out');
  both('encoder.conv_out', 'encoder.conv_out');
  both('quant_conv', 'quant_conv');
  return map;
}
