// Model sets written before fused attention (no flux.attention in the manifest): they still open and run as
// plain attention, the generated tiny set is rewritten with the fused form by `charflow models tiny` / serve,
// and the rewritten set's graphs carry the If with MultiHeadAttention.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_ATTENTION, MANIFEST_FILE, attentionOf, modelSetComplete, openModelSet } from '../../models/modelset.ts';
import { TINY_SET_NAME, writeTinyModelSet } from '../../models/tiny.ts';
import { countOps, modelOps } from '../../models/onnx/ops.ts';
import { ensureTinySet } from '../../cli/models.ts';
import type { CliContext } from '../../cli/context.ts';

let root: string;

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'charflow-attn-upgrade-'));
  await writeTinyModelSet(join(root, TINY_SET_NAME));
}, 300_000);

afterAll(() => {
  if (root) rmSync(root, { recursive: true, force: true });
});

describe('a model set from before fused attention', () => {
  it('opens as plain attention, and the tiny one is rewritten with the fused form', async () => {
    const set = openModelSet(root, TINY_SET_NAME);
    expect(attentionOf(set.manifest)).toEqual(DEFAULT_ATTENTION);
    const ifs = (file: string) => modelOps(readFileSync(join(root, TINY_SET_NAME, file))).filter((n) => n.op === 'If');
    expect(ifs('flux.onnx').length).toBeGreaterThan(0);
    expect(ifs('flux.onnx').every((n) => countOps(n.subgraphs.then_branch!).get('MultiHeadAttention') === 1)).toBe(true);
    expect(ifs('vae.onnx')).toHaveLength(1);

    const path = join(root, TINY_SET_NAME, MANIFEST_FILE);
    const manifest = JSON.parse(readFileSync(path, 'utf8')) as { flux: Record<string, unknown> };
    delete manifest.flux.attention;
    writeFileSync(path, JSON.stringify(manifest));
    expect(attentionOf(openModelSet(root, TINY_SET_NAME).manifest)).toEqual({ form: 'plain' });
    expect(modelSetComplete(root, TINY_SET_NAME)).toBe(false);

    const said: string[] = [];
    const ctx = { stderr: { write: (s: string) => void said.push(s) } } as unknown as CliContext;
    await ensureTinySet(ctx, root);
    expect(said.join('')).toMatch(/writing the tiny model set/);
    expect(modelSetComplete(root, TINY_SET_NAME)).toBe(true);
    expect(attentionOf(openModelSet(root, TINY_SET_NAME).manifest)).toEqual(DEFAULT_ATTENTION);
  }, 300_000);
});
