// DINOv2 (transformers Dinov2Model), as used by InstantCharacter: last_hidden_state[:, 1:] (after the
// final layernorm) is the deep feature, hidden_states[9,19,29][:, 1:] the shallow ones. Pre-LN ViT with a
// CLS token, LayerScale on both residual branches and (giant) a SwiGLU FFN. The position embeddings are
// trained on the config's grid (37x37 at 518 px) and resized bicubically to the input's grid; the resize
// is computed here at build time, so it is a constant of the graph.
import type { Value } from './onnx/graph.ts';
import {
  type HfActivation, type Module, activation, chunk, concat, layerNorm, linear, multiHeadAttention, param, parseActivation, reshape, silu, transpose,
} from './layers.ts';
import { takeWeight } from './weights/source.ts';
import { type Tensor, toFloat32 } from './tensor.ts';
import { resizeBicubicHWC } from './bicubic.ts';


export interface Dinov2Config {
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  mlpRatio: number;
  /** Activation of the plain MLP (unused by the SwiGLU FFN, which is always SiLU-gated). */
  hiddenAct: HfActivation;
  layerNormEps: number;
  /** The training resolution: position embeddings cover (imageSize / patchSize)^2 patches + CLS. */
  imageSize: number;
  patchSize: number;
  numChannels: number;
  qkvBias: boolean;
  useSwigluFfn: boolean;
}

/** facebook/dinov2-giant. */
export const FULL_DINOV2: Dinov2Config = {
  hiddenSize: 1536,
  numLayers: 40,
  numHeads: 24,
  mlpRatio: 4,
  hiddenAct: 'gelu',
  layerNormEps: 1e-6,
  imageSize: 518,
  patchSize: 14,
  numChannels: 3,
  qkvBias: true,
  useSwigluFfn: true,
};

/** InstantCharacter feeds DINOv2 384-px images (27x27 patches), not the 518 px it was trained at. */
const PIPELINE_IMAGE_SIZE = 384;


function numberField(json: Record<string, unknown>, key: string, fallback: number): number {
  const v = json[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`dinov2 config: ${key} must be a number, got ${JSON.stringify(v)}`);
  return v;
}

function boolField(json: Record<string, unknown>, key: string, fallback: boolean): boolean {
  const v = json[key] ?? fallback;
  if (typeof v !== 'boolean') throw new Error(`dinov2 config: ${key} must be a boolean, got ${JSON.stringify(v)}`);
  return v;
}

/** Parses a transformers Dinov2Config json; missing fields take the transformers defaults. */
export function dinov2ConfigFromJson(json: Record<string, unknown>): Dinov2Config {
  const act = json['hidden_act'] ?? 'gelu';
  return {
    hiddenSize: numberField(json, 'hidden_size', 768),
    numLayers: numberField(json, 'num_hidden_layers', 12),
    numHeads: numberField(json, 'num_attention_heads', 12),
    mlpRatio: numberField(json, 'mlp_ratio', 4),
    hiddenAct: parseActivation('dinov2', act),
    layerNormEps: numberField(json, 'layer_norm_eps', 1e-6),
    imageSize: numberField(json, 'image_size', 224),
    patchSize: numberField(json, 'patch_size', 14),
    numChannels: numberField(json, 'num_channels', 3),
    qkvBias: boolField(json, 'qkv_bias', true),
    useSwigluFfn: boolField(json, 'use_swiglu_ffn', false),
  };
}

/** Hidden width of the FFN: int(C * mlp_ratio), or for SwiGLU 2/3 of it rounded up to a multiple of 8. */
function ffnHidden(cfg: Dinov2Config): number {
  const hidden = Math.trunc(cfg.hiddenSize * cfg.mlpRatio);
  return cfg.useSwigluFfn ? Math.floor((Math.trunc((hidden * 2) / 3) + 7) / 8) * 8 : hidden;
}

const gridOf = (cfg: Dinov2Config, imageSize: number) => Math.floor(imageSize / cfg.patchSize);

/** Every checkpoint key the builder reads (`embeddings.mask_token` is not: it only serves masked pretraining). */
export function dinov2WeightShapes(cfg: Dinov2Config): Record<string, number[]> {
  const C = cfg.hiddenSize;
  const F = ffnHidden(cfg);
  const P = cfg.patchSize;
  const shapes: Record<string, number[]> = {
    'embeddings.cls_token': [1, 1, C],
    'embeddings.position_embeddings': [1, 1 + gridOf(cfg, cfg.imageSize) ** 2, C],
    'embeddings.patch_embeddings.projection.weight': [C, cfg.numChannels, P, P],
    'embeddings.patch_embeddings.projection.bias': [C],
  };
  const lin = (key: string, out: number, inp: number, bias = true) => {
    shapes[`${key}.weight`] = [out, inp];
    if (bias) shapes[`${key}.bias`] = [out];
  };
  for (let i = 0; i < cfg.numLayers; i++) {
    const p = `encoder.layer.${i}`;
    for (const norm of ['norm1', 'norm2']) {
      shapes[`${p}.${norm}.weight`] = [C];
      shapes[`${p}.${norm}.bias`] = [C];
    }
    for (const proj of ['query', 'key', 'value']) lin(`${p}.attention.attention.${proj}`, C, C, cfg.qkvBias);
    lin(`${p}.attention.output.dense`, C, C);
    shapes[`${p}.layer_scale1.lambda1`] = [C];
    if (cfg.useSwigluFfn) {
      lin(`${p}.mlp.weights_in`, 2 * F, C);
      lin(`${p}.mlp.weights_out`, C, F);
    } else {
      lin(`${p}.mlp.fc1`, F, C);
      lin(`${p}.mlp.fc2`, C, F);
    }
    shapes[`${p}.layer_scale2.lambda1`] = [C];
  }
  shapes['layernorm.weight'] = [C];
  shapes['layernorm.bias'] = [C];
  return shapes;
}

/**
 * The checkpoint's position embeddings [1, 1+G*G, C] for a grid x grid input: the CLS position as is,
 * the G x G patch grid resized bicubically (torch, align_corners=False) as transformers 4.45.1 does.
 * Returned unchanged when the grids match.
 */
export function interpolatePositionEmbeddings(pos: Tensor, grid: number): Tensor {
  const [one, positions, C] = pos.dims as [number, number, number];
  const trained = Math.round(Math.sqrt(positions - 1));
  if (one !== 1 || trained * trained !== positions - 1) throw new Error(`dinov2: position embeddings [${pos.dims}] are not [1, 1+G*G, C]`);
  if (grid === trained) return pos;
  const table = toFloat32(pos);
  const out = new Float32Array((1 + grid * grid) * C);
  out.set(table.subarray(0, C)); // CLS position
  out.set(resizeBicubicHWC(table.subarray(C), trained, trained, C, grid, grid), C);
  return { dtype: 'float32', dims: [1, 1 + grid * grid, C], data: out };
}

export interface Dinov2Options {
  /** HF output_hidden_states indices to expose as `hidden_states.<i>` (0 = embeddings, i = after layer i). */
  hiddenStates?: readonly number[];
  /** Input resolution S; default 384 (the InstantCharacter pipeline). Positions are resized to S/patch. */
  imageSize?: number;
}

function positionEmbeddings(m: Module, cfg: Dinov2Config, grid: number): Value {
  const key = 'embeddings.position_embeddings';
  const trained = gridOf(cfg, cfg.imageSize);
  const dims = [1, 1 + trained * trained, cfg.hiddenSize];
  if (grid === trained) return param(m, key, dims);
  return m.g.weight(`${key}.resized_${grid}x${grid}`, interpolatePositionEmbeddings(takeWeight(m.w, key, dims), grid));
}

/** [CLS ; patch conv tokens] + positions: [B, 3, S, S] -> [B, 1+N, C]. */
function embeddings(m: Module, pixels: Value, cfg: Dinov2Config, grid: number): Value {
  const { g } = m;
  const C = cfg.hiddenSize;
  const P = cfg.patchSize;
  const p = 'embeddings.patch_embeddings.projection';
  const patches = g.node('Conv', [pixels, param(m, `${p}.weight`, [C, cfg.numChannels, P, P]), param(m, `${p}.bias`, [C])], {
    kernel_shape: [P, P], strides: [P, P],
  }); // [B, C, grid, grid]
  const tokens = transpose(g, reshape(g, patches, [0, C, -1]), [0, 2, 1]); // [B, N, C]
  const batch = g.node('Shape', [pixels], { start: 0, end: 1 }); // [1] = B
  const cls = g.node('Expand', [param(m, 'embeddings.cls_token', [1, 1, C]), concat(g, [batch, g.ints([1, C])], 0)]); // [B, 1, C]
  return g.node('Add', [concat(g, [cls, tokens], 1), positionEmbeddings(m, cfg, grid)]); // [B, 1+N, C]
}

function selfAttention(m: Module, x: Value, p: string, cfg: Dinov2Config): Value {
  const C = cfg.hiddenSize;
  const q = linear(m, x, `${p}.attention.query`, C, C, cfg.qkvBias); // [B, T, C]
  const k = linear(m, x, `${p}.attention.key`, C, C, cfg.qkvBias);
  const v = linear(m, x, `${p}.attention.value`, C, C, cfg.qkvBias);
  const o = multiHeadAttention(m.g, q, k, v, cfg.numHeads, C / cfg.numHeads); // [B, T, C]
  return linear(m, o, `${p}.output.dense`, C, C);
}

/** SwiGLU: weights_in gives [x1 | x2] (first half gated), silu(x1) * x2, then weights_out. Else fc1, act, fc2. */
function ffn(m: Module, x: Value, p: string, cfg: Dinov2Config): Value {
  const C = cfg.hiddenSize;
  const F = ffnHidden(cfg);
  if (cfg.useSwigluFfn) {
    const [x1, x2] = chunk(m.g, linear(m, x, `${p}.weights_in`, C, 2 * F), 2) as [Value, Value]; // 2 x [B, T, F]
    return linear(m, m.g.node('Mul', [silu(m.g, x1), x2]), `${p}.weights_out`, F, C);
  }
  return linear(m, activation(m.g, linear(m, x, `${p}.fc1`, C, F), cfg.hiddenAct), `${p}.fc2`, F, C);
}

/** x * lambda, per channel. */
function layerScale(m: Module, x: Value, p: string, C: number): Value {
  return m.g.node('Mul', [x, param(m, `${p}.lambda1`, [C])]);
}

/** Pre-LN block with LayerScale: x + ls1 * attn(norm1(x)), then + ls2 * ffn(norm2(x)). */
function encoderLayer(m: Module, x: Value, p: string, cfg: Dinov2Config): Value {
  const { g } = m;
  const C = cfg.hiddenSize;
  const eps = cfg.layerNormEps;
  const attn = selfAttention(m, layerNorm(m, x, `${p}.norm1`, C, eps), `${p}.attention`, cfg);
  const h = g.node('Add', [x, layerScale(m, attn, `${p}.layer_scale1`, C)]);
  const f = ffn(m, layerNorm(m, h, `${p}.norm2`, C, eps), `${p}.mlp`, cfg);
  return g.node('Add', [h, layerScale(m, f, `${p}.layer_scale2`, C)]); // [B, T, C]
}

/**
 * Graph input `pixel_values` [B, 3, S, S] (ImageNet-normalised, S = opts.imageSize ?? 384); outputs
 * `last_hidden_state` [B, 1+N, C] (CLS first) and `hidden_states.<i>` [B, 1+N, C] for each requested i.
 */
export function buildDinov2(m: Module, cfg: Dinov2Config, opts: Dinov2Options = {}): void {
  const { g } = m;
  const S = opts.imageSize ?? PIPELINE_IMAGE_SIZE;
  const grid = gridOf(cfg, S);
  const C = cfg.hiddenSize;
  const wanted = new Set(opts.hiddenStates ?? []);
  for (const i of wanted) {
    if (!Number.isInteger(i) || i < 0 || i > cfg.numLayers) throw new Error(`dinov2: hidden state ${i} is outside 0..${cfg.numLayers}`);
  }
  const outDims = ['B', 1 + grid * grid, C];
  const pixels = g.input('pixel_values', g.dtype, ['B', cfg.numChannels, S, S]);
  let x = embeddings(m, pixels, cfg, grid); // [B, 1+N, C]
  if (wanted.has(0)) g.output(x, 'hidden_states.0', g.dtype, outDims);
  for (let i = 0; i < cfg.numLayers; i++) {
    x = encoderLayer(m, x, `encoder.layer.${i}`, cfg);
    if (wanted.has(i + 1)) g.output(x, `hidden_states.${i + 1}`, g.dtype, outDims);
  }
  g.output(layerNorm(m, x, 'layernorm', C, cfg.layerNormEps), 'last_hidden_state', g.dtype, outDims);
}
