// LoRA files for the Load LoRA nodes: GET /api/loras lists <data>/loras, PUT /api/loras/<name> stores one
// (the body is the file, streamed to disk, never held in memory; it must be a readable safetensors file).
import { createWriteStream } from 'node:fs';
import { mkdir, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { Express } from 'express';
import type { DataPaths } from '../../engine/paths.ts';
import { SafetensorsFile } from '../../models/weights/safetensors.ts';
import { listLoras, lorasDir } from '../../nodes/lib/lora.ts';
import { FileRequestError } from './files.ts';

/** LoRA files are larger than pictures: up to this many bytes per upload. */
const MAX_LORA_BYTES = 4 * 1024 ** 3;

/** A safe file name for the loras folder (no folders, no dot files, .safetensors). */
function loraFileName(raw: string): string {
  const base = raw.split(/[/\\]/).pop() ?? '';
  const stem = base.replace(/\.safetensors$/i, '').normalize('NFC').replace(/[^\p{L}\p{N}_\-. ()]+/gu, '_').replace(/^[.\s_]+/u, '').slice(0, 100);
  if (!stem) throw new FileRequestError(400, 'invalid_upload', `"${raw}" is not a usable file name`);
  return `${stem}.safetensors`;
}

export function registerLoraRoutes(app: Express, paths: DataPaths): void {
  app.get('/api/loras', (_req, res) => {
    res.json({ files: listLoras(paths) });
  });

  app.put('/api/loras/:name', async (req, res, next) => {
    const dir = lorasDir(paths);
    let tmp: string | undefined;
    try {
      const name = loraFileName(req.params.name ?? '');
      const declared = Number(req.headers['content-length'] ?? NaN);
      if (declared > MAX_LORA_BYTES) throw new FileRequestError(413, 'too_large', `LoRA files are limited to ${MAX_LORA_BYTES} bytes`);
      await mkdir(dir, { recursive: true });
      tmp = path.join(dir, `.${name}.${process.pid}.${Date.now()}.partial`);
      let bytes = 0;
      req.on('data', (chunk: Buffer) => {
        bytes += chunk.length;
        if (bytes > MAX_LORA_BYTES) req.destroy(new FileRequestError(413, 'too_large', `LoRA files are limited to ${MAX_LORA_BYTES} bytes`));
      });
      await pipeline(req, createWriteStream(tmp));
      let tensors = 0;
      try {
        const f = new SafetensorsFile(tmp);
        tensors = f.keys().length;
        f.close();
      } catch (err) {
        throw new FileRequestError(415, 'invalid_upload', `not a safetensors file: ${(err as Error).message}`);
      }
      if (!tensors) throw new FileRequestError(415, 'invalid_upload', 'the file holds no tensors');
      await rename(tmp, path.join(dir, name));
      tmp = undefined;
      res.json({ name, bytes, tensors });
    } catch (err) {
      next(err);
    } finally {
      if (tmp) await rm(tmp, { force: true });
    }
  });
}
