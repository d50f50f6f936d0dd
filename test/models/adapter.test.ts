// InstantCharacter adapter (CrossLayerCrossScaleProjector) against the ic_projector golden case.
import { describe, expect, it } from 'vitest';
import {
  FULL_ADAPTER, adapterConfigFromJson, adapterWeightShapes, buildAdapterStatic, buildAdapterTime,
} from '../../models/adapter.ts';
import { countParameters } from '../../models/layers.ts';
import { Graph } from '../../models/onnx/graph.ts';
import { runOnce } from '../../models/onnx/ort.ts';
import type { Tensor } from '../../models/tensor.ts';
import { type WeightSource, memorySource, withPrefix } from '../../models/weights/source.ts';
import { expectClose, goldenConfig, goldenTensors, goldenWeights, indexedNames, need, expectGoldenShapes } from '../helpers/goldens.ts';

const CASE = 'ic_projector';
const TOL = 1e-4;
const json = goldenConfig(CASE);
const cfg = adapterConfigFromJson(json);
const inputs = goldenTensors(CASE, 'inputs.safetensors');
const outputs = goldenTensors(CASE, 'outputs.safetensors');


/** Max |x|, to scale the tolerance of the larger-magnitude resampler input. */
function maxAbs(t: Tensor): number {
  let m = 0;
  for (const v of t.data as Float32Array) m = Math.max(m, Math.abs(v));
  return m;
}

function staticModel(w: WeightSource): Uint8Array {
  const g = new Graph({ name: 'adapter_static' });
  buildAdapterStatic({ g, w }, cfg);
  return g.toBytes();
}

function timeModel(w: WeightSource): Uint8Array {
  const g = new Graph({ name: 'adapter_time' });
  buildAdapterTime({ g, w }, cfg, { debugOutputs: true });
  return g.toBytes();
}

/** Runs both graphs on the golden inputs and compares every golden output; returns the max diffs. */
async function checkAgainstGolden(w: WeightSource, label: string): Promise<void> {
  const st = await runOnce(staticModel(w), {
    low_res_deep: need(inputs, 'low_res_deep'),
    low_res_shallow: need(inputs, 'low_res_shallow'),
    high_res_deep: need(inputs, 'high_res_deep'),
  });
  const expectedInput = need(outputs, 'debug.resampler_input');
  const inputTol = TOL * Math.max(1, maxAbs(expectedInput));
  const dIn = expectClose(st.resampler_input, expectedInput, inputTol, 'debug.resampler_input');
  console.log(`[${label}] resampler_input max abs diff ${dIn.toExponential(3)} (tol ${inputTol.toExponential(2)})`);

  const time = timeModel(w);
  const ks = indexedNames(inputs, 'timesteps');
  expect(ks.length).toBeGreaterThan(0);
  for (const k of ks) {
    const out = await runOnce(time, { resampler_input: st.resampler_input!, timestep: need(inputs, `timesteps.${k}`) });
    for (const [name, golden] of [
      ['timestep_sinusoid', `debug.timestep_sinusoid.${k}`],
      ['timestep_emb', `timestep_emb.${k}`],
      ['ip_hidden_states', `ip_hidden_states.${k}`],
    ] as const) {
      const d = expectClose(out[name], need(outputs, golden), TOL, golden);
      console.log(`[${label}] ${golden} max abs diff ${d.toExponential(3)}`);
    }
  }
}

describe('InstantCharacter adapter (CrossLayerCrossScaleProjector)', () => {
  it('parses the constructor kwargs', () => {
    expect(cfg).toMatchObject({
      innerDim: json['inner_dim'], numAttentionHeads: json['num_attention_heads'], attentionHeadDim: json['attention_head_dim'],
      numLayers: json['num_layers'], dim: json['dim'], depth: json['depth'], heads: json['heads'], dimHead: json['dim_head'],
      numQueries: json['num_queries'], timestepFlipSinToCos: json['timestep_flip_sin_to_cos'],
    });
    expect(adapterConfigFromJson({})).toEqual(FULL_ADAPTER);
    expect(() => adapterConfigFromJson({ dim: '32' })).toThrow(/dim/);
  });

  it('lists exactly the checkpoint keys and shapes', () => {
    expectGoldenShapes(CASE, adapterWeightShapes(cfg));
  });

  it('has the official parameter count (image_proj of the released checkpoint)', () => {
    // 2,794,932,864 with the IP layers; those are 57 x (2 x (4096 x 3072 + 3072) + 2 x 128).
    const ipLayers = 57 * (2 * (4096 * 3072 + 3072) + 2 * 128);
    expect(countParameters(adapterWeightShapes(FULL_ADAPTER))).toBe(2_794_932_864 - ipLayers);
    expect(countParameters(adapterWeightShapes(FULL_ADAPTER))).toBe(1_360_116_096);
  });

  it('matches the golden outputs (model.safetensors)', async () => {
    const w = goldenWeights(CASE);
    try {
      await checkAgainstGolden(w, 'model.safetensors');
    } finally {
      w.close?.();
    }
  });

  it('matches the golden outputs from the combined ip-adapter.safetensors (image_proj. prefix)', async () => {
    const w = goldenWeights('ic_adapter', 'ip-adapter.safetensors');
    try {
      await checkAgainstGolden(withPrefix(w, 'image_proj.'), 'ip-adapter.safetensors');
    } finally {
      w.close?.();
    }
  });

  it('names the tensor when a weight is missing or has the wrong shape', () => {
    const w = goldenWeights(CASE);
    try {
      const all = new Map(w.keys().map((k) => [k, w.get(k)] as const));
      const gone = `cross_scale_blocks.${cfg.numLayers - 1}.attn2.to_k.weight`;
      const missing = new Map(all);
      missing.delete(gone);
      expect(() => staticModel(memorySource(missing))).toThrow(`missing tensor '${gone}'`);

      const key = `resampler.layers.${cfg.depth - 1}.2.1.weight`;
      const [rows, cols] = all.get(key)!.dims as [number, number];
      const wrong = new Map(all);
      wrong.set(key, { dtype: 'float32', dims: [rows + 1, cols], data: new Float32Array((rows + 1) * cols) });
      expect(() => timeModel(memorySource(wrong))).toThrow(`tensor '${key}' has shape [${rows + 1},${cols}]`);
    } finally {
      w.close?.();
    }
  });
});
