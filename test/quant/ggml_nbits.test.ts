// GGUF block weights as MatMulNBits with no second rounding: on every quantized tensor of the flux_gguf case,
// the MatMulNBits form's values ((code - zero point) * scale + offset) are bit for bit the decoded GGUF values;
// the quantized transformer built from each file gives that file's golden output; sizes are as predicted.
import { describe, expect, it } from 'vitest';
import { GgufFile } from '../../models/weights/gguf.ts';
import { openFluxTransformer } from '../../models/convert/layouts.ts';
import { GGML_NBITS, ggmlNBitsBytes, ggmlToNBits, nbitsValues } from '../../models/quant/ggml-nbits.ts';
import { Graph } from '../../models/onnx/graph.ts';
import { runOnce } from '../../models/onnx/ort.ts';
import { buildFlux } from '../../models/flux.ts';
import { fluxRope } from '../../models/rope.ts';
import { toFloat32 } from '../../models/tensor.ts';
import { expectClose, goldenTensors, maxAbs, maxAbsDiff } from '../helpers/goldens.ts';
import { FLUX_GGUF_CASE as CASE, fluxGgufFile, fluxGgufTypes } from '../helpers/gguf.ts';

const OUTPUT_TOL = 1e-4;
const variants = Object.keys(fluxGgufTypes());
const fileOf = fluxGgufFile;

describe('GGUF blocks as MatMulNBits', () => {
  for (const variant of variants) {
    it(`${variant}: every block weight's MatMulNBits form holds exactly the decoded values`, () => {
      const f = new GgufFile(fileOf(variant));
      const seen = new Set<string>();
      try {
        for (const key of f.keys()) {
          const b = f.blocks(key);
          if (!b) continue;
          const w = ggmlToNBits(b);
          const want = toFloat32(f.get(key));
          const got = nbitsValues(w);
          expect(got.length).toBe(want.length);
          for (let i = 0; i < want.length; i++) {
            if (!Object.is(got[i], want[i])) throw new Error(`${key} (${b.type.name}): element ${i} is ${got[i]} as MatMulNBits, ${want[i]} decoded`);
          }
          const bytes = w.q.packed.length + 4 * w.q.scales.length + (w.q.zeroPoints?.length ?? 0) + 4 * (w.offsets?.length ?? 0);
          expect(bytes, key).toBe(ggmlNBitsBytes(b.type.name, b.rows, b.cols, 4));
          seen.add(b.type.name);
        }
      } finally {
        f.close();
      }
      expect(seen.size).toBeGreaterThan(0);
      for (const t of seen) expect(GGML_NBITS[t as keyof typeof GGML_NBITS], t).toBeDefined();
      console.log(`${variant}: exact for ${[...seen].sort().join(', ')}`);
    });

    it(`${variant}: the quantized transformer (GGUF codes kept) matches ${variant}.output`, async () => {
      const inputs = goldenTensors('flux_transformer_ip', 'inputs.safetensors');
      const outputs = goldenTensors(CASE, 'outputs.safetensors');
      const part = openFluxTransformer(fileOf(variant));
      try {
        // accuracy_level 0: float compute, so that only the weights' form is under test.
        const g = new Graph({ name: 'flux', quant: { bits: 4, block: 32, accuracyLevel: 0 } });
        buildFlux({ g, w: part.weights }, undefined, part.cfg);
        const model = g.toBytes();
        const text = Buffer.from(model).toString('latin1');
        expect(text).toContain('MatMulNBits');
        const txt = toFloat32(inputs.get('txt_ids')!);
        const img = toFloat32(inputs.get('img_ids')!);
        const rope = fluxRope(Float32Array.from([...txt, ...img]), part.cfg.axesDimsRope, part.cfg.ropeTheta);
        const feeds = Object.fromEntries(['hidden_states', 'encoder_hidden_states', 'pooled_projections', 'timestep', 'guidance'].map((k) => [k, inputs.get(k)!]));
        const out = await runOnce(model, { ...feeds, rope_cos: rope.cos, rope_sin: rope.sin });
        const d = expectClose(out['noise_pred'], outputs.get(`${variant}.output`), OUTPUT_TOL, `${variant}.output (MatMulNBits)`);
        // The sets' default, accuracy_level 4 (int8 activations on the CPU), takes every form too (4 and 8 bits,
        // blocks 16 and 32, zero points): near the output, at the activations' int8 rounding.
        const g4 = new Graph({ name: 'flux', quant: { bits: 4, block: 32 } });
        buildFlux({ g: g4, w: part.weights }, undefined, part.cfg);
        const out4 = await runOnce(g4.toBytes(), { ...feeds, rope_cos: rope.cos, rope_sin: rope.sin });
        const gold = outputs.get(`${variant}.output`)!;
        const rel4 = maxAbsDiff(out4['noise_pred']!, gold) / maxAbs(gold);
        expect(rel4).toBeLessThan(0.05);
        console.log(`${variant}: MatMulNBits graph, output max abs diff ${d} (accuracy_level 0), ${rel4.toExponential(2)} of max|output| (level 4); ${model.length} bytes`);
      } finally {
        part.weights.close?.();
      }
    });
  }
});
