// SigLIP vision tower (transformers SiglipVisionModel), as used by InstantCharacter: last_hidden_state
// (after post_layernorm) is the deep feature, hidden_states[7,13,26] (before any final norm) are the
// shallow ones. Pre-LN ViT: patch conv + learned positions, no CLS token. The attention-pooling head
// (vision_model.head.*, pooler_output) is built when asked: Identity Score's SigLIP-I embedding.
import type { Value } from './onnx/graph.ts';
import {
  type HfActivation, type Module, activation, layerNorm, linear, multiHeadAttention, param, parseActivation, reshape, transpose,
} from './layers.ts';
import { clipLayer, clipLayerShapes } from './clip_encoder.ts';
import { type WeightSource, takeWeight } from './weights/source.ts';
import { f32, toFloat32 } from './tensor.ts';
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

const HEAD = `${PREFIX}.head`;

/** The attention-pooling head's keys (SiglipMultiheadAttentionPoolingHead). */
export function siglipHeadShapes(cfg: SiglipConfig): Record<string, number[]> {
  const C = cfg.hiddenSize;
  const F = cfg.intermediateSize;
  return {
    [`${HEAD}.probe`]: [1, 1, C],
    [`${HEAD}.attention.in_proj_weight`]: [3 * C, C],
    [`${HEAD}.attention.in_proj_bias`]: [3 * C],
    [`${HEAD}.attention.out_proj.weight`]: [C, C],
    [`${HEAD}.attention.out_proj.bias`]: [C],
    [`${HEAD}.layernorm.weight`]: [C],
    [`${HEAD}.layernorm.bias`]: [C],
    [`${HEAD}.mlp.fc1.weight`]: [F, C],
    [`${HEAD}.mlp.fc1.bias`]: [F],
    [`${HEAD}.mlp.fc2.weight`]: [C, F],
    [`${HEAD}.mlp.fc2.bias`]: [C],
  };
}

/** Whether a checkpoint has the pooling head. */
export function siglipHasHead(w: WeightSource): boolean {
  return w.shape(`${HEAD}.probe`) !== undefined;
}

/** Every checkpoint key the builder reads; the pooling head `vision_model.head.*` only with `head`. */
export function siglipWeightShapes(cfg: SiglipConfig, opts: { head?: boolean } = {}): Record<string, number[]> {
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
  if (opts.head) Object.assign(shapes, siglipHeadShapes(cfg));
  return shapes;
}

export interface SiglipOptions {
  /** HF output_hidden_states indices to expose as `hidden_states.<i>` (0 = embeddings, i = after layer i). */
  hiddenStates?: readonly number[];
  /** Input resolution; default cfg.imageSize. Another size resizes the position grid bicubically (HF interpolate_pos_encoding). */
  imageSize?: number;
  /** Build the attention-pooling head and output `pooler_output` [B, C]. */
  pooled?: boolean;
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
 * nn.MultiheadAttention's packed in_proj as three Linear-style views ('{q,k,v}_proj.weight' / '.bias'),
 * so the shared linear() reads them; rows [0, C) are q, [C, 2C) k, [2C, 3C) v.
 */
function splitInProj(w: WeightSource, C: number): WeightSource {
  const attn = `${HEAD}.attention`;
  const part = (key: string): { src: string; index: number; bias: boolean } | undefined => {
    const m = /^(.*)\.([qkv])_proj\.(weight|bias)$/.exec(key);
    if (!m || m[1] !== attn) return undefined;
    return { src: m[3] === 'weight' ? `${attn}.in_proj_weight` : `${attn}.in_proj_bias`, index: 'qkv'.indexOf(m[2]!), bias: m[3] === 'bias' };
  };
  return {
    keys: () => w.keys(),
    shape: (key) => {
      const p = part(key);
      if (!p) return w.shape(key);
      const want = p.bias ? [3 * C] : [3 * C, C];
      const full = w.shape(p.src);
      if (!full) throw new Error(`missing tensor '${p.src}' in the checkpoint`);
      if (full.join() !== want.join()) throw new Error(`tensor '${p.src}' has shape [${full}] but the model config expects [${want}]`);
      return p.bias ? [C] : [C, C];
    },
    get: (key) => {
      const p = part(key);
      if (!p) return w.get(key);
      const full = toFloat32(takeWeight(w, p.src, p.bias ? [3 * C] : [3 * C, C]));
      const n = p.bias ? C : C * C;
      return f32(p.bias ? [C] : [C, C], full.slice(p.index * n, (p.index + 1) * n));
    },
  };
}

/**
 * SiglipMultiheadAttentionPoolingHead: a learned probe attends over the tokens (nn.MultiheadAttention),
 * then x + MLP(LN(x)); the probe's row is the pooled embedding. [B, N, C] -> [B, C].
 */
function poolingHead(m: Module, x: Value, cfg: SiglipConfig): Value {
  const { g } = m;
  const C = cfg.hiddenSize;
  const heads = cfg.numHeads;
  const hm: Module = { ...m, w: splitInProj(m.w, C) };
  const probe = param(hm, `${HEAD}.probe`, [1, 1, C]); // [1, 1, C]
  const q = linear(hm, probe, `${HEAD}.attention.q_proj`, C, C); // [1, 1, C], broadcast over B
  const k = linear(hm, x, `${HEAD}.attention.k_proj`, C, C); // [B, N, C]
  const v = linear(hm, x, `${HEAD}.attention.v_proj`, C, C);
  const attn = linear(hm, multiHeadAttention(g, q, k, v, heads, C / heads), `${HEAD}.attention.out_proj`, C, C); // [B, 1, C]
  const h = layerNorm(hm, attn, `${HEAD}.layernorm`, C, cfg.layerNormEps);
  const mlp = linear(hm, activation(g, linear(hm, h, `${HEAD}.mlp.fc1`, C, cfg.intermediateSize), cfg.hiddenAct), `${HEAD}.mlp.fc2`, cfg.intermediateSize, C);
  return reshape(g, g.node('Add', [attn, mlp]), [-1, C]); // [B, C]
}

/**
 * Graph input `pixel_values` [B, 3, S, S] (normalised pixels, S = opts.imageSize ?? cfg.imageSize);
 * outputs `last_hidden_state` [B, N, C], `hidden_states.<i>` [B, N, C] for each requested i, and with
 * `pooled` the head's `pooler_output` [B, C].
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
  if (opts.pooled) g.output(poolingHead(m, last, cfg), 'pooler_output', g.dtype, ['B', C]);
}
