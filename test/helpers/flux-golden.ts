// The flux_transformer_ip case's transformer feeds (without the IP inputs): its inputs with the RoPE tables
// of its text and image ids.
import type { FluxConfig } from '../../models/flux.ts';
import { fluxRope } from '../../models/rope.ts';
import { type Tensor, toFloat32 } from '../../models/tensor.ts';

export function fluxGoldenFeeds(cfg: FluxConfig, inputs: Map<string, Tensor>): Record<string, Tensor> {
  const ids = Float32Array.from([...toFloat32(inputs.get('txt_ids')!), ...toFloat32(inputs.get('img_ids')!)]);
  const rope = fluxRope(ids, cfg.axesDimsRope, cfg.ropeTheta);
  const take = (k: string): Tensor => {
    const t = inputs.get(k);
    if (!t) throw new Error(`golden input ${k} is missing`);
    return t;
  };
  return {
    hidden_states: take('hidden_states'),
    encoder_hidden_states: take('encoder_hidden_states'),
    pooled_projections: take('pooled_projections'),
    timestep: take('timestep'),
    guidance: take('guidance'),
    rope_cos: rope.cos,
    rope_sin: rope.sin,
  };
}
