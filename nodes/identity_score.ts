import type { NodeDef } from '../engine/node.ts';
import { NodeInputError } from '../engine/node.ts';
import type { Services } from './services.ts';
import { SOCKET, type BatchImage, type CharacterTokens, type IdentityScores, type ModelSet } from './types.ts';
import { imageBytes, imageValue, imagesOf } from './lib/batch.ts';
import { characterSetOf } from './lib/characters.ts';
import { identityScores } from './lib/identity.ts';

/** The scores of a node's output images, as the run's events and --json show them. */
export function scoreSummary(value: unknown): { scores: IdentityScores[] } | undefined {
  const list = (Array.isArray(value) ? value : [value]) as (BatchImage | undefined)[];
  if (!list.every((img) => img?.identity)) return undefined;
  return { scores: list.map((img) => img!.identity!) };
}

/** How faithful each picture is to the reference: DINO-I and SigLIP-I, per image of a batch. */
export const IdentityScore: NodeDef<Services> = {
  type: 'IdentityScore',
  version: 1,
  category: 'image',
  displayName: 'Identity Score',
  description: 'Scores how well each picture keeps the character: DINO-I (cosine of DINOv2 CLS embeddings) and SigLIP-I (cosine of SigLIP pooled '
    + 'embeddings), per image of a batch. With a character set, each character is scored on its own region (rectangle, or the mask\'s bounding box) '
    + 'against its reference, and the image gets the mean. The images go on with their scores (Keep Best, Save Image).',
  inputs: {
    models: { type: SOCKET.MODELS },
    images: { type: SOCKET.IMAGE, description: 'One picture or a batch' },
    reference: { type: SOCKET.IMAGE, optional: true, description: 'The character\'s reference picture (not needed with a set whose characters carry theirs)' },
    characters: { type: SOCKET.CHARACTERS, optional: true, description: 'Score each character of the set on its region' },
    character: { type: SOCKET.CHARACTER, optional: true, description: 'A saved character: its reference embeddings stand in for the reference picture' },
  },
  params: {},
  outputs: { images: { type: SOCKET.IMAGE, description: 'The same images, each carrying its scores' } },
  sizeOf: imageBytes,
  summary: (outputs) => scoreSummary(outputs.images),
  async run(ctx, inputs) {
    const images = imagesOf(inputs.images, 'images');
    const refs = inputs.reference === undefined ? undefined : imagesOf(inputs.reference, 'reference');
    if (refs && refs.length !== 1) throw new NodeInputError('reference', `is a batch of ${refs.length} images; give one reference picture`);
    const set = inputs.characters === undefined ? undefined : characterSetOf(inputs.characters, 'characters');
    const saved = (inputs.character as CharacterTokens | undefined)?.reference;
    if (inputs.character !== undefined && !saved) throw new NodeInputError('character', 'carries no reference embeddings: connect a Saved Character (or the reference picture instead)');
    const scores = await identityScores(ctx, inputs.models as ModelSet, images, refs?.[0] ?? saved, set);
    return { images: imageValue(images.map((img, i): BatchImage => ({ ...img, identity: scores[i]! }))) };
  },
};
