import { visionEncoderNode } from './lib/vision.ts';

export const SigLIPEncode = visionEncoderNode(
  'SigLIPEncode',
  'SigLIP Encode',
  'siglip',
  'SigLIP so400m features of the reference: low-res deep and shallow layers, and the four high-res crops.',
);
