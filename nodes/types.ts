// Socket types and the values that travel along links between the pipeline nodes.
import type { Tensor } from '../models/tensor.ts';
import type { ModelSet } from '../models/modelset.ts';

export const SOCKET = {
  MODELS: 'MODELS',
  IMAGE: 'IMAGE',
  VISION_FEATURES: 'VISION_FEATURES',
  CHARACTER: 'CHARACTER',
  CONDITIONING: 'CONDITIONING',
  LATENT: 'LATENT',
} as const;

export type { RgbImage } from './lib/image.ts';

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
}

export interface Conditioning {
  /** T5 features [1, T, 4096] */
  promptEmbeds: Tensor;
  /** CLIP pooled [1, 768] */
  pooled: Tensor;
}

export interface Latent {
  /** Unpacked latents [1, C, H/8, W/8] */
  samples: Tensor;
}

export type { ModelSet };
