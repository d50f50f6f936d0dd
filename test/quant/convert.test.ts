// `models convert --weights int8 --int4 t5 --block 64` on the golden checkpoints laid out as published: the
// manifest records each graph's format and block, the quantized graphs equal those writeModelSet builds from
// the goldens in the same formats byte for byte, a re-run keeps them, another block rebuilds them, and the
// set still runs (FLUX's noise_pred stays near the float32 golden).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { goldenCheckpoints, E2E_SEQ } from '../convert/fixtures.ts';
import { goldenSpec } from '../helpers/goldenset.ts';
import { COMPONENTS, type ConvertEvent, type ConvertOptions, convertCheckpoints } from '../../models/convert/convert.ts';
import { type ComponentName, writeModelSet } from '../../models/modelset.ts';
import { resolveFormats, specWithFormats } from '../../models/quant/formats.ts';

let root: string;
let paths: ReturnType<typeof goldenCheckpoints>;
let models: string;

const options = (over: Partial<ConvertOptions> = {}): ConvertOptions => ({
  ...paths, modelsDir: models, name: 'q', dtype: 'float32', weights: 'int8', formats: { t5: 'int4' }, block: 64, ...E2E_SEQ, warn: () => {}, ...over,
});

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'charflow-quant-convert-'));
  paths = goldenCheckpoints(join(root, 'checkpoints'));
  models = join(root, 'models');
}, 300_000);
afterAll(() => {
  if (root) rmSync(root, { recursive: true, force: true });
});

describe('models convert --weights int8 --int4 t5 --block 64', () => {
  it('records formats, matches writeModelSet in the same formats, resumes, and rebuilds on another block', async () => {
    const events: ConvertEvent[] = [];
    const { manifest } = await convertCheckpoints(options({ onEvent: (e) => events.push(e) }));
    const expected: Partial<Record<ComponentName, [string, number | undefined]>> = {
      siglip: ['int8', 64], dinov2: ['int8', 64], adapter_static: ['int8', 64], adapter_time: ['int8', 64], flux: ['int8', 64],
      t5: ['int4', 64], clip: ['int8', 64], vae: ['fp32', undefined],
    };
    for (const [c, want] of Object.entries(expected)) expect([manifest.files[c as ComponentName].weights, manifest.files[c as ComponentName].block], c).toEqual(want);

    const formats = resolveFormats(COMPONENTS, { base: 'int8', overrides: { t5: 'int4' }, fp32: ['vae', 'vae_encoder'], block: 64 });
    const direct = await writeModelSet({ ...specWithFormats(goldenSpec(E2E_SEQ), formats), name: 'direct' }, join(models, 'direct'));
    for (const c of Object.keys(expected) as ComponentName[]) expect(manifest.files[c].sha256, c).toBe(direct.files[c].sha256);

    const again = await convertCheckpoints(options());
    expect(again.built).toEqual([]);
    const other = await convertCheckpoints(options({ block: 32, force: true }));
    expect(other.built).toEqual(expect.arrayContaining(['siglip', 'dinov2', 'flux', 't5', 'clip']));
    expect(other.built).not.toContain('vae');
    expect(other.manifest.files.flux.block).toBe(32);
  }, 600_000);
});
