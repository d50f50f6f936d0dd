// CLIP text encoder (transformers CLIPTextModel), FLUX's short-prompt encoder (openai/clip-vit-large-patch14).
// Token + learned position embeddings, pre-LN causal transformer, final LayerNorm. FLUX uses
// `pooler_output`, the final hidden state at each row's end-of-text token.
import type { Value } from './onnx/graph.ts';
import { type HfActivation, type Module, layerNorm, param, parseActivation, slice } from './layers.ts';
import { clipLayer, clipLayerShapes } from './clip_encoder.ts';


export interface ClipTextConfig {
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  maxPositions: number;
  layerNormEps: number;
  hiddenAct: HfActivation;
  /** 2 selects transformers' legacy pooling (argmax of the ids); otherwise the first position equal to it. */
  eosTokenId: number;
}

/** openai/clip-vit-large-patch14 text model, as used by FLUX.1 (text_encoder). */
export const FULL_CLIP: ClipTextConfig = {
  vocabSize: 49408,
  hiddenSize: 768,
  intermediateSize: 3072,
  numLayers: 12,
  numHeads: 12,
  maxPositions: 77,
  layerNormEps: 1e-5,
  hiddenAct: 'quick_gelu',
  eosTokenId: 2,
};

const PREFIX = 'text_model';
/** The eos_token_id of configs written before transformers knew the real one; it means "pool at argmax(ids)". */
const LEGACY_EOS_ID = 2;
/** Added to masked scores: exp() underflows to exactly 0 (and becomes -inf, still harmless, in fp16). */
const MASKED = -1e9;

function numberField(json: Record<string, unknown>, key: string, fallback: number): number {
  const v = json[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`clip config: ${key} must be a number, got ${JSON.stringify(v)}`);
  return v;
}

/**
 * Parses a transformers config.json: a bare CLIPTextConfig (FLUX's text_encoder) or a full CLIPConfig
 * (openai/clip-vit-large-patch14) whose text part sits under `text_config`. Missing fields take
 * CLIPTextConfig's defaults.
 */
export function clipConfigFromJson(json: Record<string, unknown>): ClipTextConfig {
  const nested = json['text_config'];
  const full = json['model_type'] === 'clip' || nested !== undefined;
  const t = (full ? nested ?? {} : json) as Record<string, unknown>;
  const act = t['hidden_act'] ?? 'quick_gelu';
  return {
    vocabSize: numberField(t, 'vocab_size', 49408),
    hiddenSize: numberField(t, 'hidden_size', 512),
    intermediateSize: numberField(t, 'intermediate_size', 2048),
    numLayers: numberField(t, 'num_hidden_layers', 12),
    numHeads: numberField(t, 'num_attention_heads', 8),
    maxPositions: numberField(t, 'max_position_embeddings', 77),
    layerNormEps: numberField(t, 'layer_norm_eps', 1e-5),
    hiddenAct: parseActivation('clip', act),
    eosTokenId: numberField(t, 'eos_token_id', 49407),
  };
}

/** Every checkpoint key the builder reads (`position_ids` is a buffer, not a parameter, and is not read). */
export function clipWeightShapes(cfg: ClipTextConfig): Record<string, number[]> {
  const C = cfg.hiddenSize;
  const F = cfg.intermediateSize;
  const shapes: Record<string, number[]> = {
    [`${PREFIX}.embeddings.token_embedding.weight`]: [cfg.vocabSize, C],
    [`${PREFIX}.embeddings.position_embedding.weight`]: [cfg.maxPositions, C],
  };
  for (let i = 0; i < cfg.numLayers; i++) Object.assign(shapes, clipLayerShapes(`${PREFIX}.encoder.layers.${i}`, C, F));
  shapes[`${PREFIX}.final_layer_norm.weight`] = [C];
  shapes[`${PREFIX}.final_layer_norm.bias`] = [C];
  return shapes;
}

/** Token embedding plus the first T learned positions: [B, T] ids -> [B, T, C]. */
function embeddings(m: Module, ids: Value, cfg: ClipTextConfig, T: number): Value {
  const { g } = m;
  const C = cfg.hiddenSize;
  const p = `${PREFIX}.embeddings`;
  const tokens = g.node('Gather', [param(m, `${p}.token_embedding.weight`, [cfg.vocabSize, C]), ids], { axis: 0 }); // [B, T, C]
  const positions = param(m, `${p}.position_embedding.weight`, [cfg.maxPositions, C]); // [P, C]
  return g.node('Add', [tokens, T === cfg.maxPositions ? positions : slice(g, positions, 0, 0, T)]); // [B, T, C]
}

/** Additive causal mask: 0 where key <= query, a large negative number above the diagonal. [T, T]. */
function causalMask(m: Module, T: number): Value {
  const mask = new Float32Array(T * T);
  for (let i = 0; i < T; i++) for (let j = i + 1; j < T; j++) mask[i * T + j] = MASKED;
  return m.g.floats(mask, [T, T]);
}

/**
 * Index of the pooled token per row, [B, 1] int64: argmax(ids) under the legacy rule (EOS is the
 * largest id), else the first position whose id equals eos. ArgMax returns the first maximum.
 */
function poolIndex(m: Module, ids: Value, eosTokenId: number): Value {
  const { g } = m;
  // int32 keeps ArgMax on a type every runtime implements; vocabularies are far below 2^31.
  const scores = eosTokenId === LEGACY_EOS_ID
    ? g.node('Cast', [ids], { to: 6 })
    : g.node('Cast', [g.node('Equal', [ids, g.ints([eosTokenId])])], { to: 6 }); // [B, T]
  return g.node('ArgMax', [scores], { axis: 1, keepdims: 1 }); // [B, 1]
}

export interface ClipOptions {
  /** Fixed sequence length of the graph; default max_position_embeddings (77, as FLUX pads). */
  seqLen?: number;
}

/**
 * Graph input `input_ids` int64 [B, T]; outputs `last_hidden_state` [B, T, C] (after final_layer_norm)
 * and `pooler_output` [B, C]. No padding mask, as in the FLUX pipeline.
 */
export function buildClip(m: Module, cfg: ClipTextConfig, opts: ClipOptions = {}): void {
  const { g } = m;
  const T = opts.seqLen ?? cfg.maxPositions;
  if (T > cfg.maxPositions) throw new Error(`clip: seqLen ${T} exceeds max_position_embeddings ${cfg.maxPositions}`);
  const C = cfg.hiddenSize;
  const ids = g.input('input_ids', 'int64', ['batch', T]);
  let x = embeddings(m, ids, cfg, T); // [B, T, C]
  const mask = causalMask(m, T);
  const dims = { hidden: cfg.hiddenSize, intermediate: cfg.intermediateSize, heads: cfg.numHeads, eps: cfg.layerNormEps, act: cfg.hiddenAct };
  for (let i = 0; i < cfg.numLayers; i++) x = clipLayer(m, x, `${PREFIX}.encoder.layers.${i}`, dims, mask); // [B, T, C]
  const last = layerNorm(m, x, `${PREFIX}.final_layer_norm`, C, cfg.layerNormEps); // [B, T, C]
  const pooled = g.node('GatherND', [last, poolIndex(m, ids, cfg.eosTokenId)], { batch_dims: 1 }); // [B, C]
  g.output(last, 'last_hidden_state', g.dtype, ['batch', T, C]);
  g.output(pooled, 'pooler_output', g.dtype, ['batch', C]);
}
