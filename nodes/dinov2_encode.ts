import { visionEncoderNode } from './lib/vision.ts';

export const DINOv2Encode = visionEncoderNode(
  'DINOv2Encode',
  'DINOv2 Encode',
  'dinov2',
  'DINOv2 giant features of the reference (CLS dropped): low-res deep and shallow layers, and the four high-res crops.',
);
