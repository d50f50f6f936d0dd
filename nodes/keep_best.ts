import type { NodeDef } from '../engine/node.ts';
import { NodeInputError } from '../engine/node.ts';
import type { Services } from './services.ts';
import { SOCKET, type BatchImage } from './types.ts';
import { imageBytes, imageValue, imagesOf } from './lib/batch.ts';
import { scoreSummary } from './identity_score.ts';

type By = 'dino_i' | 'siglip_i' | 'mean';

function scoreOf(img: BatchImage, by: By, index: number): number {
  const s = img.identity;
  if (!s) throw new NodeInputError('images', `image ${index + 1} has no identity scores: connect Identity Score before Keep Best`);
  if (by === 'dino_i') return s.dino_i;
  if (s.siglip_i === undefined) throw new NodeInputError('by', `image ${index + 1} has no SigLIP-I (the model set's SigLIP has no pooling head); keep by dino_i`);
  return by === 'siglip_i' ? s.siglip_i : (s.dino_i + s.siglip_i) / 2;
}

/** The indices of the k best scores, best first; equal scores keep their batch order. */
export function bestIndices(scores: readonly number[], k: number): number[] {
  return scores.map((s, i) => ({ s, i })).sort((a, b) => b.s - a.s || a.i - b.i).slice(0, k).map((e) => e.i);
}

/** Keeps the k most faithful pictures of a batch (by Identity Score's scores), best first. */
export const KeepBest: NodeDef<Services> = {
  type: 'KeepBest',
  version: 1,
  category: 'image',
  displayName: 'Keep Best',
  description: 'Keeps the k images of a batch with the highest identity score (from Identity Score), best first. Equal scores keep their batch order.',
  inputs: { images: { type: SOCKET.IMAGE, description: 'Scored images (Identity Score)' } },
  params: {
    k: { type: 'integer', default: 2, minimum: 1, maximum: 64, description: 'How many to keep (all, if the batch is smaller)' },
    by: { type: 'string', enum: ['dino_i', 'siglip_i', 'mean'], default: 'dino_i', description: 'The score to rank by (mean: of DINO-I and SigLIP-I)' },
  },
  outputs: { images: { type: SOCKET.IMAGE } },
  sizeOf: imageBytes,
  summary: (outputs) => scoreSummary(outputs.images),
  async run(_ctx, inputs) {
    const images = imagesOf(inputs.images, 'images');
    const scores = images.map((img, i) => scoreOf(img, inputs.by as By, i));
    return { images: imageValue(bestIndices(scores, inputs.k as number).map((i) => images[i]!)) };
  },
};
