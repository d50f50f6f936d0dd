import type { NodeDef } from '../engine/node.ts';
import type { Services } from './services.ts';
import { SOCKET, type ModelSet, type RgbImage } from './types.ts';
import { encodeReference } from './lib/vision.ts';
import { tensorBytes } from './lib/tensors.ts';

export const DINOv2Encode: NodeDef<Services> = {
  type: 'DINOv2Encode',
  version: 1,
  category: 'character',
  displayName: 'DINOv2 Encode',
  description: 'DINOv2 giant features of the reference (CLS dropped): low-res deep and shallow layers, and the four high-res crops.',
  inputs: {
    models: { type: SOCKET.MODELS },
    image: { type: SOCKET.IMAGE },
  },
  params: {},
  outputs: { features: { type: SOCKET.VISION_FEATURES } },
  sizeOf: tensorBytes,
  async run(ctx, inputs) {
    return { features: await encodeReference(ctx, inputs.models as ModelSet, inputs.image as RgbImage, 'dinov2') };
  },
};
