// The pipeline on each execution provider, compared with the CPU: the default workflow through the
// real executor, nodes and session pool, once per device and model set. Reports per-node times
// (cold: loads included; warm: a new seed, so only the sampler and decoder run again), the DiT step
// time, and how far the device's latents and decoded pixels land from the CPU's.
//
//   npx tsx bench/devices.ts                                 # every device that runs here, tiny + mid sets
//   npx tsx bench/devices.ts --devices cpu,webgpu --sets tiny,tiny16 --size 256 --steps 4
//
// Sets: tiny, mid (bench/lib/fixtures.ts), and tiny16 / mid16 (the same weights in float16).
// Results also go to <bench dir>/devices.json. Not part of `npm run bench`: it is the GPU check
// of issue 8, meant for a machine with a GPU (on SwiftShader it works, but very slowly).
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Executor, type RunEvent } from '../engine/executor/index.ts';
import { resolvePaths } from '../engine/paths.ts';
import { DeviceUnavailableError } from '../engine/runtime/pool.ts';
import type { Device } from '../engine/runtime/protocol.ts';
import { MANIFEST_FILE, writeModelSet } from '../models/modelset.ts';
import { tinySpec } from '../models/tiny.ts';
import { nodeRegistry } from '../nodes/registry.ts';
import { createServices } from '../nodes/services.ts';
import type { Latent, RgbImage } from '../nodes/types.ts';
import { BENCH_ROOT, MID_SET_NAME, MODELS_ROOT, ensureMidSet, ensureTinySet, midSpec, workflow } from './lib/fixtures.ts';

const { values: args } = parseArgs({
  options: {
    devices: { type: 'string', default: 'cpu,cuda,webgpu' },
    sets: { type: 'string', default: 'tiny,mid' },
    size: { type: 'string', default: '512' },
    steps: { type: 'string', default: '8' },
  },
});
const DEVICES = args.devices.split(',').map((d) => d.trim()) as Device[];
const SETS = args.sets.split(',').map((s) => s.trim());
const SIZE = Number(args.size);
const STEPS = Number(args.steps);
if (!DEVICES.includes('cpu')) DEVICES.unshift('cpu'); // the reference every device is compared with

interface Measured {
  set: string;
  device: Device;
  coldMs: number;
  warmMs: number;
  nodeMs: Record<string, number>;
  stepMs: number;
  latent: Float32Array;
  image: Uint8Array;
}

const SET_FOLDERS: Record<string, { name: string; make(): Promise<unknown> }> = {
  tiny: { name: 'tiny', make: ensureTinySet },
  mid: { name: MID_SET_NAME, make: ensureMidSet },
  tiny16: { name: 'tiny16', make: () => ensureHalf('tiny16', () => ({ ...tinySpec(), name: 'tiny16' })) },
  mid16: { name: 'mid16', make: () => ensureHalf('mid16', () => ({ ...midSpec(), name: 'mid16' })) },
};

async function ensureHalf(name: string, spec: () => ReturnType<typeof tinySpec>): Promise<void> {
  const dir = join(MODELS_ROOT, name);
  if (!existsSync(join(dir, MANIFEST_FILE))) await writeModelSet({ ...spec(), dtype: 'float16' }, dir);
}

async function measure(set: string, device: Device): Promise<Measured | string> {
  const paths = resolvePaths({ data: join(BENCH_ROOT, 'devices-data'), models: MODELS_ROOT });
  let services;
  try {
    services = await createServices(paths, { device, log: (m) => console.error(`  [${device}] ${m}`) });
  } catch (e) {
    if (e instanceof DeviceUnavailableError) return e.message;
    throw e;
  }
  try {
    const registry = nodeRegistry();
    const executor = new Executor({ registry, services, logger: { info: () => {}, warn: (m) => console.error(`  ${m}`) } });
    const nodeMs: Record<string, number> = {};
    const onEvent = (e: RunEvent) => {
      if (e.type === 'node_finished') {
        nodeMs[`${e.nodeId} ${e.nodeType}`] = e.ms;
        console.error(`  node ${e.nodeId} ${e.nodeType} ${Math.round(e.ms)} ms`);
      }
      if (e.type === 'node_failed') console.error(`  ${e.message}`);
    };
    const wf = (seed: number) => workflow(registry, { 1: { set: SET_FOLDERS[set]!.name }, 7: { width: SIZE, height: SIZE, steps: STEPS, seed } });
    const t0 = performance.now();
    const cold = await executor.run(wf(123456), { targets: ['7', '8'], onEvent });
    const coldMs = performance.now() - t0;
    if (cold.status !== 'done') return `the cold run ${cold.status}`;
    const coldNodes = { ...nodeMs };
    const t1 = performance.now();
    const warm = await executor.run(wf(654321), { targets: ['7', '8'], onEvent: () => {} });
    const warmMs = performance.now() - t1;
    if (warm.status !== 'done') return `the warm run ${warm.status}`;
    console.error(`  warm run ${Math.round(warmMs)} ms; closing`);
    const latent = (cold.outputs['7']!.latent as Latent).samples.data as Float32Array;
    const image = (cold.outputs['8']!.image as RgbImage).data;
    const ditMs = Object.entries(coldNodes).find(([k]) => k.endsWith('DiTSample'))?.[1] ?? NaN;
    // Warm DiT time per step: the warm run re-runs only DiTSample and Decode.
    const decodeMs = Object.entries(coldNodes).find(([k]) => k.endsWith('Decode'))?.[1] ?? 0;
    return { set, device, coldMs, warmMs, nodeMs: coldNodes, stepMs: Math.min(ditMs, warmMs - decodeMs) / STEPS, latent, image };
  } finally {
    await services.close();
  }
}

function maxAbs(a: ArrayLike<number>, b: ArrayLike<number>): { max: number; mean: number } {
  let max = 0;
  let sum = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    sum += d;
    if (!(d <= max)) max = d; // NaN propagates
  }
  return { max, mean: sum / a.length };
}

const rows: Record<string, unknown>[] = [];
for (const set of SETS) {
  const folder = SET_FOLDERS[set];
  if (!folder) throw new Error(`unknown set ${set}: expected ${Object.keys(SET_FOLDERS).join(', ')}`);
  await folder.make();
  let reference: Measured | undefined;
  for (const device of DEVICES) {
    console.error(`${set} on ${device}: ${SIZE}x${SIZE}, ${STEPS} steps`);
    const m = await measure(set, device);
    if (typeof m === 'string') {
      console.error(`  not measured: ${m}`);
      rows.push({ set, device, skipped: m });
      continue;
    }
    reference ??= m;
    const latentDiff = maxAbs(m.latent, reference.latent);
    const imageDiff = maxAbs(m.image, reference.image);
    const row = {
      set, device, size: SIZE, steps: STEPS,
      coldMs: Math.round(m.coldMs), warmMs: Math.round(m.warmMs), stepMs: Math.round(m.stepMs * 10) / 10,
      nodeMs: Object.fromEntries(Object.entries(m.nodeMs).map(([k, v]) => [k, Math.round(v)])),
      latentMaxAbsDiffVsCpu: latentDiff.max, latentMeanAbsDiffVsCpu: latentDiff.mean,
      imageMaxAbsDiffVsCpu: imageDiff.max, imageMeanAbsDiffVsCpu: imageDiff.mean,
    };
    rows.push(row);
    console.error(`  cold ${row.coldMs} ms, warm ${row.warmMs} ms, DiT step ${row.stepMs} ms; vs cpu: latent max ${latentDiff.max.toExponential(2)} `
      + `(mean ${latentDiff.mean.toExponential(2)}), pixels max ${imageDiff.max}/255 (mean ${imageDiff.mean.toFixed(3)})`);
    console.error(`  nodes (cold): ${Object.entries(row.nodeMs).map(([k, v]) => `${k} ${v}`).join(', ')}`);
  }
}
const out = join(BENCH_ROOT, 'devices.json');
writeFileSync(out, `${JSON.stringify({ when: new Date().toISOString(), rows }, null, 2)}\n`);
console.log(JSON.stringify(rows.map(({ nodeMs: _n, ...r }) => r), null, 1));
console.error(`written ${out}`);
