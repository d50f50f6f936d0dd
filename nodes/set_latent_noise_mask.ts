import type { NodeDef } from '../engine/node.ts';
import { NodeInputError } from '../engine/node.ts';
import type { Services } from './services.ts';
import { SOCKET, type Latent, type Mask } from './types.ts';
import { tensorBytes } from './lib/tensors.ts';

/**
 * ComfyUI's SetLatentNoiseMask by its own name and sockets (samples, mask): the latent carries the mask, and a
 * DiT Sample with this latent as its init repaints only the mask's white part.
 */
export const SetLatentNoiseMask: NodeDef<Services> = {
  type: 'SetLatentNoiseMask',
  version: 1,
  category: 'latent',
  displayName: 'Set Latent Noise Mask',
  description: 'Attaches a mask to a latent (as ComfyUI\'s node of the same name): the sampler, given this latent as its init, repaints only the white part.',
  inputs: {
    samples: { type: SOCKET.LATENT },
    mask: { type: SOCKET.MASK },
  },
  params: {},
  outputs: { latent: { type: SOCKET.LATENT } },
  sizeOf: tensorBytes,
  async run(_ctx, inputs) {
    const samples = inputs.samples as Latent;
    const mask = inputs.mask as Mask;
    if (!samples?.samples) throw new NodeInputError('samples', 'is not a latent (connect VAE Encode)');
    if (!(mask?.data instanceof Float32Array)) throw new NodeInputError('mask', 'is not a mask');
    return { latent: { ...samples, noiseMask: mask } satisfies Latent };
  },
};
