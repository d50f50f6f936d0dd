import type { NodeDef } from '../engine/node.ts';
import type { Services } from './services.ts';
import { SOCKET, type BatchImage, type Latent, type ModelSet } from './types.ts';
import { imageFromTensor } from './lib/image.ts';
import { imageBytes, imageValue } from './lib/batch.ts';
import { f32, toFloat32 } from '../models/tensor.ts';

export const Decode: NodeDef<Services> = {
  type: 'Decode',
  version: 2,
  category: 'latent',
  displayName: 'VAE Decode',
  description: 'Decodes latents into an image with the FLUX VAE (a batch of latents into a batch of images).',
  inputs: {
    models: { type: SOCKET.MODELS },
    latent: { type: SOCKET.LATENT },
  },
  params: {},
  outputs: { image: { type: SOCKET.IMAGE } },
  sizeOf: imageBytes,
  async run(ctx, inputs) {
    const models = inputs.models as ModelSet;
    const latent = inputs.latent as Latent;
    // One graph call for the whole batch (the decoder's batch axis is dynamic).
    const out = await ctx.services.pool.run(models.path('vae'), { latents: latent.samples }, { signal: ctx.signal });
    const image = out.image!;
    const [b, ...rest] = image.dims as number[];
    const data = toFloat32(image);
    const per = data.length / b!;
    const images: BatchImage[] = [];
    for (let i = 0; i < b!; i++) {
      const item: BatchImage = imageFromTensor(f32([1, ...rest], data.subarray(i * per, (i + 1) * per)));
      const origin = latent.origins?.[i];
      if (origin) item.origin = origin;
      images.push(item);
    }
    return { image: imageValue(images) };
  },
};
