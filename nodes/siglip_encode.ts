import type { NodeDef } from '../engine/node.ts';
import type { Services } from './services.ts';
import { SOCKET, type ModelSet, type RgbImage } from './types.ts';
import { encodeReference } from './lib/vision.ts';
import { tensorBytes } from './lib/tensors.ts';

export const SigLIPEncode: NodeDef<Services> = {
  type: 'SigLIPEncode',
  version: 1,
  category: 'character',
  displayName: 'SigLIP Encode',
  description: 'SigLIP so400m features of the reference: low-res deep and shallow layers, and the four high-res crops.',
  inputs: {
    models: { type: SOCKET.MODELS },
    image: { type: SOCKET.IMAGE },
  },
  params: {},
  outputs: { features: { type: SOCKET.VISION_FEATURES } },
  sizeOf: tensorBytes,
  async run(ctx, inputs) {
    return { features: await encodeReference(ctx, inputs.models as ModelSet, inputs.image as RgbImage, 'siglip') };
  },
};
