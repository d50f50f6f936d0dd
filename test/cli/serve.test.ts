// `charflow serve` options that reach the server: --memory-budget, as for `run`.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { serve } from '../../cli/serve.ts';

describe('charflow serve --memory-budget', () => {
  it('sizes the session pool of the server it starts', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'charflow-serve-'));
    const quiet = { write: () => true };
    const server = await serve(
      { host: '127.0.0.1', port: '0', device: 'cpu', data: join(dir, 'data'), memoryBudget: '1.5' },
      { stdout: quiet, stderr: quiet, env: {}, cwd: dir },
    );
    try {
      expect(server.services.pool.budgetBytes).toBe(1.5 * 1024 ** 3);
    } finally {
      await server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
