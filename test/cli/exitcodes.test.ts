// Every command's failure path keeps its documented exit code through the real entry point
// (`node bin/charflow.js ...`): 0 success, 2 invalid workflow or arguments, 1 a node or the
// command's work failed. A code lost between a command and the process (a command writing
// process.exitCode that bin/charflow.js then overwrote) used to turn failures into 0.
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CHARFLOW_BIN as BIN, ROOT, runCharflow } from '../helpers/cli.ts';

let dir: string;


const charflow = (args: string[], env: Record<string, string> = {}) => runCharflow(dir, args, env);

function listen(port = 0): Promise<Server> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve(server));
  });
}

const portOf = (s: Server): number => (s.address() as { port: number }).port;
const close = (s: Server): Promise<void> => new Promise((r) => s.close(() => r()));

function writeWorkflow(name: string, nodes: Record<string, unknown>): string {
  const file = join(dir, name);
  writeFileSync(file, JSON.stringify({ format: 'charflow.workflow', version: 1, nodes }));
  return file;
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'charflow-exit-'));
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('exit codes through bin/charflow.js', { timeout: 120_000 }, () => {
  it('validate: 0 for a valid workflow, 2 for an invalid one', async () => {
    const ok = await charflow(['validate', join(ROOT, 'workflows', 'instantcharacter.json')]);
    expect(ok.code, ok.stderr).toBe(0);
    const bad = await charflow(['validate', writeWorkflow('bad.json', { '1': { type: 'NoSuchNode', inputs: {} } })]);
    expect(bad.code, bad.stderr).toBe(2);
    expect(bad.stdout).toContain('unknown node type "NoSuchNode"');
  });

  it('an unknown option or command is an argument error: 2', async () => {
    expect((await charflow(['run', 'x.json', '--no-such-option'])).code).toBe(2);
    expect((await charflow(['no-such-command'])).code).toBe(2);
  });

  it('run: 2 for an invalid workflow, 1 when a node fails', async () => {
    const invalid = await charflow(['run', writeWorkflow('invalid.json', { '1': { type: 'LoadModels', inputs: { set: 7 } } })]);
    expect(invalid.code, invalid.stderr).toBe(2);
    expect(invalid.stderr).toMatch(/node 1 \(LoadModels\) input "set"/);

    // Valid, but the model set does not exist: LoadModels fails when it runs.
    const failing = writeWorkflow('failing.json', { '1': { type: 'LoadModels', inputs: { set: 'no-such-set' } } });
    const r = await charflow(['run', failing, '--target', '1', '--device', 'cpu']);
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toContain('no-such-set');
  });

  it('models convert: a checkpoint path that does not exist is an argument error: 2', async () => {
    const missing = join(dir, 'nonexistent');
    const r = await charflow(['models', 'convert', '--flux', join(missing, 'flux'), '--siglip', join(missing, 'siglip'),
      '--dinov2', join(missing, 'dinov2'), '--adapter', join(missing, 'adapter.bin')]);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toContain(`--flux ${join(missing, 'flux')}: no such file or folder`);
  });

  it('models pull: an unreachable hub is a failure: 1', async () => {
    // A port that was just free and is closed again: the connection is refused.
    const s = await listen();
    const port = portOf(s);
    await close(s);
    const r = await charflow(['models', 'pull', '--endpoint', `http://127.0.0.1:${port}`, '--token', 'hf_test', '--download-only']);
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toMatch(/^charflow: /m);
  });

  it('models tiny: a data folder that cannot be created is a failure: 1', async () => {
    // A regular file where a folder should be (works for root too, unlike a read-only folder).
    const file = join(dir, 'a-file');
    writeFileSync(file, 'not a folder');
    const r = await charflow(['models', 'tiny', '--data', join(file, 'data')]);
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toContain(`cannot create the folder ${join(file, 'data')}`);
  });

  it('serve: a port that is taken is a failure: 1', async () => {
    const taken = await listen();
    try {
      const r = await charflow(['serve', '--port', String(portOf(taken)), '--device', 'cpu']);
      expect(r.code, r.stderr).toBe(1);
      expect(r.stderr).toContain(String(portOf(taken)));
    } finally {
      await close(taken);
    }
  });

  it('serve and run: a bad --memory-budget is an argument error: 2', async () => {
    for (const r of [
      await charflow(['serve', '--memory-budget', 'lots']),
      await charflow(['run', join(ROOT, 'workflows', 'instantcharacter.json'), '--memory-budget', '0']),
    ]) {
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr).toContain('--memory-budget');
      expect(r.stderr).toContain('expected a number of GiB above 0');
    }
  });
});

describe('one way to set the exit code', () => {
  it('no command writes process.exitCode (main() returns the code, bin/charflow.js sets it once)', () => {
    const cli = join(ROOT, 'cli');
    const writers = readdirSync(cli)
      .filter((f) => f.endsWith('.ts'))
      .filter((f) => /process\.exitCode\s*=(?!=)/.test(readFileSync(join(cli, f), 'utf8')));
    expect(writers).toEqual([]);
    expect(readFileSync(BIN, 'utf8')).toMatch(/process\.exitCode = await main\(/);
  });
});
