// Section 13: GGUF FLUX kept as MatMulNBits (models/quant/ggml-nbits.ts).
// - Sizes, computed for full-size FLUX.1-dev (fluxWeightShapes(FULL_FLUX), the transformer alone) in the mixes
//   ComfyUI users download: Q4_K_S (the blocks' Linears Q4_K; embedders and the final layer F16; biases and norms
//   F32, as city96's files keep them) and Q8_0 (the same with Q8_0). Converted = what the converter writes:
//   MatMulNBits codes + scales (+ zero points, + per-block offsets) for block types; float tensors as the graph's
//   float type. With float16 scales (a GPU set, fp16 graph) and float32 (charflow's CPU sets). The byte counts
//   are the converter's own (ggmlNBitsBytes, which the tests check against the arrays it writes).
//   Also each type's ratio on a 3072 x 3072 weight.
// - Speed: a DiT step of the mid-size FLUX (bench/lib/fixtures.ts MID_FLUX) converted from a Q4_K GGUF (a random
//   but valid file) against charflow's own int4 graph of the same decoded weights (block 128), both
//   accuracy_level 4, alternating runs in one process.
// Alone: node --import tsx bench/gguf.ts [--quick]
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import * as ort from 'onnxruntime-node';
import { FULL_FLUX, type FluxConfig, buildFlux, fluxWeightShapes } from '../models/flux.ts';
import { MIN_QUANT_DIM } from '../models/layers.ts';
import { Graph } from '../models/onnx/graph.ts';
import { toOrt } from '../models/onnx/ort.ts';
import { fluxRopeFor } from '../models/rope.ts';
import { type Tensor, f32, floatToHalf, numel } from '../models/tensor.ts';
import { type GgmlTypeName, ggmlBytes, ggmlType } from '../models/weights/ggml.ts';
import { GGML_NBITS, ggmlNBitsBytes } from '../models/quant/ggml-nbits.ts';
import { DEFAULT_BLOCK } from '../models/quant/formats.ts';
import { openFluxTransformer } from '../models/convert/layouts.ts';
import type { WeightSource } from '../models/weights/source.ts';
import { BENCH_ROOT, MID_FLUX } from './lib/fixtures.ts';
import { type Figure, info, judged } from './lib/report.ts';
import { median } from './lib/stats.ts';
import { noise } from './lib/tensors.ts';
import { cpuMeter } from './lib/cpuload.ts';
import { type GgufTensorOut, writeGguf } from '../test/helpers/gguf.ts';

const SECTION = 13;

/** BFL names of the embedders and the final layer, which the published GGUFs keep in F16. */
const FLOAT_KEPT = /^(img_in|txt_in|time_in|vector_in|guidance_in|final_layer)\./;

/** diffusers FLUX shapes -> BFL tensors (fused qkv and linear1), for the GGUF layout. */
function bflShapes(cfg: FluxConfig): Record<string, [number, number] | [number]> {
  const C = cfg.numHeads * cfg.headDim;
  const M = 4 * C;
  const s: Record<string, [number, number] | [number]> = {};
  const lin = (k: string, out: number, inF: number) => {
    s[`${k}.weight`] = [out, inF];
    s[`${k}.bias`] = [out];
  };
  lin('img_in', C, cfg.inChannels);
  lin('txt_in', C, cfg.jointAttentionDim);
  for (const e of ['time_in', ...(cfg.guidanceEmbeds ? ['guidance_in'] : [])]) { lin(`${e}.in_layer`, C, 256); lin(`${e}.out_layer`, C, C); }
  lin('vector_in.in_layer', C, cfg.pooledProjectionDim);
  lin('vector_in.out_layer', C, C);
  for (let i = 0; i < cfg.numLayers; i++) {
    for (const st of ['img', 'txt']) {
      const p = `double_blocks.${i}.${st}`;
      lin(`${p}_mod.lin`, 6 * C, C);
      lin(`${p}_attn.qkv`, 3 * C, C);
      lin(`${p}_attn.proj`, C, C);
      lin(`${p}_mlp.0`, M, C);
      lin(`${p}_mlp.2`, C, M);
      s[`${p}_attn.norm.query_norm.scale`] = [cfg.headDim];
      s[`${p}_attn.norm.key_norm.scale`] = [cfg.headDim];
    }
  }
  for (let i = 0; i < cfg.numSingleLayers; i++) {
    const p = `single_blocks.${i}`;
    lin(`${p}.modulation.lin`, 3 * C, C);
    lin(`${p}.linear1`, 3 * C + M, C);
    lin(`${p}.linear2`, C, C + M);
    s[`${p}.norm.query_norm.scale`] = [cfg.headDim];
    s[`${p}.norm.key_norm.scale`] = [cfg.headDim];
  }
  lin('final_layer.adaLN_modulation.1', 2 * C, C);
  lin('final_layer.linear', cfg.patchSize ** 2 * cfg.outChannels, C);
  return s;
}

/** The type a mix gives a tensor: 1-D F32, embedders F16, other weights `quant` when their rows are whole blocks. */
function mixType(key: string, dims: readonly number[], quant: GgmlTypeName): GgmlTypeName {
  if (dims.length === 1) return 'F32';
  if (FLOAT_KEPT.test(key) || dims[1]! % ggmlType(quant).blockSize !== 0) return 'F16';
  return quant;
}

interface MixBytes { gguf: number; fp16Scales: number; fp32Scales: number }

/** Bytes of a full-size FLUX in a GGUF mix, and converted (float16 or float32 scales and float tensors). */
export function mixBytes(cfg: FluxConfig, quant: GgmlTypeName): MixBytes {
  const out = { gguf: 0, fp16Scales: 0, fp32Scales: 0 };
  for (const [key, dims] of Object.entries(bflShapes(cfg))) {
    const type = mixType(key, dims, quant);
    out.gguf += ggmlBytes(ggmlType(type), numel(dims));
    if (GGML_NBITS[type] && dims.length === 2) {
      out.fp16Scales += ggmlNBitsBytes(type, dims[0]!, dims[1]!, 2);
      out.fp32Scales += ggmlNBitsBytes(type, dims[0]!, dims[1]!, 4);
    } else {
      out.fp16Scales += 2 * numel(dims);
      out.fp32Scales += 4 * numel(dims);
    }
  }
  return out;
}

// ---- a random but valid Q4_K GGUF of a FLUX config -------------------------------------------------------

/** Deterministic bytes (xorshift32). */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    return x;
  };
}

/** Q4_K blocks with random codes and six-bit scales, and half scales that give weights of about 0.05. */
function randomQ4K(values: number, next: () => number): Uint8Array {
  const blocks = values / 256;
  const out = new Uint8Array(144 * blocks);
  for (let b = 0; b < blocks; b++) {
    const o = 144 * b;
    const d = floatToHalf(6e-5 + (next() % 1000) * 4e-8);
    const dmin = floatToHalf(4e-4 + (next() % 1000) * 4e-7);
    out[o] = d & 0xff; out[o + 1] = d >> 8; out[o + 2] = dmin & 0xff; out[o + 3] = dmin >> 8;
    for (let i = 4; i < 144; i++) out[o + i] = next() & 0xff;
  }
  return out;
}

/** Q4_0 blocks with random codes and a half scale of about 0.006. */
function randomQ40(values: number, next: () => number): Uint8Array {
  const out = new Uint8Array(18 * (values / 32));
  for (let o = 0; o < out.length; o += 18) {
    const d = floatToHalf(5e-3 + (next() % 1000) * 2e-6);
    out[o] = d & 0xff; out[o + 1] = d >> 8;
    for (let i = 2; i < 18; i++) out[o + i] = next() & 0xff;
  }
  return out;
}

export function writeGgufFlux(path: string, cfg: FluxConfig, quant: 'Q4_K' | 'Q4_0' = 'Q4_K'): void {
  const next = rng(1234);
  const tensors: GgufTensorOut[] = [];
  for (const [key, dims] of Object.entries(bflShapes(cfg))) {
    const type = mixType(key, dims, quant);
    const n = numel(dims);
    let data: Uint8Array;
    if (type === 'Q4_K') data = randomQ4K(n, next);
    else if (type === 'Q4_0') data = randomQ40(n, next);
    else if (type === 'F16') data = new Uint8Array(Uint16Array.from({ length: n }, () => floatToHalf(((next() % 2001) - 1000) * 5e-5)).buffer);
    else data = new Uint8Array(Float32Array.from({ length: n }, () => (key.endsWith('.scale') ? 1 : 0) + ((next() % 2001) - 1000) * 1e-5).buffer);
    tensors.push({ name: key, type, ne: [...dims].reverse(), data });
  }
  writeGguf(path, { metadata: { 'general.architecture': 'flux' }, tensors });
}

/** The same weights without their blocks: what charflow's own int4 conversion starts from. */
export const decodedOnly = (w: WeightSource): WeightSource => ({ keys: () => w.keys(), shape: (k) => w.shape(k), get: (k) => w.get(k) });

export function graphOf(w: WeightSource, cfg: FluxConfig, block = DEFAULT_BLOCK): Uint8Array {
  const g = new Graph({ name: 'flux', quant: { bits: 4, block } });
  buildFlux({ g, w }, undefined, cfg);
  return g.toBytes();
}

export function stepFeeds(cfg: FluxConfig, T: number, grid: number): Record<string, Tensor> {
  const rope = fluxRopeFor(T, grid, grid, cfg.axesDimsRope, cfg.ropeTheta);
  return {
    hidden_states: noise([1, grid * grid, cfg.inChannels], 1),
    encoder_hidden_states: noise([1, T, cfg.jointAttentionDim], 2),
    pooled_projections: noise([1, cfg.pooledProjectionDim], 3),
    timestep: f32([1], [0.75]),
    guidance: f32([1], [3.5]),
    rope_cos: rope.cos,
    rope_sin: rope.sin,
  };
}

export async function benchGguf(opts: { quick?: boolean; threads?: number; log?: (s: string) => void } = {}): Promise<Figure[]> {
  const log = opts.log ?? console.log;
  const figures: Figure[] = [];

  // ---- sizes ----------------------------------------------------------------------------------------------
  for (const [mix, quant, limit] of [['Q4_K_S', 'Q4_K', 1.3], ['Q8_0', 'Q8_0', 1.3]] as const) {
    const b = mixBytes(FULL_FLUX, quant);
    const gb = (n: number) => (n / 1e9).toFixed(2);
    figures.push(judged(SECTION, `full-size FLUX from a ${mix} GGUF, converted / GGUF bytes (float16 scales)`, b.fp16Scales / b.gguf, 'x', '<=', limit, {
      note: `GGUF ${gb(b.gguf)} GB -> ${gb(b.fp16Scales)} GB with float16 scales and float16 float tensors (a GPU set), ${gb(b.fp32Scales)} GB (${(b.fp32Scales / b.gguf).toFixed(3)}x) with float32 ones (charflow's CPU sets); the blocks' Linears ${quant}, embedders and final layer F16, 1-D tensors F32`,
    }));
    figures.push(info(SECTION, `full-size FLUX from a ${mix} GGUF, converted / GGUF bytes (float32 scales)`, b.fp32Scales / b.gguf, 'x'));
  }
  const perType = Object.keys(GGML_NBITS).map((t) => {
    const type = t as GgmlTypeName;
    const g = ggmlBytes(ggmlType(type), 3072 * 3072);
    return `${type} ${(ggmlNBitsBytes(type, 3072, 3072, 2) / g).toFixed(2)}x/${(ggmlNBitsBytes(type, 3072, 3072, 4) / g).toFixed(2)}x`;
  });
  figures.push(info(SECTION, 'each block type, MatMulNBits / GGUF bytes of a 3072 x 3072 weight (float16 / float32 scales)', 0, '-', { note: perType.join(', ') }));
  log(`  per type (fp16/fp32 scales): ${perType.join(', ')}`);

  // ---- speed ----------------------------------------------------------------------------------------------
  const dir = join(BENCH_ROOT, 'gguf');
  mkdirSync(dir, { recursive: true });
  const path = join(dir, 'mid-q4k.gguf');
  writeGgufFlux(path, MID_FLUX);
  const part = openFluxTransformer(path);
  let ggufModel: Uint8Array;
  let int4Model: Uint8Array;
  let int4b32Model: Uint8Array;
  try {
    ggufModel = graphOf(part.weights, part.cfg);
    int4Model = graphOf(decodedOnly(part.weights), part.cfg);
    int4b32Model = graphOf(decodedOnly(part.weights), part.cfg, 32); // the Q4_K's block, for reference
  } finally {
    part.weights.close?.();
  }
  const threads = opts.threads ?? 1;
  const sessionOpts: ort.InferenceSession.SessionOptions = { executionProviders: ['cpu'], intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: 'all', logSeverityLevel: 3 };
  const sessions = {
    gguf: await ort.InferenceSession.create(ggufModel, sessionOpts), int4: await ort.InferenceSession.create(int4Model, sessionOpts),
    int4b32: await ort.InferenceSession.create(int4b32Model, sessionOpts),
  };
  const grid = 32;
  const T = 128;
  const feeds = Object.fromEntries(Object.entries(stepFeeds(MID_FLUX, T, grid)).map(([k, v]) => [k, toOrt(v)]));
  type Kind = 'gguf' | 'int4' | 'int4b32';
  const times: Record<Kind, number[]> = { gguf: [], int4: [], int4b32: [] };
  const step = async (k: Kind) => {
    const t0 = performance.now();
    await sessions[k].run(feeds);
    return performance.now() - t0;
  };
  for (const k of ['gguf', 'int4', 'int4b32'] as const) { await step(k); await step(k); }
  const meter = cpuMeter();
  const reps = opts.quick ? 4 : 8;
  const orders: readonly (readonly Kind[])[] = [['gguf', 'int4', 'int4b32'], ['int4b32', 'int4', 'gguf']];
  for (let i = 0; i < reps; i++) for (const k of orders[i % 2]!) times[k].push(await step(k));
  const otherCores = meter().otherCores;
  for (const sess of Object.values(sessions)) await sess.release();
  const m = { gguf: median(times.gguf), int4: median(times.int4), int4b32: median(times.int4b32) };
  figures.push(judged(SECTION, 'mid-size DiT step, set from a Q4_K GGUF / charflow int4 time', m.gguf / m.int4, 'x', '<=', 1.1, {
    otherCores, samples: times.gguf,
    note: `median ${m.gguf.toFixed(0)} ms (Q4_K codes, block 32 + block-sum correction) vs ${m.int4.toFixed(0)} ms (charflow int4, block ${DEFAULT_BLOCK}), ${threads} thread(s), ${grid * grid + T} tokens, C=${MID_FLUX.numHeads * MID_FLUX.headDim}, accuracy_level 4; graphs ${(ggufModel.length / 1e6).toFixed(1)} MB vs ${(int4Model.length / 1e6).toFixed(1)} MB`,
  }));
  figures.push(info(SECTION, 'mid-size DiT step, charflow int4 at block 32 / block 128 time', m.int4b32 / m.int4, 'x', {
    otherCores, samples: times.int4b32,
    note: `median ${m.int4b32.toFixed(0)} ms: what MatMulNBits' block 32 (Q4_K's) costs by itself; the Q4_K set against it: ${(m.gguf / m.int4b32).toFixed(3)}x`,
  }));
  return figures;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const figures = await benchGguf({ quick: process.argv.includes('--quick') });
  for (const f of figures) console.log(`${f.status.toUpperCase().padEnd(5)} ${f.name}: ${f.value === null ? '-' : f.value.toFixed(3)} ${f.unit} (${f.target})${f.note ? `\n      ${f.note}` : ''}`);
}
