// Attention written three ways (layers.ts AttentionForm): the fused MultiHeadAttention and the 'auto' If
// against the flux_transformer_ip golden case at flux.test.ts's tolerance, the forms against each other on
// batch 2 with two regional characters, and the op types each form writes.
import { beforeAll, describe, expect, it } from 'vitest';
import { Graph } from '../../models/onnx/graph.ts';
import { runOnce } from '../../models/onnx/ort.ts';
import { countOps, modelOps } from '../../models/onnx/ops.ts';
import type { AttentionForm } from '../../models/layers.ts';
import { type FluxConfig, buildFlux, fluxConfigFromJson } from '../../models/flux.ts';
import { fluxGoldenFeeds } from '../helpers/flux-golden.ts';
import type { WeightSource } from '../../models/weights/source.ts';
import { type Tensor, f32, toFloat32 } from '../../models/tensor.ts';
import { expectClose, goldenConfig, goldenTensors, goldenWeights, maxAbsDiff, scaledVariant } from '../helpers/goldens.ts';

const CASE = 'flux_transformer_ip';
/** flux.test.ts's tolerance for this case. */
const TOL = 2e-4;

function build(cfg: FluxConfig, w: WeightSource, ip: WeightSource | undefined, attention: AttentionForm, debugOutputs = false, fusedFrom?: number): Uint8Array {
  const g = new Graph({ name: 'flux' });
  buildFlux({ g, w }, ip, cfg, { debugOutputs, attention, fusedFrom });
  return g.toBytes();
}

/** 'auto' thresholds (score elements) that make every If take the fused branch, or the plain one. */
const FROM = { fused: 1, plain: 2 ** 40 };

/** [1, ...] tensors repeated n times along the first axis. */
function repeat(t: Tensor, n: number): Tensor {
  const a = toFloat32(t);
  const data = new Float32Array(a.length * n);
  for (let i = 0; i < n; i++) data.set(a, i * a.length);
  return f32([n, ...t.dims.slice(1)], data);
}

describe('fused attention (MultiHeadAttention) in FLUX and its IP attention', () => {
  let cfg: FluxConfig;
  let inputs: Map<string, Tensor>;
  let outputs: Map<string, Tensor>;
  let feeds: Record<string, Tensor>;
  let w: WeightSource;
  let ip: WeightSource;
  let scale: number;
  let L: number;

  beforeAll(() => {
    cfg = fluxConfigFromJson(goldenConfig(CASE));
    inputs = goldenTensors(CASE, 'inputs.safetensors');
    outputs = goldenTensors(CASE, 'outputs.safetensors');
    w = goldenWeights(CASE, 'diffusion_pytorch_model.safetensors');
    ip = goldenWeights(CASE, 'ip_adapter.safetensors');
    scale = toFloat32(inputs.get('subject_scale')!)[0]!;
    L = inputs.get('hidden_states')!.dims[1]!;
    feeds = {
      ...fluxGoldenFeeds(cfg, inputs),
      ip_hidden_states: inputs.get('ip_hidden_states')!,
      ip_masks: f32([1, L], new Float32Array(L).fill(scale)),
    };
  });

  it('matches the golden noise_pred and IP attention fused, and through both branches of the auto graph', async () => {
    const expected = scaledVariant(outputs, 'noise_pred', scale);
    const runs: [string, Uint8Array][] = [
      ['fused', build(cfg, w, ip, 'fused', true)],
      ['auto, fused branch', build(cfg, w, ip, 'auto', true, FROM.fused)],
      ['auto, plain branch', build(cfg, w, ip, 'auto', true, FROM.plain)],
    ];
    for (const [name, model] of runs) {
      const out = await runOnce(model, feeds);
      const d = expectClose(out.noise_pred, expected, TOL, `noise_pred (${name})`);
      for (let i = 0; i < cfg.numLayers + cfg.numSingleLayers; i++) {
        const gold = outputs.get(`debug.ip_attn.${i}`)!;
        expectClose(f32(gold.dims, toFloat32(out[`debug.ip_attn.${i}`]!)), gold, TOL, `debug.ip_attn.${i} (${name})`);
      }
      console.log(`${name}: noise_pred max abs diff ${d}`);
    }
  });

  it('gives the plain form\'s result on batch 2 with two regional characters (true CFG\'s call shape)', async () => {
    const P = inputs.get('ip_hidden_states')!.dims[1]!;
    const tokens = toFloat32(inputs.get('ip_hidden_states')!);
    // A second character: the first one's tokens reversed; masks split the grid in halves, scales differ.
    const second = Float32Array.from(tokens).reverse();
    const masks = new Float32Array(2 * L);
    for (let l = 0; l < L; l++) {
      masks[l] = l < L / 2 ? scale : 0;
      masks[L + l] = l < L / 2 ? 0.3 : 0.8;
    }
    const twoChars = {
      ip_hidden_states: f32([2, P, tokens.length / P], Float32Array.from([...tokens, ...second])),
      ip_masks: f32([2, L], masks),
    };
    const batch2 = Object.fromEntries(['hidden_states', 'encoder_hidden_states', 'pooled_projections', 'timestep', 'guidance']
      .map((k) => [k, repeat(feeds[k]!, 2)]));
    const all = { ...feeds, ...batch2, ...twoChars };
    const plain = (await runOnce(build(cfg, w, ip, 'plain'), all)).noise_pred!;
    const fused = (await runOnce(build(cfg, w, ip, 'auto', false, FROM.fused), all)).noise_pred!;
    const autoPlain = (await runOnce(build(cfg, w, ip, 'auto', false, FROM.plain), all)).noise_pred!;
    expect(fused.dims).toEqual([2, L, cfg.patchSize ** 2 * cfg.outChannels]);
    expect(Array.from(toFloat32(autoPlain))).toEqual(Array.from(toFloat32(plain))); // the same ops
    const d = maxAbsDiff(fused, plain);
    const scaleOfOut = Math.max(...Array.from(toFloat32(plain), Math.abs));
    console.log(`batch 2, two characters: fused vs plain max abs diff ${d} (output max |x| ${scaleOfOut})`);
    expect(d).toBeLessThanOrEqual(1e-5 * Math.max(1, scaleOfOut));
    // Both images got the same inputs: the fused batch axis (images x characters) kept them apart correctly.
    const half = toFloat32(fused).length / 2;
    expect(maxAbsDiff(f32([half], toFloat32(fused).subarray(0, half)), f32([half], toFloat32(fused).subarray(half)))).toBeLessThanOrEqual(1e-6 * Math.max(1, scaleOfOut));
  });

  it('writes MultiHeadAttention where the form says, and MatMul -> Softmax -> MatMul elsewhere', () => {
    const attentions = 2 * (cfg.numLayers + cfg.numSingleLayers); // joint + IP per block
    const plain = modelOps(build(cfg, w, ip, 'plain'));
    expect(countOps(plain).get('MultiHeadAttention')).toBeUndefined();
    expect(countOps(plain).get('Softmax')).toBe(attentions);
    expect(countOps(plain).get('If')).toBeUndefined();

    const fused = modelOps(build(cfg, w, ip, 'fused'));
    expect(countOps(fused).get('MultiHeadAttention')).toBe(attentions);
    expect(countOps(fused).get('Softmax')).toBeUndefined();

    // auto: one If per attention, fused op in the then-branch and the plain form in the else-branch.
    const auto = modelOps(build(cfg, w, ip, 'auto'));
    const ifs = auto.filter((n) => n.op === 'If');
    expect(ifs).toHaveLength(attentions);
    for (const n of ifs) {
      expect(countOps(n.subgraphs.then_branch!).get('MultiHeadAttention')).toBe(1);
      expect(countOps(n.subgraphs.then_branch!).get('Softmax')).toBeUndefined();
      expect(countOps(n.subgraphs.else_branch!).get('Softmax')).toBe(1);
      expect(countOps(n.subgraphs.else_branch!).get('MatMul')).toBe(2);
      expect(countOps(n.subgraphs.else_branch!).get('MultiHeadAttention')).toBeUndefined();
    }
    // Outside the branches, no attention at all.
    expect(countOps(auto, false).get('Softmax')).toBeUndefined();
    expect(countOps(auto, false).get('MultiHeadAttention')).toBeUndefined();
  });
});
