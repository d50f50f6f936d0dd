import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import type { NodeDef } from '../engine/node.ts';
import { NodeInputError } from '../engine/node.ts';
import type { Services } from './services.ts';
import { SOCKET, type RgbImage } from './types.ts';
import { resolveImagePath } from './load_character.ts';
import { cropImage, decodeImage, resizeImage } from './lib/image.ts';

/** Pictures above this file size are refused before decoding. */
const MAX_FILE_BYTES = 50 * 1024 * 1024;

async function readPicture(services: Services, path: string): Promise<Buffer> {
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

export const LoadImage: NodeDef<Services> = {
  type: 'LoadImage',
  version: 1,
  category: 'image',
  displayName: 'Load Image',
  description: 'Loads a picture from the inputs folder (PNG, JPEG, WebP, AVIF, TIFF, GIF) at the target size: cropped to cover, then resized with exact bicubic.',
  inputs: {},
  params: {
    path: { type: 'string', format: 'image', default: 'workflows/assets/character.png', maxLength: 1024, description: 'Image in the inputs folder (or a bundled example)' },
    width: { type: 'integer', default: 1024, minimum: 16, maximum: 4096, multipleOf: 16, description: 'Target width (match the sampler)' },
    height: { type: 'integer', default: 1024, minimum: 16, maximum: 4096, multipleOf: 16, description: 'Target height (match the sampler)' },
  },
  outputs: { image: { type: SOCKET.IMAGE } },
  async cacheKey(inputs, services) {
    return createHash('sha256').update(await readPicture(services, inputs.path as string)).digest('hex');
  },
  sizeOf: (v) => (v as { data: Uint8Array }).data?.byteLength ?? 0,
  async run(ctx, inputs) {
    const bytes = await readPicture(ctx.services, inputs.path as string);
    let image: RgbImage;
    try {
      image = await decodeImage(bytes);
    } catch (err) {
      throw new NodeInputError('path', `"${inputs.path}": ${(err as Error).message}`);
    }
    return { image: coverResize(image, inputs.width as number, inputs.height as number) };
  },
};
