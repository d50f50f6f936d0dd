// The editor's pure helpers, without a browser: widget value rules from parameter schemas, and the
// PNG text reader that reopens workflows from dropped images.
import { describe, expect, it } from 'vitest';
import sharp from 'sharp';
import { initialValue, numberPrecision, numberStep, paramInfo, randomSeed, snapNumber } from '../../editor/app/schema.ts';
import { isPng, readPngText } from '../../editor/app/png.ts';
import { addPngText } from '../../nodes/lib/image.ts';
import { buildCatalog } from '../../editor/server/catalog.ts';
import { nodeRegistry } from '../../nodes/registry.ts';

const catalog = buildCatalog(nodeRegistry());
const param = (type: string, name: string) => paramInfo(name, catalog.find((n) => n.type === type)!.params[name]!);

describe('widget values from parameter schemas', () => {
  it('snaps integers to multipleOf inside [minimum, maximum]', () => {
    const width = param('DiTSample', 'width');
    expect(width.multipleOf).toBeGreaterThan(1);
    expect(snapNumber(width, 100)).toBe(96);
    expect(snapNumber(width, 1)).toBe(64);
    expect(snapNumber(width, 1e9)).toBe(4096);
    expect(numberStep(width)).toBe(width.multipleOf);
    const steps = param('DiTSample', 'steps');
    expect([snapNumber(steps, 2.6), snapNumber(steps, 0), numberStep(steps), numberPrecision(steps)]).toEqual([3, 1, 1, 0]);
  });

  it('keeps floats in range with a step fitting the range', () => {
    const guidance = param('DiTSample', 'guidance');
    expect(snapNumber(guidance, -1)).toBe(0);
    expect(snapNumber(guidance, 3.25)).toBe(3.25);
    expect(numberStep(guidance)).toBe(0.1);
    expect(numberStep(param('DiTSample', 'subject_scale'))).toBe(0.01);
  });

  it('starts from the default, the first enum value, or the minimum', () => {
    expect(initialValue(param('LoadCharacter', 'square'))).toBe('pad');
    expect(initialValue(paramInfo('n', { type: 'integer', socket: 'INT', minimum: 64, multipleOf: 16 }))).toBe(64);
    expect(initialValue(paramInfo('e', { type: 'string', socket: 'STRING', enum: ['a', 'b'] }))).toBe('a');
  });

  it('draws random seeds inside the range', () => {
    const seed = param('DiTSample', 'seed');
    for (let i = 0; i < 100; i++) {
      const s = randomSeed(seed);
      expect(Number.isSafeInteger(s) && s >= 0).toBe(true);
    }
    expect(randomSeed(paramInfo('s', { type: 'integer', socket: 'INT', minimum: 5, maximum: 7 }))).toBeGreaterThanOrEqual(5);
  });
});

describe('reading the workflow a charflow PNG carries', () => {
  it('finds the tEXt chunk (UTF-8 text) and reports non-PNG files', async () => {
    const png = await sharp({ create: { width: 4, height: 3, channels: 3, background: '#ff0000' } }).png().toBuffer();
    const text = JSON.stringify({ format: 'charflow.workflow', prompt: 'ein Bär im Schnee ☃' });
    const tagged = addPngText(new Uint8Array(png), { workflow: text });
    expect(isPng(tagged)).toBe(true);
    expect((await readPngText(tagged)).workflow).toBe(text);
    expect(await readPngText(new Uint8Array(png))).toEqual({});
    await expect(readPngText(new TextEncoder().encode('{"not":"png"}'))).rejects.toThrow(/not a PNG/);
  });
});
