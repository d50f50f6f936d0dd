// The runtime in a plain node process (tsx registered through its API, as bin/charflow.js does):
// workers start there too, and the process exits after close() or when the pool is left idle.
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { f32 } from '../../models/tensor.ts';
import { affineModel, affineReference, tempDir } from './models.ts';

const tmp = tempDir();
afterAll(() => tmp.cleanup());
const ENTRY = fileURLToPath(new URL('./child-entry.mjs', import.meta.url));

function runChild(mode: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [ENTRY, mode, tmp.dir], { timeout: 45_000 }, (err, stdout, stderr) => {
      const code = err ? (err.killed ? null : (err as NodeJS.ErrnoException & { code?: number }).code as unknown as number) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

describe('runtime in a node process', () => {
  for (const mode of ['close', 'idle']) {
    it(`runs a model and the process exits by itself (${mode})`, async () => {
      const r = await runChild(mode);
      expect(r.code, `child did not exit cleanly (null = killed after hanging)\n${r.stderr}`).toBe(0);
      const result = JSON.parse(r.stdout.trim().split('\n').pop()!) as { device: string; y: number[]; stats: { loads: number }; workers: [number, number] };
      const m = affineModel(tmp.dir, 'reference');
      expect(result.y).toEqual(Array.from(affineReference(f32([2, 3], [1, 2, 3, -1, 0, 5]), m.w, m.b)));
      expect(result.stats.loads).toBe(1);
      // The model's home and the spare before; none after close, while 'idle' leaves them to end with the process.
      expect(result.workers).toEqual(mode === 'close' ? [2, 0] : [2, 2]);
    });
  }
});
