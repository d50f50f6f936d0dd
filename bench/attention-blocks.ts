// Section 15: fused attention (com.microsoft MultiHeadAttention behind the 'auto' If, what model sets write)
// against the plain MatMul -> Softmax -> MatMul, side by side in one run:
//  - one FLUX-geometry double block and one single block (width 3072, 24 heads x 128, synthetic weights,
//    fp32 and int8) at 1024 x 1024 (512 text + 4096 image tokens): step time and peak RSS, each form in its
//    own child process (so each peak is its own; the plain form at 1024 peaks near 11 GB, so it only starts
//    with 12 GiB free); at 512 x 512 (512 + 1024): step time, both forms in one child, alternating;
//  - the mid-size DiT step (section 7's set, written plain and auto) through the pool;
//  - the default workflow on the tiny set at 1024 x 1024, 28 steps, end to end (tiny set written each way).
// Blocks alone: node --import tsx bench/attention-blocks.ts [--quick] [--sizes 1024,512] [--kinds double,single] [--weights fp32,int8]
// The rest alone: node --import tsx bench/attention-blocks.ts pipeline [--quick] [--no-mid] [--no-tiny]
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { freemem } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import * as ort from 'onnxruntime-node';
import { Graph } from '../models/onnx/graph.ts';
import { type AttentionForm, FUSED_FROM_SCORES } from '../models/layers.ts';
import { FULL_FLUX, type FluxConfig, buildFlux, fluxWeightShapes } from '../models/flux.ts';
import { fluxRopeFor } from '../models/rope.ts';
import { randomWeights } from '../models/tiny.ts';
import { memorySource } from '../models/weights/source.ts';
import { f32 } from '../models/tensor.ts';
import { toOrt } from '../models/onnx/ort.ts';
import { BENCH_ROOT, MID_SET_NAME, MODELS_ROOT, ensureMidSet, ensurePlainTwin, ensureTinySet, workflow } from './lib/fixtures.ts';
import { resolvePaths } from '../engine/paths.ts';
import { createServices } from '../nodes/services.ts';
import { nodeRegistry } from '../nodes/registry.ts';
import { stepFeeds } from './dit-efficiency.ts';
import { Executor } from '../engine/executor/index.ts';
import { silentLogger } from './lib/context.ts';
import { noise } from './lib/tensors.ts';
import { median } from './lib/stats.ts';
import { type Figure, info, judged } from './lib/report.ts';
import { cpuMeter } from './lib/cpuload.ts';
import { peakRssKiB } from './lib/rss.ts';
import type { BenchContext } from './lib/context.ts';

const SECTION = 15;
const HERE = fileURLToPath(new URL('.', import.meta.url));
const TEXT_TOKENS = 512;
const GRAPHS = join(BENCH_ROOT, 'attention-blocks');
/** Free memory the plain form at 1024 x 1024 needs before its child starts (the fp32 double block peaked at 10.7 GiB). */
const PLAIN_1024_FREE_BYTES = 12 * 1024 ** 3;

export type BlockKind = 'double' | 'single';
export type BlockWeights = 'fp32' | 'int8';

/** FLUX.1's width, heads and head width, one block of one kind, small embedders around it. */
export function blockConfig(kind: BlockKind): FluxConfig {
  return {
    ...FULL_FLUX, numLayers: kind === 'double' ? 1 : 0, numSingleLayers: kind === 'single' ? 1 : 0,
    jointAttentionDim: 256, pooledProjectionDim: 64, guidanceEmbeds: false,
  };
}

/** The block's graph file (built once, kept in BENCH_ROOT): 'plain' is the old form, 'auto' the new. */
export function blockGraph(kind: BlockKind, form: AttentionForm, weights: BlockWeights): string {
  // The threshold is in the name: an 'auto' graph built with another one is not reused.
  const path = join(GRAPHS, `${kind}-${form}-${weights}${form === 'auto' ? `-${Math.log2(FUSED_FROM_SCORES)}` : ''}.onnx`);
  if (existsSync(path)) return path;
  mkdirSync(GRAPHS, { recursive: true });
  const cfg = blockConfig(kind);
  const g = new Graph({ name: `flux_${kind}_block`, quant: weights === 'int8' ? { bits: 8, block: 128 } : undefined });
  buildFlux({ g, w: memorySource(randomWeights(fluxWeightShapes(cfg), 13)) }, undefined, cfg, { attention: form });
  g.save(path);
  return path;
}

interface ChildResult { ms: number[]; rssMiB: number; loadRssMiB: number }

/**
 * In a child: one block, one form, `reps` timed runs after two warm-ups on `device` (cpu, webgpu, cuda); prints
 * a ChildResult. scripts/gpu-check.sh runs it on WebGPU:
 *   node --import tsx bench/attention-blocks.ts build <double|single> <plain|auto|fused> <fp32|int8>
 *   node --import tsx bench/attention-blocks.ts child <double|single> <plain|auto|fused> <fp32|int8> <px> <reps> [device]
 */
async function child(kind: BlockKind, form: AttentionForm, weights: BlockWeights, px: number, reps: number, device = 'cpu'): Promise<void> {
  const session = await blockSession(kind, form, weights, device);
  const loadRssMiB = Math.round(process.memoryUsage().rss / 2 ** 20);
  const feeds = blockFeeds(kind, px);
  // Two warm-up steps: the plain form's arena keeps growing over its first two or three steps at 1024x1024
  // (fresh GBs of scores, page-faulted in), which would time the old form slower than a denoising loop sees it.
  const warmups = 2;
  const ms: number[] = [];
  for (let i = 0; i < warmups + reps; i++) {
    const t0 = performance.now();
    await session.run(feeds);
    if (i >= warmups) ms.push(Math.round(performance.now() - t0));
  }
  const result: ChildResult = { ms, rssMiB: Math.round(peakRssKiB() / 1024), loadRssMiB };
  console.log(JSON.stringify(result));
}

/**
 * In a child: both forms of one block loaded side by side and stepped alternately, `reps` rounds after two
 * warm-up rounds; prints {old: ms[], new: ms[]}. Where both fit in memory (512 x 512) this times them under the
 * same conditions, which separate processes do not (their times differed by up to 15% run to run here).
 *   node --import tsx bench/attention-blocks.ts pair <double|single> <fp32|int8> <px> <reps>
 */
async function pairChild(kind: BlockKind, weights: BlockWeights, px: number, reps: number): Promise<void> {
  const sessions = { old: await blockSession(kind, 'plain', weights), new: await blockSession(kind, 'auto', weights) };
  const feeds = blockFeeds(kind, px);
  const ms = { old: [] as number[], new: [] as number[] };
  for (let i = 0; i < 2 + reps; i++) {
    for (const k of (i % 2 ? ['new', 'old'] : ['old', 'new']) as ('old' | 'new')[]) {
      const t0 = performance.now();
      await sessions[k].run(feeds);
      if (i >= 2) ms[k].push(Math.round(performance.now() - t0));
    }
  }
  console.log(JSON.stringify(ms));
}

function blockSession(kind: BlockKind, form: AttentionForm, weights: BlockWeights, device = 'cpu'): Promise<ort.InferenceSession> {
  const providers: ort.InferenceSession.ExecutionProviderConfig[] = device === 'cuda' ? [{ name: 'cuda', deviceId: 0 }] : [device];
  return ort.InferenceSession.create(blockGraph(kind, form, weights), {
    executionProviders: providers, intraOpNumThreads: 2, interOpNumThreads: 1, executionMode: 'sequential', graphOptimizationLevel: 'all',
  });
}

function blockFeeds(kind: BlockKind, px: number): Record<string, ort.Tensor> {
  const cfg = blockConfig(kind);
  const grid = px / 16;
  const rope = fluxRopeFor(TEXT_TOKENS, grid, grid, cfg.axesDimsRope, cfg.ropeTheta);
  return Object.fromEntries(Object.entries({
    hidden_states: noise([1, grid * grid, cfg.inChannels], 1),
    encoder_hidden_states: noise([1, TEXT_TOKENS, cfg.jointAttentionDim], 2),
    pooled_projections: noise([1, cfg.pooledProjectionDim], 3),
    timestep: f32([1], [0.75]),
    rope_cos: rope.cos,
    rope_sin: rope.sin,
  }).map(([k, t]) => [k, toOrt(t)]));
}

const run = promisify(execFile);
async function inChild(kind: BlockKind, form: AttentionForm, weights: BlockWeights, px: number, reps: number): Promise<ChildResult> {
  // Built in a child of its own: the synthetic weights (GBs) leave with it, and the timed child's peak is the run's alone.
  await run(process.execPath, ['--import', 'tsx', join(HERE, 'attention-blocks.ts'), 'build', kind, form, weights], { timeout: 1_200_000 });
  const { stdout } = await run(process.execPath, ['--import', 'tsx', join(HERE, 'attention-blocks.ts'), 'child', kind, form, weights, String(px), String(reps)], { maxBuffer: 1 << 20, timeout: 1_200_000 });
  return JSON.parse(stdout.trim().split('\n').pop()!) as ChildResult;
}

async function pairInChild(kind: BlockKind, weights: BlockWeights, px: number, reps: number): Promise<{ old: number[]; new: number[] }> {
  for (const form of ['plain', 'auto'] as const) {
    await run(process.execPath, ['--import', 'tsx', join(HERE, 'attention-blocks.ts'), 'build', kind, form, weights], { timeout: 1_200_000 });
  }
  const { stdout } = await run(process.execPath, ['--import', 'tsx', join(HERE, 'attention-blocks.ts'), 'pair', kind, weights, String(px), String(reps)], { maxBuffer: 1 << 20, timeout: 1_200_000 });
  return JSON.parse(stdout.trim().split('\n').pop()!) as { old: number[]; new: number[] };
}

/**
 * Block figures: new ('auto') against old ('plain'), per size, kind and weights. At 1024 x 1024 each form in a
 * child of its own (its own peak RSS; the plain form alone needs ~11 GB); below, both in one child, alternating.
 */
export async function benchBlocks(
  log: (m: string) => void, quick: boolean, sizes: number[] = [1024, 512], kinds: BlockKind[] = ['double', 'single'], formats: BlockWeights[] = ['fp32', 'int8'],
): Promise<{ figures: Figure[]; raw: unknown[] }> {
  const figures: Figure[] = [];
  const raw: unknown[] = [];
  for (const px of sizes) {
    const reps = px >= 1024 ? (quick ? 1 : 2) : (quick ? 3 : 5);
    for (const kind of kinds) {
      for (const weights of formats) {
        const name = `${kind} block ${weights} ${px}x${px}`;
        if (px >= 1024 && freemem() < PLAIN_1024_FREE_BYTES) {
          figures.push(info(SECTION, `${name}: skipped`, freemem() / 2 ** 30, 'GiB', { note: `only ${(freemem() / 2 ** 30).toFixed(1)} GiB free; the plain form needs ~11 GB` }));
          continue;
        }
        const meter = cpuMeter();
        if (px < 1024) {
          const ms = await pairInChild(kind, weights, px, reps);
          const otherCores = meter().otherCores;
          log(`  ${name}: new ${ms.new.join('/')} ms, old ${ms.old.join('/')} ms (one process, alternating)`);
          raw.push({ px, kind, weights, new: ms.new, old: ms.old });
          figures.push(judged(SECTION, `${name}: new / old step time`, median(ms.new) / median(ms.old), 'x', '<=', 1.03, {
            otherCores, note: `median ${median(ms.new)} ms vs ${median(ms.old)} ms, both forms in one process, ${reps} alternating rounds`,
          }));
          continue;
        }
        const oldR = await inChild(kind, 'plain', weights, px, reps);
        const newR = await inChild(kind, 'auto', weights, px, reps);
        const otherCores = meter().otherCores;
        const ratio = median(newR.ms) / median(oldR.ms);
        log(`  ${name}: new ${newR.ms.join('/')} ms ${newR.rssMiB} MiB, old ${oldR.ms.join('/')} ms ${oldR.rssMiB} MiB`);
        raw.push({ px, kind, weights, new: newR, old: oldR });
        const note = `median ${median(newR.ms)} ms vs ${median(oldR.ms)} ms; peak RSS ${newR.rssMiB} vs ${oldR.rssMiB} MiB (after load ${newR.loadRssMiB} vs ${oldR.loadRssMiB})`;
        figures.push(judged(SECTION, `${name}: new / old step time`, ratio, 'x', '<=', 0.55, { otherCores, note }));
        figures.push(judged(SECTION, `${name}: new / old peak RSS`, newR.rssMiB / oldR.rssMiB, 'x', '<=', 0.35, { otherCores, note }));
      }
    }
  }
  return { figures, raw };
}

/** The mid-size DiT step (section 7's feeds, 512 x 512) on the set as written now and on its plain twin. */
export async function benchMidStep(ctx: BenchContext): Promise<Figure[]> {
  const pool = ctx.services.pool;
  const sets = { new: ctx.services.modelSet(MID_SET_NAME), old: ctx.services.modelSet(await ensurePlainTwin('mid')) };
  const feeds = stepFeeds(sets.new.manifest.t5.seqLen);
  const ortMs = async (path: string): Promise<number> => {
    const r = await pool.runWithInfo(path, feeds);
    return r.info.endedAt - r.info.startedAt;
  };
  for (let i = 0; i < 2; i++) for (const s of Object.values(sets)) await ortMs(s.path('flux')); // load, grow the arenas
  const ms = { new: [] as number[], old: [] as number[] };
  const meter = cpuMeter();
  // Both forms cost about the same at this size (docs/attention.md), so the ratio needs many alternations.
  for (let i = 0; i < (ctx.quick ? 5 : 11); i++) {
    for (const k of (i % 2 ? ['old', 'new'] : ['new', 'old']) as ('new' | 'old')[]) ms[k].push(await ortMs(sets[k].path('flux')));
  }
  const ratio = median(ms.new) / median(ms.old);
  ctx.details.attentionMidStep = ms;
  return [judged(SECTION, 'mid-size DiT step 512x512: new / old', ratio, 'x', '<=', 1.0, {
    otherCores: meter().otherCores, note: `median ${median(ms.new).toFixed(0)} vs ${median(ms.old).toFixed(0)} ms (ORT time, alternating)`,
  })];
}

/** The default workflow on the tiny set at 1024 x 1024, 28 steps, end to end, on the set as written now and on its plain twin. */
export async function benchTinyWorkflow(ctx: BenchContext): Promise<Figure[]> {
  const plain = await ensurePlainTwin('tiny');
  const wf = (set: string) => workflow(ctx.registry, { 1: { set }, 7: { width: 1024, height: 1024, steps: 28 } });
  const runOnce = async (set: string): Promise<number> => {
    const ex = new Executor({ registry: ctx.registry, services: ctx.services, logger: silentLogger, cacheBudgetBytes: 0 });
    const t0 = performance.now();
    const r = await ex.run(wf(set));
    if (r.status !== 'done') throw new Error(`tiny workflow on ${set}: ${r.status}`);
    return performance.now() - t0;
  };
  const meter = cpuMeter();
  const ms = { new: [] as number[], old: [] as number[] };
  for (let i = 0; i < (ctx.quick ? 1 : 2); i++) {
    ms.old.push(await runOnce(plain));
    ms.new.push(await runOnce('tiny'));
    ctx.log(`  tiny workflow 1024x1024 28 steps: new ${(ms.new[i]! / 1000).toFixed(1)} s, old ${(ms.old[i]! / 1000).toFixed(1)} s`);
  }
  ctx.details.attentionTinyWorkflow = ms;
  return [judged(SECTION, 'tiny set default workflow 1024x1024, 28 steps: new / old', median(ms.new) / median(ms.old), 'x', '<=', 0.6, {
    otherCores: meter().otherCores, note: `median ${(median(ms.new) / 1000).toFixed(1)} vs ${(median(ms.old) / 1000).toFixed(1)} s end to end, warm sessions, no output cache`,
  })];
}

export async function benchAttention(ctx: BenchContext): Promise<Figure[]> {
  const { figures, raw } = await benchBlocks(ctx.log, ctx.quick);
  ctx.details.attentionBlocks = raw;
  figures.push(...await benchMidStep(ctx));
  figures.push(...await benchTinyWorkflow(ctx));
  return figures;
}

if (process.argv[1]?.endsWith('attention-blocks.ts')) {
  const [mode, ...rest] = process.argv.slice(2);
  if (mode === 'build') {
    const [kind, form, weights] = rest;
    blockGraph(kind as BlockKind, form as AttentionForm, weights as BlockWeights);
  } else if (mode === 'pipeline') {
    // The mid-size step and the tiny workflow alone, on the bench's sets and data folder.
    await Promise.all([ensureTinySet(), ensureMidSet()]);
    const paths = resolvePaths({ data: join(BENCH_ROOT, 'work'), models: MODELS_ROOT });
    const services = await createServices(paths, { device: 'cpu', log: () => {} });
    const ctx: BenchContext = {
      services, registry: nodeRegistry(), paths, quick: process.argv.includes('--quick'), details: {},
      log: (m) => console.log(m), mayExtend: () => true,
    };
    try {
      const figures = [
        ...(process.argv.includes('--no-mid') ? [] : await benchMidStep(ctx)),
        ...(process.argv.includes('--no-tiny') ? [] : await benchTinyWorkflow(ctx)),
      ];
      for (const f of figures) console.log(`${f.status.padEnd(5)} ${f.name}: ${f.value?.toFixed(3)} ${f.unit} (target ${f.target}) ${f.note ?? ''}`);
    } finally {
      await services.close();
    }
  } else if (mode === 'pair') {
    const [kind, weights, px, reps] = rest;
    await pairChild(kind as BlockKind, weights as BlockWeights, Number(px), Number(reps));
  } else if (mode === 'child') {
    const [kind, form, weights, px, reps, device] = rest;
    await child(kind as BlockKind, form as AttentionForm, weights as BlockWeights, Number(px), Number(reps), device);
  } else {
    const list = (name: string): string[] | undefined => {
      const i = process.argv.indexOf(`--${name}`);
      return i > 0 ? process.argv[i + 1]!.split(',') : undefined;
    };
    const { figures } = await benchBlocks((m) => console.log(m), process.argv.includes('--quick'), list('sizes')?.map(Number),
      list('kinds') as BlockKind[] | undefined, list('weights') as BlockWeights[] | undefined);
    for (const f of figures) console.log(`${f.status.padEnd(5)} ${f.name}: ${f.value?.toFixed(3)} ${f.unit} (target ${f.target}) ${f.note ?? ''}`);
  }
}
