import { describe, expect, it } from 'vitest';
import { Graph } from '../../models/onnx/graph.ts';
import { runOnce } from '../../models/onnx/ort.ts';
import { countParameters } from '../../models/layers.ts';
import { type WeightSource, memorySource } from '../../models/weights/source.ts';
import { type Tensor, f32 } from '../../models/tensor.ts';
import {
  FULL_SIGLIP, type SiglipOptions, buildSiglip, siglipConfigFromJson, siglipWeightShapes,
} from '../../models/siglip.ts';
import { expectClose, goldenConfig, goldenPath, goldenTensors, goldenWeights } from '../helpers/goldens.ts';
import { diffToPipeline, e2ePixels } from '../helpers/e2e.ts';

const TOL = 1e-4;

function buildGraph(caseName: string, w: WeightSource, opts: SiglipOptions = {}): Uint8Array {
  const g = new Graph({ name: 'siglip_vision' });
  buildSiglip({ g, w }, siglipConfigFromJson(goldenConfig(caseName)), opts);
  return g.toBytes();
}

describe('SigLIP vision tower', () => {
  it('matches the transformers golden on last_hidden_state and every hidden_states.<i> (pooler_output skipped: the pooling head is not built)', async () => {
    const inputs = goldenTensors('siglip_vision', 'inputs.safetensors');
    const outputs = goldenTensors('siglip_vision', 'outputs.safetensors');
    const hiddenStates = [...outputs.keys()].filter((k) => k.startsWith('hidden_states.')).map((k) => Number(k.split('.')[1]));
    const w = goldenWeights('siglip_vision');
    const model = buildGraph('siglip_vision', w, { hiddenStates });
    w.close();
    const got = await runOnce(model, { pixel_values: inputs.get('pixel_values')! });
    const names = ['last_hidden_state', ...hiddenStates.map((i) => `hidden_states.${i}`)];
    expect(Object.keys(got).sort()).toEqual([...names].sort());
    for (const name of names) {
      const d = expectClose(got[name], outputs.get(name), TOL, name);
      console.log(`siglip_vision ${name}: max abs diff ${d.toExponential(2)}`);
    }
  });

  it('builds the deep narrow e2e encoder at 384 px with hidden states 7, 13, 26 (and matches the pipeline features)', async () => {
    const cfg = siglipConfigFromJson(goldenConfig('instantcharacter_e2e', 'siglip/config.json'));
    const w = goldenWeights('instantcharacter_e2e', 'siglip/model.safetensors');
    const g = new Graph({ name: 'siglip_e2e' });
    const hiddenStates = [7, 13, 26];
    buildSiglip({ g, w }, cfg, { hiddenStates, imageSize: 384 });
    w.close();
    const got = await runOnce(g.toBytes(), { pixel_values: await e2ePixels([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]) });
    const tokens = Math.floor(384 / cfg.patchSize) ** 2;
    expect([1, tokens, cfg.hiddenSize]).toEqual([1, 729, 16]);
    for (const name of ['last_hidden_state', ...hiddenStates.map((i) => `hidden_states.${i}`)]) {
      expect(got[name]?.dims, name).toEqual([1, tokens, cfg.hiddenSize]);
    }
    // SigLIP fills channels [0, 16) of the pipeline's low-res features (shallow: 3 layers along the sequence).
    const inter = goldenTensors('instantcharacter_e2e', 'intermediates.safetensors');
    const checks: [string, string, number][] = [
      ['last_hidden_state', 'image_embeds_low_res_deep', 0],
      ...hiddenStates.map((i, j): [string, string, number] => [`hidden_states.${i}`, 'image_embeds_low_res_shallow', j * tokens]),
    ];
    for (const [name, refName, start] of checks) {
      const d = diffToPipeline(got[name]!, inter.get(refName)!, 0, start, 0);
      console.log(`e2e siglip ${name} vs ${refName}: max abs diff ${d.toExponential(2)}`);
      expect(d, name).toBeLessThan(1e-4);
    }
  });

  it('reads a full SiglipConfig (vision part nested under vision_config, transformers defaults filled in)', () => {
    // The shape of google/siglip-so400m-patch14-384's config.json: only non-default vision fields are written.
    const json = {
      architectures: ['SiglipModel'],
      model_type: 'siglip',
      text_config: { hidden_size: 1152, intermediate_size: 4304, model_type: 'siglip_text_model', num_attention_heads: 16, num_hidden_layers: 27 },
      vision_config: { hidden_size: 1152, image_size: 384, intermediate_size: 4304, model_type: 'siglip_vision_model', num_attention_heads: 16, num_hidden_layers: 27, patch_size: 14 },
    };
    expect(siglipConfigFromJson(json)).toEqual(FULL_SIGLIP);
    expect(siglipConfigFromJson(goldenConfig('siglip_vision')).hiddenSize).toBe(32);
  });

  it('counts the so400m vision tower without its pooling head', () => {
    // transformers counts 428,225,600 for SiglipVisionModel(so400m) including vision_model.head.*; the head
    // (probe 1152, MHA in/out 5,313,024, layernorm 2,304, MLP 9,921,872) is 15,238,352 of it and is not built.
    const n = countParameters(siglipWeightShapes(FULL_SIGLIP));
    console.log(`SigLIP so400m vision tower without head: ${n} parameters`);
    expect(n).toBe(412_987_248);
    expect(n + 15_238_352).toBe(428_225_600);
    expect(n).toBeGreaterThan(0.40e9);
    expect(n).toBeLessThan(0.44e9);
  });

  it('names the tensor when a weight is missing or has the wrong shape', () => {
    const tensors = goldenTensors('siglip_vision', 'model.safetensors');
    const bad = new Map(tensors);
    bad.set('vision_model.encoder.layers.1.mlp.fc1.weight', f32([64, 31]));
    expect(() => buildGraph('siglip_vision', memorySource(bad))).toThrow(/vision_model\.encoder\.layers\.1\.mlp\.fc1\.weight.*\[64,31\]/);
    const missing = new Map(tensors);
    missing.delete('vision_model.post_layernorm.weight');
    expect(() => buildGraph('siglip_vision', memorySource(missing))).toThrow(/vision_model\.post_layernorm\.weight/);
  });
});
