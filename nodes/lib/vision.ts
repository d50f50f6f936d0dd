// The reference image seen by one vision encoder as the official pipeline does: a low-res 384 view
// and the four 384 crops of a 768 view, run as one batch of five. The low-res view also gives
// the shallow features (three hidden layers, concatenated along the sequence).
import type { NodeContext, NodeDef } from '../../engine/node.ts';
import type { Services } from '../services.ts';
import type { ModelSet } from '../../models/modelset.ts';
import { type RgbImage, pixelValues, quadrantCrops, resizeImage } from './image.ts';
import { concatTokens, sliceBatch, tensorBytes } from './tensors.ts';
import { SOCKET, type VisionFeatures } from '../types.ts';

/**
 * The low-res view and the four high-res crops of a reference. SigLIP and DINOv2 receive the same
 * image object, so the views are made once and shared (they are the main-thread cost of encoding).
 */
const viewCache = new WeakMap<RgbImage, Map<number, RgbImage[]>>();

export function referenceViews(image: RgbImage, size: number): RgbImage[] {
  let bySize = viewCache.get(image);
  if (!bySize) viewCache.set(image, (bySize = new Map()));
  let views = bySize.get(size);
  if (!views) {
    views = [resizeImage(image, size, size), ...quadrantCrops(resizeImage(image, size * 2, size * 2))];
    bySize.set(size, views);
  }
  return views;
}

/** A vision-encoder node: one declaration, differing only in the encoder it runs. */
export function visionEncoderNode(type: string, displayName: string, encoder: 'siglip' | 'dinov2', description: string): NodeDef<Services> {
  return {
    type,
    version: 1,
    category: 'character',
    displayName,
    description,
    inputs: {
      models: { type: SOCKET.MODELS },
      image: { type: SOCKET.IMAGE },
    },
    params: {},
    outputs: { features: { type: SOCKET.VISION_FEATURES } },
    sizeOf: tensorBytes,
    async run(ctx, inputs) {
      return { features: await encodeReference(ctx, inputs.models as ModelSet, inputs.image as RgbImage, encoder) };
    },
  };
}

export async function encodeReference(
  ctx: NodeContext<Services>, models: ModelSet, image: RgbImage, encoder: 'siglip' | 'dinov2',
): Promise<VisionFeatures> {
  const settings = models.manifest[encoder];
  const size = settings.imageSize;
  const pixels = pixelValues(referenceViews(image, size), settings.mean, settings.std); // [5, 3, 384, 384]
  const shallowNames = settings.shallowLayers.map((i) => `hidden_states.${i}`);
  ctx.progress(0, 1);
  const out = await ctx.services.pool.run(models.path(encoder), { pixel_values: pixels }, {
    outputs: ['last_hidden_state', ...shallowNames],
    signal: ctx.signal,
  });
  ctx.progress(1, 1);
  const skip = settings.clsToken ? 1 : 0;
  const deep = out.last_hidden_state!; // [5, N(+1), C]
  return {
    encoder,
    lowResDeep: sliceBatch(deep, 0, 1, skip), // [1, N, C]
    lowResShallow: concatTokens(shallowNames.map((n) => sliceBatch(out[n]!, 0, 1, skip))), // [1, 3N, C]
    highResDeep: concatTokens([1, 2, 3, 4].map((b) => sliceBatch(deep, b, b + 1, skip))), // [1, 4N, C]
  };
}
