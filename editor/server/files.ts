// Image files over HTTP: serving from the outputs, temp and inputs folders only (never anything a
// `..`, an absolute path or a symlink could reach elsewhere), uploads into the inputs folder
// (size-limited, decoded with sharp before they are kept, names cleaned), and the inputs listing.
import { mkdir, open, readdir, realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import type { DataPaths } from '../../engine/paths.ts';
import { writeFileAtomic } from '../../engine/fsutil.ts';

export type ImageFolder = 'output' | 'temp' | 'input';

/** What the browser may be served, by extension. */
export const IMAGE_TYPES: Readonly<Record<string, string>> = {
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.jpeg': 'image/jpeg',
  '.webp': 'image/webp',
  '.gif': 'image/gif',
  '.avif': 'image/avif',
  '.tif': 'image/tiff',
  '.tiff': 'image/tiff',
};

/** sharp's format name -> the extension an upload of that format gets. */
export const FORMAT_EXT: Readonly<Record<string, string[]>> = {
  png: ['.png'],
  jpeg: ['.jpg', '.jpeg'],
  webp: ['.webp'],
  gif: ['.gif'],
  heif: ['.avif'],
  tiff: ['.tif', '.tiff'],
};

/** Decoded uploads may not exceed this many pixels (decompression bombs). */
export const MAX_UPLOAD_PIXELS = 64 * 1024 * 1024;

export class FileRequestError extends Error {
  constructor(
    readonly status: 400 | 403 | 404 | 409 | 413 | 415 | 500,
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'FileRequestError';
  }
}

/**
 * The bundled examples (`workflows/` of the package). Image parameters fall back to them after the
 * inputs folder (LoadCharacter's default is `workflows/assets/character.png`), so the editor shows
 * their thumbnails from there too: read-only, and only below this folder.
 */
export const EXAMPLES_DIR = fileURLToPath(new URL('../../workflows', import.meta.url));
const EXAMPLES_PREFIX = 'workflows';

export function folderOf(paths: DataPaths, type: ImageFolder): string {
  return type === 'output' ? paths.outputs : type === 'temp' ? paths.temp : paths.inputs;
}

export function parseFolderType(v: unknown): ImageFolder {
  if (v === undefined || v === '') return 'output';
  if (v === 'output' || v === 'temp' || v === 'input') return v;
  throw new FileRequestError(400, 'invalid_type', `type must be output, temp or input, got ${JSON.stringify(v)}`);
}

/** One path segment a user may name: no separators, no NUL, not `.`/`..`, not hidden. */
function checkSegment(seg: string, what: string): void {
  if (seg === '' || seg === '.' || seg === '..') throw new FileRequestError(400, 'invalid_path', `${what} may not contain "${seg || '//'}"`);
  if (/[/\\\0]/.test(seg)) throw new FileRequestError(400, 'invalid_path', `${what} may not contain / \\ or NUL`);
  if (seg.startsWith('.')) throw new FileRequestError(403, 'invalid_path', `${what} may not name hidden files`);
}

/** A relative subfolder as `a/b` (empty allowed); refuses absolute paths and `..`. */
export function checkSubfolder(v: unknown): string {
  if (v === undefined || v === '') return '';
  if (typeof v !== 'string') throw new FileRequestError(400, 'invalid_path', 'subfolder must be a string');
  if (v.startsWith('/') || v.startsWith('\\') || /^[A-Za-z]:/.test(v)) {
    throw new FileRequestError(400, 'invalid_path', 'subfolder must be relative, not an absolute path');
  }
  const segs = v.split('/').filter((s, i, all) => !(s === '' && i === all.length - 1));
  for (const s of segs) checkSegment(s, 'subfolder');
  return segs.join('/');
}

export function checkFilename(v: unknown): string {
  if (typeof v !== 'string' || v === '') throw new FileRequestError(400, 'invalid_path', 'filename is required');
  if (path.isAbsolute(v)) throw new FileRequestError(400, 'invalid_path', 'filename must be a name, not an absolute path');
  if (v.length > 255) throw new FileRequestError(400, 'invalid_path', 'filename is too long');
  checkSegment(v, 'filename');
  return v;
}

/** The real path of `rel` inside `base` (symlinks resolved); refuses anything that ends up outside. */
export async function realInside(base: string, rel: string): Promise<string> {
  let root: string;
  try {
    root = await realpath(base);
  } catch {
    throw new FileRequestError(404, 'not_found', 'file not found');
  }
  let real: string;
  try {
    real = await realpath(path.join(root, rel));
  } catch {
    throw new FileRequestError(404, 'not_found', 'file not found');
  }
  const r = path.relative(root, real);
  if (r === '' || r === '..' || r.startsWith(`..${path.sep}`) || path.isAbsolute(r)) {
    throw new FileRequestError(403, 'outside', 'file is outside the allowed folder');
  }
  return real;
}

/** Resolves a /api/view request to a file and its content type. */
export async function resolveView(
  paths: DataPaths,
  q: { filename?: unknown; subfolder?: unknown; type?: unknown },
): Promise<{ file: string; contentType: string; size: number }> {
  const type = parseFolderType(q.type);
  const filename = checkFilename(q.filename);
  const subfolder = checkSubfolder(q.subfolder);
  const contentType = IMAGE_TYPES[path.extname(filename).toLowerCase()];
  if (!contentType) throw new FileRequestError(415, 'not_an_image', `only images can be viewed (${Object.keys(IMAGE_TYPES).join(' ')})`);
  const rel = subfolder ? `${subfolder}/${filename}` : filename;
  let file: string;
  try {
    file = await realInside(folderOf(paths, type), rel);
  } catch (err) {
    // An input image that is not in the inputs folder may be a bundled example, as the nodes see it.
    const bundled = type === 'input' && subfolder.split('/')[0] === EXAMPLES_PREFIX;
    if (!bundled || !(err instanceof FileRequestError) || err.status !== 404) throw err;
    file = await realInside(EXAMPLES_DIR, rel.slice(EXAMPLES_PREFIX.length + 1));
  }
  const st = await stat(file);
  if (!st.isFile()) throw new FileRequestError(404, 'not_found', 'file not found');
  return { file, contentType, size: st.size };
}

/** `/api/view?...` for an image an output node wrote. */
export function viewUrl(img: { filename: string; subfolder: string; type: string }): string {
  const q = new URLSearchParams({ filename: img.filename, subfolder: img.subfolder, type: img.type });
  return `/api/view?${q}`;
}

/** A file name for an upload: only safe characters, not hidden, with the extension of its real format. */
export function cleanUploadName(original: string, format: string): string {
  const base = original.split(/[/\\]/).pop() ?? '';
  const ext = path.extname(base).toLowerCase();
  let stem = (ext ? base.slice(0, -ext.length) : base)
    .normalize('NFC')
    .replace(/[^\p{L}\p{N}_\-. ()]+/gu, '_')
    .replace(/^[.\s_]+/u, '')
    .replace(/[.\s]+$/u, '')
    .slice(0, 100);
  if (!stem) stem = 'upload';
  const allowed = FORMAT_EXT[format] ?? [];
  return stem + (allowed.includes(ext) ? ext : allowed[0]!);
}

export interface UploadResult {
  /** File name inside the subfolder (as ComfyUI's upload answers). */
  name: string;
  subfolder: string;
  type: 'input';
  /** The value an image parameter takes: path relative to the inputs folder. */
  path: string;
}

/** Checks that `bytes` decode as an image of a kept format; returns its sharp format name. */
export async function checkImage(bytes: Uint8Array): Promise<string> {
  let format: string | undefined;
  try {
    // The header alone, so a decompression bomb is named as too large before anything is decoded.
    const meta = await sharp(bytes, { limitInputPixels: false, failOn: 'error' }).metadata();
    format = meta.format;
    if ((meta.width ?? 0) * (meta.height ?? 0) > MAX_UPLOAD_PIXELS) {
      throw new FileRequestError(413, 'too_large', `the image is ${meta.width}x${meta.height} pixels, more than the limit of ${MAX_UPLOAD_PIXELS}`);
    }
    // Decode it all (to a thumbnail): a valid header on a broken body is refused too.
    await sharp(bytes, { limitInputPixels: MAX_UPLOAD_PIXELS, failOn: 'error' }).resize(32, 32, { fit: 'inside' }).raw().toBuffer();
  } catch (err) {
    if (err instanceof FileRequestError) throw err;
    throw new FileRequestError(415, 'not_an_image', `the file is not a readable image (${(err as Error).message})`);
  }
  if (!format || !(format in FORMAT_EXT)) {
    throw new FileRequestError(415, 'not_an_image', `images of format ${format ?? 'unknown'} are not accepted (PNG, JPEG, WebP, GIF, AVIF, TIFF)`);
  }
  return format;
}

/** Stores an uploaded image in the inputs folder under a fresh name (or the given one with overwrite). */
export async function storeUpload(
  paths: DataPaths,
  file: { name: string; bytes: Uint8Array },
  opts: { subfolder?: unknown; overwrite?: boolean } = {},
): Promise<UploadResult> {
  if (file.bytes.length === 0) throw new FileRequestError(400, 'empty', 'the uploaded file is empty');
  const format = await checkImage(file.bytes);
  const subfolder = checkSubfolder(opts.subfolder);
  const name = cleanUploadName(file.name, format);
  const dir = subfolder ? path.join(paths.inputs, ...subfolder.split('/')) : paths.inputs;
  const ext = path.extname(name);
  const stem = name.slice(0, -ext.length);
  await ensureDirInside(paths.inputs, dir);
  for (let i = 0; i < 10_000; i++) {
    const candidate = i === 0 ? name : `${stem}_${i}${ext}`;
    const target = path.join(dir, candidate);
    if (opts.overwrite) {
      await writeFileAtomic(target, file.bytes);
      return done(candidate);
    }
    try {
      const fh = await open(target, 'wx');
      await fh.close();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      // The same picture uploaded twice keeps one file.
      if (await sameContent(target, file.bytes)) return done(candidate);
      continue;
    }
    await writeFileAtomic(target, file.bytes);
    return done(candidate);
  }
  throw new FileRequestError(409, 'exists', `too many files named like ${name}`);

  function done(n: string): UploadResult {
    return { name: n, subfolder, type: 'input', path: subfolder ? `${subfolder}/${n}` : n };
  }
}

async function sameContent(file: string, bytes: Uint8Array): Promise<boolean> {
  try {
    const st = await stat(file);
    if (!st.isFile() || st.size !== bytes.length) return false;
    const fh = await open(file, 'r');
    try {
      const buf = Buffer.alloc(bytes.length);
      await fh.read(buf, 0, bytes.length, 0);
      return buf.equals(bytes);
    } finally {
      await fh.close();
    }
  } catch {
    return false;
  }
}

/** Creates `dir` (under `root`) and checks that its real path stays inside root. */
async function ensureDirInside(root: string, dir: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  if (path.resolve(dir) === path.resolve(root)) return;
  const rel = path.relative(path.resolve(root), path.resolve(dir));
  await realInside(root, rel);
}

/** Images in the inputs folder (two levels deep), as paths relative to it. */
export async function listInputs(paths: DataPaths, limit = 5000): Promise<string[]> {
  const out: string[] = [];
  const walk = async (rel: string, depth: number): Promise<void> => {
    let entries;
    try {
      entries = await readdir(rel ? path.join(paths.inputs, rel) : paths.inputs, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      if (out.length >= limit || e.name.startsWith('.')) continue;
      const p = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory() && depth < 2) await walk(p, depth + 1);
      else if (e.isFile() && IMAGE_TYPES[path.extname(e.name).toLowerCase()]) out.push(p);
    }
  };
  await walk('', 0);
  return out.sort((a, b) => a.localeCompare(b));
}
