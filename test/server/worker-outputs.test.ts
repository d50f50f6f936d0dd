// Scale-out writes the same file names as the embedded runner (issue 25): a worker's uploads are numbered
// like Save Image's own files, and a retried job's upload overwrites the file it wrote the first time.
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { writeNumbered } from '../../nodes/lib/output.ts';
import { storeWorkerOutput } from '../../editor/server/worker-outputs.ts';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'charflow-worker-outputs-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const bytes = (s: string): Uint8Array => new TextEncoder().encode(s);

describe('worker outputs', () => {
  it('are numbered after the files the embedded runner wrote, with the worker\'s prefix', async () => {
    // The embedded runner wrote one already.
    expect(await writeNumbered(dir, 'instantcharacter', 'png', bytes('local'))).toBe('instantcharacter_00001.png');
    // The worker numbered its own copy 00001 in its folder: here it is the next number.
    expect(await storeWorkerOutput(dir, 'instantcharacter_00001.png', 'job-a', '9', 0, bytes('a0'))).toBe('instantcharacter_00002.png');
    expect(await storeWorkerOutput(dir, 'instantcharacter_00002.png', 'job-a', '9', 1, bytes('a1'))).toBe('instantcharacter_00003.png');
    // And the runner carries on after them.
    expect(await writeNumbered(dir, 'instantcharacter', 'png', bytes('local 2'))).toBe('instantcharacter_00004.png');
    expect(readdirSync(dir).sort()).toEqual(['instantcharacter_00001.png', 'instantcharacter_00002.png', 'instantcharacter_00003.png', 'instantcharacter_00004.png']);
  });

  it('a retried job\'s upload of the same node and index overwrites its own file', async () => {
    const first = await storeWorkerOutput(dir, 'hero_00001.png', 'job-b', '9', 0, bytes('try 1'));
    const again = await storeWorkerOutput(dir, 'hero_00001.png', 'job-b', '9', 0, bytes('try 2'));
    expect(again).toBe(first);
    expect(readFileSync(join(dir, first), 'utf8')).toBe('try 2');
    expect(readdirSync(dir)).toEqual([first]);
  });

  it('refuses a name that is no picture', async () => {
    await expect(storeWorkerOutput(dir, 'x.sh', 'job-c', '1', 0, bytes('#!'))).rejects.toThrow(/outputs must be/);
  });
});
