// The synchronous main-thread work of an encoder node (nodes/lib/vision.ts encodeReference):
// bicubic resizes to 384 and 768, four crops, normalisation into a [5, 3, 384, 384] tensor. It
// runs on the event loop, once per encoder node, and cannot overlap with the other branch's.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { decodeImage, pixelValues, quadrantCrops, resizeImage, squareImage } from '../../nodes/lib/image.ts';
import { PACKAGE_ROOT } from '../../nodes/services.ts';
import { median, timed } from './stats.ts';

export interface PreprocessTimes { resize384: number; resize768: number; cropsAndPixels: number; total: number }

/** Medians of `reps` timings of each step on the default workflow's reference picture. */
export async function timeEncoderPreprocessing(reps = 3): Promise<PreprocessTimes> {
  const img = await squareImage(await decodeImage(await readFile(join(PACKAGE_ROOT, 'workflows/assets/character.png'))), 'pad');
  const a: number[] = [];
  const b: number[] = [];
  const c: number[] = [];
  for (let i = 0; i < reps + 1; i++) {
    const [r384, low] = await timed(() => resizeImage(img, 384, 384));
    const [r768, big] = await timed(() => resizeImage(img, 768, 768));
    const [px] = await timed(() => pixelValues([low, ...quadrantCrops(big)], [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]));
    if (i === 0) continue; // JIT warm-up
    a.push(r384);
    b.push(r768);
    c.push(px);
  }
  const t = { resize384: median(a), resize768: median(b), cropsAndPixels: median(c), total: 0 };
  t.total = t.resize384 + t.resize768 + t.cropsAndPixels;
  return t;
}
