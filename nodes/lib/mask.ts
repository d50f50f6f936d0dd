// Masks for inpainting and outpainting: decoding black-and-white pictures, resizing to the picture, grow and
// feather in pixels, and the mask on the packed latent grid that DiT Sample blends with (diffusers'
// FluxInpaintPipeline: binarized at 0.5, nearest-resized to the latent grid, repeated over the channels).
import sharp from 'sharp';
import { NodeInputError } from '../../engine/node.ts';
import { packLatents } from '../../models/sampling.ts';
import type { Mask } from '../types.ts';
import { MAX_IMAGE_PIXELS } from './image.ts';
import { rasteriseRegion } from './regions.ts';

/** A mask pixel whose channels differ by more than this is colour, not grey. */
const GREY_TOLERANCE = 24;

/**
 * A black-and-white picture as a mask in [0, 1]: grey level times alpha (transparent = 0). Colour pictures
 * and files that are not pictures are refused, naming `field` and the file.
 */
export async function decodeGreyMask(bytes: Uint8Array, name: string, field: string): Promise<Mask> {
  let raw: { data: Buffer; info: sharp.OutputInfo };
  try {
    raw = await sharp(bytes, { limitInputPixels: MAX_IMAGE_PIXELS }).rotate().toColourspace('srgb').ensureAlpha().raw()
      .toBuffer({ resolveWithObject: true });
  } catch (err) {
    throw new NodeInputError(field, `"${name}" is not a readable image: ${(err as Error).message}`);
  }
  const { width, height, channels } = raw.info;
  if (channels !== 4) throw new NodeInputError(field, `"${name}": expected RGBA after conversion, got ${channels} channels`);
  const data = new Float32Array(width * height);
  for (let i = 0; i < width * height; i++) {
    const r = raw.data[4 * i]!, g = raw.data[4 * i + 1]!, b = raw.data[4 * i + 2]!, a = raw.data[4 * i + 3]!;
    if (a > 0 && Math.max(r, g, b) - Math.min(r, g, b) > GREY_TOLERANCE) {
      throw new NodeInputError(field, `"${name}" is a colour picture (pixel ${i % width},${Math.floor(i / width)} is rgb(${r},${g},${b})); `
        + 'a mask is black and white');
    }
    // For a grey pixel (r = g = b) the channel mean is what PIL's convert('L') gives.
    data[i] = ((r + g + b) / (3 * 255)) * (a / 255);
  }
  return { width, height, data };
}

/** True when some value is at least `threshold`. */
export function maskHasAtLeast(mask: Mask, threshold: number): boolean {
  for (let i = 0; i < mask.data.length; i++) if (mask.data[i]! >= threshold) return true;
  return false;
}

export function invertMask(mask: Mask): Mask {
  const data = new Float32Array(mask.data.length);
  for (let i = 0; i < data.length; i++) data[i] = 1 - mask.data[i]!;
  return { width: mask.width, height: mask.height, data };
}

/** Bilinear resize (pixel centres aligned, as PIL/torch with align_corners=False), for masks of another size. */
export function resizeMask(mask: Mask, width: number, height: number): Mask {
  if (mask.width === width && mask.height === height) return mask;
  const axis = (inSize: number, outSize: number) => Array.from({ length: outSize }, (_, o) => {
    const c = Math.min(Math.max((o + 0.5) * (inSize / outSize) - 0.5, 0), inSize - 1);
    const i0 = Math.floor(c);
    return { i0, i1: Math.min(i0 + 1, inSize - 1), t: c - i0 };
  });
  const ax = axis(mask.width, width);
  const ay = axis(mask.height, height);
  const data = new Float32Array(width * height);
  for (let y = 0; y < height; y++) {
    const { i0: y0, i1: y1, t: ty } = ay[y]!;
    for (let x = 0; x < width; x++) {
      const { i0: x0, i1: x1, t: tx } = ax[x]!;
      const at = (yy: number, xx: number) => mask.data[yy * mask.width + xx]!;
      const top = at(y0, x0) * (1 - tx) + at(y0, x1) * tx;
      const bottom = at(y1, x0) * (1 - tx) + at(y1, x1) * tx;
      data[y * width + x] = top * (1 - ty) + bottom * ty;
    }
  }
  return { width, height, data };
}

/**
 * One separable pass of a sliding max (grow) or min (shrink) over 2r+1 pixels along x or y, in O(1) per pixel
 * whatever r (van Herk / Gil-Werman: per block of 2r+1, running extremes from the left and from the right).
 */
function slide(src: Float32Array, w: number, h: number, r: number, horizontal: boolean, grow: boolean): Float32Array {
  const out = new Float32Array(src.length);
  const [n, len] = horizontal ? [h, w] : [w, h];
  const at = (line: number, k: number) => (horizontal ? line * w + k : k * w + line);
  const k = 2 * r + 1;
  const size = Math.ceil((len + 2 * r) / k) * k;
  const pad = grow ? -Infinity : Infinity; // outside the picture nothing wins
  const pick = grow ? Math.max : Math.min;
  const a = new Float32Array(size);
  const left = new Float32Array(size);
  const right = new Float32Array(size);
  for (let line = 0; line < n; line++) {
    for (let i = 0; i < size; i++) a[i] = i >= r && i < r + len ? src[at(line, i - r)]! : pad;
    for (let i = 0; i < size; i++) left[i] = i % k === 0 ? a[i]! : pick(left[i - 1]!, a[i]!);
    for (let i = size - 1; i >= 0; i--) right[i] = i % k === k - 1 ? a[i]! : pick(right[i + 1]!, a[i]!);
    // Pixel x's window is a[x .. x + 2r]: the end of x's block from the right, the start of the last block from the left.
    for (let x = 0; x < len; x++) out[at(line, x)] = pick(right[x]!, left[x + 2 * r]!);
  }
  return out;
}

/** Grows (px > 0) or shrinks (px < 0) the mask by |px| pixels: a square max (min) filter. */
export function growMask(mask: Mask, px: number): Mask {
  const r = Math.round(Math.abs(px));
  if (r === 0) return mask;
  const once = slide(mask.data, mask.width, mask.height, r, true, px > 0);
  return { width: mask.width, height: mask.height, data: slide(once, mask.width, mask.height, r, false, px > 0) };
}

/** A box blur of 2r+1 pixels along one axis, edges clamped. */
function boxBlur(src: Float32Array, w: number, h: number, r: number, horizontal: boolean): Float32Array {
  const out = new Float32Array(src.length);
  const [n, len] = horizontal ? [h, w] : [w, h];
  const at = (line: number, k: number) => (horizontal ? line * w + k : k * w + line);
  const clamp = (d: number) => Math.min(len - 1, Math.max(0, d));
  for (let line = 0; line < n; line++) {
    // A running sum: add the pixel entering the window, drop the one leaving it.
    let s = 0;
    for (let d = -r; d <= r; d++) s += src[at(line, clamp(d))]!;
    for (let k = 0; k < len; k++) {
      out[at(line, k)] = s / (2 * r + 1);
      s += src[at(line, clamp(k + r + 1))]! - src[at(line, clamp(k - r))]!;
    }
  }
  return out;
}

/**
 * Softens the mask's edge over about `px` pixels: two box blurs of px/2 on each axis (a tent), so a hard edge
 * becomes a smooth ramp `px` wide centred on it.
 */
export function featherMask(mask: Mask, px: number): Mask {
  const r = Math.round(px / 2);
  if (r <= 0) return mask;
  let d = mask.data;
  for (let k = 0; k < 2; k++) {
    d = boxBlur(d, mask.width, mask.height, r, true);
    d = boxBlur(d, mask.width, mask.height, r, false);
  }
  return { width: mask.width, height: mask.height, data: d };
}

/** diffusers' mask processor: values >= 0.5 become 1, the rest 0. */
export function binarizeMask(mask: Mask): Mask {
  const data = new Float32Array(mask.data.length);
  for (let i = 0; i < data.length; i++) data[i] = mask.data[i]! >= 0.5 ? 1 : 0;
  return { width: mask.width, height: mask.height, data };
}

/**
 * torch `interpolate(mode='nearest')` to rows x cols: source index floor(dst * (in / out)), the scale and
 * product in float32 as torch computes them.
 */
export function nearestGrid(mask: Mask, rows: number, cols: number): Float32Array {
  const fr = Math.fround;
  const sy = fr(mask.height / rows);
  const sx = fr(mask.width / cols);
  const out = new Float32Array(rows * cols);
  for (let i = 0; i < rows; i++) {
    const y = Math.min(Math.floor(fr(i * sy)), mask.height - 1);
    for (let j = 0; j < cols; j++) out[i * cols + j] = mask.data[y * mask.width + Math.min(Math.floor(fr(j * sx)), mask.width - 1)]!;
  }
  return out;
}

/** The area average of the mask over rows x cols cells (soft mode keeps grey levels). */
export function areaGrid(mask: Mask, rows: number, cols: number): Float32Array {
  return rasteriseRegion({ kind: 'mask', width: mask.width, height: mask.height, data: mask.data }, rows, cols);
}

/** A [h, w] latent-grid mask repeated over `channels` and packed as the latents are: [L, 4C]. */
export function packMask(grid: Float32Array, channels: number, h: number, w: number): Float32Array {
  const full = new Float32Array(channels * h * w);
  for (let c = 0; c < channels; c++) full.set(grid, c * h * w);
  return packLatents(full, channels, h, w);
}

export type MaskMode = 'binary' | 'soft';

export interface InpaintOptions {
  /** Pixels to grow (> 0) or shrink (< 0) the mask by, before feathering. */
  grow: number;
  /** Width of the soft edge in pixels. */
  feather: number;
  mode: MaskMode;
}

/**
 * The sampler's mask on the latent grid [h * w]: resized to the picture (width x height) when its size
 * differs, grown, feathered, then binarized and nearest-resized (binary, diffusers' FluxInpaintPipeline) or
 * area-averaged keeping its grey levels (soft, Differential Diffusion).
 */
export function latentGridMask(mask: Mask, width: number, height: number, h: number, w: number, opts: InpaintOptions): Float32Array {
  let m = resizeMask(mask, width, height);
  m = growMask(m, opts.grow);
  m = featherMask(m, opts.feather);
  return opts.mode === 'binary' ? nearestGrid(binarizeMask(m), h, w) : areaGrid(m, h, w);
}

/**
 * Which cells are free to change at a step whose sigma is `sigma`, the run starting at `sigmaFirst`: a grey
 * value g is free once g >= sigma / sigmaFirst (the schedule has passed 1 - g), as ComfyUI's Differential
 * Diffusion thresholds its mask; in binary mode the grid is 0/1 and this keeps it as it is.
 */
export function freeAtStep(grid: Float32Array, sigma: number, sigmaFirst: number, mode: MaskMode): Float32Array {
  if (mode === 'binary') return grid;
  const threshold = sigmaFirst > 0 ? sigma / sigmaFirst : 0;
  const out = new Float32Array(grid.length);
  for (let i = 0; i < grid.length; i++) out[i] = grid[i]! > 0 && grid[i]! >= threshold ? 1 : 0;
  return out;
}
