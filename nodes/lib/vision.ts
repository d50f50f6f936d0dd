// The reference image seen by one vision encoder as the official pipeline does: a low-res 384 view
// and the four 384 crops of a 768 view, run as one batch of five. The low-res view also gives
// the shallow features (three hidden layers, concatenated along the sequence).
import type { NodeContext } from '../../engine/node.ts';
import type { Services } from '../services.ts';
import type { ModelSet } from '../../models/modelset.ts';
import { type RgbImage, pixelValues, quadrantCrops, resizeImage } from './image.ts';
import { concatTokens, sliceBatch } from './tensors.ts';
import type { VisionFeatures } from '../types.ts';

export async function encodeReference(
  ctx: NodeContext<Services>, models: ModelSet, image: RgbImage, encoder: 'siglip' | 'dinov2',
): Promise<VisionFeatures> {
  const settings = models.manifest[encoder];
  const size = settings.imageSize;
  const low = resizeImage(image, size, size);
  const crops = quadrantCrops(resizeImage(image, size * 2, size * 2));
  const pixels = pixelValues([low, ...crops], settings.mean, settings.std); // [5, 3, 384, 384]
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
