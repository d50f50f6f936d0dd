// Model sets written before the VAE encoder existed: a clear error when the graph is asked for, and the
// generated tiny set is rewritten by `charflow models tiny` / `serve` instead of being used as it is.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MANIFEST_FILE, modelSetComplete, modelSetExists, openModelSet } from '../../models/modelset.ts';
import { TINY_SET_NAME, writeTinyModelSet } from '../../models/tiny.ts';
import { ensureTinySet } from '../../cli/models.ts';
import type { CliContext } from '../../cli/context.ts';

let root: string;

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'charflow-upgrade-'));
  await writeTinyModelSet(join(root, TINY_SET_NAME));
}, 300_000);

afterAll(() => {
  if (root) rmSync(root, { recursive: true, force: true });
});

describe('a model set from before the VAE encoder', () => {
  it('is incomplete, says so when the encoder is asked for, and the tiny one is rewritten', async () => {
    expect(modelSetComplete(root, TINY_SET_NAME)).toBe(true);
    const path = join(root, TINY_SET_NAME, MANIFEST_FILE);
    const manifest = JSON.parse(readFileSync(path, 'utf8')) as { files: Record<string, unknown> };
    delete manifest.files.vae_encoder;
    writeFileSync(path, JSON.stringify(manifest));
    expect(modelSetExists(root, TINY_SET_NAME)).toBe(true);
    expect(modelSetComplete(root, TINY_SET_NAME)).toBe(false);
    expect(() => openModelSet(root, TINY_SET_NAME).path('vae_encoder')).toThrow(/no vae_encoder graph \(it was written by an older charflow\).*models tiny --force/);

    const said: string[] = [];
    const ctx = { stderr: { write: (s: string) => void said.push(s) } } as unknown as CliContext;
    await ensureTinySet(ctx, root);
    expect(said.join('')).toMatch(/writing the tiny model set/);
    expect(modelSetComplete(root, TINY_SET_NAME)).toBe(true);
    expect(openModelSet(root, TINY_SET_NAME).path('vae_encoder')).toMatch(/vae_encoder\.onnx$/);
  }, 300_000);
});
