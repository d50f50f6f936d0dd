// /api/templates: every bundled workflow (workflows/*.json) with its description, for the editor's
// Templates menu; /api/templates/:name returns one.
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import type express from 'express';
import { EXAMPLES_DIR } from './files.ts';

export interface TemplateInfo {
  name: string;
  /** meta.description, else meta.title, else nothing. */
  description: string;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/;

async function readTemplate(name: string): Promise<Record<string, unknown>> {
  return JSON.parse(await readFile(path.join(EXAMPLES_DIR, `${name}.json`), 'utf8')) as Record<string, unknown>;
}

export async function listTemplates(): Promise<TemplateInfo[]> {
  const files = (await readdir(EXAMPLES_DIR)).filter((f) => f.endsWith('.json')).sort();
  const out: TemplateInfo[] = [];
  for (const f of files) {
    const name = f.slice(0, -5);
    try {
      const meta = (await readTemplate(name)).meta as { description?: unknown; title?: unknown } | undefined;
      const d = typeof meta?.description === 'string' ? meta.description : typeof meta?.title === 'string' ? meta.title : '';
      out.push({ name, description: d });
    } catch {
      // not JSON: not offered
    }
  }
  return out;
}

export function mountTemplatesApi(app: express.Express): void {
  app.get('/api/templates', async (_req, res, next) => {
    try {
      res.json({ templates: await listTemplates() });
    } catch (err) {
      next(err);
    }
  });
  app.get('/api/templates/:name', async (req, res, next) => {
    const name = req.params.name!;
    if (!NAME.test(name)) {
      res.status(400).json({ error: { code: 'invalid_name', message: `"${name}" is not a template name` } });
      return;
    }
    try {
      res.json(await readTemplate(name));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') res.status(404).json({ error: { code: 'not_found', message: `no template "${name}"` } });
      else next(err);
    }
  });
}
