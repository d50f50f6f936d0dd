import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import type { NodeDef } from '../engine/node.ts';
import { NodeInputError } from '../engine/node.ts';
import type { Services } from './services.ts';
import sharp from 'sharp';
import { SOCKET, type Mask, type RgbImage } from './types.ts';
import { resolveImagePath } from './load_character.ts';
import { MAX_IMAGE_PIXELS, cropImage, decodeImage, resizeImage } from './lib/image.ts';

/** Pictures above this file size are refused before decoding. */
const MAX_FILE_BYTES = 50 * 1024 * 1024;

export async function readPicture(services: Services, path: string): Promise<Buffer> {
  const file = await resolveImagePath(services, path); // names the field when missing or outside the folders
  const info = await stat(file);
  if (!info.isFile()) throw new NodeInputError('path', `"${path}" is not a file`);
  if (info.size === 0) throw new NodeInputError('path', `"${path}" is empty`);
  if (info.size > MAX_FILE_BYTES) throw new NodeInputError('path', `"${path}" is ${info.size} bytes, over the ${MAX_FILE_BYTES} byte limit`);
  return readFile(file);
}

/**
 * Cover-resize: the centred crop of `img` with the target's aspect ratio, resized to exactly
 * width x height with the project's PIL-exact bicubic (what PIL's ImageOps.fit does).
 */
export function coverResize(img: RgbImage, width: number, height: number): RgbImage {
  // Crop whichever side is too long for the target aspect (integer pixels, centred).
  let cw = img.width;
  let ch = img.height;
  if (img.width * height > img.height * width) cw = Math.max(1, Math.round((img.height * width) / height));
  else if (img.width * height < img.height * width) ch = Math.max(1, Math.round((img.width * height) / width));
  const cropped = cw === img.width && ch === img.height
    ? img
    : cropImage(img, Math.floor((img.width - cw) / 2), Math.floor((img.height - ch) / 2), cw, ch);
  return resizeImage(cropped, width, height);
}

/**
 * The picture's alpha as ComfyUI's LoadImage gives it: mask = 1 - alpha (transparent = repaint), cropped and
 * resized with the picture; all 0 (keep everything) when the file has no alpha.
 */
export async function alphaMask(bytes: Uint8Array, width: number, height: number): Promise<Mask> {
  const meta = await sharp(bytes, { limitInputPixels: MAX_IMAGE_PIXELS }).metadata();
  if (!meta.hasAlpha) return { width, height, data: new Float32Array(width * height) };
  const { data, info } = await sharp(bytes, { limitInputPixels: MAX_IMAGE_PIXELS }).rotate().ensureAlpha().extractChannel(3).raw()
    .toBuffer({ resolveWithObject: true });
  // The alpha plane as a grey RGB picture goes through the same crop and bicubic resize as the picture.
  const grey = new Uint8Array(info.width * info.height * 3);
  for (let i = 0; i < info.width * info.height; i++) grey.fill(data[i]!, 3 * i, 3 * i + 3);
  const fitted = coverResize({ width: info.width, height: info.height, data: grey }, width, height);
  const out = new Float32Array(width * height);
  for (let i = 0; i < out.length; i++) out[i] = 1 - fitted.data[3 * i]! / 255;
  return { width, height, data: out };
}

export const LoadImage: NodeDef<Services> = {
  type: 'LoadImage',
  version: 2,
  category: 'image',
  displayName: 'Load Image',
  description: 'Loads a picture from the inputs folder (PNG, JPEG, WebP, AVIF, TIFF, GIF) at the target size: cropped to cover, then resized with exact bicubic.',
  inputs: {},
  params: {
    path: { type: 'string', format: 'image', default: 'workflows/assets/character.png', maxLength: 1024, description: 'Image in the inputs folder (or a bundled example)' },
    width: { type: 'integer', default: 1024, minimum: 16, maximum: 4096, multipleOf: 16, description: 'Target width (match the sampler)' },
    height: { type: 'integer', default: 1024, minimum: 16, maximum: 4096, multipleOf: 16, description: 'Target height (match the sampler)' },
  },
  outputs: {
    image: { type: SOCKET.IMAGE },
    mask: { type: SOCKET.MASK, description: 'The picture\'s alpha as ComfyUI gives it: 1 - alpha (transparent = repaint); all 0 without alpha' },
  },
  async cacheKey(inputs, services) {
    return createHash('sha256').update(await readPicture(services, inputs.path as string)).digest('hex');
  },
  sizeOf: (v) => (v as { data: ArrayBufferView }).data?.byteLength ?? 0,
  async run(ctx, inputs) {
    const bytes = await readPicture(ctx.services, inputs.path as string);
    let image: RgbImage;
    try {
      image = await decodeImage(bytes);
    } catch (err) {
      throw new NodeInputError('path', `"${inputs.path}": ${(err as Error).message}`);
    }
    const width = inputs.width as number;
    const height = inputs.height as number;
    return { image: coverResize(image, width, height), mask: await alphaMask(bytes, width, height) };
  },
};
