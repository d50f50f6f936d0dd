// The WebGPU provider for real, on SwiftShader: Chromium's software Vulkan driver gives ORT's Dawn a
// WebGPU adapter on a machine without a GPU. It is slow, but it runs the same provider code a GPU
// machine runs, which is how this test found that ORT's WebGPU device context is shared by every
// session in the process: two model workers running at once corrupted it (errors, then segfaults).
// Needs Debian's chromium (for libvk_swiftshader.so) and libvulkan1; `npm run test:setup` installs both.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasGpuDeviceNode } from '../../engine/runtime/device.ts';
import { SessionPool } from '../../engine/runtime/pool.ts';
import { Graph } from '../../models/onnx/graph.ts';
import { f32, type Tensor } from '../../models/tensor.ts';
import { missingPackages, SWIFTSHADER_ICD } from '../../scripts/system-deps.mjs';
import { intMatrix, tempDir } from './models.ts';

const tmp = tempDir('charflow-webgpu-');

/**
 * y = chain of `ops` element-wise steps after x @ w: many small kernels, hence many GPU dispatches
 * per run. Integer data keeps every result exact on any device.
 */
function chainModel(name: string, ops: number, seed: number): { path: string; reference(x: Tensor): Float32Array } {
  const g = new Graph({ name });
  const x = g.input('x', 'float32', [8, 8]);
  const w = intMatrix(8, 8, seed);
  let h = g.node('MatMul', [x, g.weight('w', w)]);
  for (let i = 0; i < ops; i++) {
    h = i % 2 === 0 ? g.node('Add', [h, g.scalar(i % 5)]) : g.node('Mul', [h, g.scalar(-1)]);
  }
  g.output(h, 'y', 'float32', [8, 8]);
  const path = join(tmp.dir, `${name}.onnx`);
  g.save(path);
  const reference = (input: Tensor): Float32Array => {
    const xd = input.data as Float32Array;
    const wd = w.data as Float32Array;
    const out = new Float32Array(64);
    for (let r = 0; r < 8; r++) {
      for (let c = 0; c < 8; c++) {
        let v = 0;
        for (let k = 0; k < 8; k++) v += xd[r * 8 + k]! * wd[k * 8 + c]!;
        for (let i = 0; i < ops; i++) v = i % 2 === 0 ? v + (i % 5) : -v;
        out[r * 8 + c] = v;
      }
    }
    return out;
  };
  return { path, reference };
}

function input(seed: number): Tensor {
  return f32([8, 8], Array.from({ length: 64 }, (_, i) => ((i * 3 + seed) % 7) - 3));
}

beforeAll(() => {
  const missing = missingPackages().filter((p) => p.debian === 'chromium' || p.debian === 'libvulkan1');
  if (missing.length) throw new Error(`the WebGPU test needs the Debian packages ${missing.map((p) => p.debian).join(' and ')}: npm run test:setup`);
  // Read by the Vulkan loader inside ORT when the first WebGPU session starts (after this line).
  process.env.VK_ICD_FILENAMES = SWIFTSHADER_ICD;
  process.env.XDG_RUNTIME_DIR ??= tmp.dir; // SwiftShader complains without one
});

afterAll(() => tmp.cleanup());

describe('WebGPU provider (SwiftShader)', () => {
  it('auto passes over a software-only Vulkan adapter and says why', async () => {
    if (hasGpuDeviceNode()) return; // a GPU machine: auto may rightly take WebGPU there
    const logs: string[] = [];
    const pool = await SessionPool.create({ device: 'auto', log: (m) => logs.push(m), spareWorker: false });
    await pool.close();
    expect(pool.device === 'cpu' || pool.device === 'cuda').toBe(true);
    expect(logs.join('\n')).toMatch(/webgpu: no GPU device node .* software one/);
  });

  it('says up front whether the adapter runs float16, and refuses a float16 model before loading where it cannot', async () => {
    const logs: string[] = [];
    const pool = await SessionPool.create({ device: 'webgpu', log: (m) => logs.push(m) });
    try {
      const g = new Graph({ name: 'half', dtype: 'float16' });
      const x = g.input('x', 'float16', [1, 8]);
      g.output(g.node('MatMul', [x, g.weight('w', intMatrix(8, 8, 5))]), 'y', 'float16', [1, 8]);
      const path = join(tmp.dir, 'half.onnx');
      g.save(path);
      const run = pool.run(path, { x: f32([1, 8], [1, 0, -1, 2, 0, 1, -2, 1]) });
      const note = logs.find((l) => l.includes('cannot run float16'));
      if (note) {
        // SwiftShader has no shader-f16: without this check ORT fails inside the first kernel.
        expect(note).toMatch(/^runtime: webgpu cannot run float16 models here \(Program Add requires f16 but the device does not support it\.?\); float32 model sets only$/);
        await expect(run).rejects.toThrow(/half\.onnx has float16 weights, which the webgpu device here cannot run .*use a float32 model set/);
        expect(pool.stats().loads).toBe(0);
      } else {
        expect(Array.from((await run).y!.data as Float32Array).length).toBe(8);
      }
    } finally {
      await pool.close();
    }
  });

  it('models on separate workers take turns on the shared device context, with exact results', async () => {
    const logs: string[] = [];
    const pool = await SessionPool.create({ device: 'webgpu', log: (m) => logs.push(m) });
    try {
      expect(pool.device).toBe('webgpu');
      const models = [chainModel('a', 40, 1), chainModel('b', 41, 2), chainModel('c', 42, 3)];
      // Every model loads and runs at the same time as the others, several rounds over.
      const runs = [];
      for (let round = 0; round < 4; round++) {
        for (const [i, m] of models.entries()) {
          const x = input(round * 3 + i);
          runs.push(pool.run(m.path, { x }).then((out) => ({ got: out.y!.data as Float32Array, want: m.reference(x) })));
        }
      }
      const results = await Promise.all(runs);
      const plain = (a: Float32Array) => Array.from(a, (v) => v + 0); // -0 and 0 alike: ORT may fold -1 * 0
      for (const { got, want } of results) expect(plain(got)).toEqual(plain(want));
      expect(pool.stats().loads).toBe(3);
      expect(new Set(Object.values(pool.stats().runs))).toEqual(new Set([4]));
    } finally {
      await pool.close();
    }
  });
});
