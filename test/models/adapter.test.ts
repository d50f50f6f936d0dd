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
import { expectClose, goldenConfig, goldenTensors, goldenWeights, need, expectGoldenShapes } from '../helpers/goldens.ts';

const CASE = 'ic_projector';
const TOL = 1e-4;
const cfg = adapterConfigFromJson(goldenConfig(CASE));
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
  for (const k of [0, 1]) {
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
    expect(cfg).toMatchObject({ innerDim: 40, numAttentionHeads: 4, numLayers: 2, dim: 32, heads: 2, numQueries: 8, timestepFlipSinToCos: true });
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
      const missing = new Map(all);
      missing.delete('cross_scale_blocks.1.attn2.to_k.weight');
      expect(() => staticModel(memorySource(missing))).toThrow(/cross_scale_blocks\.1\.attn2\.to_k\.weight/);

      const wrong = new Map(all);
      wrong.set('resampler.layers.1.2.1.weight', { dtype: 'float32', dims: [3, 32], data: new Float32Array(96) });
      expect(() => timeModel(memorySource(wrong))).toThrow(/resampler\.layers\.1\.2\.1\.weight/);
    } finally {
      w.close?.();
    }
  });
});
