// FLUX VAE encoder against diffusers AutoencoderKL.encode (case h, the vae_decoder case's encoder.* weights).
import { describe, expect, it } from 'vitest';
import { Graph } from '../../models/onnx/graph.ts';
import { runOnce } from '../../models/onnx/ort.ts';
import { countParameters } from '../../models/layers.ts';
import type { WeightSource } from '../../models/weights/source.ts';
import { type Tensor, f32, toFloat32 } from '../../models/tensor.ts';
import { FULL_VAE, type VaeConfig, buildVaeEncoder, vaeConfigFromJson, vaeEncoderWeightShapes, vaeWeightShapes } from '../../models/vae.ts';
import { expectClose, goldenConfig, goldenTensors, goldenWeights, need } from '../helpers/goldens.ts';
import { seededNormal } from '../../models/sampling.ts';
import { ldmVaeKeyMap } from '../../models/convert/keymaps.ts';
import { mappedSource } from '../../models/convert/views.ts';
import { memorySource } from '../../models/weights/source.ts';
import { readSafetensors } from '../../models/weights/safetensors.ts';
import { goldenPath } from '../helpers/goldens.ts';

const CASE = 'vae_encoder';
const WEIGHT_CASE = 'vae_decoder';
const WEIGHTS = 'diffusion_pytorch_model.safetensors';
const TOL = 2e-4;

function buildBytes(w: WeightSource, cfg: VaeConfig): Uint8Array {
  const g = new Graph({ name: 'vae_encoder' });
  buildVaeEncoder({ g, w }, cfg);
  return g.toBytes();
}

function zerosLike(t: Tensor): Tensor {
  return f32([...t.dims], new Float32Array(toFloat32(t).length));
}

describe('FLUX VAE encoder', () => {
  const cfg = vaeConfigFromJson(goldenConfig(WEIGHT_CASE));
  const inputs = goldenTensors(CASE, 'inputs.safetensors');
  const outputs = goldenTensors(CASE, 'outputs.safetensors');

  it('matches diffusers AutoencoderKL.encode: moments, mean, logvar and scaled latents', async () => {
    const w = goldenWeights(WEIGHT_CASE, WEIGHTS);
    try {
      const mean = need(outputs, 'mean');
      const out = await runOnce(buildBytes(w, cfg), { image: need(inputs, 'image'), eps: zerosLike(mean) });
      const diffs = ['moments', 'mean', 'logvar', 'latents'].map((k) => `${k} ${expectClose(out[k], need(outputs, k), TOL, k).toExponential(2)}`);
      console.log(`vae_encoder max abs diff: ${diffs.join(', ')}`);
    } finally {
      w.close();
    }
  });

  it('samples mean + exp(logvar / 2) * eps, then scales, for a given eps', async () => {
    const w = goldenWeights(WEIGHT_CASE, WEIGHTS);
    try {
      const mean = need(outputs, 'mean');
      const n = toFloat32(mean).length;
      const eps = f32([...mean.dims], seededNormal(7, n));
      const out = await runOnce(buildBytes(w, cfg), { image: need(inputs, 'image'), eps });
      const m = toFloat32(need(outputs, 'mean'));
      const lv = toFloat32(need(outputs, 'logvar'));
      const e = toFloat32(eps);
      const expected = new Float32Array(n);
      for (let i = 0; i < n; i++) expected[i] = (m[i]! + Math.exp(lv[i]! / 2) * e[i]! - cfg.shiftFactor) * cfg.scalingFactor;
      expectClose(out.latents, f32([...mean.dims], expected), TOL, 'sampled latents');
      // The draw moved the latents: this is not the mean.
      let moved = 0;
      for (let i = 0; i < n; i++) moved = Math.max(moved, Math.abs(toFloat32(out.latents!)[i]! - toFloat32(need(outputs, 'latents'))[i]!));
      expect(moved).toBeGreaterThan(1e-3);
    } finally {
      w.close();
    }
  });

  it('lists exactly the encoder.* keys of the checkpoint', () => {
    const w = goldenWeights(WEIGHT_CASE, WEIGHTS);
    try {
      const shapes = vaeEncoderWeightShapes(cfg);
      const keys = w.keys().filter((k) => k.startsWith('encoder.') || k.startsWith('quant_conv.'));
      expect(Object.keys(shapes).sort()).toEqual(keys.sort());
      for (const k of keys) expect(shapes[k], k).toEqual(w.shape(k));
    } finally {
      w.close();
    }
  });

  it('reads the encoder from the original (LDM) layout of ae.safetensors', () => {
    const d = readSafetensors(goldenPath(WEIGHT_CASE, WEIGHTS));
    // The LDM names, written out independently of the converter's table.
    const toLdm = (k: string): string => k
      .replace(/^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\./, 'encoder.down.$1.block.$2.')
      .replace(/^encoder\.down_blocks\.(\d+)\.downsamplers\.0\./, 'encoder.down.$1.downsample.')
      .replace('encoder.mid_block.resnets.0.', 'encoder.mid.block_1.')
      .replace('encoder.mid_block.resnets.1.', 'encoder.mid.block_2.')
      .replace('encoder.mid_block.attentions.0.group_norm.', 'encoder.mid.attn_1.norm.')
      .replace('encoder.mid_block.attentions.0.to_out.0.', 'encoder.mid.attn_1.proj_out.')
      .replace(/^encoder\.mid_block\.attentions\.0\.to_([qkv])\./, 'encoder.mid.attn_1.$1.')
      .replace('.conv_shortcut.', '.nin_shortcut.')
      .replace('encoder.conv_norm_out.', 'encoder.norm_out.');
    const ldm = new Map<string, Tensor>();
    const encoderKeys = [...d.keys()].filter((k) => k.startsWith('encoder.'));
    for (const k of encoderKeys) {
      const t = d.get(k)!;
      const linear = /attentions\.0\.to_/.test(k) && k.endsWith('.weight');
      ldm.set(toLdm(k), linear ? { ...t, dims: [...t.dims, 1, 1] } : t); // 1x1 convs in LDM
    }
    const view = mappedSource(memorySource(ldm), ldmVaeKeyMap(cfg), 'ae.safetensors');
    for (const k of encoderKeys) {
      expect(view.shape(k), k).toEqual(d.get(k)!.dims);
      expect(Array.from(toFloat32(view.get(k))), k).toEqual(Array.from(toFloat32(d.get(k)!)));
    }
  });

  it('keeps batch, height and width dynamic', async () => {
    const w = goldenWeights(WEIGHT_CASE, WEIGHTS);
    try {
      const image = need(inputs, 'image');
      const [, c, H, W] = image.dims as [number, number, number, number];
      // Another size (still multiples of 8) and a batch of 2.
      const [h2, w2] = [H + 8, W + 16];
      const small = f32([2, c, h2, w2], new Float32Array(2 * c * h2 * w2).fill(0.2));
      const eps = f32([2, cfg.latentChannels, h2 / 8, w2 / 8], new Float32Array(2 * cfg.latentChannels * (h2 / 8) * (w2 / 8)));
      const out = await runOnce(buildBytes(w, cfg), { image: small, eps });
      expect(out.latents!.dims).toEqual([2, cfg.latentChannels, h2 / 8, w2 / 8]);
      expect(out.moments!.dims).toEqual([2, 2 * cfg.latentChannels, h2 / 8, w2 / 8]);
    } finally {
      w.close();
    }
  });

  it('counts the FLUX VAE encoder parameters', () => {
    const n = countParameters(vaeEncoderWeightShapes(FULL_VAE));
    console.log(`FLUX VAE encoder parameters: ${n}`);
    // With the decoder, the whole FLUX.1-dev AutoencoderKL: 83,819,683 parameters.
    expect(n + countParameters(vaeWeightShapes(FULL_VAE))).toBe(83_819_683);
  });
});
