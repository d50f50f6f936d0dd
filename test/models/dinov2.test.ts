import { describe, expect, it } from 'vitest';
import { Graph } from '../../models/onnx/graph.ts';
import { runOnce } from '../../models/onnx/ort.ts';
import { countParameters } from '../../models/layers.ts';
import { type WeightSource, memorySource } from '../../models/weights/source.ts';
import { type Tensor, f32 } from '../../models/tensor.ts';
import {
  FULL_DINOV2, type Dinov2Options, buildDinov2, dinov2ConfigFromJson, dinov2WeightShapes, interpolatePositionEmbeddings,
} from '../../models/dinov2.ts';
import { resizeBicubicHWC } from '../../models/bicubic.ts';
import { expectClose, goldenConfig, goldenTensors, goldenWeights } from '../helpers/goldens.ts';
import { diffToPipeline, e2eNormalization, e2ePixels, e2eShallowLayers } from '../helpers/e2e.ts';

const TOL = 1e-4;

function buildGraph(caseName: string, w: WeightSource, opts: Dinov2Options): Uint8Array {
  const g = new Graph({ name: 'dinov2' });
  buildDinov2({ g, w }, dinov2ConfigFromJson(goldenConfig(caseName)), opts);
  return g.toBytes();
}

/** x[:, 0] of a [B, T, C] tensor. */
function firstToken(t: Tensor): Tensor {
  const [B, T, C] = t.dims as [number, number, number];
  const src = t.data as Float32Array;
  const out = new Float32Array(B * C);
  for (let b = 0; b < B; b++) out.set(src.subarray(b * T * C, b * T * C + C), b * C);
  return { dtype: 'float32', dims: [B, C], data: out };
}

/** Deterministic pseudo-random pixels in about [-1, 1]. */
function wavyPixels(dims: number[]): Tensor {
  const t = f32(dims);
  const data = t.data as Float32Array;
  for (let i = 0; i < data.length; i++) data[i] = Math.sin(i * 0.7311) * Math.cos(i * 0.0137);
  return t;
}

describe('DINOv2', () => {
  it('matches the transformers golden (position grid interpolated to the input size)', async () => {
    const inputs = goldenTensors('dinov2', 'inputs.safetensors');
    const outputs = goldenTensors('dinov2', 'outputs.safetensors');
    const pixels = inputs.get('pixel_values')!;
    const hiddenStates = [...outputs.keys()].filter((k) => k.startsWith('hidden_states.')).map((k) => Number(k.split('.')[1]));
    const w = goldenWeights('dinov2');
    const model = buildGraph('dinov2', w, { hiddenStates, imageSize: pixels.dims[3]! });
    w.close();
    const got = await runOnce(model, { pixel_values: pixels });
    const names = ['last_hidden_state', ...hiddenStates.map((i) => `hidden_states.${i}`)];
    expect(Object.keys(got).sort()).toEqual([...names].sort());
    for (const name of names) {
      const d = expectClose(got[name], outputs.get(name), TOL, name);
      console.log(`dinov2 ${name}: max abs diff ${d.toExponential(2)}`);
    }
    // pooler_output is the CLS token of last_hidden_state: not a graph output, checked by slicing.
    const d = expectClose(firstToken(got['last_hidden_state']!), outputs.get('pooler_output'), TOL, 'pooler_output');
    console.log(`dinov2 pooler_output (sliced): max abs diff ${d.toExponential(2)}`);
  });

  it('interpolates the position embeddings as torch bicubic (debug.interpolated_position_embeddings)', () => {
    const cfg = dinov2ConfigFromJson(goldenConfig('dinov2'));
    const pixels = goldenTensors('dinov2', 'inputs.safetensors').get('pixel_values')!;
    const expected = goldenTensors('dinov2', 'outputs.safetensors').get('debug.interpolated_position_embeddings');
    const pos = goldenTensors('dinov2', 'model.safetensors').get('embeddings.position_embeddings')!;
    const got = interpolatePositionEmbeddings(pos, Math.floor(pixels.dims[3]! / cfg.patchSize));
    const d = expectClose(got, expected, 1e-5, 'debug.interpolated_position_embeddings');
    console.log(`dinov2 debug.interpolated_position_embeddings: max abs diff ${d.toExponential(2)}`);
    const trained = Math.floor((goldenConfig('dinov2')['image_size'] as number) / cfg.patchSize);
    expect(pos.dims[1]).toBe(1 + trained ** 2);
    expect(interpolatePositionEmbeddings(pos, trained)).toBe(pos); // trained grid: no resize
  });

  it('bicubic resize keeps constants and reproduces an identity-size grid', () => {
    const flat = new Float32Array(7 * 7 * 2).fill(0.25);
    expect(Array.from(resizeBicubicHWC(flat, 7, 7, 2, 5, 3)).every((v) => Math.abs(v - 0.25) < 1e-6)).toBe(true);
    const ramp = Float32Array.from({ length: 16 }, (_, i) => i);
    expect(Array.from(resizeBicubicHWC(ramp, 4, 4, 1, 4, 4))).toEqual(Array.from(ramp));
  });

  it('builds the deep narrow e2e encoder at the pipeline\'s stage size with its shallow hidden states (and matches the pipeline features)', async () => {
    const cfg = dinov2ConfigFromJson(goldenConfig('instantcharacter_e2e', 'dinov2/config.json'));
    const w = goldenWeights('instantcharacter_e2e', 'dinov2/model.safetensors');
    const g = new Graph({ name: 'dinov2_e2e' });
    const hiddenStates = e2eShallowLayers().dinov2;
    const { mean, std } = e2eNormalization('dinov2');
    const pixels = await e2ePixels(mean, std);
    const imageSize = pixels.dims[3]!;
    buildDinov2({ g, w }, cfg, { hiddenStates, imageSize });
    w.close();
    const got = await runOnce(g.toBytes(), { pixel_values: pixels });
    const patches = Math.floor(imageSize / cfg.patchSize) ** 2;
    // DINOv2 fills the channels after SigLIP's in the pipeline's low-res features, CLS dropped.
    const inter = goldenTensors('instantcharacter_e2e', 'intermediates.safetensors');
    const deep = inter.get('image_embeds_low_res_deep')!;
    const sigWidth = goldenConfig('instantcharacter_e2e', 'siglip/config.json')['hidden_size'] as number;
    expect(deep.dims).toEqual([1, patches, sigWidth + cfg.hiddenSize]);
    for (const name of ['last_hidden_state', ...hiddenStates.map((i) => `hidden_states.${i}`)]) {
      expect(got[name]?.dims, name).toEqual([1, 1 + patches, cfg.hiddenSize]);
    }
    const offset = sigWidth;
    const checks: [string, string, number][] = [
      ['last_hidden_state', 'image_embeds_low_res_deep', 0],
      ...hiddenStates.map((i, j): [string, string, number] => [`hidden_states.${i}`, 'image_embeds_low_res_shallow', j * patches]),
    ];
    for (const [name, refName, start] of checks) {
      const d = diffToPipeline(got[name]!, inter.get(refName)!, offset, start, 1);
      console.log(`e2e dinov2 ${name} vs ${refName}: max abs diff ${d.toExponential(2)}`);
      expect(d, name).toBeLessThan(1e-4);
    }
  });

  it('builds the plain-MLP variant (use_swiglu_ffn false: fc1, gelu, fc2)', async () => {
    const cfg = { ...dinov2ConfigFromJson(goldenConfig('dinov2')), useSwigluFfn: false };
    const tensors = new Map<string, Tensor>();
    for (const [key, dims] of Object.entries(dinov2WeightShapes(cfg))) {
      tensors.set(key, f32(dims, Array.from({ length: dims.reduce((a, b) => a * b, 1) }, (_, i) => 0.05 * Math.sin(i + key.length))));
    }
    const ratio = goldenConfig('dinov2')['mlp_ratio'] as number;
    expect(tensors.get('encoder.layer.0.mlp.fc1.weight')?.dims).toEqual([cfg.hiddenSize * ratio, cfg.hiddenSize]);
    // The golden input's batch and size.
    const [B, , S] = goldenTensors('dinov2', 'inputs.safetensors').get('pixel_values')!.dims as number[];
    const g = new Graph({ name: 'dinov2_mlp' });
    buildDinov2({ g, w: memorySource(tensors) }, cfg, { imageSize: S! });
    const got = await runOnce(g.toBytes(), { pixel_values: wavyPixels([B!, 3, S!, S!]) });
    expect(got['last_hidden_state']?.dims).toEqual([B, 1 + Math.floor(S! / cfg.patchSize) ** 2, cfg.hiddenSize]);
  });

  it('counts dinov2-giant', () => {
    // transformers counts 1,136,480,768 for Dinov2Model(giant); that includes embeddings.mask_token (1536),
    // which only masked pretraining reads and the builder does not.
    const shapes = dinov2WeightShapes(FULL_DINOV2);
    expect(shapes['encoder.layer.0.mlp.weights_in.weight']).toEqual([8192, 1536]);
    const n = countParameters(shapes);
    console.log(`DINOv2 giant without mask_token: ${n} parameters`);
    expect(n).toBe(1_136_479_232);
    expect(n + FULL_DINOV2.hiddenSize).toBe(1_136_480_768);
    expect(n).toBeGreaterThan(1.13e9);
    expect(n).toBeLessThan(1.15e9);
  });

  it('names the tensor when a weight is missing or has the wrong shape', () => {
    const tensors = goldenTensors('dinov2', 'model.safetensors');
    const cfg = dinov2ConfigFromJson(goldenConfig('dinov2'));
    const imageSize = goldenTensors('dinov2', 'inputs.safetensors').get('pixel_values')!.dims[3]!;
    const key = `encoder.layer.${cfg.numLayers - 1}.mlp.weights_in.weight`;
    const [rows, cols] = tensors.get(key)!.dims as [number, number];
    const bad = new Map(tensors);
    bad.set(key, f32([rows + 1, cols]));
    expect(() => buildGraph('dinov2', memorySource(bad), { imageSize })).toThrow(`tensor '${key}' has shape [${rows + 1},${cols}]`);
    const missing = new Map(tensors);
    missing.delete('encoder.layer.0.layer_scale2.lambda1');
    expect(() => buildGraph('dinov2', memorySource(missing), { imageSize })).toThrow(/encoder\.layer\.0\.layer_scale2\.lambda1/);
  });
});
