// `charflow demo` from a clean data folder: generates the tiny set, runs the default workflow and
// writes a PNG of the requested size that carries the workflow.
import { describe, expect, it } from 'vitest';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
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
      const code = await main(['demo', '--data', join(dir, 'data'), '--out', join(dir, 'out'), '--width', '80', '--height', '64', '--steps', '2', '--device', 'cpu'], { stdout, stderr, cwd: dir });
      expect(code, stderr.text).toBe(0);
      expect(stderr.text).toMatch(/random weights/);
      const files = readdirSync(join(dir, 'out'));
      expect(files).toEqual(['instantcharacter_00001.png']);
      const png = readFileSync(join(dir, 'out', files[0]!));
      const meta = await sharp(png).metadata();
      expect([meta.width, meta.height]).toEqual([80, 64]);
      const wf = JSON.parse(readPngText(png).workflow!) as { nodes: Record<string, { inputs: Record<string, unknown> }> };
      expect(wf.nodes['7']!.inputs.width).toBe(80);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses a bad size with exit code 2', async () => {
    const stderr = sink();
    const code = await main(['demo', '--width', 'abc'], { stdout: sink(), stderr });
    expect(code).toBe(2);
    expect(stderr.text).toMatch(/--width abc/);
  });
});
