// /api/view for input images: the inputs folder first, then the bundled examples (what LoadCharacter
// reads by default), never anything outside either.
import { mkdtempSync, rmSync, writeFileSync, mkdirSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { resolvePaths } from '../../engine/paths.ts';
import { EXAMPLES_DIR, FileRequestError, resolveView } from '../../editor/server/files.ts';

const dir = mkdtempSync(join(tmpdir(), 'charflow-view-'));
const paths = resolvePaths({ data: dir, env: {} });
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function status(q: Record<string, string>): Promise<number> {
  try {
    await resolveView(paths, q);
    return 200;
  } catch (err) {
    if (err instanceof FileRequestError) return err.status;
    throw err;
  }
}

describe('resolveView', () => {
  it('serves the bundled example character as the editor asks for it', async () => {
    const r = await resolveView(paths, { filename: 'character.png', subfolder: 'workflows/assets', type: 'input' });
    expect(r.file).toBe(join(EXAMPLES_DIR, 'assets', 'character.png'));
    expect(r.contentType).toBe('image/png');
  });

  it('prefers a file of the same name in the inputs folder', async () => {
    mkdirSync(join(paths.inputs, 'workflows', 'assets'), { recursive: true });
    writeFileSync(join(paths.inputs, 'workflows', 'assets', 'character.png'), 'x');
    const r = await resolveView(paths, { filename: 'character.png', subfolder: 'workflows/assets', type: 'input' });
    expect(r.file).toContain(dir);
  });

  it('falls back only for input images below workflows/, and never leaves the examples folder', async () => {
    expect(await status({ filename: 'character.png', subfolder: 'workflows/assets', type: 'output' })).toBe(404);
    expect(await status({ filename: 'character.png', subfolder: 'assets', type: 'input' })).toBe(404);
    expect(await status({ filename: 'package.json', subfolder: 'workflows/..', type: 'input' })).toBe(400);
    mkdirSync(paths.outputs, { recursive: true });
    symlinkSync(join(EXAMPLES_DIR, 'assets'), join(paths.outputs, 'linked'));
    expect(await status({ filename: 'character.png', subfolder: 'linked', type: 'output' })).toBe(403);
  });
});
