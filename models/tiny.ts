// The tiny model set: every architecture at a small size with seeded random weights, so tests and
// the demo run the whole pipeline in seconds with no download. Same code path as real checkpoints:
// only the configs and the weight source differ. The weights are random: the images are noise.
import { siglipConfigFromJson } from './siglip.ts';
import { siglipWeightShapes } from './siglip.ts';
import { dinov2ConfigFromJson, dinov2WeightShapes } from './dinov2.ts';
import { adapterConfigFromJson, adapterWeightShapes } from './adapter.ts';
import { fluxConfigFromJson, fluxWeightShapes, ipAdapterWeightShapes } from './flux.ts';
import { vaeConfigFromJson, vaeEncoderWeightShapes, vaeWeightShapes } from './vae.ts';
import { t5ConfigFromJson, t5WeightShapes } from './t5.ts';
import { clipConfigFromJson, clipWeightShapes } from './clip.ts';
import { tinyTokenizerJson } from './tokenizers.ts';
import { memorySource } from './weights/source.ts';
import { type Tensor, numel } from './tensor.ts';
import { type ModelSetManifest, type ModelSetSpec, type WriteProgress, writeModelSet } from './modelset.ts';
import type { ComponentName } from './modelset.ts';
import { type WeightFormat, resolveFormats, specWithFormats } from './quant/formats.ts';

/** Text vocabulary of the tiny encoders. */
const TINY_VOCAB = 100;

// Deep and narrow encoders keep the real token counts (729 at 384 px) and hidden-state indices.
export const TINY_SIGLIP = siglipConfigFromJson({
  hidden_size: 16, intermediate_size: 40, num_hidden_layers: 27, num_attention_heads: 2, num_channels: 3,
  image_size: 384, patch_size: 14, hidden_act: 'gelu_pytorch_tanh', layer_norm_eps: 1e-6,
});
export const TINY_DINOV2 = dinov2ConfigFromJson({
  hidden_size: 24, num_hidden_layers: 30, num_attention_heads: 2, mlp_ratio: 4, hidden_act: 'gelu', layer_norm_eps: 1e-6,
  image_size: 518, patch_size: 14, num_channels: 3, qkv_bias: true, layerscale_value: 1.0, use_swiglu_ffn: true,
});
export const TINY_ADAPTER = adapterConfigFromJson({
  inner_dim: 40, num_attention_heads: 4, attention_head_dim: 10, cross_attention_dim: 40, num_layers: 2, dim: 32, depth: 2,
  dim_head: 16, heads: 2, num_queries: 8, embedding_dim: 40, output_dim: 32, ff_mult: 4, timestep_in_dim: 320,
  timestep_flip_sin_to_cos: true, timestep_freq_shift: 0,
});
export const TINY_FLUX = fluxConfigFromJson({
  patch_size: 1, in_channels: 64, num_layers: 2, num_single_layers: 2, attention_head_dim: 128, num_attention_heads: 2,
  joint_attention_dim: 32, pooled_projection_dim: 32, guidance_embeds: true, axes_dims_rope: [16, 56, 56],
});
export const TINY_VAE = vaeConfigFromJson({
  in_channels: 3, out_channels: 3, latent_channels: 16, block_out_channels: [16, 16, 32, 32], layers_per_block: 1,
  act_fn: 'silu', norm_num_groups: 8, scaling_factor: 0.3611, shift_factor: 0.1159, use_quant_conv: false,
  use_post_quant_conv: false, mid_block_add_attention: true,
  up_block_types: ['UpDecoderBlock2D', 'UpDecoderBlock2D', 'UpDecoderBlock2D', 'UpDecoderBlock2D'],
});
export const TINY_T5 = t5ConfigFromJson({
  vocab_size: TINY_VOCAB, d_model: 32, d_kv: 8, d_ff: 48, num_layers: 2, num_heads: 4, relative_attention_num_buckets: 32,
  relative_attention_max_distance: 128, layer_norm_epsilon: 1e-6, feed_forward_proj: 'gated-gelu',
});
export const TINY_CLIP = clipConfigFromJson({
  vocab_size: TINY_VOCAB, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4,
  max_position_embeddings: 77, hidden_act: 'quick_gelu', layer_norm_eps: 1e-5, bos_token_id: 0, eos_token_id: 2, pad_token_id: 1,
});

/** A small deterministic PRNG (mulberry32) with Box-Muller normals. */
function normalStream(seed: number): () => number {
  let a = seed >>> 0;
  const uniform = (): number => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) + 0.5) / 4294967296;
  };
  return () => Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());
}

function keySeed(seed: number, key: string): number {
  let h = 2166136261 ^ seed;
  for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key.charCodeAt(i), 16777619);
  return h >>> 0;
}

/**
 * Seeded weights for a shape table, scaled so activations stay O(1): matrices ~ N(0, 1/fan_in),
 * norm scales ~ 1 + 0.1 N, biases ~ 0.1 N, embeddings ~ 0.5 N. Each key has its own stream, so
 * a tensor's values do not depend on which other keys exist.
 */
export function randomWeights(shapes: Record<string, readonly number[]>, seed: number): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  for (const [key, dims] of Object.entries(shapes)) {
    const next = normalStream(keySeed(seed, key));
    const n = numel(dims);
    const data = new Float32Array(n);
    const isNormScale = dims.length === 1 && !key.endsWith('.bias') && /norm|layer_scale|\.scale$|lambda1$/.test(key);
    const isEmbedding = /(embed|shared\.weight|latents|cls_token|mask_token|relative_attention_bias)/.test(key) && !key.endsWith('.bias') && !/embedder\.linear|embedding\.linear/.test(key);
    let scale: number;
    let offset = 0;
    if (isNormScale) {
      scale = 0.1;
      offset = 1;
    } else if (dims.length === 1) {
      scale = 0.1;
    } else if (isEmbedding) {
      scale = 0.5;
    } else {
      scale = 1 / Math.sqrt(numel(dims.slice(1)));
    }
    for (let i = 0; i < n; i++) data[i] = offset + scale * next();
    out.set(key, { dtype: 'float32', dims: [...dims], data });
  }
  return out;
}

export const TINY_SET_NAME = 'tiny';

/** The whole tiny set as a spec for writeModelSet. */
export function tinySpec(seed = 0): ModelSetSpec {
  const src = (shapes: Record<string, readonly number[]>, salt: number) => memorySource(randomWeights(shapes, seed * 1000 + salt));
  const t5Tok = JSON.stringify(tinyTokenizerJson('t5', TINY_VOCAB));
  const clipTok = JSON.stringify(tinyTokenizerJson('clip', TINY_VOCAB));
  return {
    name: TINY_SET_NAME,
    dtype: 'float32',
    siglip: { cfg: TINY_SIGLIP, weights: src(siglipWeightShapes(TINY_SIGLIP, { head: true }), 1), shallowLayers: [7, 13, 26] },
    dinov2: { cfg: TINY_DINOV2, weights: src(dinov2WeightShapes(TINY_DINOV2), 2), shallowLayers: [9, 19, 29] },
    adapter: { cfg: TINY_ADAPTER, weights: src(adapterWeightShapes(TINY_ADAPTER), 3) },
    flux: {
      cfg: TINY_FLUX,
      weights: src(fluxWeightShapes(TINY_FLUX), 4),
      ip: src(ipAdapterWeightShapes(TINY_FLUX, TINY_ADAPTER.outputDim), 5),
    },
    // Decoder and encoder keys, as a real AutoencoderKL checkpoint holds both.
    vae: { cfg: TINY_VAE, weights: src({ ...vaeWeightShapes(TINY_VAE), ...vaeEncoderWeightShapes(TINY_VAE) }, 6) },
    t5: { cfg: TINY_T5, weights: src(t5WeightShapes(TINY_T5), 7), seqLen: 512, tokenizer: t5Tok, padId: 0, eosId: 1 },
    clip: {
      cfg: TINY_CLIP, weights: src(clipWeightShapes(TINY_CLIP), 8), seqLen: 77, tokenizer: clipTok,
      bosId: TINY_VOCAB - 2, eosId: TINY_VOCAB - 1, padId: TINY_VOCAB - 1,
    },
  };
}

/** The tiny set in a weight format: 'tiny' (fp32) or 'tiny-int8', 'tiny-int4', 'tiny-fp16'. */
export function tinySetName(weights: WeightFormat = 'fp32'): string {
  return weights === 'fp32' ? TINY_SET_NAME : `${TINY_SET_NAME}-${weights}`;
}

export interface TinyWriteOptions {
  /** Weight format of every component (the VAE stays float32); default fp32. */
  weights?: WeightFormat;
  block?: number;
}

export async function writeTinyModelSet(dir: string, onProgress?: WriteProgress, opts: TinyWriteOptions = {}): Promise<ModelSetManifest> {
  const spec = tinySpec();
  if (!opts.weights || opts.weights === 'fp32') return writeModelSet(spec, dir, onProgress);
  const formats = resolveFormats(TINY_COMPONENTS, { base: opts.weights, fp32: ['vae', 'vae_encoder'], block: opts.block });
  return writeModelSet({ ...specWithFormats(spec, formats), name: tinySetName(opts.weights) }, dir, onProgress);
}

const TINY_COMPONENTS: readonly ComponentName[] = ['siglip', 'dinov2', 'adapter_static', 'adapter_time', 'flux', 'vae', 'vae_encoder', 't5', 'clip'];
