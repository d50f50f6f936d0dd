// Full-size FLUX + InstantCharacter IP layers with int4 / int8 weights, from synthetic weights (the real
// shapes, random values, no checkpoint), run for a few steps on a device. Used by scripts/gpu-check.sh on
// a GPU machine (WebGPU at 1024 x 1024); on a CPU-only machine `--reduced` checks the same path at a small
// size. Writes <out>/quant-gpu.json: per format, the graph's bytes, build time, load time and seconds per step.
//   node --import tsx scripts/quant-gpu.ts [--device webgpu|cpu] [--formats int4,int8] [--size 1024] [--steps 2]
//        [--block 128] [--out DIR] [--dir DIR] [--budget-s 480] [--reduced]
// The random codes are drawn directly (models/quant's real quantizer would take minutes per format on
// 13 billion weights); the graph, the packed layout, the runtime path and the memory are the real ones.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Graph } from '../models/onnx/graph.ts';
import { FULL_FLUX, type FluxConfig, buildFlux } from '../models/flux.ts';
import { FULL_ADAPTER } from '../models/adapter.ts';
import { fluxRopeFor } from '../models/rope.ts';
import { type QuantSpec, type QuantizedMatrix, blobBytes, kBlocksOf, zeroPointBytesPerRow } from '../models/quant/quantize.ts';
import type { WeightSource } from '../models/weights/source.ts';
import { type Tensor, f32, numel } from '../models/tensor.ts';
import { SessionPool } from '../engine/runtime/pool.ts';
import { scanModel } from '../engine/runtime/onnx-scan.ts';
import type { Device } from '../engine/runtime/protocol.ts';

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1]! : fallback;
}
const reduced = process.argv.includes('--reduced');
const device = arg('device', reduced ? 'cpu' : 'webgpu') as Device;
const formats = arg('formats', 'int4,int8').split(',') as ('int4' | 'int8')[];
const size = Number(arg('size', reduced ? '256' : '1024'));
const steps = Number(arg('steps', '2'));
const block = Number(arg('block', '128'));
const budgetS = Number(arg('budget-s', '480'));
const outDir = arg('out', process.env.OUT ?? '/tmp/quant-gpu');
const cfg: FluxConfig = reduced ? { ...FULL_FLUX, numLayers: 1, numSingleLayers: 2 } : FULL_FLUX;
const ipDim = FULL_ADAPTER.outputDim;
const ipTokens = FULL_ADAPTER.numQueries;
const textTokens = 512;
const started = Date.now();
const elapsed = () => (Date.now() - started) / 1000;
mkdirSync(outDir, { recursive: true });

/** One shared buffer of small random values: every weight is a view of it (the values do not matter). */
const POOL = new Float32Array(1 << 26); // 256 MB, more than the largest fused Linear (3072 x 21504)
for (let i = 0; i < 1 << 16; i++) POOL[i] = Math.sin(i * 12.9898) * 0.02;
for (let n = 1 << 16; n < POOL.length; n *= 2) POOL.copyWithin(n, 0, n);
/** Every FLUX + IP key with its real shape (filled in main), served as views of POOL (norm scales as ones). */
function syntheticSource(): WeightSource {
  return {
    keys: () => [...expected.keys()],
    shape: (key: string) => expected.get(key),
    get: (key: string): Tensor => {
      const dims = expected.get(key);
      if (!dims) throw new Error(`synthetic source: unknown key ${key}`);
      const n = numel(dims);
      const norm = dims.length === 1 && /norm|scale/.test(key) && !key.endsWith('.bias');
      return { dtype: 'float32', dims: [...dims], data: norm ? new Float32Array(n).fill(1) : POOL.subarray(0, n) };
    },
  };
}
const expected = new Map<string, number[]>();

/** Random codes, scales of a plausible magnitude, zero points mid-range: the real layout and sizes. */
function randomQuantizer(rows: Float32Array, N: number, K: number, spec: QuantSpec): QuantizedMatrix {
  const kb = kBlocksOf(K, spec.block);
  const packed = new Uint8Array(N * kb * blobBytes(spec.bits, spec.block));
  for (let i = 0; i < packed.length; i += 4096) packed.set(RANDOM_BYTES.subarray(0, Math.min(4096, packed.length - i)), i);
  const scales = new Float32Array(N * kb).fill(0.02 / (spec.bits === 4 ? 7 : 127));
  const zeroPoints = new Uint8Array(N * zeroPointBytesPerRow(spec.bits, kb)).fill(spec.bits === 4 ? 0x88 : 128);
  void rows;
  return { N, K, bits: spec.bits, block: spec.block, packed, scales, zeroPoints };
}
const RANDOM_BYTES = Uint8Array.from({ length: 4096 }, (_, i) => (Math.imul(i + 1, 2654435761) >>> 13) & 0xff);

async function main(): Promise<void> {
  const { fluxWeightShapes, ipAdapterWeightShapes } = await import('../models/flux.ts');
  for (const [k, v] of Object.entries({ ...fluxWeightShapes(cfg), ...ipAdapterWeightShapes(cfg, ipDim) })) expected.set(k, v);
  const work = mkdtempSync(join(arg('dir', tmpdir()), 'charflow-quant-gpu-'));
  const results: Record<string, unknown>[] = [];
  const log = (m: string) => console.log(`[${elapsed().toFixed(0).padStart(4)} s] ${m}`);
  log(`${reduced ? 'REDUCED ' : ''}FLUX ${cfg.numLayers}+${cfg.numSingleLayers} blocks + IP layers, ${size}x${size}, ${steps} steps on ${device}, formats ${formats.join(',')}, block ${block}`);
  const pool = await SessionPool.create({ device, log: (m) => log(m), memoryBudgetBytes: 1024 ** 4 });
  try {
    for (const format of formats) {
      if (elapsed() > budgetS) {
        log(`${format}: skipped, past the ${budgetS} s budget`);
        results.push({ format, skipped: `past the ${budgetS} s budget` });
        continue;
      }
      const dir = join(work, format);
      mkdirSync(dir, { recursive: true });
      let t = Date.now();
      const quant: QuantSpec = { bits: format === 'int4' ? 4 : 8, block };
      const g = new Graph({ name: 'flux', quant, quantizer: randomQuantizer, external: { dir, file: 'flux.onnx.data' } });
      buildFlux({ g, w: syntheticSource() }, syntheticSource(), cfg, { ipDim });
      g.save(join(dir, 'flux.onnx'));
      const path = join(dir, 'flux.onnx');
      const scan = await scanModel(path);
      const buildS = (Date.now() - t) / 1000;
      log(`${format}: graph ${(scan.bytes / 1e9).toFixed(2)} GB (${(scan.packedBytes / 1e9).toFixed(2)} GB packed codes) built in ${buildS.toFixed(1)} s`);

      const grid = size / 16; // VAE /8, then 2x2 patches
      const L = grid * grid;
      const rope = fluxRopeFor(textTokens, grid, grid, cfg.axesDimsRope, cfg.ropeTheta);
      const feeds: Record<string, Tensor> = {
        hidden_states: f32([1, L, cfg.inChannels], POOL.subarray(0, L * cfg.inChannels)),
        encoder_hidden_states: f32([1, textTokens, cfg.jointAttentionDim], POOL.subarray(0, textTokens * cfg.jointAttentionDim)),
        pooled_projections: f32([1, cfg.pooledProjectionDim], POOL.subarray(0, cfg.pooledProjectionDim)),
        timestep: f32([1], [1]), guidance: f32([1], [3.5]), rope_cos: rope.cos, rope_sin: rope.sin,
        ip_hidden_states: f32([1, ipTokens, ipDim], POOL.subarray(0, ipTokens * ipDim)), subject_scale: f32([1], [0.9]),
      };
      for (const name of scan.inputNames) {
        if (feeds[name]) continue;
        if (/mask/.test(name)) feeds[name] = f32([1, L], new Float32Array(L).fill(1)); // regional IP masks: everywhere
        else throw new Error(`the flux graph has an input "${name}" this script does not know how to feed`);
      }
      for (const k of Object.keys(feeds)) if (!scan.inputNames.includes(k)) delete feeds[k];
      t = Date.now();
      const stepS: number[] = [];
      let loadS = 0;
      for (let s = 0; s < steps + 1; s++) { // the first run includes the load
        feeds.timestep = f32([1], [1 - s / (steps + 1)]);
        const r0 = Date.now();
        const r = await pool.runWithInfo(path, feeds, { outputs: ['noise_pred'] });
        const ortS = (r.info.endedAt - r.info.startedAt) / 1000;
        if (s === 0) loadS = (Date.now() - r0) / 1000 - ortS;
        if (s > 0 || steps === 0) stepS.push(ortS);
        log(`${format}: ${s === 0 ? 'warm-up step (after load)' : `step ${s}`} ${ortS.toFixed(2)} s; noise_pred [${r.outputs.noise_pred!.dims}]`);
        if (elapsed() > budgetS + 60) break;
      }
      await pool.unload(path);
      const sPerStep = stepS.length ? stepS.reduce((a, b) => a + b, 0) / stepS.length : NaN;
      results.push({ format, block, bytes: scan.bytes, packedBytes: scan.packedBytes, buildS, loadS, stepS, sPerStep, size, device });
      writeFileSync(join(outDir, 'quant-gpu.json'), JSON.stringify({ reduced, results }, null, 2));
      rmSync(dir, { recursive: true, force: true });
    }
  } finally {
    await pool.close();
    rmSync(work, { recursive: true, force: true });
  }
  writeFileSync(join(outDir, 'quant-gpu.json'), JSON.stringify({ reduced, results }, null, 2));
  log(`done; ${join(outDir, 'quant-gpu.json')}`);
}

await main();
