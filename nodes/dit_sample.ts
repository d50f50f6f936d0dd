import type { NodeContext, NodeDef } from '../engine/node.ts';
import { NodeInputError } from '../engine/node.ts';
import type { Services } from './services.ts';
import { SOCKET, type Conditioning, type Latent, type Mask, type ModelSet } from './types.ts';
import { tensorBytes } from './lib/tensors.ts';
import { latentPreview } from './lib/preview.ts';
import { type CharacterInput, prepareIpFeeds } from './lib/flux_feeds.ts';
import { type MaskMode, freeAtStep, latentGridMask, packMask } from './lib/mask.ts';
import { loraRunOptions, loraState } from './lib/lora.ts';
import {
  type Schedule, eulerStep, flowMatchSchedule, inpaintBlend, packLatents, scaleNoise, seededNormal, shiftedSchedule, sigmasProblem,
  truncateSchedule, unpackLatents,
} from '../models/sampling.ts';
import { fluxRopeFor } from '../models/rope.ts';
import { type Tensor, f32, toFloat32 } from '../models/tensor.ts';
import { attentionFusedAt, attentionOf } from '../models/modelset.ts';
import { FUSED_FROM_SCORES } from '../models/layers.ts';

/** Sizes are multiples of this: 8x VAE downsampling, then 2x2 packing. */
const SIZE_STEP = 16;
export const MAX_BATCH = 16;

/**
 * The checks that need only the constants and which inputs are linked: run by the preflight before anything
 * loads, and again by run() (a workflow may reach run() without the executor's preflight).
 */
function staticChecks(consts: Record<string, unknown>, linked: { negative: boolean; init: boolean; mask: boolean }): void {
  // In a preflight, a parameter fed by a link is not known yet (undefined): its checks wait for run().
  const num = (k: string): number | undefined => (typeof consts[k] === 'number' ? consts[k] as number : undefined);
  for (const field of ['width', 'height']) {
    const v = num(field);
    if (v !== undefined && v % SIZE_STEP !== 0) throw new NodeInputError(field, `${v} is not a multiple of ${SIZE_STEP}`);
  }
  const batch = num('batch_size');
  if (batch !== undefined && (!Number.isInteger(batch) || batch < 1 || batch > MAX_BATCH)) {
    throw new NodeInputError('batch_size', `must be an integer from 1 to ${MAX_BATCH}, got ${batch}`);
  }
  // Image i uses seed + i: past the largest exact integer two images would share a seed.
  const seed = num('seed');
  if (seed !== undefined && batch !== undefined && seed + batch - 1 > Number.MAX_SAFE_INTEGER) {
    throw new NodeInputError('seed', `${seed} + ${batch - 1} (the last image of the batch) is past ${Number.MAX_SAFE_INTEGER}; choose a smaller seed`);
  }
  const trueCfg = num('true_cfg');
  if (trueCfg !== undefined && trueCfg > 1 && !linked.negative) {
    throw new NodeInputError('true_cfg', `is ${trueCfg}, which needs a negative prompt: connect a Text Encode to "negative", or set true_cfg to 1`);
  }
  const denoise = num('denoise');
  if (denoise !== undefined && !(denoise > 0 && denoise <= 1)) throw new NodeInputError('denoise', `must be in (0, 1]: a denoise of ${denoise} would keep no step`);
  if (denoise !== undefined && denoise < 1 && !linked.init) {
    throw new NodeInputError('denoise', `is ${denoise}, which needs an init latent (connect VAE Encode to "init"), or set it to 1`);
  }
  if (linked.mask && !linked.init) {
    throw new NodeInputError('mask', 'needs an init latent: the mask says which part of the init picture to repaint (connect VAE Encode to "init")');
  }
  if (typeof consts.sigmas === 'string') parseSigmas(consts.sigmas);
}

/** Parses the `sigmas` text ("1, 0.8, 0.5 0.2"): undefined when empty, else the list or an error naming the field. */
export function parseSigmas(text: string): number[] | undefined {
  const trimmed = text.trim().replace(/^\[|\]$/g, '');
  if (!trimmed.trim()) return undefined;
  const parts = trimmed.split(/[\s,]+/).filter(Boolean);
  const values = parts.map(Number);
  const bad = parts.findIndex((p, i) => p === '' || !Number.isFinite(values[i]));
  if (bad >= 0) throw new NodeInputError('sigmas', `"${parts[bad]}" is not a number (give a comma-separated list such as 1, 0.75, 0.5, 0.25)`);
  const problem = sigmasProblem(values);
  if (problem) throw new NodeInputError('sigmas', `${problem}: sigmas must be decreasing and each in (0, 1]`);
  return values;
}

/**
 * Activation memory of one image in one transformer call, roughly: a dozen [T+L, width] buffers, plus
 * where attention runs as MatMul -> Softmax -> MatMul the scores and probabilities of one layer
 * ([heads, T+L, T+L] each); the fused MultiHeadAttention holds no such buffer (models/layers.ts). An
 * estimate for refusing batches that cannot fit before anything loads, not a measurement.
 */
export function fluxBytesPerImage(models: ModelSet, textTokens: number, imageTokens: number): number {
  const { numHeads = 24, headDim = 128 } = models.manifest.flux;
  const bytes = models.dtype('flux') === 'float16' ? 2 : 4;
  const tokens = textTokens + imageTokens;
  const scores = attentionFusedAt(attentionOf(models.manifest), numHeads, tokens) ? 0 : 2 * numHeads * tokens * tokens;
  return bytes * (scores + 12 * tokens * numHeads * headDim);
}

/** What the transformer needs resident: its files, plus float32 copies of float16 weights on the CPU. */
function fluxResidentBytes(models: ModelSet, device: string): number {
  const entry = models.manifest.files.flux;
  const files = entry.bytes + (entry.data ?? []).reduce((n, d) => n + d.bytes, 0);
  return (device === 'cpu' && models.dtype('flux') === 'float16' ? 3 * files : files) + (loraState(models)?.bytes ?? 0);
}

/** Repeats a [1, ...] tensor n times along the first axis. */
function repeatBatch(t: Tensor, n: number): Tensor {
  const src = toFloat32(t);
  const out = new Float32Array(src.length * n);
  for (let i = 0; i < n; i++) out.set(src, i * src.length);
  return f32([n * t.dims[0]!, ...t.dims.slice(1)], out);
}

/** [k, ...] tensors concatenated along the first axis. */
function concatBatch(parts: Tensor[]): Tensor {
  const arrays = parts.map(toFloat32);
  const out = new Float32Array(arrays.reduce((n, a) => n + a.length, 0));
  let o = 0;
  for (const a of arrays) {
    out.set(a, o);
    o += a.length;
  }
  return f32([parts.reduce((n, p) => n + p.dims[0]!, 0), ...parts[0]!.dims.slice(1)], out);
}

function checkConditioning(field: string, cond: Conditioning, models: ModelSet): void {
  const { flux } = models.manifest;
  if (cond.promptEmbeds.dims[2] !== flux.jointDim) {
    throw new NodeInputError(field, `has width ${cond.promptEmbeds.dims[2]}, the transformer of model set "${models.name}" expects ${flux.jointDim}`);
  }
}

/** Batch item i of a latent ([B, C, h, w]), or the only item of a batch-1 latent. */
function latentItem(t: Tensor, i: number): Float32Array {
  const data = toFloat32(t);
  const per = data.length / t.dims[0]!;
  const k = t.dims[0] === 1 ? 0 : i;
  return data.slice(k * per, (k + 1) * per);
}

/**
 * The denoising loop: seeded noise, the flow-matching Euler schedule shifted for the resolution,
 * and per step the adapter's time part (character tokens for this t) then one batched transformer
 * call for every image of the batch (and, with true CFG, every image's negative pass too).
 */
export const DiTSample: NodeDef<Services> = {
  type: 'DiTSample',
  version: 2,
  category: 'sampling',
  displayName: 'DiT Sample',
  description: 'Samples FLUX latents from noise (or from an init latent, image-to-image), conditioned on the prompt and, when connected, the character.',
  inputs: {
    models: { type: SOCKET.MODELS },
    conditioning: { type: SOCKET.CONDITIONING },
    negative: { type: SOCKET.CONDITIONING, optional: true, description: 'Negative prompt for true CFG (used when true_cfg > 1)' },
    character: { type: `${SOCKET.CHARACTER},${SOCKET.CHARACTERS}`, optional: true, description: 'One character (whole picture) or a set of regional characters (Regional Character, Combine Characters); without it, plain text-to-image' },
    noise: { type: SOCKET.LATENT, optional: true, description: 'Start from this noise instead of the seed (e.g. to reproduce another tool)' },
    init: { type: SOCKET.LATENT, optional: true, description: 'Image-to-image: the encoded picture to start from (VAE Encode)' },
    mask: { type: SOCKET.MASK, optional: true, description: 'Inpainting: white = repaint, black = keep the init picture (needs init); resized to width x height if its size differs' },
  },
  params: {
    seed: { type: 'integer', format: 'seed', default: 0, minimum: 0, maximum: Number.MAX_SAFE_INTEGER, description: 'Image i of a batch uses seed + i' },
    steps: { type: 'integer', default: 28, minimum: 1, maximum: 200 },
    width: { type: 'integer', default: 1024, minimum: 64, maximum: 4096, multipleOf: SIZE_STEP },
    height: { type: 'integer', default: 1024, minimum: 64, maximum: 4096, multipleOf: SIZE_STEP },
    guidance: { type: 'number', default: 3.5, minimum: 0, maximum: 30, description: 'Distilled guidance (FLUX.1-dev)' },
    subject_scale: { type: 'number', default: 0.9, minimum: 0, maximum: 2, description: 'Strength of the character' },
    true_cfg: { type: 'number', default: 1, minimum: 1, maximum: 30, description: 'True classifier-free guidance with the negative prompt: neg + true_cfg * (pos - neg); 1 = off' },
    batch_size: { type: 'integer', default: 1, minimum: 1, maximum: MAX_BATCH, description: 'Images per run, sampled together (image i: seed + i)' },
    denoise: { type: 'number', default: 1, minimum: 0, maximum: 1, description: 'Image-to-image strength in (0, 1]: keep the last steps of the schedule' },
    sigmas: { type: 'string', optional: true, maxLength: 4000, description: 'Custom schedule, one sigma per step, decreasing in (0, 1], e.g. "1, 0.75, 0.5, 0.25" (replaces steps; the resolution shift still applies)' },
    mask_grow: { type: 'integer', default: 0, minimum: -256, maximum: 256, description: 'Grow (> 0) or shrink (< 0) the mask by this many pixels' },
    mask_feather: { type: 'integer', default: 0, minimum: 0, maximum: 256, description: 'Soft edge of the mask, in pixels (kept as grey levels in soft mode; binary mode cuts it at 0.5)' },
    mask_mode: { type: 'string', enum: ['binary', 'soft'], default: 'binary', description: 'binary: diffusers\' inpainting (grey cut at 0.5); soft: a grey g keeps its pixel until the schedule passes 1 - g (Differential Diffusion)' },
  },
  outputs: { latent: { type: SOCKET.LATENT } },
  sizeOf: tensorBytes,
  // A negative prompt at true_cfg 1 costs nothing: its Text Encode does not even run for this node.
  unusedInputs(consts): Record<string, string> {
    const trueCfg = consts.true_cfg;
    if (typeof trueCfg !== 'number' || trueCfg > 1) return {};
    return { negative: `true_cfg is ${trueCfg}, so true CFG is off; set true_cfg above 1 to use the negative prompt` };
  },
  // Before anything loads: a batch that cannot fit the memory budget (when the model set is a constant).
  preflight(consts, services, upstream) {
    staticChecks(consts, { negative: upstream('negative') !== undefined, init: upstream('init') !== undefined, mask: upstream('mask') !== undefined });
    const set = upstream('models')?.set;
    if (typeof set !== 'string') return;
    let models: ModelSet;
    try {
      models = services.modelSet(set);
    } catch {
      return; // LoadModels reports a missing set itself
    }
    const { width, height, batch_size: batch, true_cfg: trueCfg } = consts as Record<string, number>;
    if (!Number.isInteger(batch) || width % SIZE_STEP !== 0 || height % SIZE_STEP !== 0) return; // run() names these
    const trueCfgOn = trueCfg > 1 && upstream('negative') !== undefined;
    checkBatchFits(models, services.pool, { batch, width, height, textTokens: models.manifest.t5.seqLen, trueCfg: trueCfgOn });
  },
  async run(ctx, inputs) {
    const models = inputs.models as ModelSet;
    const cond = inputs.conditioning as Conditioning;
    const character = inputs.character as CharacterInput | undefined;
    const width = inputs.width as number;
    const height = inputs.height as number;
    const seed = inputs.seed as number;
    const batch = inputs.batch_size as number;
    const trueCfg = inputs.true_cfg as number;
    const denoise = inputs.denoise as number;
    staticChecks(inputs, { negative: inputs.negative !== undefined, init: inputs.init !== undefined, mask: inputs.mask !== undefined });
    checkConditioning('conditioning', cond, models);
    const plainTokens = attentionOf(models.manifest).form === 'plain' ? cond.promptEmbeds.dims[1]! + (width / 16) * (height / 16) : 0;
    if (!models.manifest.flux.attention && (models.manifest.flux.numHeads ?? 24) * plainTokens ** 2 >= FUSED_FROM_SCORES) {
      ctx.log.warn(`DiTSample ${ctx.nodeId}: model set "${models.name}" was written before fused attention, so at ${width}x${height} each attention layer holds `
        + `[heads, ${plainTokens}, ${plainTokens}] scores; rewrite it with \`charflow models convert\` (the arguments it was converted with) `
        + 'or `charflow models tiny --force` for the tiny set (docs/attention.md)');
    }

    // True CFG is on with a negative and a scale above 1; a negative at scale 1 costs nothing.
    let negative = inputs.negative as Conditioning | undefined;
    if (negative && !(trueCfg > 1)) {
      ctx.log.warn(`DiTSample ${ctx.nodeId}: a negative prompt is connected but true_cfg is ${trueCfg}; it is ignored (set true_cfg above 1 to use it)`);
      negative = undefined;
    }
    if (negative) {
      checkConditioning('negative', negative, models);
      if (negative.promptEmbeds.dims[1] !== cond.promptEmbeds.dims[1]) {
        throw new NodeInputError('negative', `has ${negative.promptEmbeds.dims[1]} text tokens, the prompt ${cond.promptEmbeds.dims[1]}: encode both with the same model set`);
      }
    }

    const { flux, vae } = models.manifest;
    const channels = flux.latentChannels;
    const h = height / vae.downscale;
    const w = width / vae.downscale;
    const rows = h / 2;
    const cols = w / 2;
    const imageTokens = rows * cols;
    const perImage = channels * h * w;

    // The schedule: default or custom sigmas (both shifted for the resolution), then cut for image-to-image.
    const custom = parseSigmas((inputs.sigmas as string | undefined) ?? '');
    let schedule: Schedule = custom ? shiftedSchedule(custom, imageTokens) : flowMatchSchedule(inputs.steps as number, imageTokens);
    const init = inputs.init as Latent | undefined;
    if (init) {
      const [b, c, ih, iw] = init.samples.dims as number[];
      if (init.samples.dims.length !== 4 || c !== channels || ih !== h || iw !== w || (b !== 1 && b !== batch)) {
        throw new NodeInputError('init', `has shape [${init.samples.dims}], ${width}x${height} needs [1,${channels},${h},${w}]`
          + `${batch > 1 ? ` or [${batch},${channels},${h},${w}]` : ''}: encode the picture at the sampler's width and height`);
      }
      schedule = truncateSchedule(schedule, denoise);
    }
    const steps = schedule.timesteps.length;

    const noiseIn = inputs.noise as Latent | undefined;
    if (noiseIn) {
      const [b, ...rest] = noiseIn.samples.dims as number[];
      if (rest.join() !== [channels, h, w].join() || (b !== 1 && b !== batch) || (b === 1 && batch > 1)) {
        throw new NodeInputError('noise', `has shape [${noiseIn.samples.dims}], ${width}x${height} needs [${batch},${channels},${h},${w}]`);
      }
    }

    // One call holds every image (twice with true CFG); the preflight said this before anything loaded.
    const textTokens = cond.promptEmbeds.dims[1]!;
    const callBatch = negative ? 2 * batch : batch;
    const pool = ctx.services.pool;
    checkBatchFits(models, pool, { batch, width, height, textTokens, trueCfg: Boolean(negative) });

    // Inpainting: the mask on the latent grid, from the mask input or the init latent's own (Set Latent Noise Mask).
    const mask = (inputs.mask as Mask | undefined) ?? init?.noiseMask;
    const mode = (inputs.mask_mode as MaskMode | undefined) ?? 'binary';
    let grid: Float32Array | undefined;
    if (mask && init) {
      if (!(mask.data instanceof Float32Array) || mask.data.length !== mask.width * mask.height || mask.data.length === 0) {
        throw new NodeInputError('mask', 'is not a mask (connect Load Mask, Load Image\'s mask, Mask from Region or Pad Image)');
      }
      grid = latentGridMask(mask, width, height, h, w, { grow: (inputs.mask_grow as number | undefined) ?? 0, feather: (inputs.mask_feather as number | undefined) ?? 0, mode });
      if (!grid.some((v) => v > 0)) {
        ctx.log.warn(`DiTSample ${ctx.nodeId}: the mask has no white pixel${mode === 'binary' ? ' (none at or above 0.5)' : ''}, so nothing will change: `
          + 'the result is the init picture (paint the part to repaint white)');
      }
    }

    // Start latents, packed [B, L, 4C]: noise, or the init noised to the first kept sigma (scale_noise).
    const latents = new Float32Array(batch * perImage);
    // With a mask: each image's packed init and noise, to put the kept region back after every step.
    const kept: { init: Float32Array; noise: Float32Array }[] = [];
    for (let i = 0; i < batch; i++) {
      const noise = noiseIn ? latentItem(noiseIn.samples, i) : seededNormal(seed + i, perImage);
      const start = init ? scaleNoise(latentItem(init.samples, i), noise, schedule.sigmas[0]!) : noise;
      latents.set(packLatents(start, channels, h, w), i * perImage);
      if (grid) kept.push({ init: packLatents(latentItem(init!.samples, i), channels, h, w), noise: packLatents(noise, channels, h, w) });
    }
    const binaryMask = grid && mode === 'binary' ? packMask(grid, channels, h, w) : undefined; // [L, 4C]

    const rope = fluxRopeFor(textTokens, rows, cols, flux.axesDims, flux.theta); // [T+L, 128]
    // Text side of the call: positive for every image, then negative for every image.
    const context = negative
      ? concatBatch([repeatBatch(cond.promptEmbeds, batch), repeatBatch(negative.promptEmbeds, batch)]) // [2B, T, D]
      : repeatBatch(cond.promptEmbeds, batch); // [B, T, D]
    const pooled = negative
      ? concatBatch([repeatBatch(cond.pooled, batch), repeatBatch(negative.pooled, batch)]) // [2B, Dp]
      : repeatBatch(cond.pooled, batch); // [B, Dp]
    const guidance = f32([callBatch], new Array<number>(callBatch).fill(inputs.guidance as number));

    // Masks, scales and checks once; per step only the characters' tokens (shared by every image and both passes).
    const ipFeeds = await prepareIpFeeds({
      pool, models, signal: ctx.signal, character, subjectScale: inputs.subject_scale as number, rows, cols, batch: callBatch,
    });
    for (let i = 0; i < steps; i++) {
      if (ctx.signal.aborted) throw ctx.signal.reason ?? new Error('cancelled');
      const t = schedule.timesteps[i]!; // sigma * 1000
      const ip = await ipFeeds(t);
      const hidden = negative ? concatTwice(latents) : latents; // [callBatch, L, 4C]
      const out = await pool.run(models.path('flux'), {
        hidden_states: f32([callBatch, imageTokens, channels * 4], hidden),
        encoder_hidden_states: context,
        pooled_projections: pooled,
        timestep: f32([callBatch], new Array<number>(callBatch).fill(Math.fround(t / 1000))),
        guidance,
        rope_cos: rope.cos,
        rope_sin: rope.sin,
        ...ip,
      }, { signal: ctx.signal, ...loraRunOptions(models, 'flux') });
      const pred = toFloat32(out.noise_pred!); // [callBatch, L, 4C]
      const velocity = negative ? trueCfgCombine(pred, batch * perImage, trueCfg) : pred;
      eulerStep(latents, velocity, schedule.sigmas[i]!, schedule.sigmas[i + 1]!);
      if (grid) {
        // FluxInpaintPipeline: the kept region is the init noised to the next sigma with the same noise, or
        // after the last step the init itself. Soft mode frees a cell once the next step's threshold allows.
        const last = i === steps - 1;
        const free = binaryMask ?? packMask(freeAtStep(grid, schedule.sigmas[last ? i : i + 1]!, schedule.sigmas[0]!, mode), channels, h, w);
        for (let b = 0; b < batch; b++) {
          const k = kept[b]!;
          inpaintBlend(latents.subarray(b * perImage, (b + 1) * perImage), free, last ? k.init : scaleNoise(k.init, k.noise, schedule.sigmas[i + 1]!));
        }
      }
      await reportStep(ctx, i + 1, steps, latents.subarray(0, perImage), channels, h, w);
    }

    const samples = new Float32Array(batch * perImage);
    for (let i = 0; i < batch; i++) samples.set(unpackLatents(latents.subarray(i * perImage, (i + 1) * perImage), channels, h, w), i * perImage);
    const latent: Latent = { samples: f32([batch, channels, h, w], samples) };
    // Each image of a batch remembers how to make it alone (a single image is its workflow as it stands).
    if (batch > 1) latent.origins = Array.from({ length: batch }, (_, i) => ({ node: ctx.nodeId, seed: seed + i }));
    return { latent };
  },
};

const gib = (n: number): string => `${(n / 1024 ** 3).toFixed(2)} GiB`;

interface BatchRequest {
  batch: number;
  width: number;
  height: number;
  textTokens: number;
  /** Two passes per image. */
  trueCfg: boolean;
}

/** Refuses, naming batch_size, a batched transformer call whose estimate exceeds the memory budget. */
export function checkBatchFits(models: ModelSet, pool: { device: string; budgetBytes: number }, r: BatchRequest): void {
  const { vae } = models.manifest;
  const imageTokens = (r.height / vae.downscale / 2) * (r.width / vae.downscale / 2);
  const passes = r.trueCfg ? 2 : 1;
  const resident = fluxResidentBytes(models, pool.device);
  const each = passes * fluxBytesPerImage(models, r.textTokens, imageTokens);
  if (resident + r.batch * each <= pool.budgetBytes) return;
  const fits = Math.max(0, Math.floor((pool.budgetBytes - resident) / each));
  throw new NodeInputError('batch_size', `${r.batch} image(s) of ${r.width}x${r.height}${r.trueCfg ? ' with true CFG (two passes each)' : ''} need about `
    + `${gib(resident + r.batch * each)} with the transformer, more than the memory budget of ${gib(pool.budgetBytes)}; `
    + (fits >= 1 ? `at most ${Math.min(fits, MAX_BATCH)} fit` : 'not even one image fits: lower the size or raise the budget (--memory-budget)'));
}

function concatTwice(x: Float32Array): Float32Array {
  const out = new Float32Array(2 * x.length);
  out.set(x, 0);
  out.set(x, x.length);
  return out;
}

/** noise = neg + cfg * (pos - neg), in float32 as torch computes it; pos is the first half of the batch. */
function trueCfgCombine(pred: Float32Array, half: number, cfg: number): Float32Array {
  const fr = Math.fround;
  const scale = fr(cfg);
  const out = new Float32Array(half);
  for (let k = 0; k < half; k++) {
    const neg = pred[half + k]!;
    out[k] = fr(neg + fr(scale * fr(pred[k]! - neg)));
  }
  return out;
}

async function reportStep(ctx: NodeContext<Services>, step: number, total: number, first: Float32Array, c: number, h: number, w: number): Promise<void> {
  ctx.progress(step, total, await latentPreview(unpackLatents(first, c, h, w), c, h, w));
}
