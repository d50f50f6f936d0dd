// Builds a model set from the golden checkpoints (the official tiny weights and key names), the
// same way `charflow models convert` builds one from real checkpoints.
import { join } from 'node:path';
import { goldenConfig, goldenPath } from './goldens.ts';
import { SafetensorsFile } from '../../models/weights/safetensors.ts';
import { openWeights } from '../../models/weights/open.ts';
import { withPrefix } from '../../models/weights/source.ts';
import { siglipConfigFromJson } from '../../models/siglip.ts';
import { dinov2ConfigFromJson } from '../../models/dinov2.ts';
import { adapterConfigFromJson } from '../../models/adapter.ts';
import { fluxConfigFromJson } from '../../models/flux.ts';
import { vaeConfigFromJson } from '../../models/vae.ts';
import { t5ConfigFromJson } from '../../models/t5.ts';
import { clipConfigFromJson } from '../../models/clip.ts';
import { tinyTokenizerJson } from '../../models/tokenizers.ts';
import { type ModelSetSpec, writeModelSet } from '../../models/modelset.ts';

export interface GoldenSetOptions {
  /** T5 sequence length of the text graph (the e2e case used 12 tokens). */
  t5SeqLen: number;
  clipSeqLen: number;
}

export function goldenSpec(opts: GoldenSetOptions): ModelSetSpec {
  const st = (...p: string[]) => new SafetensorsFile(goldenPath(...p));
  const adapterBin = openWeights(goldenPath('ic_adapter', 'ip-adapter.bin'));
  const adapterCfg = goldenConfig('ic_adapter')['CrossLayerCrossScaleProjector'] as Record<string, unknown>;
  const clipCfg = goldenConfig('clip_text');
  const vocab = clipCfg['vocab_size'] as number;
  return {
    name: 'golden',
    dtype: 'float32',
    siglip: {
      cfg: siglipConfigFromJson(goldenConfig(join('instantcharacter_e2e', 'siglip'))),
      weights: st('instantcharacter_e2e', 'siglip', 'model.safetensors'),
      shallowLayers: [7, 13, 26],
    },
    dinov2: {
      cfg: dinov2ConfigFromJson(goldenConfig(join('instantcharacter_e2e', 'dinov2'))),
      weights: st('instantcharacter_e2e', 'dinov2', 'model.safetensors'),
      shallowLayers: [9, 19, 29],
    },
    adapter: { cfg: adapterConfigFromJson(adapterCfg), weights: withPrefix(adapterBin, 'image_proj.') },
    flux: {
      cfg: fluxConfigFromJson(goldenConfig('flux_transformer_ip')),
      weights: st('flux_transformer_ip', 'diffusion_pytorch_model.safetensors'),
      ip: withPrefix(adapterBin, 'ip_adapter.'),
    },
    vae: { cfg: vaeConfigFromJson(goldenConfig('vae_decoder')), weights: st('vae_decoder', 'diffusion_pytorch_model.safetensors') },
    t5: {
      cfg: t5ConfigFromJson(goldenConfig('t5_encoder')), weights: st('t5_encoder', 'model.safetensors'),
      seqLen: opts.t5SeqLen, tokenizer: JSON.stringify(tinyTokenizerJson('t5', goldenConfig('t5_encoder')['vocab_size'] as number)), padId: 0, eosId: 1,
    },
    clip: {
      cfg: clipConfigFromJson(clipCfg), weights: st('clip_text', 'model.safetensors'), seqLen: opts.clipSeqLen,
      tokenizer: JSON.stringify(tinyTokenizerJson('clip', vocab)), bosId: vocab - 2, eosId: vocab - 1, padId: vocab - 1,
    },
  };
}

export async function writeGoldenModelSet(modelsRoot: string, opts: GoldenSetOptions): Promise<void> {
  await writeModelSet(goldenSpec(opts), join(modelsRoot, 'golden'));
}
