import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { NodeDef, NodeInputs } from '../engine/node.ts';
import { NodeInputError } from '../engine/node.ts';
import type { Services } from './services.ts';
import { SOCKET, type CharacterTokens, type ModelSet } from './types.ts';
import { tensorBytes } from './lib/tensors.ts';
import {
  CHARACTER_NAME_PATTERN, CharacterError, characterPath, charactersDir, checkCharacterForSet, loadCharacter, readCharacter, type SavedCharacter as Saved,
} from './lib/saved_characters.ts';

/** Where a worker keeps a character file fetched by content hash (engine/queue: the value becomes this path). */
const BY_HASH_RE = /^by-hash\/[0-9a-f]{64}\.safetensors$/;

/** The file a `name` value means: a saved character, or on a worker its copy fetched by hash into the inputs folder. */
export function savedCharacterFile(services: Services, name: string): string {
  if (BY_HASH_RE.test(name)) return join(services.paths.inputs, name);
  return characterPath(charactersDir(services.paths.root), name);
}

function read(services: Services, name: string): Saved {
  try {
    if (BY_HASH_RE.test(name)) return readCharacter(savedCharacterFile(services, name), `character file ${name}`);
    return loadCharacter(charactersDir(services.paths.root), name);
  } catch (err) {
    throw err instanceof CharacterError ? new NodeInputError('name', err.message) : err;
  }
}

function check(c: Saved, models: ModelSet): void {
  try {
    checkCharacterForSet(c, models);
  } catch (err) {
    throw err instanceof CharacterError ? new NodeInputError('name', err.message) : err;
  }
}

/** A character saved by Save Character or `charflow characters add`: its tokens without running either vision encoder. */
export const SavedCharacter: NodeDef<Services> = {
  type: 'SavedCharacter',
  version: 1,
  category: 'character',
  displayName: 'Saved Character',
  description: 'A character saved by name (Save Character, or charflow characters add): the character tokens and the reference\'s embeddings, '
    + 'read from <data>/characters without loading SigLIP or DINOv2. The model set must be the one it was saved with.',
  inputs: { models: { type: SOCKET.MODELS } },
  params: {
    name: { type: 'string', format: 'character', default: 'character', pattern: CHARACTER_NAME_PATTERN, maxLength: 64, description: 'Name of a saved character (charflow characters list)' },
  },
  outputs: { character: { type: SOCKET.CHARACTER, description: 'Character tokens, as Adapter Fuse makes them' } },
  async cacheKey(inputs, services) {
    try {
      return createHash('sha256').update(await readFile(savedCharacterFile(services, inputs.name as string))).digest('hex');
    } catch (err) {
      if (err instanceof CharacterError) throw new NodeInputError('name', err.message);
      throw new NodeInputError('name', `no saved character named "${inputs.name}" in ${charactersDir(services.paths.root)}`);
    }
  },
  sizeOf: tensorBytes,
  /** The character's model set against the workflow's, before any model loads. */
  preflight(consts: NodeInputs, services: Services, upstream: (input: string) => NodeInputs | undefined) {
    const c = read(services, consts.name as string);
    const set = upstream('models')?.set;
    if (typeof set !== 'string') return; // not a Load Models node: checked when it runs
    let models: ModelSet;
    try {
      models = services.modelSet(set);
    } catch {
      return; // Load Models reports a missing set itself
    }
    check(c, models);
  },
  async run(ctx, inputs) {
    const c = read(ctx.services, inputs.name as string);
    check(c, inputs.models as ModelSet);
    const character: CharacterTokens = { resamplerInput: c.tokens, reference: c.reference };
    return { character };
  },
};
