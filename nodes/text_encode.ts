import type { NodeDef } from '../engine/node.ts';
import type { Services } from './services.ts';
import { SOCKET, type ModelSet } from './types.ts';
import { tensorBytes } from './lib/tensors.ts';
import { loraRunOptions } from './lib/lora.ts';
import { encodeClip, encodeT5 } from '../models/tokenizers.ts';
import { i64 } from '../models/tensor.ts';

export const TextEncode: NodeDef<Services> = {
  type: 'TextEncode',
  version: 2,
  category: 'conditioning',
  displayName: 'Text Encode',
  description: 'Encodes the prompt with T5-XXL (sequence features) and CLIP-L (pooled vector), as FLUX expects; clip_prompt, when given, is what CLIP-L sees instead.',
  inputs: { models: { type: SOCKET.MODELS } },
  params: {
    prompt: { type: 'string', format: 'prompt', default: 'a character standing in a sunny meadow', maxLength: 4000, description: 'What to draw (T5-XXL, and CLIP-L unless clip_prompt is given)' },
    clip_prompt: {
      type: 'string', format: 'prompt', optional: true, maxLength: 4000,
      description: "Optional: replaces what CLIP-L sees (diffusers' prompt, with prompt as prompt_2; ComfyUI's clip_l field)",
    },
  },
  outputs: { conditioning: { type: SOCKET.CONDITIONING } },
  sizeOf: tensorBytes,
  async run(ctx, inputs) {
    const models = inputs.models as ModelSet;
    const prompt = inputs.prompt as string;
    const clipPrompt = (inputs.clip_prompt as string | undefined) ?? '';
    const { t5, clip } = models.manifest;
    const t5Ids = encodeT5(models.tokenizer('t5'), prompt, t5.seqLen);
    // An empty clip_prompt means "the same prompt" (whitespace only counts as empty too).
    const clipIds = encodeClip(models.tokenizer('clip'), clipPrompt.trim() ? clipPrompt : prompt, clip.seqLen, { bos: clip.bosId, eos: clip.eosId, pad: clip.padId });
    const [t5Out, clipOut] = await Promise.all([
      ctx.services.pool.run(models.path('t5'), { input_ids: i64([1, t5Ids.length], t5Ids) }, { signal: ctx.signal, ...loraRunOptions(models, 't5') }),
      ctx.services.pool.run(models.path('clip'), { input_ids: i64([1, clipIds.length], clipIds) }, { outputs: ['pooler_output'], signal: ctx.signal, ...loraRunOptions(models, 'clip') }),
    ]);
    return { conditioning: { promptEmbeds: t5Out.last_hidden_state!, pooled: clipOut.pooler_output! } };
  },
};
