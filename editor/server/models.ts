// /api/models: the installed model sets (format, size on disk, loaded in this process or not), and
// POST /api/models/:name/unload to free the memory one holds. The editor's models panel and Load Models' list.
import path from 'node:path';
import type express from 'express';
import type { DataPaths } from '../../engine/paths.ts';
import { listModelSets, type ModelSetInfo } from '../../models/modelsets.ts';
import { modelSetDir } from '../../models/modelset.ts';

export interface ModelSetItem extends ModelSetInfo {
  /** Graphs of the set loaded in this server's session pool now. */
  loaded: number;
}

interface Pool {
  stats(): { loaded: string[] };
  unload(modelPath: string): Promise<void>;
}

const inSet = (setDir: string, file: string): boolean => {
  const rel = path.relative(setDir, file);
  return rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel);
};

export function modelSetItems(paths: DataPaths, pool: Pool): ModelSetItem[] {
  const loaded = pool.stats().loaded;
  return listModelSets(paths.models).map((s) => {
    const dir = path.join(paths.models, s.name);
    return { ...s, loaded: loaded.filter((f) => inSet(dir, f)).length };
  });
}

export function mountModelsApi(app: express.Express, paths: DataPaths, pool: Pool): void {
  app.get('/api/models', (_req, res) => {
    res.json({ sets: modelSetItems(paths, pool) });
  });
  app.post('/api/models/:name/unload', async (req, res, next) => {
    try {
      let dir: string;
      try {
        dir = modelSetDir(paths.models, req.params.name!);
      } catch (err) {
        res.status(400).json({ error: { code: 'invalid_name', message: (err as Error).message } });
        return;
      }
      const files = pool.stats().loaded.filter((f) => inSet(dir, f));
      // A graph a running job uses goes once that job is done with it (the pool waits).
      await Promise.all(files.map((f) => pool.unload(f)));
      res.json({ name: req.params.name, unloaded: files.length });
    } catch (err) {
      next(err);
    }
  });
}
