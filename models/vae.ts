// FLUX VAE decoder: diffusers AutoencoderKL.decode plus the pipeline's latent scaling and image
// post-processing, as one ONNX graph.
//
//   latents [B, 16, h, w] -> z = latents / scaling + shift -> (post_quant_conv) -> conv_in
//   -> mid_block (resnet, attention, resnet) -> up_blocks (resnets, nearest x2 + conv on all but the last)
//   -> GroupNorm -> SiLU -> conv_out -> sample [B, 3, 8h, 8w];  image = clamp(sample / 2 + 0.5, 0, 1)
//
// And the encoder (AutoencoderKL.encode, for image-to-image), the mirror image:
//   image [B, 3, H, W] in [-1, 1] -> conv_in -> down_blocks (resnets, pad right/bottom + stride-2 conv on
//   all but the last) -> mid_block -> GroupNorm -> SiLU -> conv_out -> (quant_conv) -> moments [B, 2*16, H/8, W/8]
//   = mean, logvar;  latents = ((mean + exp(logvar / 2) * eps) - shift) * scaling
//
// h and w stay dynamic. The real FLUX VAE config sets force_upcast: its activations overflow float16,
// so run this graph in float32 (the builder still honours m.g.dtype).
import type { Value } from './onnx/graph.ts';
import { type AttentionForm, type Module, chooseAttention, fusedAttention, linear, silu, reshape, transpose } from './layers.ts';
import { takeWeight } from './weights/source.ts';

export interface VaeConfig {
  latentChannels: number;
  outChannels: number;
  /** Encoder order (small to large); the decoder walks it reversed. */
  blockOutChannels: number[];
  /** The decoder's up blocks hold layersPerBlock + 1 resnets each. */
  layersPerBlock: number;
  normNumGroups: number;
  scalingFactor: number;
  shiftFactor: number;
  midBlockAddAttention: boolean;
  usePostQuantConv: boolean;
  /** The encoder's 1x1 conv on the moments (absent in FLUX). */
  useQuantConv: boolean;
}

/** black-forest-labs/FLUX.1-dev vae/config.json. */
export const FULL_VAE: VaeConfig = {
  latentChannels: 16,
  outChannels: 3,
  blockOutChannels: [128, 256, 512, 512],
  layersPerBlock: 2,
  normNumGroups: 32,
  scalingFactor: 0.3611,
  shiftFactor: 0.1159,
  midBlockAddAttention: true,
  usePostQuantConv: false,
  useQuantConv: false,
};

/** diffusers builds every decoder GroupNorm (resnets, attention, conv_norm_out) with eps 1e-6. */
const NORM_EPS = 1e-6;

// ---------------------------------------------------------------------------------------------
// Config

function field<T>(json: Record<string, unknown>, key: string, check: (v: unknown) => v is T, fallback?: T): T {
  const v = json[key];
  if (v === undefined || v === null) {
    if (fallback !== undefined) return fallback;
    throw new Error(`VAE config.json: missing '${key}'`);
  }
  if (!check(v)) throw new Error(`VAE config.json: '${key}' has an unexpected value ${JSON.stringify(v)}`);
  return v;
}
const isNumber = (v: unknown): v is number => typeof v === 'number';
const isBool = (v: unknown): v is boolean => typeof v === 'boolean';
const isString = (v: unknown): v is string => typeof v === 'string';
const isNumbers = (v: unknown): v is number[] => Array.isArray(v) && v.every(isNumber);
const isStrings = (v: unknown): v is string[] => Array.isArray(v) && v.every(isString);

/** Parses a diffusers AutoencoderKL config.json; defaults are AutoencoderKL's constructor defaults. */
export function vaeConfigFromJson(json: Record<string, unknown>): VaeConfig {
  const actFn = field(json, 'act_fn', isString, 'silu');
  if (actFn !== 'silu') throw new Error(`VAE config.json: act_fn '${actFn}' is not supported (only silu)`);
  const blockOutChannels = field(json, 'block_out_channels', isNumbers, [64]);
  const upBlockTypes = field(json, 'up_block_types', isStrings, ['UpDecoderBlock2D']);
  if (upBlockTypes.length !== blockOutChannels.length || upBlockTypes.some((t) => t !== 'UpDecoderBlock2D')) {
    throw new Error(`VAE config.json: up_block_types must be ${blockOutChannels.length} x UpDecoderBlock2D`);
  }
  return {
    latentChannels: field(json, 'latent_channels', isNumber, 4),
    outChannels: field(json, 'out_channels', isNumber, 3),
    blockOutChannels,
    layersPerBlock: field(json, 'layers_per_block', isNumber, 1),
    normNumGroups: field(json, 'norm_num_groups', isNumber, 32),
    scalingFactor: field(json, 'scaling_factor', isNumber, 0.18215),
    // No shift in SD-style VAEs; FLUX sets 0.1159.
    shiftFactor: field(json, 'shift_factor', isNumber, 0),
    midBlockAddAttention: field(json, 'mid_block_add_attention', isBool, true),
    // Older configs omit the flag and have the conv (diffusers' default True).
    usePostQuantConv: field(json, 'use_post_quant_conv', isBool, true),
    useQuantConv: field(json, 'use_quant_conv', isBool, true),
  };
}

// ---------------------------------------------------------------------------------------------
// Layout shared by the weight table and the builder, so the two cannot drift apart.

interface ResnetLayout {
  prefix: string;
  inChannels: number;
  outChannels: number;
}

interface UpBlockLayout {
  prefix: string;
  resnets: ResnetLayout[];
  /** Upsample2D key prefix, absent on the last (full-resolution) block. */
  upsampler?: string;
  outChannels: number;
}

/** Channels of the mid block and of conv_in's output: the widest level. */
const topChannels = (cfg: VaeConfig): number => cfg.blockOutChannels[cfg.blockOutChannels.length - 1]!;
/** Channels reaching conv_norm_out: the narrowest level. */
const bottomChannels = (cfg: VaeConfig): number => cfg.blockOutChannels[0]!;

function midResnets(cfg: VaeConfig, part: 'encoder' | 'decoder' = 'decoder'): ResnetLayout[] {
  const c = topChannels(cfg);
  return [0, 1].map((i) => ({ prefix: `${part}.mid_block.resnets.${i}`, inChannels: c, outChannels: c }));
}

/** diffusers Decoder: channels reversed; the first resnet of a block takes the previous block's width. */
function upBlocks(cfg: VaeConfig): UpBlockLayout[] {
  const reversed = [...cfg.blockOutChannels].reverse();
  let prev = reversed[0]!;
  return reversed.map((outChannels, i) => {
    const prefix = `decoder.up_blocks.${i}`;
    const resnets = Array.from({ length: cfg.layersPerBlock + 1 }, (_, j) => ({
      prefix: `${prefix}.resnets.${j}`,
      inChannels: j === 0 ? prev : outChannels,
      outChannels,
    }));
    prev = outChannels;
    const last = i === reversed.length - 1;
    return { prefix, resnets, upsampler: last ? undefined : `${prefix}.upsamplers.0.conv`, outChannels };
  });
}

interface DownBlockLayout {
  resnets: ResnetLayout[];
  /** Downsample2D conv key prefix, absent on the last (lowest-resolution) block. */
  downsampler?: string;
  outChannels: number;
}

/** diffusers Encoder: channels in order; the first resnet of a block takes the previous block's width. */
function downBlocks(cfg: VaeConfig): DownBlockLayout[] {
  let prev = cfg.blockOutChannels[0]!;
  return cfg.blockOutChannels.map((outChannels, i) => {
    const prefix = `encoder.down_blocks.${i}`;
    const resnets = Array.from({ length: cfg.layersPerBlock }, (_, j) => ({
      prefix: `${prefix}.resnets.${j}`,
      inChannels: j === 0 ? prev : outChannels,
      outChannels,
    }));
    prev = outChannels;
    const last = i === cfg.blockOutChannels.length - 1;
    return { resnets, downsampler: last ? undefined : `${prefix}.downsamplers.0.conv`, outChannels };
  });
}

const MID_ATTENTION = 'decoder.mid_block.attentions.0';
const ENCODER_MID_ATTENTION = 'encoder.mid_block.attentions.0';

// ---------------------------------------------------------------------------------------------
// Weight table

type Shapes = Record<string, number[]>;

function convShapes(s: Shapes, prefix: string, cin: number, cout: number, k: number): void {
  s[`${prefix}.weight`] = [cout, cin, k, k];
  s[`${prefix}.bias`] = [cout];
}

function normShapes(s: Shapes, prefix: string, c: number): void {
  s[`${prefix}.weight`] = [c];
  s[`${prefix}.bias`] = [c];
}

function resnetShapes(s: Shapes, r: ResnetLayout): void {
  normShapes(s, `${r.prefix}.norm1`, r.inChannels);
  convShapes(s, `${r.prefix}.conv1`, r.inChannels, r.outChannels, 3);
  normShapes(s, `${r.prefix}.norm2`, r.outChannels);
  convShapes(s, `${r.prefix}.conv2`, r.outChannels, r.outChannels, 3);
  if (r.inChannels !== r.outChannels) convShapes(s, `${r.prefix}.conv_shortcut`, r.inChannels, r.outChannels, 1);
}

function attentionShapes(s: Shapes, prefix: string, c: number): void {
  normShapes(s, `${prefix}.group_norm`, c);
  for (const proj of ['to_q', 'to_k', 'to_v', 'to_out.0']) {
    s[`${prefix}.${proj}.weight`] = [c, c];
    s[`${prefix}.${proj}.bias`] = [c];
  }
}

/** Every checkpoint key the decoder reads (decoder.*, plus post_quant_conv.* when configured). */
export function vaeWeightShapes(cfg: VaeConfig): Shapes {
  const s: Shapes = {};
  const top = topChannels(cfg);
  if (cfg.usePostQuantConv) convShapes(s, 'post_quant_conv', cfg.latentChannels, cfg.latentChannels, 1);
  convShapes(s, 'decoder.conv_in', cfg.latentChannels, top, 3);
  const [mid0, mid1] = midResnets(cfg) as [ResnetLayout, ResnetLayout];
  resnetShapes(s, mid0);
  if (cfg.midBlockAddAttention) attentionShapes(s, MID_ATTENTION, top);
  resnetShapes(s, mid1);
  for (const block of upBlocks(cfg)) {
    for (const r of block.resnets) resnetShapes(s, r);
    if (block.upsampler) convShapes(s, block.upsampler, block.outChannels, block.outChannels, 3);
  }
  normShapes(s, 'decoder.conv_norm_out', bottomChannels(cfg));
  convShapes(s, 'decoder.conv_out', bottomChannels(cfg), cfg.outChannels, 3);
  return s;
}

/** Every checkpoint key the encoder reads (encoder.*, plus quant_conv.* when configured). */
export function vaeEncoderWeightShapes(cfg: VaeConfig, inChannels = 3): Shapes {
  const s: Shapes = {};
  const top = topChannels(cfg);
  convShapes(s, 'encoder.conv_in', inChannels, bottomChannels(cfg), 3);
  for (const block of downBlocks(cfg)) {
    for (const r of block.resnets) resnetShapes(s, r);
    if (block.downsampler) convShapes(s, block.downsampler, block.outChannels, block.outChannels, 3);
  }
  const [mid0, mid1] = midResnets(cfg, 'encoder') as [ResnetLayout, ResnetLayout];
  resnetShapes(s, mid0);
  if (cfg.midBlockAddAttention) attentionShapes(s, ENCODER_MID_ATTENTION, top);
  resnetShapes(s, mid1);
  normShapes(s, 'encoder.conv_norm_out', top);
  convShapes(s, 'encoder.conv_out', top, 2 * cfg.latentChannels, 3);
  if (cfg.useQuantConv) convShapes(s, 'quant_conv', 2 * cfg.latentChannels, 2 * cfg.latentChannels, 1);
  return s;
}

// ---------------------------------------------------------------------------------------------
// Layers (x is NCHW throughout: [B, C, H, W])

/** A per-channel vector as [C, 1, 1], so it broadcasts over NCHW without a runtime Reshape. */
function channelParam(m: Module, key: string, c: number): Value {
  const t = takeWeight(m.w, key, [c]);
  return m.g.weight(key, { ...t, dims: [c, 1, 1] });
}

/** torch Conv2d, stride 1, 'same' padding (k odd). */
function conv2d(m: Module, x: Value, prefix: string, cin: number, cout: number, k: number): Value {
  const key = `${prefix}.weight`;
  const weight = m.g.weight(key, takeWeight(m.w, key, [cout, cin, k, k]));
  const bias = m.g.weight(`${prefix}.bias`, takeWeight(m.w, `${prefix}.bias`, [cout]));
  const p = (k - 1) / 2;
  return m.g.node('Conv', [x, weight, bias], { kernel_shape: [k, k], pads: [p, p, p, p] }); // [B, cout, H, W]
}

/**
 * torch GroupNorm(groups, c, eps) with affine weights.
 *
 * ONNX GroupNormalization changed meaning between opsets: in 18 (what our opset 20 graphs get) scale and
 * bias are per group, in 21 per channel, so neither carries the per-channel affine of torch portably. We
 * instead normalise [B, G, C/G*H*W] with InstanceNormalization (unit scale, zero bias) and then apply
 * weight/bias per channel. On ORT 1.30 CPU this was the fastest of the three routes on [1,128,256,256]
 * (InstanceNorm 129 ms, ReduceMean/Sub/Div 154 ms, GroupNormalization-18 213 ms) and the most accurate
 * (GroupNormalization-18 showed 4e-5 error against a float64 reference where the others had 1e-5).
 */
function groupNorm(m: Module, x: Value, prefix: string, c: number, groups: number): Value {
  const { g } = m;
  const grouped = reshape(g, x, [0, groups, -1]); // [B, G, C/G*H*W]
  const unit = g.floats(new Float32Array(groups).fill(1));
  const zero = g.floats(new Float32Array(groups));
  const normed = g.node('InstanceNormalization', [grouped, unit, zero], { epsilon: NORM_EPS }); // [B, G, C/G*H*W]
  const y = g.node('Reshape', [normed, g.node('Shape', [x])]); // [B, C, H, W]
  const scaled = g.node('Mul', [y, channelParam(m, `${prefix}.weight`, c)]);
  return g.node('Add', [scaled, channelParam(m, `${prefix}.bias`, c)]); // [B, C, H, W]
}

/** diffusers ResnetBlock2D without temb: norm1 -> silu -> conv1 -> norm2 -> silu -> conv2, plus shortcut. */
function resnetBlock(m: Module, x: Value, r: ResnetLayout, groups: number): Value {
  const { g } = m;
  let h = silu(g, groupNorm(m, x, `${r.prefix}.norm1`, r.inChannels, groups)); // [B, Cin, H, W]
  h = conv2d(m, h, `${r.prefix}.conv1`, r.inChannels, r.outChannels, 3); // [B, Cout, H, W]
  h = silu(g, groupNorm(m, h, `${r.prefix}.norm2`, r.outChannels, groups));
  h = conv2d(m, h, `${r.prefix}.conv2`, r.outChannels, r.outChannels, 3); // [B, Cout, H, W]
  const shortcut = r.inChannels === r.outChannels
    ? x
    : conv2d(m, x, `${r.prefix}.conv_shortcut`, r.inChannels, r.outChannels, 1); // [B, Cout, H, W]
  return g.node('Add', [shortcut, h]); // output_scale_factor 1
}

/**
 * The mid-block Attention: one head as wide as the channels, over the H*W pixels as tokens, with a
 * residual. The scale 1/sqrt(C) goes on q ([T, C] values) rather than on the [T, T] scores.
 */
function midAttention(m: Module, x: Value, c: number, groups: number, p = MID_ATTENTION, attn: VaeBuildOptions = {}): Value {
  const { g } = m;
  const normed = groupNorm(m, x, `${p}.group_norm`, c, groups); // [B, C, H, W]
  const tokens = transpose(g, reshape(g, normed, [0, c, -1]), [0, 2, 1]); // [B, HW, C]
  const q = g.node('Mul', [linear(m, tokens, `${p}.to_q`, c, c), g.scalar(1 / Math.sqrt(c))]); // [B, HW, C]
  const k = linear(m, tokens, `${p}.to_k`, c, c); // [B, HW, C]
  const v = linear(m, tokens, `${p}.to_v`, c, c); // [B, HW, C]
  const plain = (): Value => {
    const scores = g.node('MatMul', [q, transpose(g, k, [0, 2, 1])]); // [B, HW, HW]
    const probs = g.node('Softmax', [scores], { axis: -1 });
    return g.node('MatMul', [probs, v]); // [B, HW, C]
  };
  const form = attn.attention ?? 'plain';
  const attended = form === 'plain' ? plain() : chooseAttention(g, form, q, k, 1, () => fusedAttention(g, q, k, v, 1, 1), plain, attn.fusedFrom); // [B, HW, C]
  const out = linear(m, attended, `${p}.to_out.0`, c, c); // [B, HW, C]
  const spatial = g.node('Reshape', [transpose(g, out, [0, 2, 1]), g.node('Shape', [x])]); // [B, C, H, W]
  return g.node('Add', [spatial, x]); // rescale_output_factor 1
}

/** Downsample2D(padding=0): zero-pad one row/column at the bottom/right, then a 3x3 conv with stride 2. */
function downsample(m: Module, x: Value, prefix: string, c: number): Value {
  const { g } = m;
  const key = `${prefix}.weight`;
  const weight = g.weight(key, takeWeight(m.w, key, [c, c, 3, 3]));
  const bias = g.weight(`${prefix}.bias`, takeWeight(m.w, `${prefix}.bias`, [c]));
  return g.node('Conv', [x, weight, bias], { kernel_shape: [3, 3], strides: [2, 2], pads: [0, 0, 1, 1] }); // [B, C, H/2, W/2]
}

/** Upsample2D: nearest x2 (torch 'nearest' = asymmetric coordinates, floor) then a 3x3 conv. */
function upsample(m: Module, x: Value, prefix: string, c: number): Value {
  const { g } = m;
  // Resize scales are float32 whatever the activation dtype.
  const scales = g.constant({ dtype: 'float32', dims: [4], data: Float32Array.from([1, 1, 2, 2]) }, 'scales');
  const up = g.node('Resize', [x, undefined, scales], {
    mode: 'nearest', coordinate_transformation_mode: 'asymmetric', nearest_mode: 'floor',
  }); // [B, C, 2H, 2W]
  return conv2d(m, up, prefix, c, c, 3);
}

// ---------------------------------------------------------------------------------------------
// Graph

/**
 * Input `latents` [B, latentChannels, h, w] (the pipeline's unpacked latents, before scaling).
 * Outputs `sample` [B, outChannels, 8h, 8w] (raw decoder output, about [-1, 1]) and
 * `image` = clamp(sample / 2 + 0.5, 0, 1).
 */
/** How the mid-block attention is written (layers.ts AttentionForm; default 'plain', model sets write 'auto'). */
export interface VaeBuildOptions {
  attention?: AttentionForm;
  /** 'auto': score elements (one head: (H*W of the mid block)^2) from which the fused op runs. */
  fusedFrom?: number;
}

export function buildVaeDecoder(m: Module, cfg: VaeConfig, attn: VaeBuildOptions = {}): void {
  const { g } = m;
  const L = cfg.latentChannels;
  const groups = cfg.normNumGroups;
  const latents = g.input('latents', g.dtype, ['batch', L, 'latent_height', 'latent_width']);

  // The pipeline's un-scaling, in its own order: latents / scaling_factor + shift_factor.
  let z = g.node('Add', [g.node('Div', [latents, g.scalar(cfg.scalingFactor)]), g.scalar(cfg.shiftFactor)]); // [B, L, h, w]
  if (cfg.usePostQuantConv) z = conv2d(m, z, 'post_quant_conv', L, L, 1);

  let x = conv2d(m, z, 'decoder.conv_in', L, topChannels(cfg), 3); // [B, Ctop, h, w]
  const [mid0, mid1] = midResnets(cfg) as [ResnetLayout, ResnetLayout];
  x = resnetBlock(m, x, mid0, groups);
  if (cfg.midBlockAddAttention) x = midAttention(m, x, topChannels(cfg), groups, MID_ATTENTION, attn);
  x = resnetBlock(m, x, mid1, groups); // [B, Ctop, h, w]

  for (const block of upBlocks(cfg)) {
    for (const r of block.resnets) x = resnetBlock(m, x, r, groups); // [B, Cblock, H, W]
    if (block.upsampler) x = upsample(m, x, block.upsampler, block.outChannels); // [B, Cblock, 2H, 2W]
  }

  const bottom = bottomChannels(cfg);
  x = silu(g, groupNorm(m, x, 'decoder.conv_norm_out', bottom, groups)); // [B, Cbottom, 8h, 8w]
  const sample = conv2d(m, x, 'decoder.conv_out', bottom, cfg.outChannels, 3); // [B, 3, 8h, 8w]
  const outDims = ['batch', cfg.outChannels, 'height', 'width'];
  g.output(sample, 'sample', g.dtype, outDims);

  // VaeImageProcessor denormalize: (sample / 2 + 0.5).clamp(0, 1).
  const shifted = g.node('Add', [g.node('Div', [sample, g.scalar(2)]), g.scalar(0.5)]);
  const image = g.node('Clip', [shifted, g.scalar(0), g.scalar(1)]); // [B, 3, 8h, 8w]
  g.output(image, 'image', g.dtype, outDims);
}

/**
 * Input `image` [B, 3, H, W] in [-1, 1] (H, W multiples of 8) and `eps` [B, L, H/8, W/8]: the standard
 * normal draw of the latent sample; zeros give the distribution's mean (ComfyUI's choice).
 * Outputs `moments` [B, 2L, h, w] (the encoder's raw output), `mean`, `logvar` (clamped to [-30, 20]
 * as diffusers' DiagonalGaussianDistribution does) and `latents` = (mean + std * eps - shift) * scaling,
 * what the sampler starts from.
 */
export function buildVaeEncoder(m: Module, cfg: VaeConfig, attn: VaeBuildOptions = {}): void {
  const { g } = m;
  const L = cfg.latentChannels;
  const groups = cfg.normNumGroups;
  const top = topChannels(cfg);
  const image = g.input('image', g.dtype, ['batch', 3, 'height', 'width']);
  const eps = g.input('eps', g.dtype, ['batch', L, 'latent_height', 'latent_width']);

  let x = conv2d(m, image, 'encoder.conv_in', 3, bottomChannels(cfg), 3); // [B, C0, H, W]
  for (const block of downBlocks(cfg)) {
    for (const r of block.resnets) x = resnetBlock(m, x, r, groups); // [B, Cblock, H', W']
    if (block.downsampler) x = downsample(m, x, block.downsampler, block.outChannels); // [B, Cblock, H'/2, W'/2]
  }
  const [mid0, mid1] = midResnets(cfg, 'encoder') as [ResnetLayout, ResnetLayout];
  x = resnetBlock(m, x, mid0, groups);
  if (cfg.midBlockAddAttention) x = midAttention(m, x, top, groups, ENCODER_MID_ATTENTION, attn);
  x = resnetBlock(m, x, mid1, groups); // [B, Ctop, h, w]
  x = silu(g, groupNorm(m, x, 'encoder.conv_norm_out', top, groups));
  let moments = conv2d(m, x, 'encoder.conv_out', top, 2 * L, 3); // [B, 2L, h, w]
  if (cfg.useQuantConv) moments = conv2d(m, moments, 'quant_conv', 2 * L, 2 * L, 1);
  const latentDims = ['batch', L, 'latent_height', 'latent_width'];
  g.output(moments, 'moments', g.dtype, ['batch', 2 * L, 'latent_height', 'latent_width']);

  const [mean, rawLogvar] = g.op('Split', [moments, g.ints([L, L])], { axis: 1 }, 2) as [Value, Value]; // [B, L, h, w] each
  const logvar = g.node('Clip', [rawLogvar, g.scalar(-30), g.scalar(20)]);
  g.output(mean, 'mean', g.dtype, latentDims);
  g.output(logvar, 'logvar', g.dtype, latentDims);
  const std = g.node('Exp', [g.node('Mul', [logvar, g.scalar(0.5)])]); // [B, L, h, w]
  const sample = g.node('Add', [mean, g.node('Mul', [std, eps])]);
  const latents = g.node('Mul', [g.node('Sub', [sample, g.scalar(cfg.shiftFactor)]), g.scalar(cfg.scalingFactor)]);
  g.output(latents, 'latents', g.dtype, latentDims);
}
