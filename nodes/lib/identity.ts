// Identity scores as in the InstantCharacter paper: cosine similarity of image embeddings of the
// reference and a generated picture. DINO-I uses DINOv2's CLS token (last_hidden_state[:, 0], after
// the final norm); SigLIP-I uses SigLIP's attention-pooled embedding (pooler_output).
import type { NodeContext } from '../../engine/node.ts';
import { NodeInputError } from '../../engine/node.ts';
import type { Services } from '../services.ts';
import type { ModelSet } from '../../models/modelset.ts';
import type { CharacterSet, IdentityScores, ReferenceEmbeddings, RgbImage } from '../types.ts';
import { cropImage, pixelValues, resizeImage, squareImage } from './image.ts';
import { regionBox } from './regions.ts';

export type ScoreName = 'dino_i' | 'siglip_i';

/** Images per encoder run: bounds the memory of a large batch. */
const CHUNK = 8;

/** Cosine similarity in float64. */
export function cosine(a: Float32Array, b: Float32Array): number {
  let ab = 0, aa = 0, bb = 0;
  for (let i = 0; i < a.length; i++) {
    ab += a[i]! * b[i]!;
    aa += a[i]! * a[i]!;
    bb += b[i]! * b[i]!;
  }
  return aa === 0 || bb === 0 ? 0 : ab / Math.sqrt(aa * bb);
}

/** Whether the set's SigLIP graph has the pooling head (pooler_output). */
export async function hasSiglipPooled(ctx: NodeContext<Services>, models: ModelSet): Promise<boolean> {
  return (await ctx.services.pool.outputNames(models.path('siglip'))).includes('pooler_output');
}

/** The encoder's view of a picture: centred on a white square, resized to the encoder's size. */
async function encoderView(img: RgbImage, size: number): Promise<RgbImage> {
  return resizeImage(await squareImage(img, 'pad'), size, size);
}

/** One embedding per image: DINOv2 CLS or SigLIP pooled, [C] each; batched runs of up to CHUNK images. */
export async function embedImages(ctx: NodeContext<Services>, models: ModelSet, images: RgbImage[], encoder: 'dinov2' | 'siglip'): Promise<Float32Array[]> {
  const settings = models.manifest[encoder];
  const out: Float32Array[] = [];
  for (let start = 0; start < images.length; start += CHUNK) {
    const views = await Promise.all(images.slice(start, start + CHUNK).map((img) => encoderView(img, settings.imageSize)));
    const pixels = pixelValues(views, settings.mean, settings.std); // [n, 3, S, S]
    const name = encoder === 'siglip' ? 'pooler_output' : 'last_hidden_state';
    const r = (await ctx.services.pool.run(models.path(encoder), { pixel_values: pixels }, { outputs: [name], signal: ctx.signal }))[name]!;
    const data = r.data as Float32Array;
    const C = r.dims[r.dims.length - 1]!;
    const stride = encoder === 'siglip' ? C : r.dims[1]! * C; // pooled [n, C]; tokens [n, N, C] with CLS first
    if (encoder === 'dinov2' && !settings.clsToken) throw new Error('DINO-I needs the DINOv2 CLS token, which this model set does not have');
    for (let i = 0; i < views.length; i++) out.push(Float32Array.from(data.subarray(i * stride, i * stride + C)));
  }
  return out;
}

/** The pixel rectangle of a relative box in a w x h picture (at least one pixel). */
export function boxPixels(box: { x: number; y: number; w: number; h: number }, width: number, height: number): { x: number; y: number; w: number; h: number } {
  const x0 = Math.min(width - 1, Math.max(0, Math.round(box.x * width)));
  const y0 = Math.min(height - 1, Math.max(0, Math.round(box.y * height)));
  const x1 = Math.min(width, Math.max(x0 + 1, Math.round((box.x + box.w) * width)));
  const y1 = Math.min(height, Math.max(y0 + 1, Math.round((box.y + box.h) * height)));
  return { x: x0, y: y0, w: x1 - x0, h: y1 - y0 };
}

/** Crops each character's region (its rectangle, or its mask's bounding box) out of a picture. */
export function regionCrops(img: RgbImage, set: CharacterSet): RgbImage[] {
  return set.characters.map((c) => {
    const b = boxPixels(regionBox(c.region), img.width, img.height);
    return cropImage(img, b.x, b.y, b.w, b.h);
  });
}

/** A reference: a picture to encode, or a saved character's embeddings of its picture. */
export type Reference = RgbImage | ReferenceEmbeddings;

const isEmbeddings = (r: Reference): r is ReferenceEmbeddings => (r as ReferenceEmbeddings).dinov2 instanceof Float32Array;

/** Each reference's embedding for `enc`: saved ones as they are, pictures encoded in one batch. */
async function referenceEmbeddings(ctx: NodeContext<Services>, models: ModelSet, refs: Reference[], enc: 'dinov2' | 'siglip'): Promise<Float32Array[]> {
  const pictures = refs.filter((r): r is RgbImage => !isEmbeddings(r));
  const encoded = pictures.length ? await embedImages(ctx, models, pictures, enc) : [];
  let next = 0;
  return refs.map((r, i) => {
    if (!isEmbeddings(r)) return encoded[next++]!;
    const e = r[enc];
    if (!e) throw new NodeInputError('characters', `saved character ${i + 1} has no ${enc === 'siglip' ? 'SigLIP' : 'DINOv2'} embedding: save it again`);
    return e;
  });
}

/**
 * Scores every image against the reference (whole picture), or with a set, every character against its
 * region of each image (the set's references). Embeddings of the images run batched. A saved character's
 * reference embeddings stand in for its picture (no encoder runs for it).
 */
export async function identityScores(
  ctx: NodeContext<Services>, models: ModelSet, images: RgbImage[], reference: Reference | undefined, set: CharacterSet | undefined,
): Promise<IdentityScores[]> {
  const pooled = await hasSiglipPooled(ctx, models);
  if (!pooled) ctx.log.warn(`model set "${models.name}" has no SigLIP pooling head: SigLIP-I is left out (rebuild the set with the head for it)`);
  let refs: Reference[];
  let subjects: RgbImage[]; // per image: the whole picture, or its R crops
  if (set) {
    refs = set.characters.map((c, r) => {
      const ref = c.reference ?? c.character.reference ?? reference;
      if (!ref) throw new NodeInputError('characters', `character ${r + 1} has no reference picture: connect its Regional Character's reference input (or this node's reference)`);
      return ref;
    });
    subjects = images.flatMap((img) => regionCrops(img, set));
  } else {
    if (!reference) throw new NodeInputError('reference', 'no reference picture connected');
    refs = [reference];
    subjects = images;
  }
  const R = refs.length;
  const encoders: ('dinov2' | 'siglip')[] = pooled ? ['dinov2', 'siglip'] : ['dinov2'];
  const sims: Record<string, number[][]> = {}; // encoder -> image -> character
  for (const enc of encoders) {
    const refEmb = await referenceEmbeddings(ctx, models, refs, enc);
    const subEmb = await embedImages(ctx, models, subjects, enc);
    sims[enc] = images.map((_, i) => refEmb.map((e, r) => cosine(e, subEmb[i * R + r]!)));
  }
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  return images.map((_, i) => {
    const s: IdentityScores = { dino_i: mean(sims.dinov2![i]!) };
    if (pooled) s.siglip_i = mean(sims.siglip![i]!);
    if (set) s.characters = sims.dinov2![i]!.map((d, r) => (pooled ? { dino_i: d, siglip_i: sims.siglip![i]![r]! } : { dino_i: d }));
    return s;
  });
}
