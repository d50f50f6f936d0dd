import type { NodeContext, NodeDef } from '../engine/node.ts';
import { NodeInputError } from '../engine/node.ts';
import type { Services } from './services.ts';
import { SOCKET, type CharacterTokens, type ModelSet, type VisionFeatures } from './types.ts';
import { concatChannels, tensorBytes } from './lib/tensors.ts';

/** The adapter's static part: once per reference image, independent of the denoising step. */
export const AdapterFuse: NodeDef<Services> = {
  type: 'AdapterFuse',
  version: 1,
  category: 'character',
  displayName: 'Adapter Fuse',
  description: 'Fuses SigLIP and DINOv2 features across layers and scales into character tokens (the adapter part that does not depend on the step).',
  inputs: {
    models: { type: SOCKET.MODELS },
    siglip: { type: SOCKET.VISION_FEATURES },
    dinov2: { type: SOCKET.VISION_FEATURES },
  },
  params: {},
  outputs: { character: { type: SOCKET.CHARACTER } },
  sizeOf: tensorBytes,
  async run(ctx, inputs) {
    return { character: await fuseFeatures(ctx, inputs.models as ModelSet, inputs.siglip as VisionFeatures, inputs.dinov2 as VisionFeatures) };
  },
};

/** Character tokens from both encoders' features (Adapter Fuse, and Save Character given only a picture). */
export async function fuseFeatures(ctx: NodeContext<Services>, models: ModelSet, siglip: VisionFeatures, dinov2: VisionFeatures): Promise<CharacterTokens> {
  if (siglip.encoder !== 'siglip') throw new NodeInputError('siglip', `expects SigLIP features, got ${siglip.encoder}`);
  if (dinov2.encoder !== 'dinov2') throw new NodeInputError('dinov2', `expects DINOv2 features, got ${dinov2.encoder}`);
  // SigLIP || DINOv2 along channels, for each of the three feature kinds.
  const feeds = {
    low_res_deep: concatChannels(siglip.lowResDeep, dinov2.lowResDeep),
    low_res_shallow: concatChannels(siglip.lowResShallow, dinov2.lowResShallow),
    high_res_deep: concatChannels(siglip.highResDeep, dinov2.highResDeep),
  };
  const inner = models.manifest.adapter.innerDim;
  if (feeds.low_res_deep.dims[2] !== inner) {
    throw new NodeInputError('siglip', `features have ${feeds.low_res_deep.dims[2]} channels together, the adapter of model set "${models.name}" expects ${inner}: were they encoded with another model set?`);
  }
  const out = await ctx.services.pool.run(models.path('adapter_static'), feeds, { signal: ctx.signal });
  return { resamplerInput: out.resampler_input! };
}
