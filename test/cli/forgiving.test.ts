// The forgiving command line (issue 25, item 7), each through the real binary (`node bin/charflow.js`), as a
// user types it: pictures from anywhere, workflows by name, PNGs and ComfyUI API prompts as workflows, where the
// pictures went, and errors that say what to do.
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { workflowToApi } from '../../editor/server/comfy/convert.ts';
import { nodeRegistry } from '../../nodes/registry.ts';
import type { Workflow } from '../../engine/workflow/types.ts';
import { ROOT, runCharflow } from '../helpers/cli.ts';

const CHARACTER = join(ROOT, 'workflows', 'assets', 'character.png');
let dir: string;
let data: string;


const charflow = (args: string[], env: Record<string, string> = {}) => runCharflow(dir, args, env);

/** The absolute paths listed after "picture(s) written:", which must be the last lines of stdout. */
function writtenPictures(stdout: string): string[] {
  const lines = stdout.trimEnd().split('\n');
  const at = lines.findIndex((l) => /^pictures? written:$/.test(l));
  expect(at, stdout).toBeGreaterThanOrEqual(0);
  return lines.slice(at + 1).map((l) => l.trim());
}

const listen = (port = 0): Promise<Server> => new Promise((resolve, reject) => {
  const s = createServer();
  s.once('error', reject);
  s.listen(port, '127.0.0.1', () => resolve(s));
});
const portOf = (s: Server): number => (s.address() as { port: number }).port;
const close = (s: Server): Promise<void> => new Promise((r) => s.close(() => r()));

/** A small run of the default workflow: 64x64, one step, on the tiny set. */
const SMALL = ['--set', '7.width=64', '--set', '7.height=64', '--set', '7.steps=1', '--device', 'cpu'];

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'charflow-forgiving-'));
  data = join(dir, 'data');
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('a forgiving command line, through bin/charflow.js', { timeout: 180_000 }, () => {
  let demoPicture: string;

  it('demo --character PIC copies the picture into inputs, says so, and ends with the absolute path of each picture', async () => {
    mkdirSync(join(dir, 'pics'));
    copyFileSync(CHARACTER, join(dir, 'pics', 'hero.png'));
    const r = await charflow(['demo', '--character', 'pics/hero.png', '--width', '64', '--height', '64', '--steps', '1', '--device', 'cpu']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain(`copied ${join(dir, 'pics', 'hero.png')} to ${join(data, 'inputs', 'hero.png')}`);
    expect(readFileSync(join(data, 'inputs', 'hero.png')).equals(readFileSync(CHARACTER))).toBe(true);
    const files = writtenPictures(r.stdout);
    expect(files).toEqual([join(data, 'outputs', 'instantcharacter_00001.png')]);
    for (const f of files) expect(isAbsolute(f) && existsSync(f)).toBe(true);
    demoPicture = files[0]!;
  });

  it('--set N.path=PIC: the same name with other content goes in under its content hash', async () => {
    // Another picture also called hero.png: inputs/hero.png must stay as it is.
    mkdirSync(join(dir, 'other'));
    const other = join(dir, 'other', 'hero.png');
    await sharp({ create: { width: 40, height: 30, channels: 3, background: '#3366cc' } }).png().toFile(other);
    const r = await charflow(['run', 'instantcharacter', '--set', `2.path=${other}`, '--target', '2', '--device', 'cpu']);
    expect(r.code, r.stderr).toBe(0);
    const copied = readdirSync(join(data, 'inputs')).filter((f) => f !== 'hero.png');
    expect(copied).toHaveLength(1);
    expect(copied[0]).toMatch(/^[0-9a-f]{16}\.png$/);
    expect(readFileSync(join(data, 'inputs', copied[0]!)).equals(readFileSync(other))).toBe(true);
    expect(readFileSync(join(data, 'inputs', 'hero.png')).equals(readFileSync(CHARACTER))).toBe(true);
    expect(r.stderr).toContain(`copied ${other} to ${join(data, 'inputs', copied[0]!)}`);
  });

  it('run NAME finds NAME.json in the data folder\'s workflows and suggests the nearest name otherwise', async () => {
    mkdirSync(join(data, 'workflows'), { recursive: true });
    writeFileSync(join(data, 'workflows', 'my-hero.json'), readFileSync(join(ROOT, 'workflows', 'instantcharacter.json')));
    const ok = await charflow(['run', 'my-hero', '--target', '2', '--device', 'cpu']);
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout).toContain('node 2 (LoadCharacter)');

    const typo = await charflow(['run', 'my-heor', '--device', 'cpu']);
    expect(typo.code).toBe(2);
    expect(typo.stderr).toContain('did you mean "my-hero"?');
    const bundled = await charflow(['validate', 'two_charcters']);
    expect(bundled.code).toBe(2);
    expect(bundled.stdout).toContain('did you mean "two_characters"?');
  });

  it('run pic.png runs the workflow the charflow PNG carries', async () => {
    const r = await charflow(['run', demoPicture, '--device', 'cpu']);
    expect(r.code, r.stderr).toBe(0);
    const files = writtenPictures(r.stdout);
    expect(files).toEqual([join(data, 'outputs', 'instantcharacter_00002.png')]);
    // The PNG carried 64x64: the new picture has that size.
    expect(await sharp(files[0]!).metadata()).toMatchObject({ width: 64, height: 64 });
  });

  it('a ComfyUI API prompt runs too (converted)', async () => {
    const wf = JSON.parse(readFileSync(join(ROOT, 'workflows', 'instantcharacter.json'), 'utf8')) as Workflow;
    const api = workflowToApi(wf, nodeRegistry());
    writeFileSync(join(dir, 'api.json'), JSON.stringify(api));
    const r = await charflow(['run', 'api.json', ...SMALL]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain('a ComfyUI API prompt, converted');
    expect(writtenPictures(r.stdout)).toEqual([join(data, 'outputs', 'instantcharacter_00003.png')]);
  });

  it('charflow nodes prints each node\'s inputs, params and outputs', async () => {
    const r = await charflow(['nodes']);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.split('\n');
    const at = lines.findIndex((l) => /^ {2}DiTSample\s/.test(l));
    expect(at).toBeGreaterThan(0);
    expect(lines[at + 1]).toMatch(/^ {6}inputs: {2}models \(MODELS\), conditioning \(CONDITIONING\), .*init \(LATENT, optional\)/);
    expect(lines[at + 2]).toMatch(/^ {6}params: {2}.*steps \(integer 1\.\.\d+ = 28\)/);
    expect(lines[at + 3]).toBe('      outputs: latent (LATENT)');
  });

  it('validate catches an img2img init latent whose size differs from the sampler\'s', async () => {
    const wf = JSON.parse(readFileSync(join(ROOT, 'workflows', 'img2img.json'), 'utf8')) as { nodes: Record<string, { type: string; inputs: Record<string, unknown> }> };
    const load = Object.entries(wf.nodes).find(([, n]) => n.type === 'LoadImage')!;
    const sampler = Object.entries(wf.nodes).find(([, n]) => n.type === 'DiTSample')!;
    expect((await charflow(['validate', 'img2img'])).code).toBe(0);
    load[1].inputs.width = 512;
    writeFileSync(join(dir, 'img2img-bad.json'), JSON.stringify(wf));
    const r = await charflow(['validate', 'img2img-bad']);
    expect(r.code).toBe(2);
    expect(r.stdout).toContain(`node ${sampler[0]} (DiTSample) input "init": the init latent is 512x${load[1].inputs.height as number} (from node ${load[0]} (LoadImage)) but the sampler makes ${sampler[1].inputs.width as number}x${sampler[1].inputs.height as number}`);
  });

  it('validate names a picture that is not there, and warns of a model set that is not installed', async () => {
    const wf = JSON.parse(readFileSync(join(ROOT, 'workflows', 'instantcharacter.json'), 'utf8')) as { nodes: Record<string, { type: string; inputs: Record<string, unknown> }> };
    const [charId, character] = Object.entries(wf.nodes).find(([, n]) => n.type === 'LoadCharacter')!;
    const [modelsId] = Object.entries(wf.nodes).find(([, n]) => n.type === 'LoadModels')!;
    wf.nodes[modelsId]!.inputs.set = 'absent-set';
    writeFileSync(join(dir, 'absent-set.json'), JSON.stringify(wf));
    const warned = await charflow(['validate', 'absent-set.json']);
    expect(warned.code, warned.stderr).toBe(0);
    expect(warned.stderr).toContain(`warning: node ${modelsId} (LoadModels) input "set": model set "absent-set" is not in ${join(data, 'models')} (installed: tiny)`);
    character.inputs.path = 'nobody.png';
    writeFileSync(join(dir, 'no-picture.json'), JSON.stringify(wf));
    const r = await charflow(['validate', 'no-picture.json']);
    expect(r.code).toBe(2);
    expect(r.stdout).toContain(`node ${charId} (LoadCharacter) input "path": image "nobody.png" not found in ${join(data, 'inputs')}`);
  });

  it('models convert names every missing required option at once', async () => {
    const r = await charflow(['models', 'convert', '--siglip', dir]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('models convert needs --flux, --dinov2, --adapter');
  });

  it('models pull without network names the host and --endpoint / HF_ENDPOINT', async () => {
    const s = await listen();
    const port = portOf(s);
    await close(s);
    const r = await charflow(['models', 'pull', '--endpoint', `http://127.0.0.1:${port}`, '--download-only']);
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toContain(`cannot reach 127.0.0.1:${port}`);
    expect(r.stderr).toContain('--endpoint (or HF_ENDPOINT)');
  });

  it('serve checks its port and Redis before writing any model', async () => {
    const fresh = join(dir, 'fresh');
    const taken = await listen();
    try {
      const r = await charflow(['serve', '--port', String(portOf(taken)), '--device', 'cpu', '--data', fresh]);
      expect(r.code, r.stderr).toBe(1);
      expect(r.stderr).toContain(`port ${portOf(taken)} on 127.0.0.1 is in use`);
      expect(r.stderr).not.toContain('writing the tiny model set');
      expect(existsSync(join(fresh, 'models', 'tiny'))).toBe(false);
    } finally {
      await close(taken);
    }
    const s = await listen();
    const redisPort = portOf(s);
    await close(s);
    const r = await charflow(['serve', '--port', '0', '--device', 'cpu', '--data', fresh, '--queue', `redis://127.0.0.1:${redisPort}`]);
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toContain(`cannot reach Redis at redis://127.0.0.1:${redisPort}`);
    expect(existsSync(join(fresh, 'models', 'tiny'))).toBe(false);
  });
});
