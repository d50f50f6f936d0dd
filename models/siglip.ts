// SigLIP vision tower (transformers SiglipVisionModel, without the attention-pooling head), as used by
// InstantCharacter: last_hidden_state (after post_layernorm) is the deep feature, hidden_states[7,13,26]
// (before any final norm) are the shallow ones. Pre-LN ViT: patch conv + learned positions, no CLS token.
import type { Value } from './onnx/graph.ts';
import { type HfActivation, type Module, layerNorm, param, parseActivation, reshape, transpose } from './layers.ts';
import { clipLayer, clipLayerShapes } from './clip_encoder.ts';
import { takeWeight } from './weights/source.ts';
import { toFloat32 } from './tensor.ts';
import { resizeBicubicHWC } from './bicubic.ts';


export interface SiglipConfig {
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numChannels: number;
  /** The training resolution: position embeddings cover (imageSize / patchSize)^2 patches. */
  imageSize: number;
  patchSize: number;
  layerNormEps: number;
  hiddenAct: HfActivation;
}

/** google/siglip-so400m-patch14-384, vision tower. */
export const FULL_SIGLIP: SiglipConfig = {
  hiddenSize: 1152,
  intermediateSize: 4304,
  numLayers: 27,
  numHeads: 16,
  numChannels: 3,
  imageSize: 384,
  patchSize: 14,
  layerNormEps: 1e-6,
  hiddenAct: 'gelu_pytorch_tanh',
};

const PREFIX = 'vision_model';

function numberField(json: Record<string, unknown>, key: string, fallback: number): number {
  const v = json[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`siglip config: ${key} must be a number, got ${JSON.stringify(v)}`);
  return v;
}

/**
 * Parses a transformers config.json: either a bare SiglipVisionConfig or a full SiglipConfig (as in
 * google/siglip-so400m-patch14-384), whose vision part sits under `vision_config`. Missing fields take
 * transformers' SiglipVisionConfig defaults, as from_pretrained would.
 */
export function siglipConfigFromJson(json: Record<string, unknown>): SiglipConfig {
  const nested = json['vision_config'];
  const full = json['model_type'] === 'siglip' || 'text_config' in json || nested !== undefined;
  const v = (full ? nested ?? {} : json) as Record<string, unknown>;
  const act = v['hidden_act'] ?? 'gelu_pytorch_tanh';
  return {
    hiddenSize: numberField(v, 'hidden_size', 768),
    intermediateSize: numberField(v, 'intermediate_size', 3072),
    numLayers: numberField(v, 'num_hidden_layers', 12),
    numHeads: numberField(v, 'num_attention_heads', 12),
    numChannels: numberField(v, 'num_channels', 3),
    imageSize: numberField(v, 'image_size', 224),
    patchSize: numberField(v, 'patch_size', 16),
    layerNormEps: numberField(v, 'layer_norm_eps', 1e-6),
    hiddenAct: parseActivation('siglip', act),
  };
}

const gridOf = (cfg: SiglipConfig, imageSize: number) => Math.floor(imageSize / cfg.patchSize);

/** Every checkpoint key the builder reads (the pooling head `vision_model.head.*` is not). */
export function siglipWeightShapes(cfg: SiglipConfig): Record<string, number[]> {
  const C = cfg.hiddenSize;
  const F = cfg.intermediateSize;
  const P = cfg.patchSize;
  const positions = gridOf(cfg, cfg.imageSize) ** 2;
  const shapes: Record<string, number[]> = {
    [`${PREFIX}.embeddings.patch_embedding.weight`]: [C, cfg.numChannels, P, P],
    [`${PREFIX}.embeddings.patch_embedding.bias`]: [C],
    [`${PREFIX}.embeddings.position_embedding.weight`]: [positions, C],
  };
  for (let i = 0; i < cfg.numLayers; i++) Object.assign(shapes, clipLayerShapes(`${PREFIX}.encoder.layers.${i}`, C, F));
  shapes[`${PREFIX}.post_layernorm.weight`] = [C];
  shapes[`${PREFIX}.post_layernorm.bias`] = [C];
  return shapes;
}

export interface SiglipOptions {
  /** HF output_hidden_states indices to expose as `hidden_states.<i>` (0 = embeddings, i = after layer i). */
  hiddenStates?: readonly number[];
  /** Input resolution; default cfg.imageSize. Another size resizes the position grid bicubically (HF interpolate_pos_encoding). */
  imageSize?: number;
}

/** Learned positions for a grid x grid input, [grid*grid, C]; resized from the trained grid when they differ. */
function positionEmbedding(m: Module, cfg: SiglipConfig, grid: number): Value {
  const key = `${PREFIX}.embeddings.position_embedding.weight`;
  const trained = gridOf(cfg, cfg.imageSize);
  if (grid === trained) return param(m, key, [trained * trained, cfg.hiddenSize]);
  const table = toFloat32(takeWeight(m.w, key, [trained * trained, cfg.hiddenSize]));
  const resized = resizeBicubicHWC(table, trained, trained, cfg.hiddenSize, grid, grid);
  return m.g.weight(`${key}.resized_${grid}x${grid}`, { dtype: 'float32', dims: [grid * grid, cfg.hiddenSize], data: resized });
}

/** Patch conv (stride = kernel = patch) + positions: [B, 3, S, S] -> [B, N, C]. */
function embeddings(m: Module, pixels: Value, cfg: SiglipConfig, grid: number): Value {
  const { g } = m;
  const C = cfg.hiddenSize;
  const P = cfg.patchSize;
  const p = `${PREFIX}.embeddings.patch_embedding`;
  const patches = g.node('Conv', [pixels, param(m, `${p}.weight`, [C, cfg.numChannels, P, P]), param(m, `${p}.bias`, [C])], {
    kernel_shape: [P, P], strides: [P, P],
  }); // [B, C, grid, grid]
  const tokens = transpose(g, reshape(g, patches, [0, C, -1]), [0, 2, 1]); // [B, N, C]
  return g.node('Add', [tokens, positionEmbedding(m, cfg, grid)]); // [B, N, C]
}

/**
 * Graph input `pixel_values` [B, 3, S, S] (normalised pixels, S = opts.imageSize ?? cfg.imageSize);
 * outputs `last_hidden_state` [B, N, C] and `hidden_states.<i>` [B, N, C] for each requested i.
 */
export function buildSiglip(m: Module, cfg: SiglipConfig, opts: SiglipOptions = {}): void {
  const { g } = m;
  const S = opts.imageSize ?? cfg.imageSize;
  const grid = gridOf(cfg, S);
  const C = cfg.hiddenSize;
  const wanted = new Set(opts.hiddenStates ?? []);
  for (const i of wanted) {
    if (!Number.isInteger(i) || i < 0 || i > cfg.numLayers) throw new Error(`siglip: hidden state ${i} is outside 0..${cfg.numLayers}`);
  }
  const outDims = ['B', grid * grid, C];
  const pixels = g.input('pixel_values', g.dtype, ['B', cfg.numChannels, S, S]);
  const dims = { hidden: C, intermediate: cfg.intermediateSize, heads: cfg.numHeads, eps: cfg.layerNormEps, act: cfg.hiddenAct };
  let x = embeddings(m, pixels, cfg, grid); // [B, N, C]
  if (wanted.has(0)) g.output(x, 'hidden_states.0', g.dtype, outDims);
  for (let i = 0; i < cfg.numLayers; i++) {
    x = clipLayer(m, x, `${PREFIX}.encoder.layers.${i}`, dims); // [B, N, C]
    if (wanted.has(i + 1)) g.output(x, `hidden_states.${i + 1}`, g.dtype, outDims);
  }
  const last = layerNorm(m, x, `${PREFIX}.post_layernorm`, C, cfg.layerNormEps); // [B, N, C]
  g.output(last, 'last_hidden_state', g.dtype, outDims);
}
