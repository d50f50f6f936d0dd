// `npm test` first runs scripts/system-deps.mjs check (the pretest script): with a system package
// missing it must stop with one message naming each missing package and the command that installs
// it, before any test runs. Run here as a real child process with the packages hidden from it.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { PACKAGES } from '../../scripts/system-deps.mjs';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const SCRIPT = join(ROOT, 'scripts', 'system-deps.mjs');

function check(env: NodeJS.ProcessEnv): { status: number | null; out: string } {
  const r = spawnSync(process.execPath, [SCRIPT, 'check'], { env, encoding: 'utf8' });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

describe('the system-package check before npm test', () => {
  it('is what npm test runs first, and npm run test:setup installs with the same script', () => {
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    expect(pkg.scripts.pretest).toBe('node scripts/system-deps.mjs check');
    expect(pkg.scripts['test:setup']).toBe('node scripts/system-deps.mjs install');
    expect(readFileSync(join(ROOT, '.ci', 'run'), 'utf8')).toMatch(/^npm run test:setup$/m);
  });

  it('passes quietly where every package is present (this machine runs the suite)', () => {
    expect(PACKAGES.filter((p) => !p.present()).map((p) => p.debian)).toEqual([]);
    expect(check(process.env)).toEqual({ status: 0, out: '' });
  });

  it('names each missing package, what needs it and the install command, and fails', () => {
    // No chromium where it looks, and a PATH without redis-server (node is called by its full path).
    const r = check({ ...process.env, CHARFLOW_CHROMIUM: join(ROOT, 'no-such-chromium'), PATH: '/nonexistent' });
    expect(r.status).toBe(1);
    expect(r.out).toMatch(/no test was run/);
    expect(r.out).toMatch(/- chromium: for the browser tests/);
    expect(r.out).toMatch(/- redis-server: for the scale-out tests/);
    expect(r.out).not.toMatch(/- libvulkan1/);
    expect(r.out).toMatch(/npm run test:setup/);
    expect(r.out).toMatch(/apt-get install -y chromium redis-server/);
  });
});
