import type { NodeDef } from '../engine/node.ts';
import type { Services } from './services.ts';
import { SOCKET, type RgbImage } from './types.ts';
import { encodePng } from './lib/image.ts';
import { type SavedImage, writeNumbered } from './lib/output.ts';

export const SaveImage: NodeDef<Services> = {
  type: 'SaveImage',
  version: 1,
  category: 'image',
  displayName: 'Save Image',
  description: 'Saves the image as PNG in the outputs folder, with the workflow embedded so the editor can reopen it.',
  inputs: { image: { type: SOCKET.IMAGE } },
  params: {
    filename_prefix: { type: 'string', default: 'charflow', pattern: '^[A-Za-z0-9_-]{1,64}$', description: 'Start of the file name (letters, digits, _ and -)' },
  },
  outputs: {},
  output: true,
  cacheable: false,
  async run(ctx, inputs) {
    const png = await encodePng(inputs.image as RgbImage, { workflow: JSON.stringify(ctx.workflow) });
    const filename = await writeNumbered(ctx.services.outputDir, inputs.filename_prefix as string, 'png', png);
    const images: SavedImage[] = [{ filename, subfolder: '', type: 'output' }];
    return { images };
  },
};
