import type { NodeDef } from '../engine/node.ts';
import { NodeInputError } from '../engine/node.ts';
import type { Services } from './services.ts';
import { SOCKET, type Latent, type ModelSet, type RgbImage } from './types.ts';
import { tensorBytes } from './lib/tensors.ts';
import { imagesOf } from './lib/batch.ts';
import { seededNormal } from '../models/sampling.ts';
import { type Tensor, f32 } from '../models/tensor.ts';

/** 8-bit RGB -> [1, 3, H, W] in [-1, 1], as diffusers' VaeImageProcessor does: 2 * (p / 255) - 1 in float32. */
export function vaeInput(img: RgbImage): Tensor {
  const plane = img.width * img.height;
  const out = new Float32Array(3 * plane);
  for (let c = 0; c < 3; c++) {
    for (let i = 0; i < plane; i++) out[c * plane + i] = Math.fround(2 * Math.fround(img.data[i * 3 + c]! / 255) - 1);
  }
  return f32([1, 3, img.height, img.width], out);
}

/**
 * The VAE encoder: a picture into the latent the sampler starts image-to-image from. By default the
 * latent distribution's mean (deterministic, as ComfyUI does); with `sample`, mean + std * eps with eps
 * drawn from `seed` (as diffusers' img2img pipelines do, with their own generator).
 */
export const VAEEncode: NodeDef<Services> = {
  type: 'VAEEncode',
  version: 1,
  category: 'latent',
  displayName: 'VAE Encode',
  description: 'Encodes an image into FLUX latents with the VAE encoder, for image-to-image (connect the latent to the sampler\'s init).',
  inputs: {
    models: { type: SOCKET.MODELS },
    image: { type: SOCKET.IMAGE },
  },
  params: {
    sample: { type: 'boolean', default: false, description: 'Draw a sample of the latent distribution instead of taking its mean' },
    seed: { type: 'integer', format: 'seed', default: 0, minimum: 0, maximum: Number.MAX_SAFE_INTEGER, description: 'Seed of the sample (with sample on)' },
  },
  outputs: { latent: { type: SOCKET.LATENT } },
  sizeOf: tensorBytes,
  async run(ctx, inputs) {
    const models = inputs.models as ModelSet;
    const [image, ...more] = imagesOf(inputs.image);
    if (more.length) throw new NodeInputError('image', `is a batch of ${more.length + 1} images; encode one picture`);
    const down = models.manifest.vae.downscale;
    if (image!.width % down !== 0 || image!.height % down !== 0) {
      throw new NodeInputError('image', `is ${image!.width}x${image!.height}; the VAE needs both sides to be multiples of ${down} (Load Image resizes to any multiple of 16)`);
    }
    const h = image!.height / down;
    const w = image!.width / down;
    const c = models.manifest.vae.latentChannels;
    const n = c * h * w;
    // The second n draws of the seed's stream: DiT Sample's noise for the same seed is the first n, and the
    // draw and the noise must not be the same numbers.
    const eps = inputs.sample ? seededNormal(inputs.seed as number, 2 * n).slice(n) : new Float32Array(n);
    const out = await ctx.services.pool.run(models.path('vae_encoder'), {
      image: vaeInput(image!),
      eps: f32([1, c, h, w], eps),
    }, { outputs: ['latents'], signal: ctx.signal });
    return { latent: { samples: out.latents! } satisfies Latent };
  },
};
