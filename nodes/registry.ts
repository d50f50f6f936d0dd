// Every node type charflow offers. A new node is one file in nodes/ and one line here.
import type { NodeDef } from '../engine/node.ts';
import type { Services } from './services.ts';
import { LoadModels } from './load_models.ts';
import { LoadCharacter } from './load_character.ts';
import { SigLIPEncode } from './siglip_encode.ts';
import { DINOv2Encode } from './dinov2_encode.ts';
import { AdapterFuse } from './adapter_fuse.ts';
import { TextEncode } from './text_encode.ts';
import { DiTSample } from './dit_sample.ts';
import { Decode } from './decode.ts';
import { SaveImage } from './save_image.ts';
import { PreviewImage } from './preview_image.ts';

export const NODE_TYPES: readonly NodeDef<Services>[] = [
  LoadModels,
  LoadCharacter,
  SigLIPEncode,
  DINOv2Encode,
  AdapterFuse,
  TextEncode,
  DiTSample,
  Decode,
  SaveImage,
  PreviewImage,
];

export function nodeRegistry(): Map<string, NodeDef<Services>> {
  return new Map(NODE_TYPES.map((d) => [d.type, d]));
}
