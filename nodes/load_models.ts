import type { NodeDef } from '../engine/node.ts';
import { NodeInputError } from '../engine/node.ts';
import type { Services } from './services.ts';
import { SOCKET } from './types.ts';

/** Picks a model set (a folder of ONNX graphs with a manifest) for the model nodes downstream. */
export const LoadModels: NodeDef<Services> = {
  type: 'LoadModels',
  version: 1,
  category: 'loaders',
  displayName: 'Load Models',
  description: 'Selects a model set from the models folder: "tiny" (generated test weights) or a set converted from official checkpoints.',
  inputs: {},
  params: {
    set: { type: 'string', format: 'modelset', default: 'tiny', pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$', description: 'Model set name (a folder in the models folder)' },
  },
  outputs: { models: { type: SOCKET.MODELS } },
  async cacheKey(inputs, services) {
    return open(services, inputs.set as string).digest;
  },
  async run(ctx, inputs) {
    return { models: open(ctx.services, inputs.set as string) };
  },
};

function open(services: Services, name: string) {
  try {
    return services.modelSet(name);
  } catch (err) {
    throw new NodeInputError('set', (err as Error).message);
  }
}
