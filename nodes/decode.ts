import type { NodeDef } from '../engine/node.ts';
import type { Services } from './services.ts';
import { SOCKET, type Latent, type ModelSet } from './types.ts';
import { imageFromTensor } from './lib/image.ts';

export const Decode: NodeDef<Services> = {
  type: 'Decode',
  version: 1,
  category: 'latent',
  displayName: 'VAE Decode',
  description: 'Decodes latents into an image with the FLUX VAE.',
  inputs: {
    models: { type: SOCKET.MODELS },
    latent: { type: SOCKET.LATENT },
  },
  params: {},
  outputs: { image: { type: SOCKET.IMAGE } },
  sizeOf: (v) => (v as { data: Uint8Array }).data?.byteLength ?? 0,
  async run(ctx, inputs) {
    const models = inputs.models as ModelSet;
    const latent = inputs.latent as Latent;
    const out = await ctx.services.pool.run(models.path('vae'), { latents: latent.samples }, { signal: ctx.signal });
    return { image: imageFromTensor(out.image!) };
  },
};
