import type { NodeDef } from '../engine/node.ts';
import { NodeInputError } from '../engine/node.ts';
import type { Services } from './services.ts';
import { tensorBytes } from './lib/tensors.ts';
import { SOCKET, type Mask } from './types.ts';
import { invertMask } from './lib/mask.ts';

/** 1 - mask: repaint what was kept and keep what was repainted. */
export const InvertMask: NodeDef<Services> = {
  type: 'InvertMask',
  version: 1,
  category: 'mask',
  displayName: 'Invert Mask',
  description: 'Inverts a mask (1 - value): what was repainted is kept, and what was kept is repainted.',
  inputs: { mask: { type: SOCKET.MASK } },
  params: {},
  outputs: { mask: { type: SOCKET.MASK } },
  sizeOf: tensorBytes,
  async run(_ctx, inputs) {
    const mask = inputs.mask as Mask;
    if (!(mask?.data instanceof Float32Array)) throw new NodeInputError('mask', 'is not a mask');
    return { mask: invertMask(mask) };
  },
};
