// Writing result images: a fresh numbered name per image, written under a temporary name and
// renamed, so nothing ever points at a partial file.
import { mkdir, open, readdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';

export interface SavedImage {
  filename: string;
  subfolder: string;
  type: 'output' | 'temp';
}

export async function writeNumbered(dir: string, prefix: string, ext: string, bytes: Uint8Array): Promise<string> {
  await mkdir(dir, { recursive: true });
  const pattern = new RegExp(`^${prefix.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}_(\\d+)\\.${ext}$`);
  let next = 1;
  for (const name of await readdir(dir)) {
    const m = pattern.exec(name);
    if (m) next = Math.max(next, Number(m[1]) + 1);
  }
  const tmp = join(dir, `.${prefix}_${process.pid}_${Date.now()}.partial`);
  const handle = await open(tmp, 'w');
  try {
    await handle.writeFile(bytes);
    await handle.sync();
  } finally {
    await handle.close();
  }
  for (;; next++) {
    const name = `${prefix}_${String(next).padStart(5, '0')}.${ext}`;
    try {
      // Claim the name exclusively, so concurrent writers never overwrite each other.
      await (await open(join(dir, name), 'wx')).close();
      await rename(tmp, join(dir, name));
      return name;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
        await rm(tmp, { force: true });
        throw err;
      }
    }
  }
}
