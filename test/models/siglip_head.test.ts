// The SigLIP attention-pooling head (vision_model.head.*) against the siglip_vision golden's pooler_output.
import { describe, expect, it } from 'vitest';
import { Graph } from '../../models/onnx/graph.ts';
import { runOnce } from '../../models/onnx/ort.ts';
import { countParameters } from '../../models/layers.ts';
import { memorySource } from '../../models/weights/source.ts';
import { f32 } from '../../models/tensor.ts';
import { FULL_SIGLIP, buildSiglip, siglipConfigFromJson, siglipHasHead, siglipHeadShapes, siglipWeightShapes } from '../../models/siglip.ts';
import { expectClose, goldenConfig, goldenTensors, goldenWeights } from '../helpers/goldens.ts';

const CASE = 'siglip_vision';
const TOL = 1e-4;

describe('SigLIP pooling head', () => {
  it('matches pooler_output of the transformers golden (and leaves last_hidden_state unchanged)', async () => {
    const cfg = siglipConfigFromJson(goldenConfig(CASE));
    const inputs = goldenTensors(CASE, 'inputs.safetensors');
    const outputs = goldenTensors(CASE, 'outputs.safetensors');
    const w = goldenWeights(CASE);
    expect(siglipHasHead(w)).toBe(true);
    const g = new Graph({ name: 'siglip_pooled' });
    buildSiglip({ g, w }, cfg, { pooled: true });
    w.close();
    const got = await runOnce(g.toBytes(), { pixel_values: inputs.get('pixel_values')! });
    const expected = outputs.get('pooler_output')!;
    expect(got.pooler_output!.dims).toEqual(expected.dims);
    const d = expectClose(got.pooler_output, expected, TOL, 'pooler_output');
    const dl = expectClose(got.last_hidden_state, outputs.get('last_hidden_state'), TOL, 'last_hidden_state');
    console.log(`siglip pooler_output max abs diff ${d.toExponential(2)} (last_hidden_state ${dl.toExponential(2)})`);
  });

  it('reads exactly the golden checkpoint\'s keys and shapes with the head', () => {
    const cfg = siglipConfigFromJson(goldenConfig(CASE));
    const w = goldenWeights(CASE);
    const shapes = siglipWeightShapes(cfg, { head: true });
    expect(Object.keys(shapes).sort()).toEqual(w.keys().sort());
    for (const [k, dims] of Object.entries(shapes)) expect(w.shape(k), k).toEqual(dims);
    w.close();
  });

  it('counts the so400m head as transformers does (15,238,352 parameters)', () => {
    expect(countParameters(siglipHeadShapes(FULL_SIGLIP))).toBe(15_238_352);
    expect(countParameters(siglipWeightShapes(FULL_SIGLIP, { head: true }))).toBe(428_225_600);
  });

  it('names the head tensor that is missing or misshapen', () => {
    const cfg = siglipConfigFromJson(goldenConfig(CASE));
    const tensors = goldenTensors(CASE, 'model.safetensors');
    const build = (m: Map<string, ReturnType<typeof f32>>) => {
      const g = new Graph({ name: 'siglip_pooled' });
      buildSiglip({ g, w: memorySource(m) }, cfg, { pooled: true });
    };
    const gone = new Map(tensors);
    gone.delete('vision_model.head.mlp.fc2.bias');
    expect(() => build(gone)).toThrow('vision_model.head.mlp.fc2.bias');
    const bad = new Map(tensors);
    bad.set('vision_model.head.attention.in_proj_weight', f32([2, 2]));
    expect(() => build(bad)).toThrow('vision_model.head.attention.in_proj_weight');
  });
});
