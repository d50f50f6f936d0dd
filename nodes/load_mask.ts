import { createHash } from 'node:crypto';
import type { NodeDef } from '../engine/node.ts';
import type { Services } from './services.ts';
import { tensorBytes } from './lib/tensors.ts';
import { SOCKET } from './types.ts';
import { readPicture } from './load_image.ts';
import { decodeGreyMask } from './lib/mask.ts';

/** A black-and-white picture from the inputs folder as a mask: white = repaint, black = keep. */
export const LoadMask: NodeDef<Services> = {
  type: 'LoadMask',
  version: 1,
  category: 'mask',
  displayName: 'Load Mask',
  description: 'Loads a black-and-white picture from the inputs folder as a mask: white = repaint, black = keep (grey levels times alpha; colour pictures are refused).',
  inputs: {},
  params: {
    path: { type: 'string', format: 'image', default: '', maxLength: 1024, description: 'Mask picture in the inputs folder (draw one with the mask editor)' },
  },
  outputs: { mask: { type: SOCKET.MASK } },
  async cacheKey(inputs, services) {
    return createHash('sha256').update(await readPicture(services, inputs.path as string)).digest('hex');
  },
  sizeOf: tensorBytes,
  async run(ctx, inputs) {
    const path = inputs.path as string;
    return { mask: await decodeGreyMask(await readPicture(ctx.services, path), path, 'path') };
  },
};
