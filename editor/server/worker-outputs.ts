// Where a worker's uploaded output goes (scale-out): under the same numbered name the embedded runner
// gives it (`<prefix>_00001.png`, next free number), and for a retried job under the name it got the first
// time, so a retry overwrites its own file instead of adding one.
import path from 'node:path';
import { writeFileAtomic } from '../../engine/fsutil.ts';
import { writeNumbered } from '../../nodes/lib/output.ts';
import { FileRequestError } from './files.ts';

/** Extensions an uploaded output may have. */
const OUTPUT_EXTS = new Set(['.png', '.jpg', '.jpeg', '.webp']);

/** The clean prefix and extension of the name a worker gave its output ("hero_00007.png" -> hero, .png). */
export function outputParts(workerName: string): { stem: string; ext: string } {
  const ext = path.extname(workerName).toLowerCase();
  if (!OUTPUT_EXTS.has(ext)) throw new FileRequestError(415, 'invalid_upload', `outputs must be .png, .jpg or .webp, got "${workerName}"`);
  const stem = path.basename(workerName, path.extname(workerName)).replace(/_\d+$/, '').replace(/[^A-Za-z0-9_-]/g, '') || 'charflow';
  return { stem: stem.slice(0, 64), ext };
}

/** Names given per (folder, job, node, index); bounded: the oldest are forgotten first. */
const assigned = new Map<string, string>();
const REMEMBERED = 10_000;

/**
 * Stores `bytes` in `dir` and returns the file name: `workerName`'s prefix (its `_00001` number dropped)
 * numbered as Save Image does here.
 */
export async function storeWorkerOutput(dir: string, workerName: string, jobId: string, nodeId: string, index: number, bytes: Uint8Array): Promise<string> {
  const { stem, ext } = outputParts(workerName);
  const key = `${dir}\0${jobId}\0${nodeId}\0${index}`;
  const known = assigned.get(key);
  if (known) {
    await writeFileAtomic(path.join(dir, known), bytes);
    return known;
  }
  const name = await writeNumbered(dir, stem, ext.slice(1), bytes);
  assigned.set(key, name);
  if (assigned.size > REMEMBERED) assigned.delete(assigned.keys().next().value!);
  return name;
}
