// Run-time LoRAs on sets made from GGUF files (issue 21, item 4): the flux_gguf golden's transformers, built as a
// GGUF set is (the file's block codes kept as MatMulNBits, plus the block-sum Gemm correction for the types with a
// per-block minimum), take a LoRA on every Linear at its full float effect:
//   (GGUF set + LoRA) - (GGUF set)  ==  (float graph + LoRA) - (float graph)
// where the float graph is float32, built from the same file's dequantized weights. The tolerance is the GGUF set's
// own error against that float graph on the same call (as for int4 in lora_runtime.test.ts). Every file, config and
// input comes from the case, so another case set in the same layout is checked the same way.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openFluxTransformer } from '../../models/convert/layouts.ts';
import { Graph } from '../../models/onnx/graph.ts';
import { runOnce } from '../../models/onnx/ort.ts';
import { buildFlux } from '../../models/flux.ts';
import { fluxRope } from '../../models/rope.ts';
import { type Tensor, toFloat32 } from '../../models/tensor.ts';
import { memorySource } from '../../models/weights/source.ts';
import type { GgmlTypeName } from '../../models/weights/ggml.ts';
import { GGML_NBITS } from '../../models/quant/ggml-nbits.ts';
import { chooseAccuracyLevel } from '../../models/quant/accuracy.ts';
import { planLoras } from '../../models/lora/keys.ts';
import { type LoraVariant, loraFeeds, loraGraph, loraVariant } from '../../models/lora/runtime.ts';
import { syntheticKohyaLora } from '../../models/lora/synthetic.ts';
import { goldenTensors } from '../helpers/goldens.ts';
import { fluxGgufFile, fluxGgufTypes } from '../helpers/gguf.ts';

const INPUTS_CASE = 'flux_transformer_ip';
/** A rank-4 LoRA on every FLUX Linear whose effect on the output is about half the output's size: a strong style. */
const RANK = 4;
const SEED = 21;
const AMP = 0.2;

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}
const maxAbs = (a: ArrayLike<number>): number => maxDiff(a, new Float32Array(a.length));

let dir: string;
let inputs: Record<string, Tensor>;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'charflow-lora-gguf-'));
  const golden = goldenTensors(INPUTS_CASE, 'inputs.safetensors');
  const txt = toFloat32(golden.get('txt_ids')!);
  const img = toFloat32(golden.get('img_ids')!);
  const ids = new Float32Array(txt.length + img.length);
  ids.set(txt, 0);
  ids.set(img, txt.length);
  inputs = Object.fromEntries(['hidden_states', 'encoder_hidden_states', 'pooled_projections', 'timestep', 'guidance'].map((k) => [k, golden.get(k)!]));
  inputs.ids = { dtype: 'float32', dims: [ids.length, 3], data: ids };
});
afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

interface Effect {
  /** The GGUF set's output without and with the LoRA, and the float graph's. */
  q: Float32Array;
  ql: Float32Array;
  f: Float32Array;
  fl: Float32Array;
}

/**
 * Builds the variant's GGUF-set graph (MatMulNBits at `accuracyLevel`) and its float32 graph, makes their
 * LoRA-capable variants as the Load LoRA node does, and runs both with and without the synthetic LoRA.
 */
async function loraEffect(variant: string, accuracyLevel: 0 | 4): Promise<Effect> {
  const out = join(dir, `${variant}-${accuracyLevel}`);
  mkdirSync(out);
  const part = openFluxTransformer(fluxGgufFile(variant));
  const cfg = part.cfg;
  const paths = { gguf: join(out, 'gguf.onnx'), float: join(out, 'float.onnx') };
  let ggufBytes: Uint8Array;
  try {
    // A GGUF transformer converts to the int4 format: its block weights keep their codes (ggml_linear.ts).
    const q = new Graph({ name: 'flux', quant: { bits: 4, block: 32, accuracyLevel } });
    buildFlux({ g: q, w: part.weights }, undefined, cfg);
    ggufBytes = q.toBytes();
    writeFileSync(paths.gguf, ggufBytes);
    const f = new Graph({ name: 'flux' });
    buildFlux({ g: f, w: part.weights }, undefined, cfg);
    writeFileSync(paths.float, f.toBytes());
  } finally {
    part.weights.close?.();
  }
  const gv = loraVariant(loraGraph(paths.gguf, 'flux', join(out, 'cache')));
  const fv = loraVariant(loraGraph(paths.float, 'flux', join(out, 'cache')));

  // Both graphs take the LoRA on the same Linears; the GGUF one holds most of them in its block form.
  expect(gv.sites.map((s) => s.name)).toEqual(fv.sites.map((s) => s.name));
  const quantized = gv.sites.filter((s) => s.quantized);
  const corrected = quantized.filter((s) => Buffer.from(ggufBytes).includes(`${s.name}.block_offsets`));
  expect(quantized.length, `${variant}: MatMulNBits sites`).toBeGreaterThan(0);
  // A file with block types that carry a per-block minimum has Linears in the MatMulNBits + Gemm form.
  if (Object.values(fluxGgufTypes()[variant]!).some((t) => GGML_NBITS[t as GgmlTypeName]?.offset)) {
    expect(corrected.length, `${variant}: sites with the block-sum correction`).toBeGreaterThan(0);
  }
  console.log(`${variant}: ${gv.sites.length} LoRA sites, ${quantized.length} in GGUF block codes (${corrected.length} with the block-sum correction)`);

  const lora = memorySource(syntheticKohyaLora(cfg, undefined, RANK, SEED, AMP));
  const { ids, ...feeds } = inputs;
  const rope = fluxRope(ids!.data as Float32Array, cfg.axesDimsRope, cfg.ropeTheta);
  const run = async (v: LoraVariant, withLora: boolean): Promise<Float32Array> => {
    const plan = planLoras([{ path: 'synthetic.safetensors', source: lora, strength: { flux: 1, clip: 0, t5: 0 } }], v.table);
    const f = loraFeeds(v, withLora ? plan.updates : []);
    if (withLora) expect(f.applied, `${variant}: sites given a LoRA`).toBe(v.sites.length);
    return toFloat32((await runOnce(v.path, { ...feeds, rope_cos: rope.cos, rope_sin: rope.sin, ...f.feeds })).noise_pred!);
  };
  return { q: await run(gv, false), ql: await run(gv, true), f: await run(fv, false), fl: await run(fv, true) };
}

/** The errors and the gain (the GGUF effect projected on the float one) of an Effect. */
function compare(variant: string, e: Effect): { ownError: number; effectError: number; effect: number; gain: number } {
  const effectF = e.fl.map((v, i) => v - e.f[i]!);
  const effectQ = e.ql.map((v, i) => v - e.q[i]!);
  let dot = 0;
  let norm = 0;
  for (let i = 0; i < effectF.length; i++) {
    dot += effectQ[i]! * effectF[i]!;
    norm += effectF[i]! * effectF[i]!;
  }
  const r = { ownError: maxDiff(e.q, e.f), effectError: maxDiff(effectQ, effectF), effect: maxAbs(effectF), gain: dot / norm };
  console.log(`${variant}: own error ${r.ownError.toExponential(2)}, LoRA effect ${r.effect.toExponential(2)}, effect error ${r.effectError.toExponential(2)}, gain ${r.gain.toFixed(6)}`);
  return r;
}

describe('run-time LoRA on GGUF sets (flux_gguf golden)', () => {
  const machineLevel = chooseAccuracyLevel().level;
  for (const variant of Object.keys(fluxGgufTypes())) {
    // accuracy_level 0: MatMulNBits multiplies the GGUF's own values in float32, so the two graphs differ only in
    // summation order and a LoRA missing from any Linear (or damped there) stands out by orders of magnitude.
    it(`${variant}: GGUF set + LoRA minus GGUF set equals the float LoRA effect (MatMulNBits in float32)`, async () => {
      const r = compare(variant, await loraEffect(variant, 0));
      // The effect is a difference of two runs, each within about the set's own error of its float counterpart,
      // so it may differ from the float effect by twice that, no more.
      expect(r.ownError).toBeGreaterThan(0);
      expect(r.effectError).toBeLessThanOrEqual(2 * r.ownError);
      expect(r.effect).toBeGreaterThan(1000 * r.effectError);
      expect(Math.abs(r.gain - 1)).toBeLessThan(1e-4);
    }, 120_000);

    // This machine's level 4 rounds the activations to int8 in every MatMulNBits: the two runs' roundings differ
    // (the LoRA changes the activations), so only the full strength of the effect is checked here.
    it.runIf(machineLevel !== 0)(`${variant}: full LoRA effect at this machine's accuracy_level ${machineLevel}`, async () => {
      const r = compare(`${variant} (level ${machineLevel})`, await loraEffect(variant, machineLevel));
      expect(r.effect).toBeGreaterThan(2 * r.effectError);
      expect(Math.abs(r.gain - 1)).toBeLessThan(0.1);
    }, 120_000);
  }
});
