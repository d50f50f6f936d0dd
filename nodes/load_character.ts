import { createHash } from 'node:crypto';
import { readFile, realpath, stat } from 'node:fs/promises';
import { isAbsolute, join, relative, sep } from 'node:path';
import type { NodeDef } from '../engine/node.ts';
import { NodeInputError } from '../engine/node.ts';
import type { Services } from './services.ts';
import { PACKAGE_ROOT } from './services.ts';
import { SOCKET } from './types.ts';
import { type SquareMode, decodeImage, squareImage } from './lib/image.ts';

/** Reference images above this file size are refused before decoding. */
const MAX_FILE_BYTES = 50 * 1024 * 1024;

/**
 * Finds `path` inside one of the allowed folders. Relative paths are tried against the inputs
 * folder, then the package root (for the bundled examples); the real path (symlinks resolved)
 * must stay inside an allowed folder.
 */
export async function resolveImagePath(services: Services, path: string): Promise<string> {
  if (!path) throw new NodeInputError('path', 'no image path given');
  const candidates = isAbsolute(path) ? [path] : [join(services.paths.inputs, path), join(PACKAGE_ROOT, path)];
  const roots = await Promise.all(services.imageRoots.map((r) => realpath(r).catch(() => r)));
  for (const candidate of candidates) {
    let real: string;
    try {
      real = await realpath(candidate);
    } catch {
      continue;
    }
    const inside = roots.some((root) => {
      const rel = relative(root, real);
      return rel !== '' && !rel.startsWith(`..${sep}`) && rel !== '..' && !isAbsolute(rel);
    });
    if (!inside) throw new NodeInputError('path', `"${path}" is outside the folders images may be read from (${services.imageRoots.join(', ')})`);
    return real;
  }
  throw new NodeInputError('path', `image "${path}" not found in ${services.paths.inputs} or the bundled examples`);
}

async function readImageFile(services: Services, path: string): Promise<Buffer> {
  const file = await resolveImagePath(services, path);
  const info = await stat(file);
  if (!info.isFile()) throw new NodeInputError('path', `"${path}" is not a file`);
  if (info.size === 0) throw new NodeInputError('path', `"${path}" is empty`);
  if (info.size > MAX_FILE_BYTES) throw new NodeInputError('path', `"${path}" is ${info.size} bytes, over the ${MAX_FILE_BYTES} byte limit`);
  return readFile(file);
}

export const LoadCharacter: NodeDef<Services> = {
  type: 'LoadCharacter',
  version: 1,
  category: 'character',
  displayName: 'Load Character',
  description: 'Loads the reference picture of the character (PNG, JPEG, WebP, AVIF, TIFF, GIF) and makes it square.',
  inputs: {},
  params: {
    path: { type: 'string', format: 'image', default: 'workflows/assets/character.png', maxLength: 1024, description: 'Image in the inputs folder (or a bundled example)' },
    square: { type: 'string', enum: ['pad', 'stretch'], default: 'pad', description: 'pad: centre on a square of the background colour; stretch: resize to a square as the official pipeline does' },
    background: { type: 'string', format: 'color', default: '#ffffff', pattern: '^#[0-9a-fA-F]{6}$', description: 'Padding colour' },
  },
  outputs: { image: { type: SOCKET.IMAGE, description: 'Square RGB image' } },
  async cacheKey(inputs, services) {
    return createHash('sha256').update(await readImageFile(services, inputs.path as string)).digest('hex');
  },
  sizeOf: (v) => (v as { data: Uint8Array }).data?.byteLength ?? 0,
  async run(ctx, inputs) {
    const bytes = await readImageFile(ctx.services, inputs.path as string);
    let image;
    try {
      image = await decodeImage(bytes);
    } catch (err) {
      throw new NodeInputError('path', `"${inputs.path}": ${(err as Error).message}`);
    }
    return { image: await squareImage(image, inputs.square as SquareMode, inputs.background as string) };
  },
};
