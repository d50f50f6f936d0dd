import type { NodeDef } from '../engine/node.ts';
import type { Services } from './services.ts';
import { SOCKET } from './types.ts';
import { encodePng } from './lib/image.ts';
import { type SavedImage, writeNumbered } from './lib/output.ts';
import { imagesOf, workflowForImage } from './lib/batch.ts';

/**
 * The PNG's text chunks: the workflow itself, plus any a host asked for in `meta.png_text` (the
 * ComfyUI API puts its `prompt` there), which are left out of the embedded workflow copy.
 */
export function pngTextFor(workflow: unknown): Record<string, string> {
  const wf = (workflow ?? {}) as { meta?: Record<string, unknown> };
  const requested = wf.meta?.png_text;
  if (!requested || typeof requested !== 'object') return { workflow: JSON.stringify(workflow) };
  const { png_text: _omitted, ...meta } = wf.meta!;
  const chunks: Record<string, string> = {};
  for (const [key, value] of Object.entries(requested)) {
    if (typeof value === 'string' && /^[A-Za-z][A-Za-z0-9_ ]{0,78}$/.test(key) && key !== 'workflow') chunks[key] = value;
  }
  return { ...chunks, workflow: JSON.stringify({ ...wf, meta }) };
}

export const SaveImage: NodeDef<Services> = {
  type: 'SaveImage',
  version: 2,
  category: 'image',
  displayName: 'Save Image',
  description: 'Saves the image as PNG in the outputs folder (a batch as one PNG per image), with the workflow that makes it embedded so the editor can reopen it.',
  inputs: { image: { type: SOCKET.IMAGE } },
  params: {
    filename_prefix: { type: 'string', default: 'charflow', pattern: '^[A-Za-z0-9_-]{1,64}$', description: 'Start of the file name (letters, digits, _ and -)' },
  },
  outputs: {},
  output: true,
  cacheable: false,
  async run(ctx, inputs) {
    const images: SavedImage[] = [];
    for (const image of imagesOf(inputs.image)) {
      // Each PNG carries the workflow of its own image: its seed, batch size 1.
      const text = pngTextFor(workflowForImage(ctx.workflow, image));
      if (image.identity) text.identity_scores = JSON.stringify(image.identity); // Identity Score's DINO-I / SigLIP-I
      const png = await encodePng(image, text);
      const filename = await writeNumbered(ctx.services.outputDir, inputs.filename_prefix as string, 'png', png);
      images.push({ filename, subfolder: '', type: 'output' });
    }
    return { images };
  },
};
