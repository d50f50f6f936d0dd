// The e2e golden's preprocessed reference and a comparison against slices of its feature tensors,
// shared by the vision-encoder tests.
import { goldenConfig, goldenFind, goldenReadmeTable } from './goldens.ts';
import { decodeImage, pixelValues } from '../../nodes/lib/image.ts';
import type { Tensor } from '../../models/tensor.ts';

/** The e2e case's low-res stage image as normalised pixel values [1, 3, S, S]: (png/255 - mean) / std. */
export async function e2ePixels(mean: readonly number[], std: readonly number[]): Promise<Tensor> {
  return pixelValues([await decodeImage(e2eStagePath('low_res'))], mean, std);
}

/**
 * Max |ours - ref| where ref is the channel slice [offset, offset+C) of the pipeline's [1, T, W]
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

/** One of the e2e case's preprocessing stages (`stage_<kind>_<size>.png`): its path. */
export function e2eStagePath(kind: 'square' | 'low_res' | 'high_res'): string {
  return goldenFind('instantcharacter_e2e', new RegExp(`^stage_${kind}_\\d+\\.png$`));
}

/** mean and std of an e2e encoder's preprocessor_config.json. */
export function e2eNormalization(encoder: 'siglip' | 'dinov2'): { mean: number[]; std: number[] } {
  const p = goldenConfig('instantcharacter_e2e', `${encoder}/preprocessor_config.json`);
  return { mean: p['image_mean'] as number[], std: p['image_std'] as number[] };
}

/**
 * The hidden-state indices whose outputs the pipeline concatenates into the shallow features, per encoder, as
 * the case README's intermediates table records them (`SigLIP cat_seq(hs[a],hs[b],...)`): no tensor holds them.
 */
export function e2eShallowLayers(): { siglip: number[]; dinov2: number[] } {
  const row = goldenReadmeTable('instantcharacter_e2e', 'intermediates.safetensors').find((r) => r['name'] === 'image_embeds_low_res_shallow');
  const meaning = row?.['meaning'] ?? '';
  const layers = (who: string): number[] => {
    const m = new RegExp(`${who} cat_seq\\(([^)]*)\\)`).exec(meaning);
    if (!m) throw new Error(`instantcharacter_e2e/README.md: no "${who} cat_seq(...)" for image_embeds_low_res_shallow`);
    return [...m[1]!.matchAll(/hs\[(\d+)\]/g)].map((x) => Number(x[1]));
  };
  return { siglip: layers('SigLIP'), dinov2: layers('DINOv2') };
}
