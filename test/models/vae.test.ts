// FLUX VAE decoder against the diffusers AutoencoderKL golden (case e).
import { describe, expect, it } from 'vitest';
import { Graph } from '../../models/onnx/graph.ts';
import { runOnce } from '../../models/onnx/ort.ts';
import { countParameters } from '../../models/layers.ts';
import { type WeightSource, memorySource, mergeSources } from '../../models/weights/source.ts';
import { type Tensor, numel, toFloat32 } from '../../models/tensor.ts';
import { FULL_VAE, type VaeConfig, buildVaeDecoder, vaeConfigFromJson, vaeWeightShapes } from '../../models/vae.ts';
import { expectClose, goldenConfig, goldenTensors, goldenWeights } from '../helpers/goldens.ts';

const CASE = 'vae_decoder';
const WEIGHTS = 'diffusion_pytorch_model.safetensors';
const TOL = 2e-4;

function buildBytes(w: WeightSource, cfg: VaeConfig): Uint8Array {
  const g = new Graph({ name: 'vae_decoder' });
  buildVaeDecoder({ g, w }, cfg);
  return g.toBytes();
}

/** Tensors [B_i, ...] concatenated along axis 0. */
function stack(items: Tensor[]): Tensor {
  const parts = items.map(toFloat32);
  const data = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    data.set(p, at);
    at += p.length;
  }
  return { dtype: 'float32', dims: [items.reduce((n, t) => n + t.dims[0]!, 0), ...items[0]!.dims.slice(1)], data };
}

/** Batch item i of a [B, ...] tensor, as [1, ...]. */
function item(t: Tensor, i: number): Tensor {
  const per = numel(t.dims.slice(1));
  return { dtype: 'float32', dims: [1, ...t.dims.slice(1)], data: toFloat32(t).slice(i * per, (i + 1) * per) };
}

/** A view of a source where one key is missing or has another shape. */
function tampered(source: WeightSource, key: string, shape: number[] | undefined): WeightSource {
  return {
    keys: () => source.keys().filter((k) => k !== key || shape !== undefined),
    shape: (k) => (k === key ? shape : source.shape(k)),
    get: (k) => source.get(k),
  };
}

describe('FLUX VAE decoder', () => {
  const cfg = vaeConfigFromJson(goldenConfig(CASE));
  const inputs = goldenTensors(CASE, 'inputs.safetensors');
  const outputs = goldenTensors(CASE, 'outputs.safetensors');

  it('matches diffusers AutoencoderKL.decode (sample and image)', async () => {
    const w = goldenWeights(CASE, WEIGHTS);
    try {
      const out = await runOnce(buildBytes(w, cfg), { latents: inputs.get('latents')! });
      const dSample = expectClose(out.sample, outputs.get('sample'), TOL, 'sample');
      const dImage = expectClose(out.image, outputs.get('image'), TOL, 'image');
      console.log(`vae_decoder max abs diff: sample ${dSample.toExponential(2)}, image ${dImage.toExponential(2)}`);
    } finally {
      w.close();
    }
  });

  it('keeps batch, height and width dynamic', async () => {
    const w = goldenWeights(CASE, WEIGHTS);
    try {
      const latents = inputs.get('latents')!;
      const bytes = buildBytes(w, cfg);
      // The golden latents twice: each batch item must decode like the golden one.
      const B = latents.dims[0]!;
      const batched = await runOnce(bytes, { latents: stack([latents, latents]) });
      for (let i = 0; i < 2 * B; i++) expectClose(item(batched.sample!, i), item(outputs.get('sample')!, i % B), TOL, `sample[${i}]`);
      // Another latent size decodes to `scale` times its size (one 2x upsampler per block after the first).
      const [, c, h, wd] = latents.dims as [number, number, number, number];
      const scale = 2 ** (cfg.blockOutChannels.length - 1);
      const [hs, ws] = [Math.max(1, Math.floor(h / 2)), Math.floor(wd / 2) + 1];
      const small: Tensor = { dtype: 'float32', dims: [1, c, hs, ws], data: new Float32Array(c * hs * ws).fill(0.3) };
      const out = await runOnce(bytes, { latents: small });
      expect(out.sample!.dims).toEqual([1, cfg.outChannels, scale * hs, scale * ws]);
      expect(out.image!.dims).toEqual(out.sample!.dims);
    } finally {
      w.close();
    }
  });

  it('applies post_quant_conv when the config has one', async () => {
    // An identity 1x1 post_quant_conv must leave the golden result unchanged.
    const L = cfg.latentChannels;
    const eye = new Float32Array(L * L);
    for (let i = 0; i < L; i++) eye[i * L + i] = 1;
    const pqc = memorySource({
      'post_quant_conv.weight': { dtype: 'float32', dims: [L, L, 1, 1], data: eye },
      'post_quant_conv.bias': { dtype: 'float32', dims: [L], data: new Float32Array(L) },
    });
    const w = goldenWeights(CASE, WEIGHTS);
    try {
      const withConv: VaeConfig = { ...cfg, usePostQuantConv: true };
      expect(Object.keys(vaeWeightShapes(withConv))).toContain('post_quant_conv.weight');
      const out = await runOnce(buildBytes(mergeSources([w, pqc]), withConv), { latents: inputs.get('latents')! });
      expectClose(out.sample, outputs.get('sample'), TOL, 'sample (post_quant_conv)');
    } finally {
      w.close();
    }
  });

  it('lists exactly the decoder.* keys of the checkpoint', () => {
    const w = goldenWeights(CASE, WEIGHTS);
    try {
      const shapes = vaeWeightShapes(cfg);
      const decoderKeys = w.keys().filter((k) => k.startsWith('decoder.'));
      expect(Object.keys(shapes).sort()).toEqual(decoderKeys.sort());
      for (const k of decoderKeys) expect(shapes[k], k).toEqual(w.shape(k));
    } finally {
      w.close();
    }
  });

  it('names the tensor when a weight is missing or has the wrong shape', () => {
    const w = goldenWeights(CASE, WEIGHTS);
    try {
      const key = 'decoder.mid_block.attentions.0.to_q.weight';
      expect(() => buildBytes(tampered(w, key, undefined), cfg)).toThrow(/decoder\.mid_block\.attentions\.0\.to_q\.weight/);
      const norm = `decoder.up_blocks.${cfg.blockOutChannels.length - 1}.resnets.0.norm2.bias`;
      const wrong = [w.shape(norm)![0]! + 1];
      expect(() => buildBytes(tampered(w, norm, wrong), cfg)).toThrow(`tensor '${norm}' has shape [${wrong[0]}]`);
    } finally {
      w.close();
    }
  });

  it('parses the FLUX.1-dev vae/config.json into FULL_VAE', () => {
    const flux = {
      _class_name: 'AutoencoderKL', act_fn: 'silu', block_out_channels: [128, 256, 512, 512],
      down_block_types: Array(4).fill('DownEncoderBlock2D'), force_upcast: true, in_channels: 3,
      latent_channels: 16, latents_mean: null, latents_std: null, layers_per_block: 2, mid_block_add_attention: true,
      norm_num_groups: 32, out_channels: 3, sample_size: 1024, scaling_factor: 0.3611, shift_factor: 0.1159,
      up_block_types: Array(4).fill('UpDecoderBlock2D'), use_post_quant_conv: false, use_quant_conv: false,
    };
    expect(vaeConfigFromJson(flux)).toEqual(FULL_VAE);
  });

  it('counts the FLUX VAE decoder parameters', () => {
    // Sum over the official decoder key shapes (conv_in from 16 latent channels, no post_quant_conv).
    const n = countParameters(vaeWeightShapes(FULL_VAE));
    console.log(`FLUX VAE decoder parameters: ${n}`);
    expect(n).toBe(49_545_475);
    expect(n).toBeGreaterThanOrEqual(49_000_000);
    expect(n).toBeLessThanOrEqual(50_500_000);
  });
});
