// Saved characters over HTTP, for the editor's Characters panel: the list (name, set, size, date) and each
// one's thumbnail as PNG. In scale-out mode also a character file by content hash for workers, as input
// pictures travel (/api/worker/characters/<sha256>?name=NAME): only a saved character whose bytes hash to
// the requested value is sent.
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { DataPaths } from '../../engine/paths.ts';
import type { InputRef } from '../../engine/queue/bullmq.ts';
import type { Services } from '../../nodes/services.ts';
import { encodePng } from '../../nodes/lib/image.ts';
import { CharacterError, characterPath, charactersDir, listCharacters, loadCharacter } from '../../nodes/lib/saved_characters.ts';
import type { ServerContext } from './context.ts';
import { FileRequestError } from './files.ts';

const SHA256_RE = /^[0-9a-f]{64}$/;

/** A saved character a job names, by content hash, for the worker to fetch (undefined when not readable here: the worker's node reports it). */
export async function characterRef(services: Services, nodeId: string, field: string, name: string): Promise<InputRef | undefined> {
  try {
    const bytes = await readFile(characterPath(charactersDir(services.paths.root), name));
    return { nodeId, field, path: name, sha256: createHash('sha256').update(bytes).digest('hex'), ext: '.safetensors', kind: 'character' };
  } catch {
    return undefined;
  }
}

/** Names of the saved characters (what a saved-character parameter may take), sorted. */
export function savedCharacterNames(paths: DataPaths): string[] {
  return listCharacters(charactersDir(paths.root)).map((c) => c.name);
}

function requestError(err: unknown): unknown {
  if (!(err instanceof CharacterError)) return err;
  const status = err.kind === 'not_found' ? 404 : err.kind === 'invalid' && /not a valid character name/.test(err.message) ? 400 : 409;
  return new FileRequestError(status, err.kind, err.message);
}

/** Mounts the character routes; `workers`: the scale-out route too. */
export function mountCharacterApi(ctx: ServerContext, workers: boolean): void {
  const { app, paths } = ctx;
  const dir = (): string => charactersDir(paths.root);

  app.get('/api/characters', (_req, res) => {
    res.setHeader('Cache-Control', 'no-store');
    res.json({ items: listCharacters(dir()).map((c) => ({ name: c.name, set: c.set, bytes: c.bytes, created: c.created })) });
  });

  app.get('/api/characters/:name/thumbnail', async (req, res, next) => {
    try {
      const c = loadCharacter(dir(), req.params.name!);
      res.setHeader('Cache-Control', 'no-cache');
      res.type('image/png').send(Buffer.from(await encodePng(c.thumbnail)));
    } catch (err) {
      next(requestError(err));
    }
  });

  if (!workers) return;
  app.get('/api/worker/characters/:sha256', async (req, res, next) => {
    try {
      const sha = req.params.sha256!;
      const name = req.query.name;
      if (!SHA256_RE.test(sha) || typeof name !== 'string') throw new FileRequestError(400, 'invalid_request', 'expected /api/worker/characters/<sha256>?name=<character>');
      let bytes: Buffer;
      try {
        bytes = await readFile(characterPath(dir(), name));
      } catch (err) {
        if (err instanceof CharacterError) throw err;
        throw new FileRequestError(404, 'not_found', `no saved character "${name}" here`);
      }
      if (createHash('sha256').update(bytes).digest('hex') !== sha) throw new FileRequestError(409, 'changed', `character "${name}" changed since the job was queued`);
      res.type('application/octet-stream').send(bytes);
    } catch (err) {
      next(requestError(err));
    }
  });
}
