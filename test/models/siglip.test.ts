import { describe, expect, it } from 'vitest';
import { Graph } from '../../models/onnx/graph.ts';
import { runOnce } from '../../models/onnx/ort.ts';
import { countParameters } from '../../models/layers.ts';
import { type WeightSource, memorySource } from '../../models/weights/source.ts';
import { type Tensor, f32 } from '../../models/tensor.ts';
import {
  FULL_SIGLIP, type SiglipOptions, buildSiglip, siglipConfigFromJson, siglipWeightShapes,
} from '../../models/siglip.ts';
import { expectClose, goldenConfig, goldenTensors, goldenWeights } from '../helpers/goldens.ts';
import { diffToPipeline, e2eNormalization, e2ePixels, e2eShallowLayers } from '../helpers/e2e.ts';

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

  it('builds the deep narrow e2e encoder at the pipeline\'s stage size with its shallow hidden states (and matches the pipeline features)', async () => {
    const cfg = siglipConfigFromJson(goldenConfig('instantcharacter_e2e', 'siglip/config.json'));
    const w = goldenWeights('instantcharacter_e2e', 'siglip/model.safetensors');
    const g = new Graph({ name: 'siglip_e2e' });
    const hiddenStates = e2eShallowLayers().siglip;
    const { mean, std } = e2eNormalization('siglip');
    const pixels = await e2ePixels(mean, std);
    const imageSize = pixels.dims[3]!;
    buildSiglip({ g, w }, cfg, { hiddenStates, imageSize });
    w.close();
    const got = await runOnce(g.toBytes(), { pixel_values: pixels });
    const inter = goldenTensors('instantcharacter_e2e', 'intermediates.safetensors');
    const deep = inter.get('image_embeds_low_res_deep')!;
    const tokens = Math.floor(imageSize / cfg.patchSize) ** 2;
    // The pipeline's token count, and its channels: SigLIP's, then DINOv2's.
    const dinoWidth = goldenConfig('instantcharacter_e2e', 'dinov2/config.json')['hidden_size'] as number;
    expect([1, tokens, cfg.hiddenSize + dinoWidth]).toEqual(deep.dims);
    expect(inter.get('image_embeds_low_res_shallow')!.dims).toEqual([1, hiddenStates.length * tokens, cfg.hiddenSize + dinoWidth]);
    for (const name of ['last_hidden_state', ...hiddenStates.map((i) => `hidden_states.${i}`)]) {
      expect(got[name]?.dims, name).toEqual([1, tokens, cfg.hiddenSize]);
    }
    // SigLIP fills channels [0, hidden) of the pipeline's low-res features (shallow: its layers along the sequence).
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
    expect(siglipConfigFromJson(goldenConfig('siglip_vision')).hiddenSize).toBe(goldenConfig('siglip_vision')['hidden_size']);
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
    const cfg = siglipConfigFromJson(goldenConfig('siglip_vision'));
    const key = `vision_model.encoder.layers.${cfg.numLayers - 1}.mlp.fc1.weight`;
    const wrong = [cfg.intermediateSize, cfg.hiddenSize - 1];
    const bad = new Map(tensors);
    bad.set(key, f32(wrong));
    expect(() => buildGraph('siglip_vision', memorySource(bad))).toThrow(`tensor '${key}' has shape [${wrong.join(',')}]`);
    const missing = new Map(tensors);
    missing.delete('vision_model.post_layernorm.weight');
    expect(() => buildGraph('siglip_vision', memorySource(missing))).toThrow(/vision_model\.post_layernorm\.weight/);
  });
});
