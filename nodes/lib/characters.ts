// Character sets on CHARACTERS links.
import { NodeInputError } from '../../engine/node.ts';
import { type CharacterSet, MAX_CHARACTERS } from '../types.ts';
import { isCharacterSet } from './flux_feeds.ts';

/** The set on a CHARACTERS input, checked. */
export function characterSetOf(value: unknown, field: string): CharacterSet {
  if (!isCharacterSet(value)) throw new NodeInputError(field, 'is not a character set (connect Regional Character or Combine Characters)');
  if (value.characters.length === 0) throw new NodeInputError(field, 'the character set is empty');
  if (value.characters.length > MAX_CHARACTERS) {
    throw new NodeInputError(field, `has ${value.characters.length} characters; at most ${MAX_CHARACTERS} fit in one picture`);
  }
  return value;
}

/** Byte size of a CHARACTERS value, for the output cache budget. */
export function characterSetBytes(value: unknown): number {
  if (!isCharacterSet(value)) return 0;
  return value.characters.reduce((n, c) => n + (c.character.resamplerInput.data as { byteLength: number }).byteLength
    + (c.region.kind === 'mask' ? c.region.data.byteLength : 0) + (c.reference?.data.byteLength ?? 0), 0);
}
