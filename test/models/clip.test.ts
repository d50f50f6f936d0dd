// CLIP text encoder (transformers CLIPTextModel) against the clip_text golden case.
import { describe, expect, it } from 'vitest';
import { FULL_CLIP, buildClip, clipConfigFromJson, clipWeightShapes } from '../../models/clip.ts';
import { countParameters } from '../../models/layers.ts';
import { Graph } from '../../models/onnx/graph.ts';
import { runOnce } from '../../models/onnx/ort.ts';
import { type Tensor, toFloat32 } from '../../models/tensor.ts';
import { type WeightSource, memorySource } from '../../models/weights/source.ts';
import { clipSpecialIds, expectClose, goldenConfig, goldenTensors, goldenWeights, need, expectGoldenShapes } from '../helpers/goldens.ts';

const CASE = 'clip_text';
const TOL = 1e-4;
const json = goldenConfig(CASE);
const cfg = clipConfigFromJson(json);
const inputs = goldenTensors(CASE, 'inputs.safetensors');
const outputs = goldenTensors(CASE, 'outputs.safetensors');


const inputIds = need(inputs, 'input_ids');

function build(w: WeightSource, c = cfg): Uint8Array {
  const g = new Graph({ name: 'clip_text' });
  buildClip({ g, w }, c, { seqLen: inputIds.dims[1]! });
  return g.toBytes();
}

/** The golden weights in memory, one key dropped and one 2-D tensor's dims swapped on request. */
function goldenMemory(drop?: string, swap?: string): WeightSource {
  const file = goldenWeights(CASE);
  const map = new Map<string, Tensor>();
  try {
    for (const k of file.keys()) {
      if (k === drop) continue;
      const t = file.get(k);
      map.set(k, k === swap ? { ...t, dims: [t.dims[1]!, t.dims[0]!] } : t);
    }
  } finally {
    file.close();
  }
  return memorySource(map);
}

describe('CLIP text encoder', () => {
  it('parses config.json (bare CLIPTextConfig and nested CLIPConfig)', () => {
    expect(cfg).toEqual({
      vocabSize: json['vocab_size'], hiddenSize: json['hidden_size'], intermediateSize: json['intermediate_size'],
      numLayers: json['num_hidden_layers'], numHeads: json['num_attention_heads'], maxPositions: json['max_position_embeddings'],
      layerNormEps: json['layer_norm_eps'], hiddenAct: json['hidden_act'], eosTokenId: json['eos_token_id'],
    });
    // openai/clip-vit-large-patch14's config.json nests the text model's numbers under text_config.
    const nested = clipConfigFromJson({
      model_type: 'clip',
      text_config: { hidden_size: 768, intermediate_size: 3072, num_attention_heads: 12, eos_token_id: 2 },
      vision_config: { hidden_size: 1024 },
    });
    expect(nested).toEqual(FULL_CLIP);
    expect(() => clipConfigFromJson({ hidden_act: 'swish' })).toThrow(/hidden_act/);
  });

  it('lists exactly the checkpoint keys and shapes', () => {
    expectGoldenShapes(CASE, clipWeightShapes(cfg));
  });

  it('matches the golden last_hidden_state and pooler_output', async () => {
    const w = goldenWeights(CASE);
    try {
      const out = await runOnce(build(w), { input_ids: inputIds });
      for (const name of ['last_hidden_state', 'pooler_output']) {
        const d = expectClose(out[name], need(outputs, name), TOL, name);
        console.log(`clip_text ${name} max abs diff ${d.toExponential(3)}`);
      }
    } finally {
      w.close();
    }
  });

  it('builds an fp16 graph from the same code (loose tolerance: half precision)', async () => {
    const w = goldenWeights(CASE);
    const g = new Graph({ name: 'clip_text_fp16', dtype: 'float16' });
    try {
      buildClip({ g, w }, cfg, { seqLen: inputIds.dims[1]! });
    } finally {
      w.close();
    }
    const out = await runOnce(g.toBytes(), { input_ids: inputIds });
    for (const name of ['last_hidden_state', 'pooler_output']) {
      expect(out[name]?.dtype).toBe('float16');
      const d = expectClose(out[name], need(outputs, name), 5e-2, `${name} (fp16)`);
      console.log(`clip_text fp16 ${name} max abs diff ${d.toExponential(3)}`);
    }
  });

  it('pools at the first eos_token_id when the id is not the legacy 2', async () => {
    // The ids' own EOS (also the largest id, so the legacy argmax found it too): the new rule selects the same rows.
    const special = clipSpecialIds(inputIds);
    const out = await runOnce(build(goldenMemory(), { ...cfg, eosTokenId: special.eos }), { input_ids: inputIds });
    expectClose(out.pooler_output, need(outputs, 'pooler_output'), TOL, 'pooler_output');
    // With the BOS that starts every row as eos_token_id, it pools position 0.
    const bos = await runOnce(build(goldenMemory(), { ...cfg, eosTokenId: special.bos }), { input_ids: inputIds });
    const C = cfg.hiddenSize;
    const T = inputIds.dims[1]!;
    const last = toFloat32(bos.last_hidden_state!);
    const pooled = toFloat32(bos.pooler_output!);
    for (let b = 0; b < inputIds.dims[0]!; b++) {
      for (let c = 0; c < C; c++) expect(pooled[b * C + c]).toBe(last[b * T * C + c]);
    }
  });

  it('names the tensor when a weight is missing or has the wrong shape', () => {
    const missing = `text_model.encoder.layers.${cfg.numLayers - 1}.mlp.fc2.bias`;
    expect(() => build(goldenMemory(missing))).toThrow(`missing tensor '${missing}'`);
    const wrong = 'text_model.encoder.layers.0.mlp.fc1.weight'; // [F, C] stored as [C, F]
    expect(() => build(goldenMemory(undefined, wrong))).toThrow(`tensor '${wrong}' has shape [${cfg.hiddenSize},${cfg.intermediateSize}]`);
  });

  it('counts the parameters of openai/clip-vit-large-patch14 text model', () => {
    expect(countParameters(clipWeightShapes(FULL_CLIP))).toBe(123_060_480);
  });
});
