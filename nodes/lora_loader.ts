import { join } from 'node:path';
import type { NodeDef, NodeInputs, ParamSchema } from '../engine/node.ts';
import { NodeInputError } from '../engine/node.ts';
import type { Services } from './services.ts';
import { SOCKET, type ModelSet } from './types.ts';
import { type LoraEntry, fileStamp, resolveLora, stackDigest, withLora } from './lib/lora.ts';

const strength = (what: string): ParamSchema => ({
  type: 'number', default: 1, minimum: -100, maximum: 100, multipleOf: 0.01,
  description: `How strongly the LoRA changes the ${what} (0: not at all, 1: as trained, negative: the opposite)`,
});

const loraName: ParamSchema = {
  type: 'string', format: 'lora', default: '', maxLength: 512,
  description: 'A LoRA file in the data folder\'s loras folder (kohya, diffusers/PEFT, BFL or XLabs FLUX LoRAs)',
};

function entryOf(inputs: NodeInputs, services: Services, clip: boolean): LoraEntry {
  const name = inputs.lora_name as string;
  let path: string;
  try {
    path = resolveLora(services.paths, name);
  } catch (err) {
    throw new NodeInputError('lora_name', (err as Error).message);
  }
  const model = inputs.strength_model as number;
  return { name, path, stamp: fileStamp(path), strength: { flux: model, clip: clip ? inputs.strength_clip as number : 0, t5: clip ? inputs.strength_clip as number : 0 } };
}

function makeNode(type: string, displayName: string, clip: boolean): NodeDef<Services> {
  return {
    type,
    version: 1,
    category: 'loaders',
    displayName,
    description: clip
      ? 'Applies a style LoRA to the models downstream: the FLUX transformer (strength_model) and the text encoders, CLIP-L and T5 where the file has T5 keys (strength_clip). Chain several to stack them; strengths and files change per run without reloading the models.'
      : 'Applies a style LoRA to the FLUX transformer only. Chain several to stack them; strengths and files change per run without reloading the models.',
    inputs: { models: { type: SOCKET.MODELS } },
    params: clip ? { lora_name: loraName, strength_model: strength('transformer'), strength_clip: strength('text encoders (CLIP-L, and T5 where the file has T5 keys)') } : { lora_name: loraName, strength_model: strength('transformer') },
    outputs: { models: { type: SOCKET.MODELS } },
    async cacheKey(inputs, services) {
      const e = entryOf(inputs, services, clip);
      return JSON.stringify([e.path, e.stamp, e.strength]);
    },
    async run(ctx, inputs) {
      const models = inputs.models as ModelSet;
      const entry = entryOf(inputs, ctx.services, clip);
      try {
        const out = withLora(models, entry, join(ctx.services.paths.root, 'cache', 'lora-graphs'), (m) => ctx.log.warn(m));
        const applied = Object.entries(out.lora.components).map(([c, s]) => `${c}: ${s.applied} layers`).join(', ');
        ctx.log.info(`LoRA ${entry.name} (${applied || 'no layer at these strengths'}); stack ${stackDigest(out.lora.base, out.lora.stack)}`);
        return { models: out };
      } catch (err) {
        throw new NodeInputError('lora_name', (err as Error).message);
      }
    },
  };
}

/** ComfyUI's LoraLoader: models in, models out; the transformer and CLIP-L each with their own strength. */
export const LoraLoader = makeNode('LoraLoader', 'Load LoRA', true);
/** ComfyUI's LoraLoaderModelOnly: the transformer only. */
export const LoraLoaderModelOnly = makeNode('LoraLoaderModelOnly', 'Load LoRA (model only)', false);
