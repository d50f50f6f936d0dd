// File helpers for everything charflow reads from users and writes to the data folder:
// reads are bounded (a huge or endless file must not exhaust memory), writes are atomic (a crash
// mid-write leaves the old file, never a truncated one).
import { randomBytes } from 'node:crypto';
import { mkdir, open, rename, unlink } from 'node:fs/promises';
import path from 'node:path';

export type FileErrorCode = 'not_found' | 'not_a_file' | 'too_large' | 'io';

/** A file problem a person can act on; `message` is one line that names the file. */
export class FileError extends Error {
  constructor(
    readonly code: FileErrorCode,
    readonly file: string,
    message: string,
  ) {
    super(message);
    this.name = 'FileError';
  }
}

/** 1536 -> "1.5 KiB". */
export function formatBytes(n: number): string {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} bytes` : `${v.toFixed(v < 10 ? 1 : 0)} ${units[u]}`;
}

function ioError(file: string, err: unknown): FileError {
  const e = err as NodeJS.ErrnoException;
  if (e?.code === 'ENOENT') return new FileError('not_found', file, `${file}: file not found`);
  if (e?.code === 'EISDIR') return new FileError('not_a_file', file, `${file}: is a directory, not a file`);
  if (e?.code === 'EACCES' || e?.code === 'EPERM') return new FileError('io', file, `${file}: permission denied`);
  return new FileError('io', file, `${file}: cannot read (${e?.code ?? (e as Error)?.message ?? String(err)})`);
}

/**
 * Reads a whole file, refusing anything larger than maxBytes. The size is checked before reading
 * and again while reading, so a file that grows (or a device that never ends) is still refused.
 */
export async function readFileLimited(file: string, maxBytes: number): Promise<Buffer> {
  let fh;
  try {
    fh = await open(file, 'r');
  } catch (err) {
    throw ioError(file, err);
  }
  try {
    const st = await fh.stat();
    if (st.isDirectory()) throw new FileError('not_a_file', file, `${file}: is a directory, not a file`);
    const tooLarge = (): FileError =>
      new FileError('too_large', file, `${file}: larger than the limit of ${formatBytes(maxBytes)}`);
    if (st.isFile() && st.size > maxBytes) {
      throw new FileError(
        'too_large',
        file,
        `${file}: ${formatBytes(st.size)} is larger than the limit of ${formatBytes(maxBytes)}`,
      );
    }
    // Read in chunks rather than trusting the size: files can grow, devices report 0.
    const chunks: Buffer[] = [];
    let total = 0;
    for (;;) {
      const chunk = Buffer.allocUnsafe(Math.min(1 << 20, maxBytes - total + 1));
      const { bytesRead } = await fh.read(chunk, 0, chunk.length, null);
      if (bytesRead === 0) break;
      total += bytesRead;
      if (total > maxBytes) throw tooLarge();
      chunks.push(chunk.subarray(0, bytesRead));
    }
    return Buffer.concat(chunks, total); // copies, so no oversized chunk stays referenced
  } catch (err) {
    throw err instanceof FileError ? err : ioError(file, err);
  } finally {
    await fh.close().catch(() => {});
  }
}

/** readFileLimited decoded as UTF-8, without a leading byte-order mark. */
export async function readTextLimited(file: string, maxBytes: number): Promise<string> {
  const text = (await readFileLimited(file, maxBytes)).toString('utf8');
  return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
}

/**
 * Writes a file so that readers see either the old or the new content: the data goes to a
 * temporary file in the same folder (same filesystem), is flushed, then renamed over the target.
 * Creates the parent folder if needed.
 */
export async function writeFileAtomic(file: string, data: string | Uint8Array): Promise<void> {
  const dir = path.dirname(file);
  await mkdir(dir, { recursive: true });
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  let fh;
  try {
    fh = await open(tmp, 'wx', 0o644);
    await fh.writeFile(data);
    await fh.sync();
    await fh.close();
    fh = undefined;
    await rename(tmp, file);
  } catch (err) {
    await fh?.close().catch(() => {});
    await unlink(tmp).catch(() => {});
    const e = err as NodeJS.ErrnoException;
    throw new FileError('io', file, `${file}: cannot write (${e?.code ?? e?.message ?? String(err)})`);
  }
  // Persist the rename itself; not every platform can open a folder, so this is best effort.
  try {
    const dh = await open(dir, 'r');
    await dh.sync().catch(() => {});
    await dh.close();
  } catch {
    /* best effort */
  }
}
