import type { NodeDef, NodeInputs } from '../engine/node.ts';
import { NodeInputError } from '../engine/node.ts';
import type { Services } from './services.ts';
import { SOCKET, type CharacterTokens, type ModelSet } from './types.ts';
import { imagesOf } from './lib/batch.ts';
import { tensorBytes } from './lib/tensors.ts';
import { CHARACTER_NAME_PATTERN, CharacterError, characterPath, charactersDir, encodeCharacter, newCharacter, writeCharacter } from './lib/saved_characters.ts';
import { existsSync } from 'node:fs';

function refuseExisting(services: Services, name: string, overwrite: boolean): void {
  let file: string;
  try {
    file = characterPath(charactersDir(services.paths.root), name);
  } catch (err) {
    throw new NodeInputError('name', (err as Error).message);
  }
  if (!overwrite && existsSync(file)) throw new NodeInputError('name', `a character named "${name}" exists already; choose another name or turn on overwrite`);
}

/** Keeps a character by name in <data>/characters, so later workflows use it without the vision encoders. */
export const SaveCharacter: NodeDef<Services> = {
  type: 'SaveCharacter',
  version: 1,
  category: 'character',
  displayName: 'Save Character',
  description: 'Saves the character under a name in <data>/characters (one small safetensors file): its tokens, the reference\'s DINOv2 and SigLIP '
    + 'embeddings (for Identity Score), a thumbnail and the model set. Without a character input, the reference is encoded here.',
  inputs: {
    models: { type: SOCKET.MODELS },
    reference: { type: SOCKET.IMAGE, description: 'The character\'s reference picture (Load Character)' },
    character: { type: SOCKET.CHARACTER, optional: true, description: 'Adapter Fuse\'s output for this picture (encoded here when left out)' },
  },
  params: {
    name: { type: 'string', default: 'character', pattern: CHARACTER_NAME_PATTERN, maxLength: 64, description: 'Name to save it under (letters, digits, . _ -)' },
    overwrite: { type: 'boolean', default: false, description: 'Replace a saved character of the same name' },
  },
  outputs: { character: { type: SOCKET.CHARACTER, description: 'The same character, carrying its reference embeddings' } },
  output: true,
  cacheable: false,
  sizeOf: tensorBytes,
  summary: (outputs) => (outputs.saved ? { saved: outputs.saved } : undefined),
  preflight(consts: NodeInputs, services: Services) {
    refuseExisting(services, consts.name as string, consts.overwrite === true);
  },
  async run(ctx, inputs) {
    const models = inputs.models as ModelSet;
    const name = inputs.name as string;
    const refs = imagesOf(inputs.reference, 'reference');
    if (refs.length !== 1) throw new NodeInputError('reference', `is a batch of ${refs.length} images; give one reference picture`);
    const given = inputs.character as CharacterTokens | undefined;
    if (given !== undefined && !given?.resamplerInput) throw new NodeInputError('character', 'is not a character (connect Adapter Fuse)');
    refuseExisting(ctx.services, name, inputs.overwrite === true);
    const { tokens, reference } = await encodeCharacter(ctx, models, refs[0]!, given);
    try {
      writeCharacter(charactersDir(ctx.services.paths.root), newCharacter(name, models, tokens, reference, refs[0]!), { force: inputs.overwrite === true });
    } catch (err) {
      throw err instanceof CharacterError ? new NodeInputError(err.kind === 'mismatch' ? 'character' : 'name', err.message) : err;
    }
    ctx.log.info(`saved character "${name}" (model set ${models.name})`);
    const character: CharacterTokens = { resamplerInput: tokens, reference };
    return { character, saved: name };
  },
};
