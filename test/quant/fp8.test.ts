// fp8 checkpoints (ComfyUI's flux1-dev-fp8: safetensors F8_E4M3, some F8_E5M2): the reader returns them as
// float16, exactly; the golden FLUX weights cast to fp8 read back as the fp8-rounded values, and convert to
// int8 (and fp16) graphs identical to those made from those values directly.
import { afterAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SafetensorsFile } from '../../models/weights/safetensors.ts';
import { memorySource } from '../../models/weights/source.ts';
import { type Fp8Kind, type Tensor, float16ToFloat32, fp8ToFloat, toFloat32 } from '../../models/tensor.ts';
import { Graph } from '../../models/onnx/graph.ts';
import { buildFlux, fluxConfigFromJson } from '../../models/flux.ts';
import { goldenConfig, goldenPath } from '../helpers/goldens.ts';

const dir = mkdtempSync(join(tmpdir(), 'charflow-fp8-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Round-to-nearest-even float -> fp8 byte, by search over the format's finite values (test-side encoder). */
function encoder(kind: Fp8Kind): (v: number) => number {
  const codes = Array.from({ length: 128 }, (_, b) => b).filter((b) => Number.isFinite(fp8ToFloat(b, kind)));
  const values = codes.map((b) => fp8ToFloat(b, kind)); // ascending for sign 0
  return (v: number) => {
    const a = Math.abs(v);
    let lo = 0;
    let hi = values.length - 1;
    if (a >= values[hi]!) return (v < 0 ? 0x80 : 0) | codes[hi]!; // saturate (weights never get there)
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      if (values[mid]! <= a) lo = mid;
      else hi = mid;
    }
    const dLo = a - values[lo]!;
    const dHi = values[hi]! - a;
    const pick = dLo < dHi ? lo : dHi < dLo ? hi : (codes[lo]! & 1) === 0 ? lo : hi;
    return (v < 0 ? 0x80 : 0) | codes[pick]!;
  };
}

/** The golden FLUX weights as an fp8 safetensors file; returns the fp8-rounded values as float32. */
function writeFp8(path: string, src: SafetensorsFile, kind: Fp8Kind): Map<string, Tensor> {
  const enc = encoder(kind);
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  const parts: Buffer[] = [];
  const rounded = new Map<string, Tensor>();
  let offset = 0;
  for (const key of src.keys()) {
    const t = src.get(key);
    const values = toFloat32(t);
    const bytes = Buffer.from(Uint8Array.from(values, enc));
    header[key] = { dtype: kind === 'e4m3fn' ? 'F8_E4M3' : 'F8_E5M2', shape: t.dims, data_offsets: [offset, offset + bytes.length] };
    offset += bytes.length;
    parts.push(bytes);
    rounded.set(key, { dtype: 'float32', dims: t.dims, data: Float32Array.from(bytes, (b) => fp8ToFloat(b, kind)) });
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const head = Buffer.alloc(8);
  head.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  writeFileSync(path, Buffer.concat([head, Buffer.from(json), ...parts]));
  return rounded;
}

describe('fp8 safetensors', () => {
  it('decodes both formats: limits, subnormals, NaN', () => {
    expect([0x38, 0x7e, 0xfe, 0x01, 0x08, 0x00, 0x80].map((b) => fp8ToFloat(b, 'e4m3fn'))).toEqual([1, 448, -448, 2 ** -9, 2 ** -6, 0, -0]);
    expect(fp8ToFloat(0x7f, 'e4m3fn')).toBeNaN();
    expect(fp8ToFloat(0x78, 'e4m3fn')).toBe(256); // e4m3fn has no infinity: exponent 15 is a normal binade
    expect([0x3c, 0x7b, 0x01, 0x7c].map((b) => fp8ToFloat(b, 'e5m2'))).toEqual([1, 57344, 2 ** -16, Infinity]);
    expect(fp8ToFloat(0x7d, 'e5m2')).toBeNaN();
  });

  for (const kind of ['e4m3fn', 'e5m2'] as const) {
    it(`reads golden weights cast to ${kind} as float16, exact to fp8's rounding, and converts them`, async () => {
      const src = new SafetensorsFile(goldenPath('flux_transformer_ip', 'diffusion_pytorch_model.safetensors'));
      const path = join(dir, `flux-${kind}.safetensors`);
      let rounded: Map<string, Tensor>;
      try {
        rounded = writeFp8(path, src, kind);
      } finally {
        src.close();
      }
      const f8 = new SafetensorsFile(path);
      try {
        let values = 0;
        for (const [key, want] of rounded) {
          const got = f8.get(key);
          expect(got.dtype).toBe('float16');
          expect(f8.dtype(key)).toBe('float16');
          expect(got.dims).toEqual(want.dims);
          const g32 = float16ToFloat32(got.data as Uint16Array);
          const w32 = want.data as Float32Array;
          if (!Buffer.from(g32.buffer).equals(Buffer.from(w32.buffer))) { // bit for bit; find the first difference to report
            const i = g32.findIndex((v, j) => !Object.is(v, w32[j]));
            expect(`${key}[${i}] = ${g32[i]}`).toBe(`${key}[${i}] = ${w32[i]}`);
          }
          values += want.data.length;
        }
        expect(values).toBeGreaterThan(0);
        // int8 and fp16 graphs from the fp8 file equal those from the rounded values themselves
        const cfg = fluxConfigFromJson(goldenConfig('flux_transformer_ip'));
        for (const opts of [{ quant: { bits: 8 as const, block: 32 } }, { dtype: 'float16' as const }]) {
          const a = new Graph({ name: 'flux', ...opts });
          buildFlux({ g: a, w: f8 }, undefined, cfg);
          const b = new Graph({ name: 'flux', ...opts });
          buildFlux({ g: b, w: memorySource(rounded) }, undefined, cfg);
          expect(Buffer.from(a.toBytes()).equals(Buffer.from(b.toBytes()))).toBe(true);
        }
      } finally {
        f8.close();
      }
    });
  }
});
