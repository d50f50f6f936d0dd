// A cheap live preview of latents: a fixed linear map from latent channels to RGB, normalised per
// image, encoded as a small JPEG. It costs a few milliseconds per step and no model run.
import type { PreviewImage } from '../../engine/node.ts';
import { encodeJpeg } from './image.ts';

/** Channel c contributes to R, G or B by c mod 3, with alternating sign, so structure shows. */
export async function latentPreview(latent: Float32Array, channels: number, h: number, w: number): Promise<PreviewImage> {
  const plane = h * w;
  const rgb = new Float32Array(plane * 3);
  for (let c = 0; c < channels; c++) {
    const target = c % 3;
    const sign = Math.floor(c / 3) % 2 === 0 ? 1 : -1;
    for (let i = 0; i < plane; i++) rgb[i * 3 + target] += sign * latent[c * plane + i]!;
  }
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of rgb) {
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  const span = hi - lo || 1;
  const data = new Uint8Array(plane * 3);
  for (let i = 0; i < data.length; i++) data[i] = Math.round(((rgb[i]! - lo) / span) * 255);
  return { format: 'jpeg', data: await encodeJpeg({ width: w, height: h, data }, 70) };
}
