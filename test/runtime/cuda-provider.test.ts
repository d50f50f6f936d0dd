// The CUDA provider kept outside node_modules: linked into ORT's folder when it is missing there.
import { mkdirSync, mkdtempSync, readlinkSync, rmSync, symlinkSync, writeFileSync, lstatSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CUDA_PROVIDER_FILES, cudaProviderDir, linkCudaProvider, ortBinaryDir, ortVersion } from '../../engine/runtime/cuda-provider.ts';

let dir: string;
let bin: string;
let source: string;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'charflow-cuda-'));
  bin = join(dir, 'bin');
  source = join(dir, 'provider');
  mkdirSync(bin);
  mkdirSync(source);
});

afterEach(() => rmSync(dir, { recursive: true, force: true }));

const fill = (folder: string) => CUDA_PROVIDER_FILES.forEach((f) => writeFileSync(join(folder, f), f));

describe('CUDA provider outside node_modules', () => {
  it('links the provider files into ORT\'s folder, once', () => {
    fill(source);
    expect(linkCudaProvider(bin, source, 'linux/x64')).toEqual({ linked: [...CUDA_PROVIDER_FILES] });
    for (const f of CUDA_PROVIDER_FILES) expect(readlinkSync(join(bin, f))).toBe(join(source, f));
    expect(linkCudaProvider(bin, source, 'linux/x64')).toEqual({ linked: [] });
  });

  it('replaces a link that points nowhere (the provider folder moved)', () => {
    fill(source);
    const f = CUDA_PROVIDER_FILES[1];
    symlinkSync(join(dir, 'gone', f), join(bin, f));
    writeFileSync(join(bin, CUDA_PROVIDER_FILES[0]), 'real file');
    expect(linkCudaProvider(bin, source, 'linux/x64')).toEqual({ linked: [f] });
    expect(readlinkSync(join(bin, f))).toBe(join(source, f));
    expect(lstatSync(join(bin, CUDA_PROVIDER_FILES[0])).isSymbolicLink()).toBe(false);
  });

  it('says what is missing when the provider was never installed, and links nothing', () => {
    expect(linkCudaProvider(bin, source, 'linux/x64')).toEqual({
      linked: [],
      problem: `${CUDA_PROVIDER_FILES.join(', ')} not in ${source} (scripts/install-cuda.sh installs the provider there)`,
    });
  });

  it('does nothing on platforms without a CUDA provider', () => {
    fill(source);
    expect(linkCudaProvider(bin, source, 'darwin/arm64')).toEqual({ linked: [] });
  });

  it('keeps the provider in a folder named after the ORT version, movable by environment', () => {
    expect(cudaProviderDir({ CHARFLOW_CUDA_PROVIDER: '/opt/ort-cuda' })).toBe('/opt/ort-cuda');
    expect(cudaProviderDir({ XDG_CACHE_HOME: '/c' }, '1.2.3')).toBe('/c/charflow/onnxruntime-node-1.2.3-cuda12');
    expect(ortVersion()).toMatch(/^\d+\.\d+\.\d+/);
    expect(ortBinaryDir()).toMatch(/onnxruntime-node[/\\]bin[/\\]napi-v6[/\\]/);
  });
});
