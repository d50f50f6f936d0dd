import type { NodeDef } from '../engine/node.ts';
import type { Services } from './services.ts';
import { SOCKET, type ModelSet } from './types.ts';
import { tensorBytes } from './lib/tensors.ts';
import { encodeClip, encodeT5 } from '../models/tokenizers.ts';
import { i64 } from '../models/tensor.ts';

export const TextEncode: NodeDef<Services> = {
  type: 'TextEncode',
  version: 1,
  category: 'conditioning',
  displayName: 'Text Encode',
  description: 'Encodes the prompt with T5-XXL (sequence features) and CLIP-L (pooled vector), as FLUX expects.',
  inputs: { models: { type: SOCKET.MODELS } },
  params: {
    prompt: { type: 'string', format: 'prompt', default: 'a character standing in a sunny meadow', maxLength: 4000, description: 'What to draw' },
  },
  outputs: { conditioning: { type: SOCKET.CONDITIONING } },
  sizeOf: tensorBytes,
  async run(ctx, inputs) {
    const models = inputs.models as ModelSet;
    const prompt = inputs.prompt as string;
    const { t5, clip } = models.manifest;
    const t5Ids = encodeT5(models.tokenizer('t5'), prompt, t5.seqLen);
    const clipIds = encodeClip(models.tokenizer('clip'), prompt, clip.seqLen, { bos: clip.bosId, eos: clip.eosId, pad: clip.padId });
    const [t5Out, clipOut] = await Promise.all([
      ctx.services.pool.run(models.path('t5'), { input_ids: i64([1, t5Ids.length], t5Ids) }, { signal: ctx.signal }),
      ctx.services.pool.run(models.path('clip'), { input_ids: i64([1, clipIds.length], clipIds) }, { outputs: ['pooler_output'], signal: ctx.signal }),
    ]);
    return { conditioning: { promptEmbeds: t5Out.last_hidden_state!, pooled: clipOut.pooler_output! } };
  },
};
