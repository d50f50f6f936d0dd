// The streaming checkpoint writers read back through charflow's own readers (torch zip: bf16 storages,
// nested state dicts, the same layout as the official adapter .bin).
import { afterAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TensorSpec, writeSafetensorsStreaming, writeTorchZipStreaming } from '../../models/convert/writers.ts';
import { SafetensorsFile } from '../../models/weights/safetensors.ts';
import { PytorchCheckpoint } from '../../models/weights/pytorch.ts';
import { numel } from '../../models/tensor.ts';

const dir = mkdtempSync(join(tmpdir(), 'charflow-writers-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const produce = (s: TensorSpec) => Uint16Array.from({ length: numel(s.dims) }, (_, i) => (i * 7 + s.key.length) & 0xffff);

describe('streaming writers', () => {
  it('writes safetensors', () => {
    const specs: TensorSpec[] = [{ key: 'a.weight', dtype: 'bfloat16', dims: [3, 5] }, { key: 'b', dtype: 'float16', dims: [7] }];
    const p = join(dir, 'x.safetensors');
    writeSafetensorsStreaming(p, specs, produce);
    const f = new SafetensorsFile(p);
    for (const s of specs) {
      expect(f.shape(s.key)).toEqual(s.dims);
      expect(f.dtype(s.key)).toBe(s.dtype);
      expect(Array.from(f.get(s.key).data as Uint16Array)).toEqual(Array.from(produce(s)));
    }
    f.close();
  });

  it('writes a torch.save zip of bf16 state dicts', () => {
    const groups = {
      ip_adapter: [{ key: '0.to_k_ip.weight', dtype: 'bfloat16', dims: [4, 3] }, { key: '0.norm_ip_q.scale', dtype: 'bfloat16', dims: [2] }] as TensorSpec[],
      image_proj: [{ key: 'resampler.latents', dtype: 'bfloat16', dims: [1, 2, 3] }] as TensorSpec[],
    };
    const p = join(dir, 'adapter.bin');
    writeTorchZipStreaming(p, groups, produce, 'instantcharacter_ip-adapter');
    const ck = new PytorchCheckpoint(p);
    expect(ck.keys()).toEqual(['ip_adapter.0.to_k_ip.weight', 'ip_adapter.0.norm_ip_q.scale', 'image_proj.resampler.latents']);
    for (const [g, specs] of Object.entries(groups)) {
      for (const s of specs) {
        const t = ck.get(`${g}.${s.key}`);
        expect(t.dtype).toBe('bfloat16');
        expect(t.dims).toEqual(s.dims);
        expect(Array.from(t.data as Uint16Array)).toEqual(Array.from(produce(s)));
      }
    }
    ck.close();
  });
});
