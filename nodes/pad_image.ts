import type { NodeDef } from '../engine/node.ts';
import { NodeInputError } from '../engine/node.ts';
import type { Services } from './services.ts';
import { SOCKET, type Mask, type RgbImage } from './types.ts';
import { imagesOf } from './lib/batch.ts';
import { tensorBytes } from './lib/tensors.ts';

const MAX_SIDE = 4096;

/**
 * The picture on a larger canvas and the mask of the new area (1), for outpainting. With `feather`, the mask
 * also reaches `feather` pixels into the picture from each padded side, falling as ((feather - d) / feather)^2
 * with the distance d, as ComfyUI's ImagePadForOutpaint does, so the seam is repainted too.
 */
export function padForOutpaint(img: RgbImage, pad: { left: number; top: number; right: number; bottom: number }, feather: number, fill: 'edge' | 'grey'): { image: RgbImage; mask: Mask } {
  const width = img.width + pad.left + pad.right;
  const height = img.height + pad.top + pad.bottom;
  const data = new Uint8Array(width * height * 3);
  const mask = new Float32Array(width * height);
  for (let y = 0; y < height; y++) {
    const sy = y - pad.top;
    for (let x = 0; x < width; x++) {
      const sx = x - pad.left;
      const inside = sx >= 0 && sx < img.width && sy >= 0 && sy < img.height;
      const o = (y * width + x) * 3;
      if (inside || fill === 'edge') {
        // The nearest picture pixel: the picture itself inside, its edge repeated outside.
        const cx = Math.min(img.width - 1, Math.max(0, sx));
        const cy = Math.min(img.height - 1, Math.max(0, sy));
        data.set(img.data.subarray((cy * img.width + cx) * 3, (cy * img.width + cx) * 3 + 3), o);
      } else {
        data.fill(128, o, o + 3);
      }
      if (!inside) {
        mask[y * width + x] = 1;
      } else if (feather > 0) {
        // Distance to the nearest padded side, counted as ImagePadForOutpaint does (0 at the left and top
        // edge pixels, 1 at the right and bottom ones); sides without padding are the picture's own border.
        const d = Math.min(
          pad.left > 0 ? sx : Infinity, pad.right > 0 ? img.width - sx : Infinity,
          pad.top > 0 ? sy : Infinity, pad.bottom > 0 ? img.height - sy : Infinity,
        );
        if (d < feather) mask[y * width + x] = ((feather - d) / feather) ** 2;
      }
    }
  }
  return { image: { width, height, data }, mask: { width, height, data: mask } };
}

export const PadImage: NodeDef<Services> = {
  type: 'PadImage',
  version: 1,
  category: 'image',
  displayName: 'Pad Image',
  description: 'Outpainting: puts the picture on a larger canvas (left/top/right/bottom in pixels) and gives the mask of the new area, '
    + 'with a soft edge reaching `feather` pixels into the picture. Pad so that the new size is a multiple of 16.',
  inputs: { image: { type: SOCKET.IMAGE } },
  params: {
    left: { type: 'integer', default: 0, minimum: 0, maximum: MAX_SIDE, description: 'Pixels added on the left' },
    top: { type: 'integer', default: 0, minimum: 0, maximum: MAX_SIDE, description: 'Pixels added at the top' },
    right: { type: 'integer', default: 256, minimum: 0, maximum: MAX_SIDE, description: 'Pixels added on the right' },
    bottom: { type: 'integer', default: 0, minimum: 0, maximum: MAX_SIDE, description: 'Pixels added at the bottom' },
    feather: { type: 'integer', default: 32, minimum: 0, maximum: MAX_SIDE, description: 'How far (pixels) the mask reaches into the picture from each padded side, fading out' },
    fill: { type: 'string', enum: ['edge', 'grey'], default: 'edge', description: 'What the new area starts as: the picture\'s edge pixels repeated, or mid grey' },
  },
  outputs: {
    image: { type: SOCKET.IMAGE },
    mask: { type: SOCKET.MASK, description: 'White on the new area (and the feathered seam)' },
  },
  sizeOf: tensorBytes,
  async run(_ctx, inputs) {
    const [image, ...more] = imagesOf(inputs.image);
    if (more.length) throw new NodeInputError('image', `is a batch of ${more.length + 1} images; pad one picture`);
    const pad = { left: inputs.left as number, top: inputs.top as number, right: inputs.right as number, bottom: inputs.bottom as number };
    const width = image!.width + pad.left + pad.right;
    const height = image!.height + pad.top + pad.bottom;
    if (width > MAX_SIDE || height > MAX_SIDE) throw new NodeInputError(width > MAX_SIDE ? 'right' : 'bottom', `the padded picture would be ${width}x${height}, over ${MAX_SIDE} pixels a side`);
    return padForOutpaint(image!, pad, inputs.feather as number, inputs.fill as 'edge' | 'grey');
  },
};
