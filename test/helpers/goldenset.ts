// Builds a model set from the golden checkpoints (the official tiny weights and key names), the
// same way `charflow models convert` builds one from real checkpoints.
import { join } from 'node:path';
import { goldenConfig, goldenPath, goldenTensors } from './goldens.ts';
import { e2eShallowLayers } from './e2e.ts';
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
import { tinyTokenizerJson, tokenizerFromJson } from '../../models/tokenizers.ts';
import { type AttentionSetting, type ModelSetSpec, writeModelSet } from '../../models/modelset.ts';

export interface GoldenSetOptions {
  /** T5 sequence length of the text graph (e2eSeqLens() gives the e2e case's). */
  t5SeqLen: number;
  clipSeqLen: number;
  /** How FLUX and the VAE write attention (default: what writeModelSet writes). */
  attention?: AttentionSetting;
}

/** The text lengths of the e2e case's prompt ids (its t5_input_ids and clip_input_ids). */
export function e2eSeqLens(): GoldenSetOptions {
  const inputs = goldenTensors('instantcharacter_e2e', 'inputs.safetensors');
  const len = (k: string) => {
    const t = inputs.get(k);
    if (!t) throw new Error(`golden tensor instantcharacter_e2e ${k} missing`);
    return t.dims[1]!;
  };
  return { t5SeqLen: len('t5_input_ids'), clipSeqLen: len('clip_input_ids') };
}

export function goldenSpec(opts: GoldenSetOptions): ModelSetSpec {
  const shallow = e2eShallowLayers();
  const st = (...p: string[]) => new SafetensorsFile(goldenPath(...p));
  const adapterBin = openWeights(goldenPath('ic_adapter', 'ip-adapter.bin'));
  const adapterCfg = goldenConfig('ic_adapter')['CrossLayerCrossScaleProjector'] as Record<string, unknown>;
  const clipCfg = goldenConfig('clip_text');
  // The tiny tokenizers' own special ids (what their tokenizer.json files say), as the converter reads them.
  const t5Tok = tinyTokenizerJson('t5', goldenConfig('t5_encoder')['vocab_size'] as number);
  const clipTok = tinyTokenizerJson('clip', clipCfg['vocab_size'] as number);
  const t5Special = tokenizerFromJson(t5Tok).special;
  const clipSpecial = tokenizerFromJson(clipTok).special;
  return {
    name: 'golden',
    dtype: 'float32',
    attention: opts.attention,
    siglip: {
      cfg: siglipConfigFromJson(goldenConfig(join('instantcharacter_e2e', 'siglip'))),
      weights: st('instantcharacter_e2e', 'siglip', 'model.safetensors'),
      shallowLayers: shallow.siglip,
    },
    dinov2: {
      cfg: dinov2ConfigFromJson(goldenConfig(join('instantcharacter_e2e', 'dinov2'))),
      weights: st('instantcharacter_e2e', 'dinov2', 'model.safetensors'),
      shallowLayers: shallow.dinov2,
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
      seqLen: opts.t5SeqLen, tokenizer: JSON.stringify(t5Tok), padId: t5Special.pad!, eosId: t5Special.eos!,
    },
    clip: {
      cfg: clipConfigFromJson(clipCfg), weights: st('clip_text', 'model.safetensors'), seqLen: opts.clipSeqLen,
      tokenizer: JSON.stringify(clipTok), bosId: clipSpecial.bos!, eosId: clipSpecial.eos!, padId: clipSpecial.pad!,
    },
  };
}

export async function writeGoldenModelSet(modelsRoot: string, opts: GoldenSetOptions, name = 'golden'): Promise<void> {
  await writeModelSet({ ...goldenSpec(opts), name }, join(modelsRoot, name));
}
