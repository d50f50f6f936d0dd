import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import type { NodeDef } from '../engine/node.ts';
import { NodeInputError } from '../engine/node.ts';
import type { Services } from './services.ts';
import { SOCKET, type CharacterRegion, type CharacterSet, type CharacterTokens, type RgbImage } from './types.ts';
import { resolveImagePath } from './load_character.ts';
import { decodeGreyMask, maskHasAtLeast } from './lib/mask.ts';
import { imagesOf } from './lib/batch.ts';
import { characterSetBytes } from './lib/characters.ts';

/** Mask files above this size are refused before decoding. */
const MAX_MASK_BYTES = 50 * 1024 * 1024;

async function readMaskFile(services: Services, path: string): Promise<Buffer> {
  if (!path) throw new NodeInputError('mask', 'region is "mask" but no mask image is given');
  let file: string;
  try {
    file = await resolveImagePath(services, path);
  } catch (err) {
    throw err instanceof NodeInputError ? new NodeInputError('mask', err.message) : err;
  }
  const info = await stat(file);
  if (!info.isFile() || info.size === 0) throw new NodeInputError('mask', `"${path}" is not a non-empty file`);
  if (info.size > MAX_MASK_BYTES) throw new NodeInputError('mask', `"${path}" is ${info.size} bytes, over the ${MAX_MASK_BYTES} byte limit`);
  return readFile(file);
}

/**
 * A black-and-white mask image as values in [0, 1]: grey level times alpha (transparent = outside).
 * Colour pictures and masks that are black everywhere are refused.
 */
export async function decodeMask(bytes: Uint8Array, name: string): Promise<CharacterRegion & { kind: 'mask' }> {
  const mask = await decodeGreyMask(bytes, name, 'mask');
  if (!maskHasAtLeast(mask, Number.MIN_VALUE)) throw new NodeInputError('mask', `"${name}" is black everywhere: the character would appear nowhere`);
  return { kind: 'mask', ...mask };
}

/** A rectangle in relative coordinates, checked to lie inside the picture. */
export function rectRegion(x: number, y: number, w: number, h: number, feather: number): CharacterRegion {
  const inUnit = (v: number) => Number.isFinite(v) && v >= 0 && v <= 1;
  for (const [field, v] of [['x', x], ['y', y], ['w', w], ['h', h]] as const) {
    if (!inUnit(v)) throw new NodeInputError(field, `${v} is outside [0, 1] (relative to the picture's size)`);
  }
  if (w <= 0) throw new NodeInputError('w', 'the rectangle has no width');
  if (h <= 0) throw new NodeInputError('h', 'the rectangle has no height');
  const eps = 1e-9;
  if (x + w > 1 + eps) throw new NodeInputError('w', `x + w = ${x + w} goes past the right edge (1)`);
  if (y + h > 1 + eps) throw new NodeInputError('h', `y + h = ${y + h} goes past the bottom edge (1)`);
  if (!(feather >= 0 && feather <= 0.5)) throw new NodeInputError('feather', `${feather} is outside [0, 0.5]`);
  return { kind: 'rect', x, y, w, h, feather };
}

/** One character confined to a region of the picture, with its own subject scale: a set of one. */
export const RegionalCharacter: NodeDef<Services> = {
  type: 'RegionalCharacter',
  version: 1,
  category: 'character',
  displayName: 'Regional Character',
  description: 'Confines a character to a rectangle (relative x, y, w, h with a soft edge) or to the white part of a mask image, '
    + 'with its own subject scale. Combine several with Combine Characters and connect the set to the sampler\'s character input.',
  inputs: {
    character: { type: SOCKET.CHARACTER },
    reference: { type: SOCKET.IMAGE, optional: true, description: 'The character\'s reference picture, for Identity Score per region' },
  },
  params: {
    region: { type: 'string', enum: ['rectangle', 'mask'], default: 'rectangle', description: 'rectangle: x, y, w, h and feather; mask: a black-and-white image' },
    x: { type: 'number', default: 0, minimum: 0, maximum: 1, description: 'Left edge, relative to the width' },
    y: { type: 'number', default: 0, minimum: 0, maximum: 1, description: 'Top edge, relative to the height' },
    w: { type: 'number', default: 0.5, minimum: 0, maximum: 1, description: 'Width, relative (x + w <= 1)' },
    h: { type: 'number', default: 1, minimum: 0, maximum: 1, description: 'Height, relative (y + h <= 1)' },
    feather: { type: 'number', default: 0.05, minimum: 0, maximum: 0.5, description: 'Width of the soft edge, relative to each side (0 = hard edge)' },
    mask: { type: 'string', format: 'image', optional: true, maxLength: 1024, description: 'Mask image in the inputs folder: white where the character goes (region = mask)' },
    subject_scale: { type: 'number', default: 0.9, minimum: 0, maximum: 2, description: 'Strength of this character' },
  },
  outputs: { characters: { type: SOCKET.CHARACTERS, description: 'A set of one regional character' } },
  async cacheKey(inputs, services) {
    if (inputs.region !== 'mask') return 'rect';
    return createHash('sha256').update(await readMaskFile(services, inputs.mask as string)).digest('hex');
  },
  sizeOf: characterSetBytes,
  async run(ctx, inputs) {
    const character = inputs.character as CharacterTokens;
    if (!character?.resamplerInput) throw new NodeInputError('character', 'is not a character (connect Adapter Fuse)');
    let region: CharacterRegion;
    if (inputs.region === 'mask') {
      const path = inputs.mask as string;
      region = await decodeMask(await readMaskFile(ctx.services, path), path);
    } else {
      region = rectRegion(inputs.x as number, inputs.y as number, inputs.w as number, inputs.h as number, inputs.feather as number);
    }
    const refs = inputs.reference === undefined ? undefined : imagesOf(inputs.reference, 'reference');
    if (refs && refs.length !== 1) throw new NodeInputError('reference', `is a batch of ${refs.length} images; give one reference picture`);
    const reference: RgbImage | undefined = refs?.[0];
    const set: CharacterSet = { characters: [{ character, region, scale: inputs.subject_scale as number, reference }] };
    return { characters: set };
  },
};
