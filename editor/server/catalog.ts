// The node catalogue the editor draws its palette and widgets from, built from the registry.
import { PARAM_SOCKET, type NodeDef } from '../../engine/node.ts';
import type { CatalogNode } from '../protocol.ts';

export function catalogNode<S>(def: NodeDef<S>): CatalogNode {
  const inputs: CatalogNode['inputs'] = {};
  for (const [name, d] of Object.entries(def.inputs)) {
    inputs[name] = { type: d.type, optional: d.optional === true, ...(d.description ? { description: d.description } : {}) };
  }
  const params: CatalogNode['params'] = {};
  for (const [name, p] of Object.entries(def.params)) {
    // The schema as declared (JSON Schema subset), plus the socket type a link to it must have.
    params[name] = { ...(structuredClone(p) as unknown as Record<string, unknown>), type: p.type, socket: PARAM_SOCKET[p.type] };
  }
  const outputs: CatalogNode['outputs'] = {};
  for (const [name, o] of Object.entries(def.outputs)) {
    outputs[name] = { type: o.type, ...(o.description ? { description: o.description } : {}) };
  }
  return {
    type: def.type,
    displayName: def.displayName ?? def.type,
    category: def.category,
    description: def.description,
    output: def.output === true,
    inputs,
    params,
    outputs,
  };
}

/** Every registered node type, in registry order (the pipeline's order). */
export function buildCatalog<S>(registry: ReadonlyMap<string, NodeDef<S>>): CatalogNode[] {
  return [...registry.values()].map(catalogNode);
}
