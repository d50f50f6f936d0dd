// A picture named on the command line from anywhere (`--set 2.path=~/me.png`, `demo --character`) is
// copied into the inputs folder, where image nodes may read: under its own name when that is free or
// holds the same bytes, else under its content hash, so an existing different picture is never replaced.
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { copyFile, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import type { NodeDef } from '../engine/node.ts';
import type { DataPaths } from '../engine/paths.ts';
import { checkImage, cleanUploadName, FileRequestError } from '../editor/server/files.ts';
import { CliError, type OutStream } from './context.ts';

/** Pictures above this size are refused (as the image nodes do). */
const MAX_PICTURE_BYTES = 50 * 1024 * 1024;

const inside = (root: string, p: string): boolean => {
  const rel = path.relative(root, p);
  return rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel);
};

/**
 * Copies `file` into `paths.inputs` (see above) and returns the name image nodes take: its path relative
 * to the inputs folder. A file already inside the inputs folder is not copied.
 */
export async function importPicture(paths: DataPaths, file: string, what: string): Promise<{ name: string; copied: boolean }> {
  const abs = path.resolve(file);
  if (inside(path.resolve(paths.inputs), abs)) return { name: path.relative(paths.inputs, abs).split(path.sep).join('/'), copied: false };
  const info = await stat(abs).catch(() => undefined);
  if (!info?.isFile()) throw new CliError(`${what}: ${abs} is not a file`);
  if (info.size > MAX_PICTURE_BYTES) throw new CliError(`${what}: ${abs} is ${info.size} bytes, over the ${MAX_PICTURE_BYTES} byte limit`);
  const bytes = await readFile(abs);
  let format: string;
  try {
    format = await checkImage(bytes);
  } catch (err) {
    if (err instanceof FileRequestError) throw new CliError(`${what}: ${abs}: ${err.message}`);
    throw err;
  }
  const own = cleanUploadName(path.basename(abs), format);
  const hashed = `${createHash('sha256').update(bytes).digest('hex').slice(0, 16)}${path.extname(own)}`;
  for (const name of [own, hashed]) {
    const target = path.join(paths.inputs, name);
    if (!existsSync(target)) {
      await copyFile(abs, target);
      return { name, copied: true };
    }
    if ((await readFile(target)).equals(bytes)) return { name, copied: false };
  }
  throw new CliError(`${what}: ${path.join(paths.inputs, hashed)} exists with other content`);
}

/** A value that names an existing file outside the places image nodes look in already. */
function externalFile(value: unknown, cwd: string, paths: DataPaths): string | undefined {
  if (typeof value !== 'string' || value === '') return undefined;
  if (!path.isAbsolute(value) && existsSync(path.join(paths.inputs, value))) return undefined; // an input by name
  const abs = path.resolve(cwd, value);
  return existsSync(abs) ? abs : undefined;
}

/**
 * For each --set on an image parameter (format "image") naming a file outside the inputs folder: copies
 * it in and points the assignment at the copy, saying so on `log`.
 */
export async function importSetPictures(
  sets: { node: string; input: string; value: unknown; text: string }[],
  raw: unknown,
  registry: ReadonlyMap<string, NodeDef<unknown>>,
  paths: DataPaths,
  cwd: string,
  log: OutStream,
): Promise<void> {
  const nodes = (raw as { nodes?: Record<string, { type?: unknown }> } | undefined)?.nodes ?? {};
  for (const s of sets) {
    const type = Object.hasOwn(nodes, s.node) ? nodes[s.node]?.type : undefined;
    const param = typeof type === 'string' ? registry.get(type)?.params[s.input] : undefined;
    if (param?.format !== 'image') continue;
    const file = externalFile(s.value, cwd, paths);
    if (!file) continue;
    const { name, copied } = await importPicture(paths, file, `--set ${s.text}`);
    log.write(`${copied ? 'copied' : 'using'} ${file} ${copied ? 'to' : 'as'} ${path.join(paths.inputs, name)}\n`);
    s.value = name;
  }
}
