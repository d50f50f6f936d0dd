import type { NodeDef } from '../engine/node.ts';
import { NodeInputError } from '../engine/node.ts';
import type { Services } from './services.ts';
import { SOCKET, type CharacterSet, MAX_CHARACTERS } from './types.ts';
import { characterSetBytes, characterSetOf } from './lib/characters.ts';

/** Joins two character sets into one; chain it for more (like ComfyUI's Conditioning Combine). */
export const CombineCharacters: NodeDef<Services> = {
  type: 'CombineCharacters',
  version: 1,
  category: 'character',
  displayName: 'Combine Characters',
  description: `Puts the characters of two sets into one picture (a first, then b). Chainable, up to ${MAX_CHARACTERS} characters. `
    + 'Where regions overlap, the characters\' contributions add up.',
  inputs: {
    a: { type: SOCKET.CHARACTERS },
    b: { type: SOCKET.CHARACTERS },
  },
  params: {},
  outputs: { characters: { type: SOCKET.CHARACTERS } },
  sizeOf: characterSetBytes,
  async run(_ctx, inputs) {
    const a = characterSetOf(inputs.a, 'a');
    const b = characterSetOf(inputs.b, 'b');
    const n = a.characters.length + b.characters.length;
    if (n > MAX_CHARACTERS) {
      throw new NodeInputError('b', `the combined set would hold ${n} characters (${a.characters.length} + ${b.characters.length}); at most ${MAX_CHARACTERS} fit in one picture`);
    }
    const set: CharacterSet = { characters: [...a.characters, ...b.characters] };
    return { characters: set };
  },
};
