// `charflow characters add|list|remove|export|import` through the real entry point (bin/charflow.js), as a
// user runs them: what each writes, and the documented exit codes (0 done, 2 a bad name, picture, file or
// argument with nothing written, 1 the work failed).
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readCharacter } from '../../nodes/lib/saved_characters.ts';
import { rewriteCharacter } from '../helpers/characters.ts';
import { ROOT, runCharflow } from '../helpers/cli.ts';

const PICTURE = join(ROOT, 'workflows', 'assets', 'character.png');
let dir: string;
let chars: string;


const charflow = (args: string[], env: Record<string, string> = {}) => runCharflow(dir, args, env);

const files = () => (existsSync(chars) ? readdirSync(chars).sort() : []);
const sha = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex');

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'charflow-chars-'));
  chars = join(dir, 'data', 'characters');
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('charflow characters', { timeout: 300_000 }, () => {
  it('add encodes a picture into <data>/characters/NAME.safetensors (writing the tiny set on first use); list shows it', async () => {
    const add = await charflow(['characters', 'add', 'hero', PICTURE]);
    expect(add.code, add.stderr).toBe(0);
    expect(add.stdout.trim()).toBe(join(chars, 'hero.safetensors'));
    expect(files()).toEqual(['hero.safetensors']);
    const c = readCharacter(join(chars, 'hero.safetensors'));
    expect([c.name, c.set]).toEqual(['hero', 'tiny']);

    const list = await charflow(['characters', 'list']);
    expect(list.code, list.stderr).toBe(0);
    const lines = list.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^NAME\s+SET\s+SIZE\s+CREATED$/);
    expect(lines[1]).toMatch(new RegExp(`^hero\\s+tiny\\s+[\\d.]+ KiB\\s+${c.created.slice(0, 10)} `));
    const json = await charflow(['characters', 'list', '--json']);
    expect(json.code).toBe(0);
    expect(JSON.parse(json.stdout)).toEqual([{ name: 'hero', set: 'tiny', bytes: readFileSync(join(chars, 'hero.safetensors')).length, created: c.created, sha256: sha(join(chars, 'hero.safetensors')) }]);
  });

  it('runs workflows/storyboard.json headless: one saved character, four pictures', async () => {
    const wf = JSON.parse(readFileSync(join(ROOT, 'workflows', 'storyboard.json'), 'utf8')) as { nodes: Record<string, { type: string }> };
    const sets = Object.entries(wf.nodes).filter(([, n]) => n.type === 'DiTSample')
      .flatMap(([id]) => ['--set', `${id}.width=64`, '--set', `${id}.height=64`, '--set', `${id}.steps=2`]);
    const r = await charflow(['run', join(ROOT, 'workflows', 'storyboard.json'), ...sets, '--device', 'cpu']);
    expect(r.code, r.stderr).toBe(0);
    const outputs = readdirSync(join(dir, 'data', 'outputs')).filter((f) => f.startsWith('storyboard_')).sort();
    expect(outputs).toEqual(['storyboard_1_00001.png', 'storyboard_2_00001.png', 'storyboard_3_00001.png', 'storyboard_4_00001.png']);
  });

  it('add refuses a duplicate (2, file untouched) unless --force, a name with path characters, a missing or broken picture, an unknown set', async () => {
    const before = sha(join(chars, 'hero.safetensors'));
    const tensorsBefore = readCharacter(join(chars, 'hero.safetensors')).sha256;
    const dup = await charflow(['characters', 'add', 'hero', PICTURE]);
    expect(dup.code).toBe(2);
    expect(dup.stderr).toMatch(/character named "hero" exists already.*--force/);
    expect(sha(join(chars, 'hero.safetensors'))).toBe(before);
    writeFileSync(join(dir, 'broken.png'), 'not a picture');
    for (const [args, why] of [
      [['../evil', PICTURE], /not a valid character name/],
      [['a/b', PICTURE], /not a valid character name/],
      [['villain', join(dir, 'nowhere.png')], /no such file/],
      [['villain', join(dir, 'broken.png')], /broken\.png/],
      [['villain', PICTURE, '--set', 'nosuch'], /--set: model set "nosuch" not found/],
    ] as const) {
      const r = await charflow(['characters', 'add', ...args]);
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(2);
      expect(r.stderr).toMatch(why);
    }
    expect(files()).toEqual(['hero.safetensors']);
    expect(existsSync(join(dir, 'evil.safetensors'))).toBe(false);
    const forced = await charflow(['characters', 'add', 'hero', PICTURE, '--force']);
    expect(forced.code, forced.stderr).toBe(0);
    // The same picture with the same set: the same tensors.
    expect(readCharacter(join(chars, 'hero.safetensors')).sha256).toBe(tensorsBefore);
  });

  it('export copies the file; remove deletes it; import checks it and brings it back byte for byte', async () => {
    const shared = join(dir, 'hero-shared.safetensors');
    const exp = await charflow(['characters', 'export', 'hero', shared]);
    expect(exp.code, exp.stderr).toBe(0);
    expect(sha(shared)).toBe(sha(join(chars, 'hero.safetensors')));
    expect((await charflow(['characters', 'export', 'hero', shared])).code).toBe(2); // exists: --force
    expect((await charflow(['characters', 'export', 'nobody', join(dir, 'x.safetensors')])).code).toBe(2);

    const rm = await charflow(['characters', 'remove', 'hero']);
    expect(rm.code, rm.stderr).toBe(0);
    expect(files()).toEqual([]);
    const again = await charflow(['characters', 'remove', 'hero']);
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(/no saved character named "hero"/);

    const imp = await charflow(['characters', 'import', shared]);
    expect(imp.code, imp.stderr).toBe(0);
    expect(sha(join(chars, 'hero.safetensors'))).toBe(sha(shared));
    const dup = await charflow(['characters', 'import', shared]);
    expect(dup.code).toBe(2);
    expect(dup.stderr).toMatch(/exists already/);
    const renamed = await charflow(['characters', 'import', shared, '--name', 'hero2']);
    expect(renamed.code, renamed.stderr).toBe(0);
    expect(readCharacter(join(chars, 'hero2.safetensors')).name).toBe('hero2');
    expect((await charflow(['characters', 'import', shared, '--force'])).code).toBe(0);
    expect(files()).toEqual(['hero.safetensors', 'hero2.safetensors']);
  });

  it('import refuses a corrupt, truncated, edited, mis-shaped or other-set file with a clear error, writing nothing', async () => {
    const shared = join(dir, 'hero-shared.safetensors');
    const good = readFileSync(shared);
    writeFileSync(join(dir, 'junk.safetensors'), 'garbage');
    writeFileSync(join(dir, 'cut.safetensors'), good.subarray(0, good.length - 64));
    const edited = Buffer.from(good);
    edited[edited.length - 1] ^= 1;
    writeFileSync(join(dir, 'edited.safetensors'), edited);
    rewriteCharacter(shared, join(dir, 'wide.safetensors'), (t, m) => {
      const [, n, c] = t.get('tokens')!.dims as [number, number, number];
      t.set('tokens', { dtype: 'float32', dims: [1, n, c + 2], data: new Float32Array(n * (c + 2)) });
      m.name = 'wide';
    });
    rewriteCharacter(shared, join(dir, 'other.safetensors'), (_t, m) => {
      m.name = 'other';
      m.set_identity = '0'.repeat(64);
      m.set = 'tiny-elsewhere';
    });
    const before = files();
    for (const [file, args, why] of [
      ['junk.safetensors', [], /corrupt or truncated/],
      ['cut.safetensors', [], /corrupt or truncated/],
      ['edited.safetensors', ['--set', 'tiny'], /do not match the hash in its header/],
      ['wide.safetensors', [], /its tokens are \[1, \d+, \d+\] float32, the adapter of model set "tiny" takes/],
      ['other.safetensors', ['--set', 'tiny'], /made with model set "tiny-elsewhere" .*uses model set "tiny"/],
      ['other.safetensors', [], /model set "tiny-elsewhere" not found/],
      ['nowhere.safetensors', [], /no such file/],
      ['hero-shared.safetensors', ['--name', '../x'], /not a valid character name/],
    ] as const) {
      const r = await charflow(['characters', 'import', join(dir, file), ...args]);
      expect(r.code, `${file}: ${r.stderr}`).toBe(2);
      expect(r.stderr, file).toMatch(why);
    }
    expect(files()).toEqual(before);
  });
});
