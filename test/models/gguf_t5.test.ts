// T5 from llama.cpp-named GGUF files: the t5_encoder golden written by the test as GGUF in F32, F16 and Q8_0.
// The F32 file must give the golden output; F16 and Q8_0 exactly what the same graph gives on the values
// those encodings hold. Also: corrupt, truncated and unsupported files fail naming the file and the tensor.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildT5, t5ConfigFromJson } from '../../models/t5.ts';
import { Graph } from '../../models/onnx/graph.ts';
import { runOnce } from '../../models/onnx/ort.ts';
import { type Tensor, f32, toFloat32 } from '../../models/tensor.ts';
import { type WeightSource, memorySource } from '../../models/weights/source.ts';
import { openT5 } from '../../models/convert/layouts.ts';
import { openWeights } from '../../models/weights/open.ts';
import { GgufFile } from '../../models/weights/gguf.ts';
import { expectClose, goldenConfig, goldenTensors, maxAbsDiff, need } from '../helpers/goldens.ts';
import { ggufBytes, writeGguf, writeT5Gguf } from '../helpers/gguf.ts';

const CASE = 't5_encoder';
const TOL = 1e-4;
const dir = mkdtempSync(join(tmpdir(), 'charflow-gguf-t5-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('T5 encoder from GGUF', () => {
  const json = goldenConfig(CASE);
  const cfg = t5ConfigFromJson(json);
  const inputs = goldenTensors(CASE, 'inputs.safetensors');
  const outputs = goldenTensors(CASE, 'outputs.safetensors');
  const ids = need(inputs, 'input_ids');

  const run = async (w: WeightSource): Promise<Tensor> => {
    const g = new Graph({ name: 't5' });
    buildT5({ g, w }, cfg, { seqLen: ids.dims[1]! });
    return (await runOnce(g.toBytes(), { input_ids: ids }))['last_hidden_state']!;
  };

  for (const enc of ['F32', 'F16', 'Q8_0'] as const) {
    it(`${enc}: reads the llama.cpp names, the config from the file, and runs`, async () => {
      const path = join(dir, `t5-${enc}.gguf`);
      const held = writeT5Gguf(path, enc, enc === 'F16' ? 2 : 3);
      const part = openT5(path);
      try {
        expect(part.cfg).toEqual(cfg);
        expect(part.weights.keys().sort()).toEqual([...held.keys()].sort());
        for (const [k, t] of held) expect(maxAbsDiff(f32(part.weights.shape(k)!, toFloat32(part.weights.get(k))), t), k).toBe(0);
        const out = await run(part.weights);
        if (enc === 'F32') {
          const d = expectClose(out, outputs.get('last_hidden_state'), TOL, 'last_hidden_state');
          console.log(`F32 GGUF: last_hidden_state max abs diff ${d}`);
        } else {
          // The same graph on the values the file holds, from memory.
          const ref = await run(memorySource(held));
          expect(maxAbsDiff(out, ref)).toBe(0);
          console.log(`${enc} GGUF vs golden: ${maxAbsDiff(out, outputs.get('last_hidden_state')!)} (its rounding)`);
        }
      } finally {
        part.weights.close?.();
      }
    });
  }

  it('in a quantized graph, a quantized GGUF keeps its float tensors float; an all-float GGUF is quantized', () => {
    const names = (enc: 'F16' | 'Q8_0'): string => {
      const path = join(dir, `t5-q-${enc}.gguf`);
      writeT5Gguf(path, enc);
      const part = openT5(path);
      try {
        const g = new Graph({ name: 't5', quant: { bits: 8, block: 32 } });
        buildT5({ g, w: part.weights }, cfg, { seqLen: ids.dims[1]! });
        return Buffer.from(g.toBytes()).toString('latin1');
      } finally {
        part.weights.close?.();
      }
    };
    const wo = 'encoder.block.0.layer.1.DenseReluDense.wo';
    const q = 'encoder.block.0.layer.0.SelfAttention.q';
    const mixed = names('Q8_0'); // wo's rows (d_ff) are not whole Q8_0 blocks: stored F16
    expect(mixed).toContain(`${q}.qweight`);
    expect(mixed).not.toContain(`${wo}.qweight`);
    expect(mixed).toContain(`${wo}.weight`);
    const float = names('F16');
    expect(float).toContain(`${q}.qweight`);
    expect(float).toContain(`${wo}.qweight`);
  });

  it('refuses a GGUF of another architecture for --t5', () => {
    const path = join(dir, 'flux-as-t5.gguf');
    writeGguf(path, { metadata: { 'general.architecture': 'flux' }, tensors: [{ name: 'enc.output_norm.weight', type: 'F32', ne: [4], data: new Uint8Array(16) }] });
    expect(() => openT5(path)).toThrow(/architecture "flux"/);
  });
});

describe('corrupt, truncated and unsupported GGUF files', () => {
  let good: Buffer;
  beforeAll(() => {
    const path = join(dir, 'good.gguf');
    writeT5Gguf(path, 'Q8_0');
    good = readFileSync(path);
  });
  const save = (name: string, bytes: Buffer): string => {
    const p = join(dir, name);
    writeFileSync(p, bytes);
    return p;
  };
  const last = (): string => {
    const f = new GgufFile(join(dir, 'good.gguf'));
    try {
      return f.keys().reduce((a, b) => (f.info(a)!.offset > f.info(b)!.offset ? a : b));
    } finally {
      f.close();
    }
  };

  it('bad magic', () => {
    const bytes = Buffer.from(good);
    bytes.write('GGUX', 0, 'latin1');
    const p = save('bad-magic.gguf', bytes);
    expect(() => new GgufFile(p)).toThrow(`${p}: not a GGUF file (bad magic)`);
  });

  it('truncated data: names the file and the tensor that runs past the end', () => {
    const name = last();
    const p = save('truncated.gguf', good.subarray(0, good.length - 40));
    expect(() => openT5(p)).toThrow(new RegExp(`${p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: tensor '${name.replace(/\./g, '\\.')}' .* runs past the end`));
    expect(() => openWeights(p)).toThrow(name);
  });

  it('truncated header', () => {
    const p = save('header-cut.gguf', good.subarray(0, 200));
    expect(() => new GgufFile(p)).toThrow(`${p}: truncated GGUF header`);
  });

  it('a tensor whose size does not match its type and shape (offsets overlap)', () => {
    const a = new Uint8Array(34 * 2); // two Q8_0 blocks
    const p = join(dir, 'overlap.gguf');
    writeGguf(p, {
      tensors: [
        { name: 'first.weight', type: 'Q8_0', ne: [64, 2], data: a }, // four blocks by its shape, two written
        { name: 'second.weight', type: 'F32', ne: [64], data: new Uint8Array(256), offset: 96 },
      ],
    });
    expect(() => new GgufFile(p)).toThrow(`${p}: tensor 'first.weight' (Q8_0 [64,2], 136 bytes) overlaps 'second.weight'`);
  });

  it('rows that are not whole blocks', () => {
    const p = join(dir, 'rows.gguf');
    writeGguf(p, { tensors: [{ name: 'odd.weight', type: 'Q8_0', ne: [48, 1], data: new Uint8Array(34 * 2) }] });
    expect(() => new GgufFile(p)).toThrow(`${p}: tensor 'odd.weight' (Q8_0) has rows of 48 values, not whole blocks of 32`);
  });

  for (const type of ['IQ2_XXS', 'IQ1_S', 'IQ3_XXS', 'Q8_1', 'TQ1_0'] as const) {
    it(`unsupported type ${type}: names the tensor and the type`, () => {
      const p = join(dir, `${type}.gguf`);
      writeGguf(p, { tensors: [{ name: 'enc.blk.0.attn_q.weight', type, ne: [256, 1], data: new Uint8Array(512) }] });
      expect(() => openT5(p)).toThrow(`${p}: tensor 'enc.blk.0.attn_q.weight' has type ${type}, which charflow does not read`);
    });
  }

  it('an unknown type id and version 1 are refused', () => {
    const bytes = ggufBytes({ tensors: [{ name: 'x.weight', type: 'F32', ne: [4], data: new Uint8Array(16) }] });
    const at = bytes.indexOf(Buffer.from('x.weight')) + 8 + 4 + 8; // name, n_dims, ne[0], then the type id
    bytes.writeUInt32LE(77, at);
    const p = save('unknown-type.gguf', bytes);
    expect(() => new GgufFile(p)).toThrow(`${p}: tensor 'x.weight' has unknown GGML type id 77`);
    const v1 = Buffer.from(good);
    v1.writeUInt32LE(1, 4);
    const p1 = save('v1.gguf', v1);
    expect(() => new GgufFile(p1)).toThrow('GGUF version 1 is not supported');
  });
});
