import { join } from 'node:path';
import type { NodeDef } from '../engine/node.ts';
import type { Services } from './services.ts';
import { SOCKET } from './types.ts';
import { imagesOf } from './lib/batch.ts';
import { encodePng } from './lib/image.ts';
import { type SavedImage, writeNumbered } from './lib/output.ts';

export const PreviewImage: NodeDef<Services> = {
  type: 'PreviewImage',
  version: 1,
  category: 'image',
  displayName: 'Preview Image',
  description: 'Shows the image without keeping it: it goes to the temporary folder.',
  inputs: { image: { type: SOCKET.IMAGE } },
  params: {},
  outputs: {},
  output: true,
  cacheable: false,
  async run(ctx, inputs) {
    const images: SavedImage[] = [];
    for (const image of imagesOf(inputs.image)) {
      const filename = await writeNumbered(join(ctx.services.paths.temp), 'preview', 'png', await encodePng(image));
      images.push({ filename, subfolder: '', type: 'temp' });
    }
    return { images };
  },
};
