import type { NodeDef } from '../engine/node.ts';
import type { Services } from './services.ts';
import { tensorBytes } from './lib/tensors.ts';
import { SOCKET, type Mask } from './types.ts';
import { rectRegion } from './regional_character.ts';
import { rasteriseRegion } from './lib/regions.ts';

/** Regional Character's rectangle with its soft edge, as a mask of width x height pixels. */
export const MaskFromRegion: NodeDef<Services> = {
  type: 'MaskFromRegion',
  version: 1,
  category: 'mask',
  displayName: 'Mask from Region',
  description: 'A rectangle (relative x, y, w, h with a soft edge, as Regional Character) as a mask: white inside = repaint. '
    + 'Give it the same numbers as a Regional Character to repaint exactly where the character goes.',
  inputs: {},
  params: {
    x: { type: 'number', default: 0.25, minimum: 0, maximum: 1, description: 'Left edge, relative to the width' },
    y: { type: 'number', default: 0.25, minimum: 0, maximum: 1, description: 'Top edge, relative to the height' },
    w: { type: 'number', default: 0.5, minimum: 0, maximum: 1, description: 'Width, relative (x + w <= 1)' },
    h: { type: 'number', default: 0.5, minimum: 0, maximum: 1, description: 'Height, relative (y + h <= 1)' },
    feather: { type: 'number', default: 0, minimum: 0, maximum: 0.5, description: 'Width of the soft edge, relative to each side (0 = hard edge)' },
    width: { type: 'integer', default: 1024, minimum: 16, maximum: 4096, description: 'Mask width in pixels (match the sampler)' },
    height: { type: 'integer', default: 1024, minimum: 16, maximum: 4096, description: 'Mask height in pixels (match the sampler)' },
  },
  outputs: { mask: { type: SOCKET.MASK } },
  sizeOf: tensorBytes,
  async run(_ctx, inputs) {
    const region = rectRegion(inputs.x as number, inputs.y as number, inputs.w as number, inputs.h as number, inputs.feather as number);
    const width = inputs.width as number;
    const height = inputs.height as number;
    // One cell per pixel: each pixel is the rectangle profile's average over it.
    const mask: Mask = { width, height, data: rasteriseRegion(region, height, width) };
    return { mask };
  },
};
