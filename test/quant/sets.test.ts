// Quantized model sets end to end through the command line: `charflow models tiny --weights int8|int4`
// writes sets whose manifests record the format and block and whose Linears are MatMulNBits; the default
// workflow runs on them; bad flags are refused clearly (exit 2) before anything is written.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { main } from '../../cli/main.ts';
import { weightOptions } from '../../cli/checkpoints.ts';
import type { ModelSetManifest } from '../../models/modelset.ts';
import { DEFAULT_BLOCK } from '../../models/quant/formats.ts';
import { scanModel } from '../../engine/runtime/onnx-scan.ts';

function sink() {
  let text = '';
  return { write: (s: string) => { text += s; return true; }, get text() { return text; } };
}

let dir: string;
const cli = async (argv: string[], cwd = dir) => {
  const stdout = sink();
  const stderr = sink();
  const code = await main(argv, { stdout, stderr, cwd });
  return { code, out: stdout.text, err: stderr.text };
};
const manifest = (name: string) => JSON.parse(readFileSync(join(dir, 'data', 'models', name, 'manifest.json'), 'utf8')) as ModelSetManifest;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'charflow-quant-sets-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('quantized tiny sets', () => {
  it('writes tiny-int8 and tiny-int4 with formats and blocks in the manifest, and smaller files', async () => {
    const data = join(dir, 'data');
    for (const args of [[], ['--weights', 'int8'], ['--weights', 'int4', '--block', '32']]) {
      const r = await cli(['models', 'tiny', '--data', data, ...args]);
      expect(r.code, r.err).toBe(0);
    }
    const fp = manifest('tiny');
    const i8 = manifest('tiny-int8');
    const i4 = manifest('tiny-int4');
    expect(i8.name).toBe('tiny-int8');
    for (const c of ['siglip', 'dinov2', 'adapter_static', 'adapter_time', 'flux', 't5', 'clip'] as const) {
      expect([i8.files[c].weights, i8.files[c].block, i8.files[c].dtype]).toEqual(['int8', DEFAULT_BLOCK, 'float32']);
      expect([i4.files[c].weights, i4.files[c].block]).toEqual(['int4', 32]);
      expect(fp.files[c].weights).toBe('fp32');
      expect(i4.files[c].bytes).toBeLessThan(i8.files[c].bytes);
      expect(i8.files[c].bytes).toBeLessThan(fp.files[c].bytes);
    }
    // the VAE (convolutions) stays float32 in every set
    for (const m of [i8, i4]) for (const c of ['vae', 'vae_encoder'] as const) expect([m.files[c]?.weights, m.files[c]?.block]).toEqual(['fp32', undefined]);
    // the graph really holds MatMulNBits (the com.microsoft domain) and the scan counts packed bytes
    const flux = readFileSync(join(data, 'models', 'tiny-int4', i4.files.flux.file));
    expect(flux.includes(Buffer.from('MatMulNBits'))).toBe(true);
    expect(flux.includes(Buffer.from('com.microsoft'))).toBe(true);
    const scan = await scanModel(join(data, 'models', 'tiny-int4', i4.files.flux.file));
    expect(scan.bytes).toBe(i4.files.flux.bytes);
    expect(scan.packedBytes).toBeGreaterThan(0);
    expect(scan.halfBytes).toBe(0);
  }, 300_000);

  for (const set of ['tiny-int8', 'tiny-int4']) {
    it(`runs the default workflow on ${set}`, async () => {
      const out = join(dir, `out-${set}`);
      const r = await cli(['run', 'workflows/instantcharacter.json', '--data', join(dir, 'data'), '--out', out, '--device', 'cpu',
        '--set', `1.set=${set}`, '--set', '7.steps=2', '--set', '7.width=64', '--set', '7.height=64'], process.cwd()); // the repo: the workflow's character path
      expect(r.code, r.err).toBe(0);
      const pngs = readdirSync(out).filter((f) => f.endsWith('.png'));
      expect(pngs.length).toBe(1);
      const img = await sharp(join(out, pngs[0]!)).raw().toBuffer({ resolveWithObject: true });
      expect([img.info.width, img.info.height]).toEqual([64, 64]);
    }, 300_000);
  }
});

describe('bad weight flags', () => {
  it('refuses an unknown format, a block that is not a power of two and int4 asked of the VAE, with exit 2', async () => {
    const data = join(dir, 'bad');
    const cases: [string[], RegExp][] = [
      [['models', 'tiny', '--data', data, '--weights', 'int3'], /unknown weight format "int3".*fp32, fp16, int8, int4/],
      [['models', 'tiny', '--data', data, '--weights', 'int8', '--block', '48'], /block size 48 is not a power of two/],
      [['models', 'convert', '--data', data, '--flux', dir, '--siglip', dir, '--dinov2', dir, '--adapter', dir, '--weights', 'q4'], /unknown weight format "q4"/],
      [['models', 'convert', '--data', data, '--flux', dir, '--siglip', dir, '--dinov2', dir, '--adapter', dir, '--weights', 'int4', '--block', '100'], /block size 100/],
      [['models', 'convert', '--data', data, '--flux', dir, '--siglip', dir, '--dinov2', dir, '--adapter', dir, '--weights', 'int8', '--int4', 'vae'], /int4 was asked of vae, a convolution model/],
    ];
    for (const [argv, message] of cases) {
      const r = await cli(argv);
      expect(r.code, `${argv.join(' ')}\n${r.err}`).toBe(2);
      expect(r.err).toMatch(message);
    }
    expect(existsSync(join(data, 'models'))).toBe(false);
  });

  it('maps --weights and the component lists onto the converter options', () => {
    const base = { dtype: 'fp16' as const, fp32: ['vae' as const, 'vae_encoder' as const] };
    expect(weightOptions(base)).toEqual({ dtype: 'float16', fp32: base.fp32 });
    const o = weightOptions({ ...base, weights: 'int4', int8: ['t5'], block: 64 });
    expect(o).toMatchObject({ dtype: 'float32', weights: 'int4', formats: { t5: 'int8' }, block: 64 });
    expect(() => weightOptions({ ...base, int8: ['t5'], int4: ['t5'] })).toThrow(/t5 is named by both --int8 and --int4/);
    expect(() => weightOptions({ ...base, block: 32 })).toThrow(/--block and --symmetric apply to int8 and int4/);
  });
});
