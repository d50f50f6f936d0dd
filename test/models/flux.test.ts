// FLUX transformer + InstantCharacter IP attention against the flux_transformer_ip golden case.
import { beforeAll, describe, expect, it } from 'vitest';
import { Graph } from '../../models/onnx/graph.ts';
import { runOnce } from '../../models/onnx/ort.ts';
import { countParameters } from '../../models/layers.ts';
import {
  FULL_FLUX, type FluxConfig, buildFlux, fluxConfigFromJson, fluxWeightShapes, ipAdapterWeightShapes,
} from '../../models/flux.ts';
import { fluxImageIds, fluxRope, fluxTextIds } from '../../models/rope.ts';
import { type WeightSource, memorySource } from '../../models/weights/source.ts';
import { type Tensor, f32, toFloat32 } from '../../models/tensor.ts';
import { fluxGoldenFeeds } from '../helpers/flux-golden.ts';
import { expectClose, goldenConfig, goldenTensors, goldenWeights, imageIdGrid, scaledVariant, scaledVariants } from '../helpers/goldens.ts';

const CASE = 'flux_transformer_ip';
const TOL = 2e-4;

function build(cfg: FluxConfig, w: WeightSource, ip: WeightSource | undefined, debugOutputs = false): Uint8Array {
  const g = new Graph({ name: 'flux' });
  buildFlux({ g, w }, ip, cfg, { debugOutputs });
  return g.toBytes();
}

/** The subject scale of the golden inputs. */
const scaleOf = (inputs: Map<string, Tensor>): number => toFloat32(inputs.get('subject_scale')!)[0]!;

/** One whole-picture character: its tokens and an [1, L] weight map filled with `scale`. */
function ipFeeds(tokens: Tensor, scale: number, L: number): Record<string, Tensor> {
  return { ip_hidden_states: tokens, ip_masks: f32([1, L], new Float32Array(L).fill(scale)) };
}

/** A copy of `src` with one tensor replaced (or removed when `t` is undefined). */
function patched(src: WeightSource, key: string, t: Tensor | undefined): WeightSource {
  const map = new Map<string, Tensor>();
  for (const k of src.keys()) if (k !== key) map.set(k, src.get(k));
  if (t) map.set(key, t);
  return memorySource(map);
}

describe('flux transformer + IP attention (golden)', () => {
  let cfg: FluxConfig;
  let inputs: Map<string, Tensor>;
  let outputs: Map<string, Tensor>;
  let feeds: Record<string, Tensor>;

  beforeAll(() => {
    cfg = fluxConfigFromJson(goldenConfig(CASE));
    inputs = goldenTensors(CASE, 'inputs.safetensors');
    outputs = goldenTensors(CASE, 'outputs.safetensors');
    feeds = fluxGoldenFeeds(cfg, inputs);
  });

  it('rope tables match diffusers FluxPosEmbed', () => {
    const txt = toFloat32(inputs.get('txt_ids')!);
    const img = toFloat32(inputs.get('img_ids')!);
    // The golden ids are the standard ones our helpers produce.
    expect(Array.from(fluxTextIds(txt.length / 3))).toEqual(Array.from(txt));
    const { rows, cols } = imageIdGrid(inputs.get('img_ids')!);
    expect(rows * cols).toBe(inputs.get('hidden_states')!.dims[1]);
    expect(Array.from(fluxImageIds(rows, cols))).toEqual(Array.from(img));
    const dc = expectClose(feeds.rope_cos, outputs.get('debug.rope_cos'), 1e-6, 'debug.rope_cos');
    const ds = expectClose(feeds.rope_sin, outputs.get('debug.rope_sin'), 1e-6, 'debug.rope_sin');
    console.log(`rope max abs diff: cos ${dc}, sin ${ds}`);
  });

  it('matches noise_pred.scale_<s> at the inputs\' subject_scale, and the debug tensors', async () => {
    const w = goldenWeights(CASE, 'diffusion_pytorch_model.safetensors');
    const ip = goldenWeights(CASE, 'ip_adapter.safetensors');
    const model = build(cfg, w, ip, true);
    const out = await runOnce(model, {
      ...feeds,
      ...ipFeeds(inputs.get('ip_hidden_states')!, scaleOf(inputs), feeds.hidden_states!.dims[1]!),
    });
    const d = expectClose(out['noise_pred'], scaledVariant(outputs, 'noise_pred', scaleOf(inputs)), TOL, `noise_pred at scale ${scaleOf(inputs)}`);
    const dt = expectClose(out['debug.temb'], outputs.get('debug.temb'), TOL, 'debug.temb');
    const dip = [];
    for (let i = 0; i < cfg.numLayers + cfg.numSingleLayers; i++) {
      // Ours is per character [B, R, L, C]; with R = 1 it holds the golden [B, L, C].
      const ours = out[`debug.ip_attn.${i}`]!;
      const gold = outputs.get(`debug.ip_attn.${i}`)!;
      expect(ours.dims).toEqual([gold.dims[0], 1, ...gold.dims.slice(1)]);
      dip.push(expectClose(f32(gold.dims, toFloat32(ours)), gold, TOL, `debug.ip_attn.${i}`));
    }
    console.log(`noise_pred (scale ${scaleOf(inputs)}) max abs diff ${d}; temb ${dt}; ip_attn ${dip.join(', ')}`);
  });

  it('matches every noise_pred.scale_<s> with IP inputs, and at s = 0 as plain FLUX too', async () => {
    const w = goldenWeights(CASE, 'diffusion_pytorch_model.safetensors');
    const ip = goldenWeights(CASE, 'ip_adapter.safetensors');
    const model = build(cfg, w, ip);
    for (const { key, scale, tensor: expected } of scaledVariants(outputs, 'noise_pred')) {
      const withIp = await runOnce(model, {
        ...feeds,
        ...ipFeeds(inputs.get('ip_hidden_states')!, scale, feeds.hidden_states!.dims[1]!),
      });
      const d1 = expectClose(withIp['noise_pred'], expected, TOL, `${key} (ip graph)`);
      if (scale !== 0) {
        console.log(`${key} max abs diff: ip graph ${d1}`);
        continue;
      }
      const plain = await runOnce(build(cfg, w, undefined), feeds);
      const d2 = expectClose(plain['noise_pred'], expected, TOL, `${key} (plain graph)`);
      console.log(`${key} max abs diff: ip graph ${d1}, plain graph ${d2}`);
    }
  });

  it('serves other batch sizes and token counts from one graph', async () => {
    const w = goldenWeights(CASE, 'diffusion_pytorch_model.safetensors');
    const ip = goldenWeights(CASE, 'ip_adapter.safetensors');
    const model = build(cfg, w, ip);
    const twice = (t: Tensor): Tensor => {
      const a = toFloat32(t);
      const data = new Float32Array(a.length * 2);
      data.set(a, 0);
      data.set(a, a.length);
      return f32([2, ...t.dims.slice(1)], data);
    };
    const batched = await runOnce(model, {
      ...feeds,
      hidden_states: twice(feeds.hidden_states!),
      encoder_hidden_states: twice(feeds.encoder_hidden_states!),
      pooled_projections: twice(feeds.pooled_projections!),
      timestep: twice(feeds.timestep!),
      guidance: twice(feeds.guidance!),
      // The character's tokens are shared by both images: no batch axis.
      ...ipFeeds(inputs.get('ip_hidden_states')!, scaleOf(inputs), feeds.hidden_states!.dims[1]!),
    });
    const out = batched['noise_pred']!;
    const half = toFloat32(out).length / 2;
    const expected = scaledVariant(outputs, 'noise_pred', scaleOf(inputs));
    for (let b = 0; b < 2; b++) {
      const one = f32(expected.dims, toFloat32(out).subarray(b * half, (b + 1) * half));
      expectClose(one, expected, TOL, `noise_pred batch item ${b}`);
    }

    // A grid one row and one column smaller, with one text token fewer: only the shapes are known here.
    const grid = imageIdGrid(inputs.get('img_ids')!);
    const rows = Math.max(1, grid.rows - 1), cols = Math.max(1, grid.cols - 1);
    const T = Math.max(1, inputs.get('txt_ids')!.dims[0]! - 1), L = rows * cols;
    const rope = fluxRope(Float32Array.from([...fluxTextIds(T), ...fluxImageIds(rows, cols)]), cfg.axesDimsRope, cfg.ropeTheta);
    const small = await runOnce(model, {
      ...feeds,
      hidden_states: f32([1, L, cfg.inChannels], toFloat32(feeds.hidden_states!).subarray(0, L * cfg.inChannels)),
      encoder_hidden_states: f32([1, T, cfg.jointAttentionDim], toFloat32(feeds.encoder_hidden_states!).subarray(0, T * cfg.jointAttentionDim)),
      rope_cos: rope.cos,
      rope_sin: rope.sin,
      ...ipFeeds(inputs.get('ip_hidden_states')!, scaleOf(inputs), L),
    });
    expect(small['noise_pred']!.dims).toEqual([1, L, cfg.patchSize ** 2 * cfg.outChannels]);
    expect(Array.from(toFloat32(small['noise_pred']!)).every(Number.isFinite)).toBe(true);
  });

  it('names the tensor on a wrong-shaped or missing weight', () => {
    const w = goldenWeights(CASE, 'diffusion_pytorch_model.safetensors');
    const ip = goldenWeights(CASE, 'ip_adapter.safetensors');
    const bad = `transformer_blocks.${cfg.numLayers - 1}.attn.add_k_proj.weight`;
    expect(() => build(cfg, patched(w, bad, f32([3, 3])), ip)).toThrow(bad);
    const gone = `single_transformer_blocks.${cfg.numSingleLayers - 1}.proj_mlp.bias`;
    expect(() => build(cfg, patched(w, gone, undefined), ip)).toThrow(gone);
    const processors = cfg.numLayers + cfg.numSingleLayers;
    const ipBad = `${processors - 1}.norm_ip_k.scale`;
    expect(() => build(cfg, w, patched(ip, ipBad, f32([cfg.headDim + 1])))).toThrow(ipBad);
    const ipGone = `${processors >> 1}.to_v_ip.bias`;
    expect(() => build(cfg, w, patched(ip, ipGone, undefined))).toThrow(ipGone);
  });

  it('lists exactly the checkpoint keys and shapes of the golden files', () => {
    const w = goldenWeights(CASE, 'diffusion_pytorch_model.safetensors');
    const ip = goldenWeights(CASE, 'ip_adapter.safetensors');
    const shapesOf = (s: WeightSource) => Object.fromEntries(s.keys().map((k) => [k, s.shape(k)]));
    expect(fluxWeightShapes(cfg)).toEqual(shapesOf(w));
    expect(ipAdapterWeightShapes(cfg, ip.shape('0.to_k_ip.weight')![1]!)).toEqual(shapesOf(ip));
  });
});

describe('flux parameter counts', () => {
  it('FLUX.1-dev transformer has 11,901,408,320 parameters', () => {
    expect(countParameters(fluxWeightShapes(FULL_FLUX))).toBe(11_901_408_320);
  });

  it('InstantCharacter IP layers (ip_dim 4096) have 1,434,816,768 parameters', () => {
    expect(countParameters(ipAdapterWeightShapes(FULL_FLUX, 4096))).toBe(1_434_816_768);
  });

  it('parses the FLUX.1-dev config.json', () => {
    const json = {
      _class_name: 'FluxTransformer2DModel', attention_head_dim: 128, axes_dims_rope: [16, 56, 56], guidance_embeds: true,
      in_channels: 64, joint_attention_dim: 4096, num_attention_heads: 24, num_layers: 19, num_single_layers: 38,
      patch_size: 1, pooled_projection_dim: 768,
    };
    expect(fluxConfigFromJson(json)).toEqual(FULL_FLUX);
  });
});
