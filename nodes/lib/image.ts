// Images on the data path: decoding with limits, squaring, resizing, cropping, normalising into
// pixel tensors, and PNG encoding with text chunks (the workflow travels inside saved images).
import sharp from 'sharp';
import { crc32 } from 'node:zlib';
import type { Tensor } from '../../models/tensor.ts';
import { resizeBicubic } from './resize.ts';
import type { RgbImage } from './rgb.ts';

export type { RgbImage } from './rgb.ts';

/** Decompression-bomb guard: no image above this many pixels is decoded. */
export const MAX_IMAGE_PIXELS = 64 * 1024 * 1024;

export async function decodeImage(input: Uint8Array | string, maxPixels = MAX_IMAGE_PIXELS): Promise<RgbImage> {
  let meta: sharp.Metadata;
  try {
    // Header only: the size check below names the size; the pixel limit still guards the decode.
    meta = await sharp(input, { limitInputPixels: false }).metadata();
  } catch (err) {
    throw new Error(`not a readable image: ${(err as Error).message}`);
  }
  if (!meta.width || !meta.height) throw new Error('the image is empty');
  if (meta.width * meta.height > maxPixels) {
    throw new Error(`the image has ${meta.width}x${meta.height} pixels, more than the limit of ${maxPixels}`);
  }
  try {
    const { data, info } = await sharp(input, { limitInputPixels: maxPixels })
      .rotate() // honour EXIF orientation, as a viewer shows the picture
      .flatten({ background: '#ffffff' })
      .toColourspace('srgb')
      .removeAlpha()
      .raw()
      .toBuffer({ resolveWithObject: true });
    if (info.channels !== 3) throw new Error(`expected 3 channels after conversion, got ${info.channels}`);
    return { width: info.width, height: info.height, data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) };
  } catch (err) {
    throw new Error(`the image could not be decoded: ${(err as Error).message}`);
  }
}

function rawInput(img: RgbImage): sharp.Sharp {
  return sharp(img.data, { raw: { width: img.width, height: img.height, channels: 3 } });
}

async function toRgb(pipeline: sharp.Sharp): Promise<RgbImage> {
  const { data, info } = await pipeline.removeAlpha().raw().toBuffer({ resolveWithObject: true });
  return { width: info.width, height: info.height, data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) };
}

/** Bicubic resize to exactly width x height (aspect not kept), bit-exact with the reference's PIL. */
export function resizeImage(img: RgbImage, width: number, height: number): RgbImage {
  if (img.width === width && img.height === height) return img;
  return resizeBicubic(img, width, height);
}

export type SquareMode = 'pad' | 'stretch';

/**
 * Squares the reference: 'stretch' resizes to max(w, h) as the official pipeline does; 'pad'
 * centres the picture on a square of `background`, which keeps the character's proportions.
 */
export async function squareImage(img: RgbImage, mode: SquareMode, background = '#ffffff'): Promise<RgbImage> {
  const side = Math.max(img.width, img.height);
  if (img.width === img.height) return img;
  if (mode === 'stretch') return resizeImage(img, side, side);
  const left = Math.floor((side - img.width) / 2);
  const top = Math.floor((side - img.height) / 2);
  return toRgb(rawInput(img).extend({
    left, right: side - img.width - left, top, bottom: side - img.height - top, background,
  }));
}

export function cropImage(img: RgbImage, x: number, y: number, width: number, height: number): RgbImage {
  const out = new Uint8Array(width * height * 3);
  for (let r = 0; r < height; r++) {
    const src = ((y + r) * img.width + x) * 3;
    out.set(img.data.subarray(src, src + width * 3), r * width * 3);
  }
  return { width, height, data: out };
}

/** The four quadrant crops of a square image, in the order TL, TR, BL, BR. */
export function quadrantCrops(img: RgbImage): RgbImage[] {
  const s = img.width / 2;
  return [[0, 0], [s, 0], [0, s], [s, s]].map(([x, y]) => cropImage(img, x!, y!, s, s));
}

/** Images of one size -> [N, 3, H, W] float32, (p/255 - mean) / std per channel. */
export function pixelValues(images: RgbImage[], mean: readonly number[], std: readonly number[]): Tensor {
  const { width: w, height: h } = images[0]!;
  const plane = w * h;
  const out = new Float32Array(images.length * 3 * plane);
  images.forEach((img, n) => {
    if (img.width !== w || img.height !== h) throw new Error('pixelValues needs images of one size');
    for (let c = 0; c < 3; c++) {
      const base = (n * 3 + c) * plane;
      const m = Math.fround(mean[c]!);
      const sd = Math.fround(std[c]!);
      for (let i = 0; i < plane; i++) out[base + i] = Math.fround(Math.fround(Math.fround(img.data[i * 3 + c]! / 255) - m) / sd);
    }
  });
  return { dtype: 'float32', dims: [images.length, 3, h, w], data: out };
}

/** [1, 3, H, W] floats in 0..1 -> 8-bit RGB (rounded). */
export function imageFromTensor(t: Tensor): RgbImage {
  const [, c, h, w] = t.dims as [number, number, number, number];
  if (c !== 3) throw new Error(`expected 3 channels, got ${c}`);
  const src = t.data as Float32Array;
  const out = new Uint8Array(w * h * 3);
  const plane = w * h;
  for (let ch = 0; ch < 3; ch++) {
    for (let i = 0; i < plane; i++) {
      const v = Math.min(1, Math.max(0, src[ch * plane + i]!));
      out[i * 3 + ch] = Math.round(v * 255);
    }
  }
  return { width: w, height: h, data: out };
}

export async function encodePng(img: RgbImage, text: Record<string, string> = {}): Promise<Uint8Array> {
  const png = await rawInput(img).png().toBuffer();
  return addPngText(new Uint8Array(png.buffer, png.byteOffset, png.byteLength), text);
}

export async function encodeJpeg(img: RgbImage, quality = 80): Promise<Uint8Array> {
  const jpg = await rawInput(img).jpeg({ quality }).toBuffer();
  return new Uint8Array(jpg.buffer, jpg.byteOffset, jpg.byteLength);
}

function chunk(type: string, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, data.length);
  const typed = new TextEncoder().encode(type);
  out.set(typed, 4);
  out.set(data, 8);
  dv.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

/** Inserts tEXt chunks (latin-1 keys; values as UTF-8 JSON-safe text) before IEND. */
export function addPngText(png: Uint8Array, text: Record<string, string>): Uint8Array {
  const entries = Object.entries(text);
  if (!entries.length) return png;
  const iend = png.length - 12;
  const chunks = entries.map(([k, v]) => {
    const key = new TextEncoder().encode(k);
    const value = Buffer.from(v, 'utf8');
    const data = new Uint8Array(key.length + 1 + value.length);
    data.set(key, 0);
    data.set(value, key.length + 1);
    return chunk('tEXt', data);
  });
  return Buffer.concat([png.subarray(0, iend), ...chunks, png.subarray(iend)]);
}

/** Reads the tEXt chunks of a PNG (e.g. the embedded workflow). */
export function readPngText(png: Uint8Array): Record<string, string> {
  const sig = [137, 80, 78, 71, 13, 10, 26, 10];
  if (png.length < 8 || sig.some((b, i) => png[i] !== b)) throw new Error('not a PNG file');
  const dv = new DataView(png.buffer, png.byteOffset, png.byteLength);
  const out: Record<string, string> = {};
  let p = 8;
  while (p + 12 <= png.length) {
    const len = dv.getUint32(p);
    const type = String.fromCharCode(...png.subarray(p + 4, p + 8));
    if (p + 12 + len > png.length) break;
    if (type === 'tEXt') {
      const data = png.subarray(p + 8, p + 8 + len);
      const zero = data.indexOf(0);
      if (zero > 0) out[Buffer.from(data.subarray(0, zero)).toString('latin1')] = Buffer.from(data.subarray(zero + 1)).toString('utf8');
    }
    if (type === 'IEND') break;
    p += 12 + len;
  }
  return out;
}
