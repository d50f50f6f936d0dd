// Several characters in one transformer call (ip_hidden_states [R, P, D], ip_masks [R, L]) on the
// flux_transformer_ip golden weights: the masked sum of each block's IP attention, checked block by block.
import { beforeAll, describe, expect, it } from 'vitest';
import { Graph } from '../../models/onnx/graph.ts';
import { runOnce } from '../../models/onnx/ort.ts';
import { type FluxConfig, buildFlux, fluxConfigFromJson } from '../../models/flux.ts';
import { fluxRope } from '../../models/rope.ts';
import { type Tensor, f32, toFloat32 } from '../../models/tensor.ts';
import { rasteriseRegion } from '../../nodes/lib/regions.ts';
import type { CharacterRegion } from '../../nodes/types.ts';
import { goldenConfig, goldenTensors, goldenWeights, maxAbsDiff, need } from '../helpers/goldens.ts';

const CASE = 'flux_transformer_ip';
/** Same graph, same q: only float reordering of a masked sum separates the two sides. */
const EXACT = 1e-6;

let cfg: FluxConfig;
let model: Uint8Array;
let base: Record<string, Tensor>;
let tokensA: Tensor;
let tokensB: Tensor;
let L: number;
let rows: number;
let cols: number;
let blocks: number;
let C: number;

/** [1, P, D] tokens stacked along the character axis. */
function stack(...ts: Tensor[]): Tensor {
  const parts = ts.map(toFloat32);
  const data = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    data.set(p, off);
    off += p.length;
  }
  return f32([ts.length, ...ts[0]!.dims.slice(1)], data);
}

/** Weights [R, L] from per-character masks and scales. */
function weights(masks: Float32Array[], scales: number[]): Tensor {
  const data = new Float32Array(masks.length * L);
  masks.forEach((m, r) => m.forEach((v, l) => (data[r * L + l] = scales[r]! * v)));
  return f32([masks.length, L], data);
}

const rect = (x: number, w: number, feather = 0): CharacterRegion => ({ kind: 'rect', x, y: 0, w, h: 1, feather });

async function run(tokens: Tensor, masks: Tensor): Promise<Record<string, Tensor>> {
  return runOnce(model, { ...base, ip_hidden_states: tokens, ip_masks: masks });
}

/** Character r's IP attention of block i, [L * C] (batch item 0). */
function perChar(out: Record<string, Tensor>, i: number, r: number): Float32Array {
  const t = out[`debug.ip_attn.${i}`]!;
  return toFloat32(t).subarray(r * L * C, (r + 1) * L * C);
}

beforeAll(() => {
  cfg = fluxConfigFromJson(goldenConfig(CASE));
  C = cfg.numHeads * cfg.headDim;
  blocks = cfg.numLayers + cfg.numSingleLayers;
  const inputs = goldenTensors(CASE, 'inputs.safetensors');
  const txt = toFloat32(need(inputs, 'txt_ids'));
  const img = toFloat32(need(inputs, 'img_ids'));
  // The packed grid from the image ids (0, row, col).
  rows = 1 + Math.max(...Array.from({ length: img.length / 3 }, (_, l) => img[3 * l + 1]!));
  cols = 1 + Math.max(...Array.from({ length: img.length / 3 }, (_, l) => img[3 * l + 2]!));
  const rope = fluxRope(Float32Array.from([...txt, ...img]), cfg.axesDimsRope, cfg.ropeTheta);
  base = {
    hidden_states: need(inputs, 'hidden_states'), encoder_hidden_states: need(inputs, 'encoder_hidden_states'),
    pooled_projections: need(inputs, 'pooled_projections'), timestep: need(inputs, 'timestep'), guidance: need(inputs, 'guidance'),
    rope_cos: rope.cos, rope_sin: rope.sin,
  };
  L = base.hidden_states!.dims[1]!;
  expect(rows * cols).toBe(L);
  tokensA = need(inputs, 'ip_hidden_states');
  expect(tokensA.dims[0]).toBe(1);
  // A second character: the golden tokens in reverse order, halved and shifted (deterministic, clearly different).
  const a = toFloat32(tokensA);
  const [, P, D] = tokensA.dims as [number, number, number];
  const b = new Float32Array(a.length);
  for (let p = 0; p < P; p++) for (let d = 0; d < D; d++) b[p * D + d] = 0.5 * a[(P - 1 - p) * D + d]! + 0.1;
  tokensB = f32([1, P, D], b);
  const g = new Graph({ name: 'flux' });
  const w = goldenWeights(CASE, 'diffusion_pytorch_model.safetensors');
  const ip = goldenWeights(CASE, 'ip_adapter.safetensors');
  buildFlux({ g, w }, ip, cfg, { debugOutputs: true });
  model = g.toBytes();
});

describe('regional characters in the flux graph (golden weights)', () => {
  it('one character with an all-ones mask: the term is scale x IP attention in every block, and an extra zero-weight character changes nothing', async () => {
    const scale = toFloat32(need(goldenTensors(CASE, 'inputs.safetensors'), 'subject_scale'))[0]!;
    const ones = new Float32Array(L).fill(1);
    const one = await run(tokensA, weights([ones], [scale]));
    for (let i = 0; i < blocks; i++) {
      const term = toFloat32(one[`debug.ip_term.${i}`]!);
      const attn = perChar(one, i, 0);
      let d = 0;
      for (let k = 0; k < term.length; k++) d = Math.max(d, Math.abs(term[k]! - Math.fround(scale * attn[k]!)));
      expect(d, `block ${i}`).toBeLessThanOrEqual(EXACT);
    }
    const padded = await run(stack(tokensA, tokensB), weights([ones, new Float32Array(L)], [scale, 1]));
    const d = maxAbsDiff(padded.noise_pred!, one.noise_pred!);
    console.log(`R=1 vs R=2 with a zero-weight second character: noise_pred max abs diff ${d}`);
    expect(d).toBeLessThanOrEqual(EXACT);
  });

  it('two disjoint masks: each region gets exactly its character\'s single contribution (first block), and every block sums masks x attention', async () => {
    const [sA, sB] = [0.9, 0.6];
    // Split on a column boundary, so that no cell straddles the two regions whatever the grid.
    const split = Math.floor(cols / 2) / cols;
    const left = rasteriseRegion(rect(0, split), rows, cols);
    const right = rasteriseRegion(rect(split, 1 - split), rows, cols);
    for (let l = 0; l < L; l++) expect(left[l]! * right[l]!).toBe(0); // disjoint
    expect(left.some((v) => v === 1) && right.some((v) => v === 1)).toBe(true);
    const onlyA = await run(tokensA, weights([new Float32Array(L).fill(1)], [sA]));
    const onlyB = await run(tokensB, weights([new Float32Array(L).fill(1)], [sB]));
    const both = await run(stack(tokensA, tokensB), weights([left, right], [sA, sB]));
    // Block 0's image queries do not depend on the characters: the same q in all three runs.
    const term = toFloat32(both['debug.ip_term.0']!);
    const tA = toFloat32(onlyA['debug.ip_term.0']!);
    const tB = toFloat32(onlyB['debug.ip_term.0']!);
    let d = 0;
    let inA = 0, inB = 0;
    for (let l = 0; l < L; l++) {
      for (let c = 0; c < C; c++) {
        const k = l * C + c;
        const want = left[l]! * tA[k]! + right[l]! * tB[k]!; // single contributions, restricted to their regions
        d = Math.max(d, Math.abs(term[k]! - want));
      }
      if (left[l] === 1) inA++;
      if (right[l] === 1) inB++;
    }
    console.log(`disjoint masks, block 0: max abs diff to the restricted single contributions ${d} (${inA} + ${inB} tokens)`);
    expect(d).toBeLessThanOrEqual(EXACT);
    expect(inA + inB).toBe(L);
    // The two characters' attention differs (else the test could not tell them apart).
    expect(maxAbsDiff(f32([L * C], tA), f32([L * C], tB))).toBeGreaterThan(1e-3);
    // Every block (double and single): term = sum_r w_r * attn_r, with w_r zero outside region r.
    for (let i = 0; i < blocks; i++) {
      const t = toFloat32(both[`debug.ip_term.${i}`]!);
      const a = perChar(both, i, 0);
      const b = perChar(both, i, 1);
      let e = 0;
      for (let l = 0; l < L; l++) {
        for (let c = 0; c < C; c++) {
          const k = l * C + c;
          e = Math.max(e, Math.abs(t[k]! - (sA * left[l]! * a[k]! + sB * right[l]! * b[k]!)));
        }
      }
      expect(e, `block ${i}`).toBeLessThanOrEqual(EXACT);
    }
  });

  it('overlapping feathered masks add up', async () => {
    const [sA, sB] = [1.1, 0.7];
    const mA = rasteriseRegion(rect(0, 0.7, 0.2), rows, cols);
    const mB = rasteriseRegion(rect(0.3, 0.7, 0.2), rows, cols);
    const overlap = Array.from(mA).filter((v, l) => v > 0 && mB[l]! > 0).length;
    expect(overlap).toBeGreaterThan(0);
    const onlyA = await run(tokensA, weights([new Float32Array(L).fill(1)], [1]));
    const onlyB = await run(tokensB, weights([new Float32Array(L).fill(1)], [1]));
    const both = await run(stack(tokensA, tokensB), weights([mA, mB], [sA, sB]));
    const term = toFloat32(both['debug.ip_term.0']!);
    const tA = toFloat32(onlyA['debug.ip_term.0']!);
    const tB = toFloat32(onlyB['debug.ip_term.0']!);
    let d = 0;
    for (let l = 0; l < L; l++) {
      for (let c = 0; c < C; c++) d = Math.max(d, Math.abs(term[l * C + c]! - (sA * mA[l]! * tA[l * C + c]! + sB * mB[l]! * tB[l * C + c]!)));
    }
    console.log(`overlapping masks (${overlap} shared tokens), block 0: max abs diff ${d}`);
    expect(d).toBeLessThanOrEqual(EXACT);
  });

  it('shares the characters across a batch: each image of a batch of 2 equals its run alone', async () => {
    const twice = (t: Tensor): Tensor => stack(...[t, t].map((x) => f32([1, ...x.dims.slice(1)], toFloat32(x))));
    const masks = weights([rasteriseRegion(rect(0, 0.5, 0.1), rows, cols), rasteriseRegion(rect(0.5, 0.5, 0.1), rows, cols)], [0.9, 0.8]);
    const tokens = stack(tokensA, tokensB);
    const one = await run(tokens, masks);
    const batched = await runOnce(model, {
      ...base,
      hidden_states: twice(base.hidden_states!), encoder_hidden_states: twice(base.encoder_hidden_states!),
      pooled_projections: twice(base.pooled_projections!), timestep: twice(base.timestep!), guidance: twice(base.guidance!),
      ip_hidden_states: tokens, ip_masks: masks,
    });
    const out = toFloat32(batched.noise_pred!);
    const single = toFloat32(one.noise_pred!);
    expect(batched.noise_pred!.dims[0]).toBe(2);
    for (let b = 0; b < 2; b++) {
      let d = 0;
      for (let k = 0; k < single.length; k++) d = Math.max(d, Math.abs(out[b * single.length + k]! - single[k]!));
      expect(d, `batch item ${b}`).toBeLessThanOrEqual(1e-5);
    }
  });
});
