// Every node type charflow offers. A new node is one file in nodes/ and one line here.
import type { NodeDef } from '../engine/node.ts';
import type { Services } from './services.ts';

export const NODE_TYPES: readonly NodeDef<Services>[] = [
];

export function nodeRegistry(): Map<string, NodeDef<Services>> {
  return new Map(NODE_TYPES.map((d) => [d.type, d]));
}
