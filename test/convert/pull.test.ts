// `charflow models pull` against a local hub serving the golden tiny checkpoints under the official
// repository names: downloads only what the converter reads, continues an interrupted download with a
// Range request, skips what is complete, verifies hashes, explains the gated repo, then converts.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { type HubRepoContent, type HubServer, startHubServer } from './hubserver.ts';
import { goldenCheckpoints } from './fixtures.ts';
import { goldenConfig, goldenPath } from '../helpers/goldens.ts';
import { goldenSpec } from '../helpers/goldenset.ts';
import { main } from '../../cli/main.ts';
import { ADAPTER_FILE, ADAPTER_REPO, DINOV2_REPO, FLUX_REPO, SIGLIP_REPO, pullRepos, repoFolder } from '../../models/convert/pull.ts';
import { openModelSet, writeModelSet } from '../../models/modelset.ts';

const TOKEN = 'hf_testtoken';
const BIG = `${FLUX_REPO}/transformer/diffusion_pytorch_model.safetensors`;
let root: string;
let server: HubServer;
const savedEnv = { HF_TOKEN: process.env['HF_TOKEN'], HF_HOME: process.env['HF_HOME'], HF_ENDPOINT: process.env['HF_ENDPOINT'] };

/** Every file under `dir`, keyed by its path relative to `dir` (symlinks followed). */
function walk(dir: string, files = new Map<string, Buffer>(), top = dir): Map<string, Buffer> {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p, files, top);
    else files.set(relative(top, p), readFileSync(p));
  }
  return files;
}

function repo(files: Map<string, Buffer>, gated = false): HubRepoContent {
  return { gated, files: new Map([...files].map(([p, data]) => [p, { data, lfs: /\.(safetensors|bin)$/.test(p) }])) };
}

const cli = (...args: string[]): Promise<number> => main(args);

const resolveGets = () => server.log.filter((r) => r.path.includes('/resolve/') && r.range !== 'bytes=0-0');

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'charflow-pull-'));
  process.env['HF_HOME'] = join(root, 'hf-home'); // no login token from the developer's machine
  delete process.env['HF_TOKEN'];
  delete process.env['HF_ENDPOINT'];
  const ck = goldenCheckpoints(join(root, 'content'));
  const flux = walk(ck.flux);
  flux.set('flux1-dev.safetensors', Buffer.alloc(4096, 1)); // must not be fetched: the diffusers folders are
  flux.set('README.md', Buffer.from('# FLUX.1 [dev]\n'));
  const dinov2 = walk(ck.dinov2);
  dinov2.set('pytorch_model.bin', Buffer.alloc(2048, 2)); // safetensors preferred
  server = await startHubServer(new Map([
    [FLUX_REPO, repo(flux, true)],
    [SIGLIP_REPO, repo(walk(ck.siglip))],
    [DINOV2_REPO, repo(dinov2)],
    [ADAPTER_REPO, repo(new Map([[ADAPTER_FILE, readFileSync(ck.adapter)], ['README.md', Buffer.from('# InstantCharacter\n')]]))],
  ]), TOKEN);
}, 120_000);

afterAll(async () => {
  await server?.close();
  for (const [k, v] of Object.entries(savedEnv)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  if (root) rmSync(root, { recursive: true, force: true });
});

describe('models pull (local hub)', () => {
  it('explains that FLUX.1-dev is gated when no token is given', async () => {
    await expect(pullRepos({ modelsDir: join(root, 'm0'), endpoint: server.url })).rejects.toThrow(/FLUX\.1-dev is gated.*--token/);
  });

  it('downloads, survives an interruption by continuing with a Range request, verifies and converts', async () => {
    const models = join(root, 'models');
    const common = ['--endpoint', server.url, '--token', TOKEN, '--models', models, '--name', 'pulled', '--dtype', 'fp32', '--adapter-config', goldenPath('ic_adapter', 'config.json')];
    // Cut the transformer weights halfway through the first download.
    const bigSize = statSync(goldenPath('flux_transformer_ip', 'diffusion_pytorch_model.safetensors')).size;
    server.cutAfter.set(BIG, Math.floor(bigSize / 2));
    expect(await cli('models', 'pull', ...common)).toBe(1);
    const partial = join(repoFolder(models, FLUX_REPO), 'transformer', 'diffusion_pytorch_model.safetensors.partial');
    const have = statSync(partial).size;
    expect(have).toBeGreaterThan(0);
    expect(have).toBeLessThan(readFileSync(goldenPath('flux_transformer_ip', 'diffusion_pytorch_model.safetensors')).length);

    server.log.length = 0;
    expect(await cli('models', 'pull', ...common)).toBe(0);
    const bigGets = resolveGets().filter((r) => r.path.endsWith('transformer/diffusion_pytorch_model.safetensors'));
    expect(bigGets.map((r) => r.range)).toEqual([`bytes=${have}-`]);
    // Files finished by the first run were not fetched again.
    expect(resolveGets().some((r) => r.path.endsWith('transformer/config.json'))).toBe(false);

    const flux = repoFolder(models, FLUX_REPO);
    expect(existsSync(join(flux, 'flux1-dev.safetensors'))).toBe(false);
    expect(existsSync(join(flux, 'README.md'))).toBe(false);
    expect(existsSync(join(repoFolder(models, DINOV2_REPO), 'pytorch_model.bin'))).toBe(false);
    expect(existsSync(join(flux, 'tokenizer', 'merges.txt'))).toBe(true);

    // The converted set equals one built straight from the goldens (the CLI builds T5 for 512 tokens, CLIP for 77
    // or the model's positions if fewer).
    const set = openModelSet(models, 'pulled');
    const clipSeqLen = Math.min(77, goldenConfig('clip_text')['max_position_embeddings'] as number);
    const golden = await writeModelSet(goldenSpec({ t5SeqLen: 512, clipSeqLen }), join(root, 'golden'));
    for (const [c, e] of Object.entries(golden.files)) expect(set.manifest.files[c as keyof typeof golden.files].sha256, c).toBe(e.sha256);

    // A third run downloads nothing (only the hub's size/etag probes) and keeps every graph.
    server.log.length = 0;
    expect(await cli('models', 'pull', ...common)).toBe(0);
    expect(resolveGets()).toEqual([]);
  }, 300_000);

  it('rejects a download whose bytes do not match the hub\'s sha256, and deletes it', async () => {
    const models = join(root, 'm2');
    server.corrupt.add(`${ADAPTER_REPO}/${ADAPTER_FILE}`);
    try {
      await expect(pullRepos({
        modelsDir: models, endpoint: server.url, token: TOKEN,
        repos: [{ repo: ADAPTER_REPO, gated: false, select: (f) => f.filter((x) => x.path === ADAPTER_FILE) }],
      })).rejects.toThrow(/instantcharacter_ip-adapter\.bin is corrupt \(sha256/);
    } finally {
      server.corrupt.clear();
    }
    const dir = repoFolder(models, ADAPTER_REPO);
    expect(existsSync(join(dir, ADAPTER_FILE))).toBe(false);
    expect(existsSync(join(dir, `${ADAPTER_FILE}.partial`))).toBe(false);
  });
});
