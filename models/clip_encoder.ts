// The pre-LayerNorm encoder layer of the CLIP family, shared by the CLIP text model and the SigLIP
// vision tower (same keys: layer_norm1, self_attn.{q,k,v,out}_proj, layer_norm2, mlp.fc1/fc2).
import type { Value } from './onnx/graph.ts';
import { type HfActivation, type Module, activation, layerNorm, linear, multiHeadAttention } from './layers.ts';

export interface ClipLayerDims {
  hidden: number;
  intermediate: number;
  heads: number;
  eps: number;
  act: HfActivation;
}

/** The checkpoint keys of one layer under `prefix` (e.g. 'text_model.encoder.layers.3'). */
export function clipLayerShapes(prefix: string, hidden: number, intermediate: number): Record<string, number[]> {
  const C = hidden;
  const F = intermediate;
  const shapes: Record<string, number[]> = {};
  for (const proj of ['q_proj', 'k_proj', 'v_proj', 'out_proj']) {
    shapes[`${prefix}.self_attn.${proj}.weight`] = [C, C];
    shapes[`${prefix}.self_attn.${proj}.bias`] = [C];
  }
  for (const norm of ['layer_norm1', 'layer_norm2']) {
    shapes[`${prefix}.${norm}.weight`] = [C];
    shapes[`${prefix}.${norm}.bias`] = [C];
  }
  shapes[`${prefix}.mlp.fc1.weight`] = [F, C];
  shapes[`${prefix}.mlp.fc1.bias`] = [F];
  shapes[`${prefix}.mlp.fc2.weight`] = [C, F];
  shapes[`${prefix}.mlp.fc2.bias`] = [C];
  return shapes;
}

/** x + attn(LN1(x)), then + fc2(act(fc1(LN2(x)))). `mask` is added to the scores (causal text). [B, T, C] -> [B, T, C]. */
export function clipLayer(m: Module, x: Value, prefix: string, d: ClipLayerDims, mask?: Value): Value {
  const { g } = m;
  const C = d.hidden;
  const F = d.intermediate;
  const h1 = layerNorm(m, x, `${prefix}.layer_norm1`, C, d.eps); // [B, T, C]
  const q = linear(m, h1, `${prefix}.self_attn.q_proj`, C, C);
  const k = linear(m, h1, `${prefix}.self_attn.k_proj`, C, C);
  const v = linear(m, h1, `${prefix}.self_attn.v_proj`, C, C);
  const attn = multiHeadAttention(g, q, k, v, d.heads, C / d.heads, mask ? { bias: mask } : {}); // [B, T, C]
  const x1 = g.node('Add', [x, linear(m, attn, `${prefix}.self_attn.out_proj`, C, C)]); // [B, T, C]

  const h2 = layerNorm(m, x1, `${prefix}.layer_norm2`, C, d.eps);
  const ff = linear(m, activation(g, linear(m, h2, `${prefix}.mlp.fc1`, C, F), d.act), `${prefix}.mlp.fc2`, F, C); // [B, T, C]
  return g.node('Add', [x1, ff]); // [B, T, C]
}
