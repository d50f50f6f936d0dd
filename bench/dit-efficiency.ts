// Section 7: how close a transformer step gets to the machine's own MatMul speed. The step's FLOPs
// are counted from the config and token counts (matmuls 2*m*n*k, attention QK^T and PV); the peak is
// onnxruntime's MatMul on 2048x2048 fp32 through the same pool, thread count and worker. Runs of the
// two alternate; the figure is the median step rate over the best MatMul rate. One step also runs
// under ORT's profiler to show where the time goes, op type by op type.
import { mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import type { FluxConfig } from '../models/flux.ts';
import { fluxRopeFor } from '../models/rope.ts';
import { f32, type Tensor } from '../models/tensor.ts';
import { toOrt } from '../models/onnx/ort.ts';
import { BENCH_ROOT, MID_ADAPTER, MID_FLUX, MID_SET_NAME, ensureMatMulGraph } from './lib/fixtures.ts';
import type { BenchContext } from './lib/context.ts';
import { type Figure, info, judged } from './lib/report.ts';
import { median } from './lib/stats.ts';
import { noise } from './lib/tensors.ts';
import { cpuMeter, describeShare } from './lib/cpuload.ts';

/** A 512 x 512 image (32 x 32 packed latent tokens) and the T5 sequence length of the pipeline. */
const GRID = 32;
const MATMUL_N = 2048;

export interface StepFlops {
  total: number;
  /** Every Linear (weights as the second operand). */
  linear: number;
  /** QK^T and PV of joint and IP attention. */
  attention: number;
}

const mm = (m: number, n: number, k: number): number => 2 * m * n * k;

/** FLOPs of one transformer forward pass (one denoising step) with T text, L image and P adapter tokens. */
export function fluxStepFlops(cfg: FluxConfig, T: number, L: number, ip?: { tokens: number; dim: number }): StepFlops {
  const C = cfg.numHeads * cfg.headDim;
  const M = 4 * C;
  const N = T + L;
  let linear = mm(L, C, cfg.inChannels) + mm(T, C, cfg.jointAttentionDim); // x_embedder, context_embedder
  linear += (cfg.guidanceEmbeds ? 2 : 1) * (mm(1, C, 256) + mm(1, C, C)) + mm(1, C, cfg.pooledProjectionDim) + mm(1, C, C);
  let attention = 0;
  const ipCost = (): void => {
    if (!ip) return;
    linear += mm(ip.tokens, 2 * C, ip.dim); // to_k_ip, to_v_ip
    attention += 2 * mm(L, ip.tokens, C); // image queries against adapter tokens: QK^T and PV over all heads
  };
  for (let i = 0; i < cfg.numLayers; i++) {
    linear += 2 * mm(1, 6 * C, C); // AdaLN of both streams
    linear += mm(N, 3 * C, C) + mm(N, C, C) + mm(N, M, C) + mm(N, C, M); // qkv, out, MLP of both streams
    attention += 2 * mm(N, N, C);
    ipCost();
  }
  for (let i = 0; i < cfg.numSingleLayers; i++) {
    linear += mm(1, 3 * C, C) + mm(N, 3 * C + M, C) + mm(N, C, C + M);
    attention += 2 * mm(N, N, C);
    ipCost();
  }
  linear += mm(1, 2 * C, C) + mm(L, cfg.patchSize ** 2 * cfg.outChannels, C);
  return { total: linear + attention, linear, attention };
}

export function stepFeeds(T: number): Record<string, Tensor> {
  const rope = fluxRopeFor(T, GRID, GRID, MID_FLUX.axesDimsRope, MID_FLUX.ropeTheta);
  return {
    hidden_states: noise([1, GRID * GRID, MID_FLUX.inChannels], 1),
    encoder_hidden_states: noise([1, T, MID_FLUX.jointAttentionDim], 2),
    pooled_projections: noise([1, MID_FLUX.pooledProjectionDim], 3),
    timestep: f32([1], [0.75]),
    guidance: f32([1], [3.5]),
    rope_cos: rope.cos,
    rope_sin: rope.sin,
    ip_hidden_states: noise([1, MID_ADAPTER.numQueries, MID_ADAPTER.outputDim], 4),
    ip_masks: f32([1, GRID * GRID], new Float32Array(GRID * GRID).fill(0.9)),
  };
}

interface OpTime { op: string; ms: number; count: number; flops: number }

interface ProfileEvent {
  cat: string;
  name: string;
  ts: number;
  dur: number;
  args?: { op_name?: string; input_type_shape?: Record<string, number[]>[]; output_type_shape?: Record<string, number[]>[] };
}

const MATMUL_OPS = new Set(['MatMul', 'FusedMatMul', 'Gemm']);

/** FLOPs of a MatMul-like node from its input shapes; `attention` when both operands are activations of rank 4. */
function matmulFlops(e: ProfileEvent): { flops: number; attention: boolean } {
  const shapes = (e.args?.input_type_shape ?? []).map((s) => Object.values(s)[0] ?? []);
  const a = shapes[0] ?? [];
  const out = (e.args?.output_type_shape ?? []).map((s) => Object.values(s)[0] ?? [])[0] ?? [];
  if (a.length < 2 || out.length < 2) return { flops: 0, attention: false };
  const k = a[a.length - 1]!;
  const outCount = out.reduce((x, y) => x * y, 1);
  return { flops: 2 * outCount * k, attention: a.length === 4 && (shapes[1]?.length ?? 0) === 4 };
}

/** One step under ORT's profiler, same session settings as the pool's workers (but on this thread); op-type totals of the last run. */
async function profileStep(path: string, feeds: Record<string, Tensor>, threads: number): Promise<{ ops: OpTime[]; runMs: number; linearMs: number; linearFlops: number; attnMs: number; attnFlops: number }> {
  const dir = join(BENCH_ROOT, 'profile');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const session = await ort.InferenceSession.create(path, {
    executionProviders: ['cpu'], intraOpNumThreads: threads, interOpNumThreads: 1, executionMode: 'sequential',
    graphOptimizationLevel: 'all', enableProfiling: true, profileFilePrefix: join(dir, 'dit'), logSeverityLevel: 3,
  });
  const ortFeeds = Object.fromEntries(Object.entries(feeds).map(([k, v]) => [k, toOrt(v)]));
  // The last of three runs: the first ones grow ORT's memory arena (page faults), not representative.
  for (let i = 0; i < 3; i++) await session.run(ortFeeds);
  session.endProfiling();
  await session.release();
  const file = readdirSync(dir).find((f) => f.endsWith('.json'));
  if (!file) throw new Error('ORT wrote no profile');
  const events = JSON.parse(readFileSync(join(dir, file), 'utf8')) as ProfileEvent[];
  const runs = events.filter((e) => e.cat === 'Session' && e.name === 'model_run');
  const last = runs[runs.length - 1];
  if (!last) throw new Error('no model_run in the ORT profile');
  const byOp = new Map<string, OpTime>();
  let linearMs = 0, linearFlops = 0, attnMs = 0, attnFlops = 0;
  for (const e of events) {
    if (e.cat !== 'Node' || !e.name.endsWith('_kernel_time') || e.ts < last.ts || e.ts > last.ts + last.dur) continue;
    const op = e.args?.op_name ?? '?';
    const ms = e.dur / 1000;
    const entry = byOp.get(op) ?? { op, ms: 0, count: 0, flops: 0 };
    entry.ms += ms;
    entry.count++;
    if (MATMUL_OPS.has(op)) {
      const { flops, attention } = matmulFlops(e);
      entry.flops += flops;
      if (attention) { attnMs += ms; attnFlops += flops; } else { linearMs += ms; linearFlops += flops; }
    }
    byOp.set(op, entry);
  }
  rmSync(dir, { recursive: true, force: true });
  return { ops: [...byOp.values()].sort((a, b) => b.ms - a.ms), runMs: last.dur / 1000, linearMs, linearFlops, attnMs, attnFlops };
}

export async function benchDiT(ctx: BenchContext): Promise<Figure[]> {
  const pool = ctx.services.pool;
  const set = ctx.services.modelSet(MID_SET_NAME);
  const T = set.manifest.t5.seqLen;
  const L = GRID * GRID;
  const flops = fluxStepFlops(MID_FLUX, T, L, { tokens: MID_ADAPTER.numQueries, dim: MID_ADAPTER.outputDim });
  const feeds = stepFeeds(T);
  const mmPath = await ensureMatMulGraph(MATMUL_N);
  const mmFeeds = { a: noise([MATMUL_N, MATMUL_N], 9) };
  const mmFlops = mm(MATMUL_N, MATMUL_N, MATMUL_N);
  const ortMs = async (path: string, f: Record<string, Tensor>) => {
    const r = await pool.runWithInfo(path, f);
    return r.info.endedAt - r.info.startedAt;
  };
  // Load and warm up: the first runs of a session grow ORT's memory arena (page faults) and are slow.
  for (let i = 0; i < 3; i++) {
    await ortMs(set.path('flux'), feeds);
    await ortMs(mmPath, mmFeeds);
  }

  const stepMs: number[] = [];
  const peakMs: number[] = [];
  const reps = ctx.quick ? 2 : 3;
  const meter = cpuMeter();
  for (let i = 0; i < reps; i++) {
    peakMs.push(await ortMs(mmPath, mmFeeds));
    stepMs.push(await ortMs(set.path('flux'), feeds));
    peakMs.push(await ortMs(mmPath, mmFeeds));
    ctx.log(`  step ${stepMs[i]!.toFixed(0)} ms = ${(flops.total / stepMs[i]! / 1e6).toFixed(1)} GFLOP/s; MatMul ${MATMUL_N}^2 ${peakMs.slice(-2).map((v) => v.toFixed(0)).join(', ')} ms`);
  }
  const share = meter();
  // The peak is the best the machine did; the step its median: disturbances can only lower the figure.
  const stepRate = flops.total / median(stepMs) / 1e6;
  const peakRate = mmFlops / Math.min(...peakMs) / 1e6;
  const eff = stepRate / peakRate;
  const ratios = stepMs.map((s) => (flops.total / s / 1e6) / peakRate);
  const threads = pool.intraOpThreads;
  const figures: Figure[] = [
    info(7, `MatMul peak (${MATMUL_N}x${MATMUL_N} fp32, ${threads} thread(s))`, peakRate, 'GFLOP/s', { samples: peakMs, note: `best of ${peakMs.length} runs (median ${(mmFlops / median(peakMs) / 1e6).toFixed(0)} GFLOP/s); one-MatMul graph (models/onnx/graph.ts), constant B, output summed in the graph so no 16 MiB result is copied out; through the pool, ORT time inside the worker` }),
    info(7, 'mid-size DiT step', stepRate, 'GFLOP/s', {
      samples: stepMs,
      note: `${(flops.total / 1e9).toFixed(1)} GFLOP per step (${(100 * flops.attention / flops.total).toFixed(0)} % attention) in ${median(stepMs).toFixed(0)} ms; `
        + `FLUX 4 heads x 128, 1 double + 2 single blocks, IP attention over ${MID_ADAPTER.numQueries} tokens, T=${T}, L=${L} (512x512)`,
    }),
  ];
  let note = `median step rate over the best MatMul rate (${stepMs.length} steps, ${peakMs.length} MatMuls, interleaved; best step ${(100 * Math.max(...ratios)).toFixed(0)} %); ORT time inside the worker; ${describeShare(share)}`;
  let profile: Awaited<ReturnType<typeof profileStep>> | undefined;
  if (eff < 0.5 || (!ctx.quick && ctx.mayExtend())) {
    profile = await profileStep(set.path('flux'), feeds, threads);
    const total = profile.ops.reduce((a, o) => a + o.ms, 0);
    const mmMs = profile.ops.filter((o) => MATMUL_OPS.has(o.op)).reduce((a, o) => a + o.ms, 0);
    const top = profile.ops.slice(0, 6).map((o) => `${o.op} ${(100 * o.ms / total).toFixed(0)} % (${o.count})`).join(', ');
    const rate = (fl: number, ms: number) => (ms > 0 ? fl / ms / 1e6 : 0);
    if (eff >= 0.5) {
      note += `. ORT profile of one step (kernels ${total.toFixed(0)} ms): ${top}; Linear MatMuls ${rate(profile.linearFlops, profile.linearMs).toFixed(0)} GFLOP/s, attention MatMuls ${rate(profile.attnFlops, profile.attnMs).toFixed(0)} GFLOP/s`;
    } else {
      note += `. Profile of one step (kernels ${total.toFixed(0)} ms): ${top}. MatMul-type kernels take ${(100 * mmMs / total).toFixed(0)} % of the time; `
        + `the Linear MatMuls run at ${rate(profile.linearFlops, profile.linearMs).toFixed(0)} GFLOP/s, the attention MatMuls (batched per head, K=128 or N) at `
        + `${rate(profile.attnFlops, profile.attnMs).toFixed(0)} GFLOP/s; the remaining ${(100 * (1 - mmMs / total)).toFixed(0)} % is memory-bound element-wise, `
        + 'normalisation, softmax and layout ops that do no counted FLOPs';
    }
    ctx.details.ditProfile = profile;
  }
  figures.push(judged(7, 'DiT step / MatMul peak', 100 * eff, '%', '>=', 50, { samples: ratios.map((r) => 100 * r), note, otherCores: share.otherCores }));
  ctx.details.dit = { config: MID_FLUX, T, L, flops, stepMs, peakMs, ratios, threads };
  return figures;
}
