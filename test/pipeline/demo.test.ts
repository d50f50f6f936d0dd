// `charflow demo` from a clean data folder: generates the tiny set, runs the default workflow and
// writes a PNG of the requested size that carries the workflow.
import { describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { main } from '../../cli/main.ts';
import { readPngText } from '../../nodes/lib/image.ts';

function sink() {
  let text = '';
  return { write: (s: string) => { text += s; return true; }, get text() { return text; } };
}

describe('charflow demo', () => {
  it('writes a PNG of the requested size with the workflow embedded', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'charflow-demo-'));
    try {
      const stdout = sink();
      const stderr = sink();
      // No --out: the PNG goes where `run` puts outputs, the data folder's outputs, and the demo ends with its absolute path.
      const code = await main(['demo', '--data', join(dir, 'data'), '--width', '80', '--height', '64', '--steps', '2', '--device', 'cpu'], { stdout, stderr, cwd: dir });
      expect(code, stderr.text).toBe(0);
      expect(stderr.text).toMatch(/random weights/);
      const outputs = join(dir, 'data', 'outputs');
      expect(stdout.text).toContain(`picture written:\n  ${join(outputs, 'instantcharacter_00001.png')}\n`);
      expect(existsSync(join(dir, 'out'))).toBe(false);
      const files = readdirSync(outputs);
      expect(files).toEqual(['instantcharacter_00001.png']);
      const png = readFileSync(join(outputs, files[0]!));
      const meta = await sharp(png).metadata();
      expect([meta.width, meta.height]).toEqual([80, 64]);
      const wf = JSON.parse(readPngText(png).workflow!) as { nodes: Record<string, { inputs: Record<string, unknown> }> };
      expect(wf.nodes['7']!.inputs.width).toBe(80);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('runs a quantized tiny set with --weights int4; the PNG names the set', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'charflow-demo-'));
    try {
      const stderr = sink();
      const code = await main(['demo', '--data', join(dir, 'data'), '--width', '64', '--height', '64', '--steps', '1', '--device', 'cpu', '--weights', 'int4'], { stdout: sink(), stderr, cwd: dir });
      expect(code, stderr.text).toBe(0);
      expect(readdirSync(join(dir, 'data', 'models'))).toEqual(['tiny-int4']);
      const png = readFileSync(join(dir, 'data', 'outputs', 'instantcharacter_00001.png'));
      const wf = JSON.parse(readPngText(png).workflow!) as { nodes: Record<string, { inputs: Record<string, unknown> }> };
      expect(wf.nodes['1']!.inputs.set).toBe('tiny-int4');
      expect((await main(['demo', '--weights', 'int3'], { stdout: sink(), stderr: sink(), cwd: dir }))).toBe(2);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses a bad size with exit code 2', async () => {
    const stderr = sink();
    const dir = mkdtempSync(join(tmpdir(), 'charflow-demo-'));
    const code = await main(['demo', '--width', 'abc'], { stdout: sink(), stderr, cwd: dir });
    rmSync(dir, { recursive: true, force: true });
    expect(code).toBe(2);
    expect(stderr.text).toMatch(/--width abc/);
  });
});
