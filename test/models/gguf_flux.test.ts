// The flux_gguf golden case: FLUX as single-file GGUFs in every block type ComfyUI-GGUF reads. Our reader's
// types must be the case's tensor_types.json, its dequantized rows ComfyUI-GGUF's (1e-6 relative), and the
// transformer converted from each file must give that file's output (1e-4). Every file, key and value comes
// from the case, so another case set in the same layout is checked the same way.
import { beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GgufFile } from '../../models/weights/gguf.ts';
import { DECODABLE } from '../../models/weights/ggml.ts';
import { openFluxTransformer } from '../../models/convert/layouts.ts';
import { Graph } from '../../models/onnx/graph.ts';
import { runOnce } from '../../models/onnx/ort.ts';
import { buildFlux } from '../../models/flux.ts';
import { fluxRope } from '../../models/rope.ts';
import { type Tensor, toFloat32 } from '../../models/tensor.ts';
import { expectClose, goldenTensors } from '../helpers/goldens.ts';
import { FLUX_GGUF_CASE as CASE, fluxGgufFile, fluxGgufTypes, writeGguf } from '../helpers/gguf.ts';

const INPUTS_CASE = 'flux_transformer_ip';
const OUTPUT_TOL = 1e-4;
const DEQUANT_REL = 1e-6;

const types = fluxGgufTypes;
const fileOf = fluxGgufFile;

describe('GGUF FLUX (flux_gguf golden)', () => {
  const variants = Object.keys(types());
  let samples: Map<string, Tensor>;
  let outputs: Map<string, Tensor>;
  let feeds: Record<string, Tensor>;
  let ids: Float32Array;

  beforeAll(() => {
    samples = goldenTensors(CASE, 'dequantized_samples.safetensors');
    outputs = goldenTensors(CASE, 'outputs.safetensors');
    const inputs = goldenTensors(INPUTS_CASE, 'inputs.safetensors');
    const txt = toFloat32(inputs.get('txt_ids')!);
    const img = toFloat32(inputs.get('img_ids')!);
    ids = new Float32Array(txt.length + img.length);
    ids.set(txt, 0);
    ids.set(img, txt.length);
    feeds = Object.fromEntries(['hidden_states', 'encoder_hidden_states', 'pooled_projections', 'timestep', 'guidance'].map((k) => [k, inputs.get(k)!]));
  });

  it('reads every block type the case uses', () => {
    const all = [...new Set(Object.values(types()).flatMap((t) => Object.values(t)))].sort();
    expect(variants.length).toBeGreaterThan(0);
    expect(all.filter((t) => !(DECODABLE as readonly string[]).includes(t))).toEqual([]);
    console.log(`block types in the case: ${all.join(', ')}`);
  });

  it('reads a GGUF whose keys carry ComfyUI\'s model.diffusion_model. prefix as the same transformer', () => {
    const src = new GgufFile(fileOf(variants[0]!));
    const dir = mkdtempSync(join(tmpdir(), 'charflow-gguf-prefix-'));
    try {
      const path = join(dir, 'prefixed.gguf');
      writeGguf(path, {
        metadata: { 'general.architecture': 'flux' },
        tensors: src.keys().map((k) => ({ name: `model.diffusion_model.${k}`, type: src.info(k)!.type.name, ne: src.info(k)!.ne, data: src.raw(k) })),
      });
      const graphOf = (file: string): Uint8Array => {
        const part = openFluxTransformer(file);
        try {
          const g = new Graph({ name: 'flux', quant: { bits: 4, block: 32 } });
          buildFlux({ g, w: part.weights }, undefined, part.cfg);
          return g.toBytes();
        } finally {
          part.weights.close?.();
        }
      };
      expect(Buffer.from(graphOf(path)).equals(Buffer.from(graphOf(fileOf(variants[0]!))))).toBe(true);
    } finally {
      src.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  for (const variant of variants) {
    it(`${variant}: tensor table matches tensor_types.json, version and architecture read`, () => {
      const f = new GgufFile(fileOf(variant));
      try {
        const expected = types()[variant]!;
        expect(f.keys().sort()).toEqual(Object.keys(expected).sort());
        for (const k of f.keys()) expect(f.info(k)!.type.name, k).toBe(expected[k]);
        expect([2, 3]).toContain(f.version);
        expect(f.architecture).toBe('flux');
      } finally {
        f.close();
      }
    });

    it(`${variant}: dequantized sample rows equal ComfyUI-GGUF's (${DEQUANT_REL} relative)`, () => {
      const f = new GgufFile(fileOf(variant));
      try {
        const keys = [...samples.keys()].filter((k) => k.startsWith(`${variant}/`));
        expect(keys.length).toBeGreaterThan(0);
        for (const name of keys) {
          const key = name.slice(variant.length + 1);
          const want = toFloat32(samples.get(name)!);
          const [rows, cols] = samples.get(name)!.dims as [number, number];
          expect(f.shape(key)![1], key).toBe(cols);
          const got = toFloat32(f.get(key)).subarray(0, rows * cols);
          let worst = 0;
          for (let i = 0; i < want.length; i++) {
            const err = Math.abs(got[i]! - want[i]!);
            if (err > DEQUANT_REL * Math.abs(want[i]!)) throw new Error(`${name}: element ${i} is ${got[i]}, ComfyUI-GGUF gives ${want[i]}`);
            worst = Math.max(worst, err);
          }
          console.log(`${name} (${f.info(key)!.type.name}): max abs diff ${worst}`);
        }
      } finally {
        f.close();
      }
    });

    it(`${variant}: the transformer read from the GGUF matches ${variant}.output (${OUTPUT_TOL})`, async () => {
      const part = openFluxTransformer(fileOf(variant));
      try {
        const g = new Graph({ name: 'flux' });
        buildFlux({ g, w: part.weights }, undefined, part.cfg);
        const rope = fluxRope(ids, part.cfg.axesDimsRope, part.cfg.ropeTheta);
        const out = await runOnce(g.toBytes(), { ...feeds, rope_cos: rope.cos, rope_sin: rope.sin });
        const d = expectClose(out['noise_pred'], outputs.get(`${variant}.output`), OUTPUT_TOL, `${variant}.output`);
        console.log(`${variant}.output max abs diff ${d}`);
      } finally {
        part.weights.close?.();
      }
    });
  }
});
