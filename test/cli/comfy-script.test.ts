// The README's scripting example, run as a user would run it: the same file, with node, against a real
// server that has a token, uploading a picture of the user's own.
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import sharp from 'sharp';
import { ensureDirs, resolvePaths } from '../../engine/paths.ts';
import { writeTinyModelSet } from '../../models/tiny.ts';
import { PACKAGE_ROOT } from '../../nodes/services.ts';
import { startServer } from '../../editor/server/index.ts';

const run = promisify(execFile);
const SCRIPT = join(PACKAGE_ROOT, 'scripts', 'comfyui-client.mjs');
const TOKEN = 'script-test-token';
let dir: string;
let server: Awaited<ReturnType<typeof startServer>> | undefined;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'charflow-script-'));
  const paths = resolvePaths({ data: join(dir, 'data'), env: {} });
  await ensureDirs(paths);
  await writeTinyModelSet(join(paths.models, 'tiny'));
  server = await startServer({ paths, host: '127.0.0.1', port: 0, token: TOKEN, staticDir: null, log: () => {} });
}, 120_000);

afterAll(async () => {
  await server?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('the ComfyUI scripting example', () => {
  it('is in the README word for word', () => {
    const readme = readFileSync(join(PACKAGE_ROOT, 'README.md'), 'utf8');
    const blocks = [...readme.matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1]);
    expect(blocks).toContain(readFileSync(SCRIPT, 'utf8'));
  });

  it('uploads the picture, runs the pipeline with the token and saves the image', async () => {
    const picture = join(dir, 'my-hero.png');
    await sharp({ create: { width: 90, height: 120, channels: 3, background: '#c03030' } }).png().toFile(picture);
    const env = { ...process.env, CHARFLOW_HOST: `127.0.0.1:${server!.port}`, CHARFLOW_TOKEN: TOKEN };
    const { stdout } = await run(process.execPath, [SCRIPT, picture, 'a hero in the rain'], { cwd: dir, env, timeout: 180_000 });
    expect(stdout).toMatch(/node 7: 8\/8/);
    expect(stdout).toContain('wrote from-script.png');
    const meta = await sharp(join(dir, 'from-script.png')).metadata();
    expect([meta.width, meta.height]).toEqual([512, 512]);
    expect(existsSync(join(dir, 'data', 'inputs', 'my-hero.png'))).toBe(true);
  }, 240_000);

  it('is refused without the token', async () => {
    const { CHARFLOW_TOKEN: _unused, ...rest } = process.env;
    const env = { ...rest, CHARFLOW_HOST: `127.0.0.1:${server!.port}` };
    await expect(run(process.execPath, [SCRIPT, join(dir, 'my-hero.png')], { cwd: dir, env, timeout: 60_000 })).rejects.toThrow(/upload failed: 401/);
  }, 120_000);
});
