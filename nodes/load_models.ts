import type { NodeDef } from '../engine/node.ts';
import { NodeInputError } from '../engine/node.ts';
import type { Services } from './services.ts';
import { chooseAccuracyLevel } from '../models/quant/accuracy.ts';
import { SOCKET, type ModelSet } from './types.ts';

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
    const models = open(ctx.services, inputs.set as string);
    reportAccuracy(ctx.log, ctx.nodeId, models);
    return { models };
  },
};

function open(services: Services, name: string) {
  try {
    return services.modelSet(name);
  } catch (err) {
    throw new NodeInputError('set', (err as Error).message);
  }
}

/**
 * Says which MatMulNBits accuracy_level a quantized set runs with and why, and warns where this CPU would
 * have chosen the other one (a set converted on another machine): models/quant/accuracy.ts.
 */
function reportAccuracy(log: { info(m: string): void; warn(m: string): void }, nodeId: string, models: ModelSet): void {
  const levels = new Set(Object.values(models.manifest.files).flatMap((e) => (e.accuracyLevel === undefined ? [] : [e.accuracyLevel])));
  if (!levels.size) return;
  const here = chooseAccuracyLevel();
  const written = [...levels].join(', ');
  if (levels.size === 1 && levels.has(here.level)) {
    log.info(`LoadModels ${nodeId}: set "${models.name}" runs MatMulNBits at accuracy_level ${written}: ${here.why}`);
  } else {
    log.warn(`LoadModels ${nodeId}: set "${models.name}" was written with MatMulNBits accuracy_level ${written}, but this CPU would use ${here.level} (${here.why}); `
      + 'rewrite it here (`charflow models convert`, or `charflow models tiny --force --weights ...`) for the faster form');
  }
}
