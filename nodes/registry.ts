// Every node type charflow offers. A new node is one file in nodes/ and one line here.
import type { NodeDef } from '../engine/node.ts';
import type { Services } from './services.ts';
import { LoadModels } from './load_models.ts';
import { LoadCharacter } from './load_character.ts';
import { SigLIPEncode } from './siglip_encode.ts';
import { DINOv2Encode } from './dinov2_encode.ts';
import { AdapterFuse } from './adapter_fuse.ts';
import { RegionalCharacter } from './regional_character.ts';
import { CombineCharacters } from './combine_characters.ts';
import { TextEncode } from './text_encode.ts';
import { DiTSample } from './dit_sample.ts';
import { Decode } from './decode.ts';
import { SaveImage } from './save_image.ts';
import { IdentityScore } from './identity_score.ts';
import { KeepBest } from './keep_best.ts';
import { PreviewImage } from './preview_image.ts';
import { LoadImage } from './load_image.ts';
import { VAEEncode } from './vae_encode.ts';
import { LoadMask } from './load_mask.ts';
import { MaskFromRegion } from './mask_from_region.ts';
import { InvertMask } from './invert_mask.ts';
import { PadImage } from './pad_image.ts';
import { SetLatentNoiseMask } from './set_latent_noise_mask.ts';
import { SaveCharacter } from './save_character.ts';
import { SavedCharacter } from './saved_character.ts';
import { LoraLoader, LoraLoaderModelOnly } from './lora_loader.ts';

export const NODE_TYPES: readonly NodeDef<Services>[] = [
  LoadModels,
  LoadCharacter,
  SigLIPEncode,
  DINOv2Encode,
  AdapterFuse,
  RegionalCharacter,
  CombineCharacters,
  TextEncode,
  DiTSample,
  Decode,
  IdentityScore,
  KeepBest,
  SaveImage,
  PreviewImage,
  LoadImage,
  VAEEncode,
  LoadMask, MaskFromRegion, InvertMask, PadImage, SetLatentNoiseMask, // inpainting and outpainting (issue 23)
  SaveCharacter,
  SavedCharacter,
  LoraLoader, LoraLoaderModelOnly,
];

export function nodeRegistry(): Map<string, NodeDef<Services>> {
  return new Map(NODE_TYPES.map((d) => [d.type, d]));
}
