// Saved workflows: one `<name>.json` file each in the workflows folder. Names are checked (no path
// separators, no dot files), files are written atomically, and every change carries an etag (a
// hash of the file) so that saving over someone else's newer edit is refused, not silently lost.
import { createHash } from 'node:crypto';
import { link, lstat, readdir, realpath, unlink } from 'node:fs/promises';
import path from 'node:path';
import { FileError, readFileLimited, writeFileAtomic } from '../../engine/fsutil.ts';
import { checkSchema, migrateWorkflow } from '../../engine/workflow/index.ts';
import { DEFAULT_MAX_WORKFLOW_BYTES, userText, type ValidationError } from '../../engine/workflow/types.ts';
import type { WorkflowInfo } from '../protocol.ts';

export type StoreErrorCode = 'not_found' | 'conflict' | 'exists' | 'invalid_name' | 'invalid_workflow' | 'too_large' | 'io';

export class StoreError extends Error {
  constructor(
    readonly code: StoreErrorCode,
    message: string,
    readonly errors: ValidationError[] = [],
  ) {
    super(message);
    this.name = 'StoreError';
  }
}

const EXT = '.json';
const MAX_NAME = 100;
/** Letters, digits, space and a few punctuation marks; what every file system accepts. */
const NAME_RE = /^[\p{L}\p{N}_\-.() ,+@&']+$/u;

/** Checks a workflow name (an optional ".json" is dropped); returns it normalised or throws invalid_name. */
export function checkWorkflowName(raw: unknown): string {
  if (typeof raw !== 'string') throw new StoreError('invalid_name', 'a workflow name must be a string');
  let name = raw.normalize('NFC').trim();
  if (name.toLowerCase().endsWith(EXT)) name = name.slice(0, -EXT.length).trimEnd();
  const bad = (why: string): StoreError => new StoreError('invalid_name', `"${userText(raw)}" is not a valid workflow name: ${why}`);
  if (name === '') throw bad('it is empty');
  if (name.length > MAX_NAME) throw bad(`longer than ${MAX_NAME} characters`);
  if (/[/\\]/.test(name)) throw bad('it may not contain / or \\ (workflows live in one folder)');
  if (name.startsWith('.')) throw bad('it may not start with a dot');
  if (name.endsWith('.')) throw bad('it may not end with a dot');
  if (!NAME_RE.test(name)) throw bad("use letters, digits, spaces and _ - . ( ) , + @ & '");
  return name;
}

function etagOf(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('base64url').slice(0, 27);
}

export interface LoadedWorkflow {
  name: string;
  workflow: unknown;
  etag: string;
}

export class WorkflowStore {
  private lock: Promise<unknown> = Promise.resolve();

  constructor(
    readonly dir: string,
    private readonly maxBytes = DEFAULT_MAX_WORKFLOW_BYTES,
  ) {}

  /** Runs changes one at a time, so check-then-write is atomic within this process. */
  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.lock.then(fn, fn);
    this.lock = next.catch(() => {});
    return next;
  }

  private fileOf(name: string): string {
    return path.join(this.dir, name + EXT);
  }

  /** Reads a stored file; undefined when it does not exist. Refuses symlinks that leave the folder. */
  private async read(name: string): Promise<{ bytes: Buffer; etag: string } | undefined> {
    const file = this.fileOf(name);
    let real: string;
    try {
      real = await realpath(file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new StoreError('io', `${name}: cannot read (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
    }
    const root = await realpath(this.dir);
    const rel = path.relative(root, real);
    if (rel.startsWith('..') || path.isAbsolute(rel)) throw new StoreError('not_found', `workflow "${name}" not found`);
    try {
      const bytes = await readFileLimited(real, this.maxBytes);
      return { bytes, etag: etagOf(bytes) };
    } catch (err) {
      if (err instanceof FileError) {
        if (err.code === 'not_found') return undefined;
        if (err.code === 'too_large') throw new StoreError('too_large', `workflow "${name}" is larger than the limit`);
        throw new StoreError('io', `workflow "${name}": ${err.message}`);
      }
      throw err;
    }
  }

  async list(): Promise<WorkflowInfo[]> {
    let entries;
    try {
      entries = await readdir(this.dir, { withFileTypes: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    const items: WorkflowInfo[] = [];
    for (const e of entries) {
      if (!e.name.endsWith(EXT) || e.name.startsWith('.')) continue;
      let name: string;
      try {
        name = checkWorkflowName(e.name);
      } catch {
        continue; // a file the user dropped in that we could not address by name
      }
      try {
        const st = await lstat(this.fileOf(name));
        if (!st.isFile() && !st.isSymbolicLink()) continue;
        const got = await this.read(name);
        if (!got) continue;
        items.push({ name, etag: got.etag, bytes: got.bytes.length, modified: st.mtime.toISOString() });
      } catch {
        continue; // unreadable or too large: not listed
      }
    }
    return items.sort((a, b) => a.name.localeCompare(b.name));
  }

  async load(rawName: unknown): Promise<LoadedWorkflow> {
    const name = checkWorkflowName(rawName);
    const got = await this.read(name);
    if (!got) throw new StoreError('not_found', `workflow "${name}" not found`);
    let workflow: unknown;
    try {
      workflow = JSON.parse(got.bytes.toString('utf8').replace(/^\uFEFF/, ''));
    } catch (err) {
      throw new StoreError('invalid_workflow', `workflow "${name}" is not valid JSON: ${(err as Error).message}`);
    }
    return { name, workflow, etag: got.etag };
  }

  /**
   * Saves when `etag` matches the stored file (null: the file must not exist; undefined: overwrite
   * unconditionally). The workflow must have the file format's structure; unfinished graphs
   * (missing inputs, unknown types) are fine.
   */
  async save(rawName: unknown, workflow: unknown, etag: string | null | undefined): Promise<{ name: string; etag: string }> {
    const name = checkWorkflowName(rawName);
    const migrated = migrateWorkflow(workflow);
    if (!migrated.ok) throw new StoreError('invalid_workflow', migrated.error.message, [migrated.error]);
    const errors = checkSchema(migrated.workflow);
    if (errors.length) throw new StoreError('invalid_workflow', `not a valid workflow: ${errors[0]!.message}`, errors);
    const bytes = Buffer.from(`${JSON.stringify(workflow, null, 2)}\n`, 'utf8');
    if (bytes.length > this.maxBytes) throw new StoreError('too_large', `the workflow is ${bytes.length} bytes, over the ${this.maxBytes} byte limit`);
    return this.exclusive(async () => {
      const current = etag === undefined ? undefined : await this.read(name);
      if (etag === null && current) {
        throw new StoreError('exists', `a workflow named "${name}" already exists; open it first or choose another name`);
      }
      if (typeof etag === 'string' && !current) {
        throw new StoreError('conflict', `workflow "${name}" was deleted since you opened it; save it again as a new workflow`);
      }
      if (typeof etag === 'string' && current && current.etag !== etag) {
        throw new StoreError(
          'conflict',
          `workflow "${name}" was changed (in another tab or by another program) since you opened it; reload it or save under another name`,
        );
      }
      await writeFileAtomic(this.fileOf(name), bytes);
      return { name, etag: etagOf(bytes) };
    });
  }

  async rename(rawFrom: unknown, rawTo: unknown): Promise<{ from: string; to: string; etag: string }> {
    const from = checkWorkflowName(rawFrom);
    const to = checkWorkflowName(rawTo);
    return this.exclusive(async () => {
      const current = await this.read(from);
      if (!current) throw new StoreError('not_found', `workflow "${from}" not found`);
      if (from === to) return { from, to, etag: current.etag };
      try {
        // link() fails if the target exists: no silent overwrite, even against other processes.
        await link(this.fileOf(from), this.fileOf(to));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
          throw new StoreError('exists', `a workflow named "${to}" already exists`);
        }
        throw new StoreError('io', `cannot rename "${from}" (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
      }
      await unlink(this.fileOf(from));
      return { from, to, etag: current.etag };
    });
  }

  /** Deletes a workflow; returns its (normalised) name. */
  async delete(rawName: unknown): Promise<string> {
    const name = checkWorkflowName(rawName);
    return this.exclusive(async () => {
      try {
        const st = await lstat(this.fileOf(name));
        if (!st.isFile() && !st.isSymbolicLink()) throw new StoreError('not_found', `workflow "${name}" not found`);
        await unlink(this.fileOf(name));
        return name;
      } catch (err) {
        if (err instanceof StoreError) throw err;
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new StoreError('not_found', `workflow "${name}" not found`);
        throw new StoreError('io', `cannot delete "${name}" (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
      }
    });
  }
}
