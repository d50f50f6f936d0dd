// The e2e golden's preprocessed reference and a comparison against slices of its feature tensors,
// shared by the vision-encoder tests.
import { goldenPath } from './goldens.ts';
import { decodeImage, pixelValues } from '../../nodes/lib/image.ts';
import type { Tensor } from '../../models/tensor.ts';

/** The e2e case's 384-px stage image as normalised pixel values [1, 3, 384, 384]: (png/255 - mean) / std. */
export async function e2ePixels(mean: readonly number[], std: readonly number[]): Promise<Tensor> {
  return pixelValues([await decodeImage(goldenPath('instantcharacter_e2e', 'stage_low_res_384.png'))], mean, std);
}

/**
 * Max |ours - ref| where ref is the channel slice [offset, offset+C) of the pipeline's [1, T, 40]
 * feature tensor, tokens [refStart, refStart+count), and ours is [1, skip+count, C] (skip = CLS).
 */
export function diffToPipeline(ours: Tensor, ref: Tensor, offset: number, refStart: number, skip: number): number {
  const [, T, C] = ours.dims as [number, number, number];
  const width = ref.dims[2]!;
  const a = ours.data as Float32Array;
  const b = ref.data as Float32Array;
  let m = 0;
  for (let n = 0; n < T - skip; n++) {
    for (let c = 0; c < C; c++) m = Math.max(m, Math.abs(a[(n + skip) * C + c]! - b[(refStart + n) * width + offset + c]!));
  }
  return m;
}
