// Socket types and the values that travel along links between the pipeline nodes.
import type { Tensor } from '../models/tensor.ts';
import type { ModelSet } from '../models/modelset.ts';

export const SOCKET = {
  MODELS: 'MODELS',
  IMAGE: 'IMAGE',
  VISION_FEATURES: 'VISION_FEATURES',
  CHARACTER: 'CHARACTER',
  /** A set of 1..4 regional characters (Regional Character, Combine Characters). */
  CHARACTERS: 'CHARACTERS',
  CONDITIONING: 'CONDITIONING',
  LATENT: 'LATENT',
  /** A grey mask (white = repaint): Load Image's alpha, Load Mask, Mask from Region, Pad Image. */
  MASK: 'MASK',
} as const;

import type { RgbImage } from './lib/image.ts';
export type { RgbImage };

/** Features of one vision encoder for one reference: low-res deep + shallow, and the 4 high-res crops. */
export interface VisionFeatures {
  encoder: 'siglip' | 'dinov2';
  /** [1, N, C] */
  lowResDeep: Tensor;
  /** [1, 3N, C] (three layers concatenated along the sequence) */
  lowResShallow: Tensor;
  /** [1, 4N, C] (crops TL, TR, BL, BR concatenated along the sequence) */
  highResDeep: Tensor;
}

/** The adapter's once-per-reference output: what the time part resamples at every step. */
export interface CharacterTokens {
  /** [1, 2N, C] */
  resamplerInput: Tensor;
  /** A saved character's reference embeddings (nodes/lib/saved_characters.ts): Identity Score uses them instead of encoding a picture. */
  reference?: ReferenceEmbeddings;
}

/** Embeddings of a character's reference picture, as Identity Score computes them. */
export interface ReferenceEmbeddings {
  /** DINOv2 CLS [C] */
  dinov2: Float32Array;
  /** SigLIP pooled [C]; absent when the model set's SigLIP has no pooling head. */
  siglip?: Float32Array;
}

/** Where a regional character goes, in relative image coordinates or as a mask image. */
export type CharacterRegion =
  | { kind: 'rect'; x: number; y: number; w: number; h: number; /** ramp width, relative to each side */ feather: number }
  /** width x height values in [0, 1] (white = the character), row-major. */
  | { kind: 'mask'; width: number; height: number; data: Float32Array };

export interface RegionalCharacter {
  character: CharacterTokens;
  region: CharacterRegion;
  /** Subject scale s_r of this character. */
  scale: number;
  /** The reference picture, for identity scores of the character's region. */
  reference?: RgbImage;
}

/** Characters that share one picture, each confined to its region (up to MAX_CHARACTERS). */
export interface CharacterSet {
  characters: RegionalCharacter[];
}

export const MAX_CHARACTERS = 4;

export interface Conditioning {
  /** T5 features [1, T, 4096] */
  promptEmbeds: Tensor;
  /** CLIP pooled [1, 768] */
  pooled: Tensor;
}

export interface Latent {
  /** Unpacked latents [B, C, H/8, W/8] (B = 1 unless a DiTSample batch) */
  samples: Tensor;
  /** Where each batch item came from: the DiTSample node and the seed that makes it alone (batch size 1). */
  origins?: ImageOrigin[];
  /** Set Latent Noise Mask: the region DiT Sample repaints when this latent is its init (its `mask` input wins). */
  noiseMask?: Mask;
}

/** What travels on a MASK link: width x height values in [0, 1], row-major; 1 (white) = repaint, 0 = keep. */
export interface Mask {
  width: number;
  height: number;
  data: Float32Array;
}

/** The sampler node and seed that reproduce one image of a batch on their own. */
export interface ImageOrigin {
  node: string;
  seed: number;
}

/**
 * What travels on an IMAGE link: one picture, or a batch (from a batched DiTSample through Decode) as an
 * array. Read either with imagesOf() in nodes/lib/batch.ts.
 */
export type ImageValue = RgbImage | BatchImage[];

/** A batch item, with the origin SaveImage uses to embed a workflow that makes it alone. */
export type BatchImage = RgbImage & { origin?: ImageOrigin; /** Set by Identity Score. */ identity?: IdentityScores };

/** Identity scores of one picture (Identity Score): the mean over its characters, and each character's own. */
export interface IdentityScores {
  /** Cosine of DINOv2 CLS embeddings. */
  dino_i: number;
  /** Cosine of SigLIP pooled embeddings; absent when the model set's SigLIP has no pooling head. */
  siglip_i?: number;
  /** Per character of a regional set, scored on its region. */
  characters?: { dino_i: number; siglip_i?: number }[];
}

export type { ModelSet };
