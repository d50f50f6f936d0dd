// The real command line (`node bin/charflow.js ...`) run as a user would, for tests of exit codes and output.
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const CHARFLOW_BIN = join(ROOT, 'bin', 'charflow.js');

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs the CLI in `dir` with an environment that points nothing at the user's files: HOME and HF_HOME inside
 * `dir` (no login token from the developer's machine), data in `<dir>/data`; `env` adds or overrides.
 */
export function runCharflow(dir: string, args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CHARFLOW_BIN, ...args], {
      cwd: dir,
      env: { PATH: process.env.PATH ?? '', HOME: dir, HF_HOME: join(dir, 'hf-home'), CHARFLOW_DATA: join(dir, 'data'), ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}
