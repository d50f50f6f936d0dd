// The runtime with quantized graphs: the memory budget counts their packed bytes (a budget too small for
// the float32 model fits the int4 one), and WebGPU (on SwiftShader, as in test/runtime/webgpu.test.ts)
// either runs MatMulNBits like the CPU or refuses the model up front, before loading it.
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { SessionPool } from '../../engine/runtime/pool.ts';
import { scanModel } from '../../engine/runtime/onnx-scan.ts';
import { Graph } from '../../models/onnx/graph.ts';
import { linear } from '../../models/layers.ts';
import { memorySource } from '../../models/weights/source.ts';
import { type Tensor, f32 } from '../../models/tensor.ts';
import type { QuantSpec } from '../../models/quant/quantize.ts';
import { SWIFTSHADER_ICD } from '../../scripts/system-deps.mjs';

const dir = mkdtempSync(join(tmpdir(), 'charflow-quant-rt-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const K = 512;
const N = 512;
const weights = new Map<string, Tensor>([['fc.weight', f32([N, K], Array.from({ length: N * K }, (_, i) => Math.sin(i * 0.37)))]]);

function model(name: string, quant?: QuantSpec): string {
  const g = new Graph({ name, quant });
  const x = g.input('x', 'float32', [1, 4, K]);
  g.output(linear({ g, w: memorySource(weights) }, x, 'fc', K, N, false), 'y', 'float32', [1, 4, N]);
  const path = join(dir, `${name}.onnx`);
  g.save(path);
  return path;
}

const x = f32([1, 4, K], Array.from({ length: 4 * K }, (_, i) => Math.cos(i * 0.11)));

describe('quantized graphs in the session pool', () => {
  it('counts packed bytes against the memory budget', async () => {
    const fp32 = model('fp32');
    const int4 = model('int4', { bits: 4, block: 32 });
    const s4 = await scanModel(int4);
    expect(s4.contribOps).toBe(true);
    expect(s4.packedBytes).toBe(N * (K / 32) * 16 + N * (K / 32) / 2); // codes + zero points
    expect((await scanModel(fp32)).contribOps).toBe(false);
    // a budget between the two: the int4 model fits, the float32 one is refused
    const budget = Math.floor((statSync(int4).size + statSync(fp32).size) / 2);
    const pool = await SessionPool.create({ device: 'cpu', memoryBudgetBytes: budget, spareWorker: false, log: () => {} });
    try {
      const y = await pool.run(int4, { x });
      expect(y.y!.dims).toEqual([1, 4, N]);
      await expect(pool.run(fp32, { x })).rejects.toThrow(/more than the whole memory budget/);
    } finally {
      await pool.close();
    }
  });

  it('on WebGPU: runs MatMulNBits as the CPU does, or refuses the model before loading it', async () => {
    if (!existsSync(SWIFTSHADER_ICD)) throw new Error(`the WebGPU check needs ${SWIFTSHADER_ICD} (Debian package chromium): npm run test:setup`);
    process.env.VK_ICD_FILENAMES = SWIFTSHADER_ICD;
    process.env.XDG_RUNTIME_DIR ??= dir;
    const path = model('int8_gpu', { bits: 8, block: 32, accuracyLevel: 0 });
    const cpu = await SessionPool.create({ device: 'cpu', spareWorker: false, log: () => {} });
    const want = (await cpu.run(path, { x })).y!.data as Float32Array;
    await cpu.close();
    const logs: string[] = [];
    const gpu = await SessionPool.create({ device: 'webgpu', log: (m) => logs.push(m) });
    try {
      const run = gpu.run(path, { x });
      const note = logs.find((l) => l.includes('cannot run int8/int4'));
      if (note) {
        await expect(run).rejects.toThrow(/int8_gpu\.onnx has int8\/int4 weights .*which the webgpu device here cannot run .*--device cpu/);
        expect(gpu.stats().loads).toBe(0);
      } else {
        const got = (await run).y!.data as Float32Array;
        let err = 0;
        let mag = 0;
        for (let i = 0; i < want.length; i++) {
          err = Math.max(err, Math.abs(got[i]! - want[i]!));
          mag = Math.max(mag, Math.abs(want[i]!));
        }
        console.log(`webgpu MatMulNBits vs cpu: relative ${(err / mag).toExponential(2)}`);
        expect(err / mag).toBeLessThan(1e-3);
      }
    } finally {
      await gpu.close();
    }
  }, 120_000);
});
