// What the benchmarks run on: the tiny model set, a mid-size set (wider encoders, adapter and
// transformer with random weights, so that their costs look like real models' rather than like
// overhead), a one-MatMul graph for the machine's peak, and the default workflow. Model files are
// generated once into a folder kept between runs (regenerated when their configs change).
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { validateWorkflow } from '../../engine/workflow/index.ts';
import type { ValidWorkflow } from '../../engine/workflow/types.ts';
import type { NodeDef } from '../../engine/node.ts';
import { Graph } from '../../models/onnx/graph.ts';
import { DEFAULT_ATTENTION, ENCODER_IMAGE_SIZE, MANIFEST_FILE, writeModelSet, type ModelSetSpec } from '../../models/modelset.ts';
import { siglipConfigFromJson, type SiglipConfig } from '../../models/siglip.ts';
import { dinov2ConfigFromJson, type Dinov2Config } from '../../models/dinov2.ts';
import { adapterConfigFromJson } from '../../models/adapter.ts';
import { fluxConfigFromJson, fluxWeightShapes, ipAdapterWeightShapes } from '../../models/flux.ts';
import { siglipWeightShapes } from '../../models/siglip.ts';
import { dinov2WeightShapes } from '../../models/dinov2.ts';
import { adapterWeightShapes } from '../../models/adapter.ts';
import {
  TINY_ADAPTER, TINY_CLIP, TINY_DINOV2, TINY_FLUX, TINY_SIGLIP, TINY_T5, TINY_VAE, randomWeights, tinySpec,
} from '../../models/tiny.ts';
import { memorySource } from '../../models/weights/source.ts';
import { PACKAGE_ROOT } from '../../nodes/services.ts';

/** Where generated model files live between runs (CHARFLOW_BENCH_DIR, default <tmp>/charflow-bench). */
export const BENCH_ROOT = process.env.CHARFLOW_BENCH_DIR || join(tmpdir(), 'charflow-bench');
export const MODELS_ROOT = join(BENCH_ROOT, 'models');
const GRAPHS_ROOT = join(BENCH_ROOT, 'graphs');

// ---- the mid-size set -------------------------------------------------------------------------

/** Encoders 8x (SigLIP) and 5x (DINOv2) wider than tiny, head dim 64, the pipeline's real token counts. */
export const MID_SIGLIP = siglipConfigFromJson({
  hidden_size: 128, intermediate_size: 512, num_hidden_layers: 8, num_attention_heads: 2, num_channels: 3,
  image_size: 384, patch_size: 14, hidden_act: 'gelu_pytorch_tanh', layer_norm_eps: 1e-6,
});
export const MID_DINOV2 = dinov2ConfigFromJson({
  hidden_size: 128, num_hidden_layers: 8, num_attention_heads: 2, mlp_ratio: 4, hidden_act: 'gelu', layer_norm_eps: 1e-6,
  image_size: 518, patch_size: 14, num_channels: 3, qkv_bias: true, layerscale_value: 1.0, use_swiglu_ffn: true,
});
const MID_SHALLOW = [2, 5, 7];
/** The real adapter's depth (4 + 4 blocks, 4 resampler layers) at 1/10 of its width. */
export const MID_ADAPTER = adapterConfigFromJson({
  inner_dim: MID_SIGLIP.hiddenSize + MID_DINOV2.hiddenSize, num_attention_heads: 4, attention_head_dim: 64,
  cross_attention_dim: MID_SIGLIP.hiddenSize + MID_DINOV2.hiddenSize, num_layers: 4,
  dim: 256, depth: 4, dim_head: 64, heads: 4, num_queries: 256, embedding_dim: MID_SIGLIP.hiddenSize + MID_DINOV2.hiddenSize,
  output_dim: 512, ff_mult: 4, timestep_in_dim: 320, timestep_flip_sin_to_cos: true, timestep_freq_shift: 0,
});
/** FLUX's head dim and block kinds at 1/6 of its width: 4 heads x 128, 1 double + 2 single blocks. */
export const MID_FLUX = fluxConfigFromJson({
  patch_size: 1, in_channels: 64, num_layers: 1, num_single_layers: 2, attention_head_dim: 128, num_attention_heads: 4,
  joint_attention_dim: TINY_T5.dModel, pooled_projection_dim: TINY_CLIP.hiddenSize, guidance_embeds: true, axes_dims_rope: [16, 56, 56],
});
export const MID_SET_NAME = 'bench-mid';

/** The tiny set with the encoders, adapter and transformer replaced by the mid-size ones. */
export function midSpec(seed = 1): ModelSetSpec {
  const base = tinySpec(seed);
  const src = (shapes: Record<string, readonly number[]>, salt: number) => memorySource(randomWeights(shapes, seed * 1000 + salt));
  return {
    ...base,
    name: MID_SET_NAME,
    siglip: { cfg: MID_SIGLIP, weights: src(siglipWeightShapes(MID_SIGLIP), 1), shallowLayers: MID_SHALLOW },
    dinov2: { cfg: MID_DINOV2, weights: src(dinov2WeightShapes(MID_DINOV2), 2), shallowLayers: MID_SHALLOW },
    adapter: { cfg: MID_ADAPTER, weights: src(adapterWeightShapes(MID_ADAPTER), 3) },
    flux: {
      cfg: MID_FLUX,
      weights: src(fluxWeightShapes(MID_FLUX), 4),
      ip: src(ipAdapterWeightShapes(MID_FLUX, MID_ADAPTER.outputDim), 5),
    },
  };
}

// ---- encoders sized to the machine (section 3) -------------------------------------------------

/** The views an encoder node runs: the whole picture and its four quadrants. */
const ENCODER_VIEWS = 5;

/**
 * MatMul FLOPs of one encoder run over the node's 5 views of ENCODER_IMAGE_SIZE px: the Linear
 * layers (q, k, v, out and the MLP) and attention's QK^T and PV, 2 FLOPs per multiply-add. The
 * patch embedding, norms and activations are left out, so the real work is larger: a run cannot
 * take less than these FLOPs at the machine's MatMul peak.
 */
export function encoderMatMulFlops(kind: 'siglip' | 'dinov2', cfg: SiglipConfig | Dinov2Config): number {
  const grid = Math.floor(ENCODER_IMAGE_SIZE / cfg.patchSize);
  const C = cfg.hiddenSize;
  let tokens: number;
  let mlp: number; // multiply-adds of the MLP per token
  if (kind === 'siglip') {
    const c = cfg as SiglipConfig;
    tokens = grid * grid;
    mlp = 2 * C * c.intermediateSize;
  } else {
    const c = cfg as Dinov2Config;
    tokens = grid * grid + 1; // + CLS
    const hidden = Math.trunc(C * c.mlpRatio);
    // SwiGLU: fc [C -> 2F] and out [F -> C] with F = 2/3 of the hidden width rounded up to 8.
    mlp = c.useSwigluFfn ? 3 * C * (Math.floor((Math.trunc((hidden * 2) / 3) + 7) / 8) * 8) : 2 * C * hidden;
  }
  const perLayer = 2 * tokens * (4 * C * C + mlp) + 2 * 2 * tokens * tokens * C; // [T, C] Linears + QK^T, PV
  return ENCODER_VIEWS * cfg.numLayers * perLayer;
}

/**
 * Layers for the mid-size encoders so that each one's MatMul work alone takes at least `minMs` at
 * `peakGflops` (the machine's measured MatMul peak with the threads the encoders get): a real run
 * is slower than its MatMuls at peak, so it then takes at least `minMs` on any machine. Never fewer
 * than the mid set's 8 layers (the shallow outputs 2, 5, 7 need them).
 */
export function encoderLayersFor(peakGflops: number, minMs: number): { siglip: number; dinov2: number } {
  const layers = (kind: 'siglip' | 'dinov2', cfg: SiglipConfig | Dinov2Config): number => {
    const perLayer = encoderMatMulFlops(kind, { ...cfg, numLayers: 1 });
    return Math.max(cfg.numLayers, Math.ceil((minMs / 1000) * peakGflops * 1e9 / perLayer));
  };
  return { siglip: layers('siglip', MID_SIGLIP), dinov2: layers('dinov2', MID_DINOV2) };
}

/** The name of the encoder set with these layer counts. */
export const encoderSetName = (l: { siglip: number; dinov2: number }): string => `bench-enc-${l.siglip}-${l.dinov2}`;

/** The tiny set with the mid-size encoders at these depths (section 3 runs only LoadModels and the encoders). */
export async function ensureEncoderSet(l: { siglip: number; dinov2: number }, seed = 1): Promise<string> {
  const name = encoderSetName(l);
  const siglip = { ...MID_SIGLIP, numLayers: l.siglip };
  const dinov2 = { ...MID_DINOV2, numLayers: l.dinov2 };
  const src = (shapes: Record<string, readonly number[]>, salt: number) => memorySource(randomWeights(shapes, seed * 1000 + salt));
  await once(join(MODELS_ROOT, name), stampOf(['enc', 1, siglip, dinov2, MID_SHALLOW, TINY_ADAPTER, TINY_FLUX, TINY_VAE, TINY_T5, TINY_CLIP]), MANIFEST_FILE, () => {
    const base = tinySpec(seed);
    return writeModelSet({
      ...base,
      name,
      siglip: { cfg: siglip, weights: src(siglipWeightShapes(siglip), 1), shallowLayers: MID_SHALLOW },
      dinov2: { cfg: dinov2, weights: src(dinov2WeightShapes(dinov2), 2), shallowLayers: MID_SHALLOW },
      // An adapter for these encoder widths keeps the set whole (AdapterFuse does not run in section 3).
      adapter: { cfg: MID_ADAPTER, weights: src(adapterWeightShapes(MID_ADAPTER), 3) },
      flux: { cfg: TINY_FLUX, weights: src(fluxWeightShapes(TINY_FLUX), 4), ip: src(ipAdapterWeightShapes(TINY_FLUX, MID_ADAPTER.outputDim), 5) },
    }, join(MODELS_ROOT, name));
  });
  return name;
}

// ---- generation with a stamp ------------------------------------------------------------------

const stampOf = (what: unknown): string => createHash('sha256').update(JSON.stringify(what)).digest('hex').slice(0, 16);

/** Runs `make` unless `dir` holds a complete result of the same inputs (stamp file). Returns true if it generated. */
async function once(dir: string, stamp: string, complete: string, make: () => Promise<unknown> | unknown): Promise<boolean> {
  const stampFile = join(dir, '.bench-stamp');
  if (existsSync(join(dir, complete)) && existsSync(stampFile) && readFileSync(stampFile, 'utf8') === stamp) return false;
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  await make();
  writeFileSync(stampFile, stamp);
  return true;
}

/** The tiny set in MODELS_ROOT/tiny. */
export async function ensureTinySet(): Promise<boolean> {
  const stamp = stampOf(['tiny', 2, TINY_SIGLIP, TINY_DINOV2, TINY_ADAPTER, TINY_FLUX, TINY_VAE, TINY_T5, TINY_CLIP, DEFAULT_ATTENTION]);
  return once(join(MODELS_ROOT, 'tiny'), stamp, MANIFEST_FILE, () => writeModelSet(tinySpec(), join(MODELS_ROOT, 'tiny')));
}

export async function ensureMidSet(): Promise<boolean> {
  const stamp = stampOf(['mid', 4, MID_SIGLIP, MID_DINOV2, MID_ADAPTER, MID_FLUX, TINY_VAE, TINY_T5, TINY_CLIP, DEFAULT_ATTENTION]);
  return once(join(MODELS_ROOT, MID_SET_NAME), stamp, MANIFEST_FILE, () => writeModelSet(midSpec(), join(MODELS_ROOT, MID_SET_NAME)));
}

/** The name of a set's twin written with the old attention (MatMul -> Softmax -> MatMul everywhere). */
export const plainTwin = (name: string): string => `${name}-plain-attention`;

/** The tiny or mid-size set written with plain attention, for new-vs-old comparisons (bench/attention-blocks.ts). */
export async function ensurePlainTwin(which: 'tiny' | 'mid'): Promise<string> {
  const spec = which === 'tiny' ? tinySpec() : midSpec();
  const name = plainTwin(which === 'tiny' ? 'tiny' : MID_SET_NAME);
  const configs = which === 'tiny' ? [TINY_SIGLIP, TINY_DINOV2, TINY_ADAPTER, TINY_FLUX] : [MID_SIGLIP, MID_DINOV2, MID_ADAPTER, MID_FLUX];
  await once(join(MODELS_ROOT, name), stampOf(['plain', 1, which, ...configs, TINY_VAE, TINY_T5, TINY_CLIP]), MANIFEST_FILE,
    () => writeModelSet({ ...spec, name, attention: { form: 'plain' } }, join(MODELS_ROOT, name)));
  return name;
}

/**
 * c = a @ B for an [n, n] input and a constant B (a weight, as in every Linear of the models),
 * returned summed over its rows ([n, 1]): a full [n, n] output would be a fresh 16 MiB buffer
 * per run, whose page faults and copy out of ORT would be timed too (the DiT's output is small).
 * The sum reads c once (n^2 adds against 2 n^3 FLOPs).
 */
export async function ensureMatMulGraph(n: number): Promise<string> {
  const dir = join(GRAPHS_ROOT, `matmul-${n}`);
  await once(dir, stampOf(['matmul', 2, n]), 'model.onnx', () => {
    const g = new Graph({ name: `matmul_${n}` });
    const a = g.input('a', 'float32', [n, n]);
    const b = randomWeights({ b: [n, n] }, 7).get('b')!;
    const c = g.node('MatMul', [a, g.weight('b', b)]); // [n, n]
    g.output(g.node('ReduceSum', [c, g.ints([1])], { keepdims: 1 }), 'c_sum', 'float32', [n, 1]);
    g.save(join(dir, 'model.onnx'));
  });
  return join(dir, 'model.onnx');
}

// ---- workflows --------------------------------------------------------------------------------

/** The pipeline size of the tiny-set sections: the encoders (fixed 384 px, 5 views) dominate at any size. */
export const PIPE = { width: 96, height: 64, steps: 3 };

type RawWorkflow = { nodes: Record<string, { type: string; inputs: Record<string, unknown> }> } & Record<string, unknown>;

export function defaultWorkflowJson(): RawWorkflow {
  return JSON.parse(readFileSync(join(PACKAGE_ROOT, 'workflows/instantcharacter.json'), 'utf8')) as RawWorkflow;
}

/** The default workflow's JSON at the PIPE size with some node inputs changed (not validated: for the server). */
export function rawWorkflow(changes: Record<string, Record<string, unknown>> = {}): RawWorkflow {
  const wf = defaultWorkflowJson();
  Object.assign(wf.nodes['7']!.inputs, PIPE);
  for (const [id, inputs] of Object.entries(changes)) Object.assign(wf.nodes[id]!.inputs, inputs);
  return wf;
}

/** The default workflow with some node inputs changed, validated. */
export function workflow<S>(registry: ReadonlyMap<string, NodeDef<S>>, changes: Record<string, Record<string, unknown>> = {}, keep?: readonly string[]): ValidWorkflow {
  const wf = defaultWorkflowJson();
  for (const [id, inputs] of Object.entries(changes)) Object.assign(wf.nodes[id]!.inputs, inputs);
  if (keep) for (const id of Object.keys(wf.nodes)) if (!keep.includes(id)) delete wf.nodes[id];
  const v = validateWorkflow(wf, registry);
  if (!v.ok) throw new Error(v.errors.map((e) => e.message).join('\n'));
  return v.workflow!;
}
