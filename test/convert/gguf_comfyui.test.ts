// `models convert` from the files ComfyUI users have: a ComfyUI models folder (unet/, text_encoders/, clip/, vae/,
// clip_vision/, loras/) of small files, with FLUX and T5 as GGUF. Resolution by folder and content, the errors
// that list candidates, SigLIP so400m from clip_vision/, and a conversion through the command line whose FLUX
// and T5 graphs are exactly those built from the GGUF files directly (their codes kept as MatMulNBits).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closeSync, existsSync, ftruncateSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, symlinkSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { goldenCheckpoints, E2E_SEQ } from './fixtures.ts';
import { goldenSpec } from '../helpers/goldenset.ts';
import { goldenPath } from '../helpers/goldens.ts';
import { fluxGgufFile, fluxGgufTypes, writeT5Gguf } from '../helpers/gguf.ts';
import { resolveComfyui } from '../../models/convert/comfyui.ts';
import { openFluxTransformer, openT5 } from '../../models/convert/layouts.ts';
import { openModelSet, writeModelSet } from '../../models/modelset.ts';
import { resolveFormats, specWithFormats } from '../../models/quant/formats.ts';
import { COMPONENTS } from '../../models/convert/convert.ts';
import { FULL_SIGLIP, siglipWeightShapes } from '../../models/siglip.ts';
import { numel } from '../../models/tensor.ts';

let root: string;
let comfy: string;
let paths: ReturnType<typeof goldenCheckpoints>;

/** The case's first GGUF FLUX (any of its files would do). */
const fluxGguf = (): string => fluxGgufFile(Object.keys(fluxGgufTypes())[0]!);

function put(dir: string, name: string, target: string): string {
  mkdirSync(join(comfy, dir), { recursive: true });
  const p = join(comfy, dir, name);
  symlinkSync(target, p);
  return p;
}

/** A safetensors file with the so400m vision tower's header and zero (sparse) data: only its header is read. */
function so400mHeader(path: string): void {
  const shapes = siglipWeightShapes(FULL_SIGLIP);
  const header: Record<string, unknown> = {};
  let off = 0;
  for (const [k, dims] of Object.entries(shapes)) {
    const n = numel(dims) * 2;
    header[k] = { dtype: 'F16', shape: dims, data_offsets: [off, off + n] };
    off += n;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const head = Buffer.alloc(8);
  head.writeBigUInt64LE(BigInt(json.length));
  const fd = openSync(path, 'w');
  try {
    writeSync(fd, Buffer.concat([head, Buffer.from(json)]));
    ftruncateSync(fd, 8 + json.length + off);
  } finally {
    closeSync(fd);
  }
}

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'charflow-comfyui-'));
  paths = goldenCheckpoints(join(root, 'checkpoints'));
  comfy = join(root, 'ComfyUI', 'models');
  put('unet', 'flux1-dev-kquants.gguf', fluxGguf());
  mkdirSync(join(comfy, 'text_encoders'), { recursive: true });
  writeT5Gguf(join(comfy, 'text_encoders', 't5-v1_1-xxl-encoder-Q8_0.gguf'), 'Q8_0');
  put('clip', 'clip_l.safetensors', goldenPath('clip_text', 'model.safetensors'));
  put('clip', 'config.json', goldenPath('clip_text', 'config.json'));
  put('vae', 'ae.safetensors', goldenPath('vae_decoder', 'diffusion_pytorch_model.safetensors'));
  put('vae', 'config.json', goldenPath('vae_decoder', 'config.json'));
  put('loras', 'style.safetensors', goldenPath('instantcharacter_style_lora', 'style_lora.safetensors'));
  mkdirSync(join(comfy, 'clip_vision'), { recursive: true });
}, 300_000);
afterAll(() => {
  if (root) rmSync(root, { recursive: true, force: true });
});

describe('--comfyui resolution', () => {
  it('finds each part in its ComfyUI folder by what its tensors are', () => {
    const r = resolveComfyui(comfy, { loras: ['style.safetensors'] }, false);
    expect(r.flux).toBe(join(comfy, 'unet', 'flux1-dev-kquants.gguf'));
    expect(r.t5).toBe(join(comfy, 'text_encoders', 't5-v1_1-xxl-encoder-Q8_0.gguf'));
    expect(r.clip).toBe(join(comfy, 'clip', 'clip_l.safetensors'));
    expect(r.vae).toBe(join(comfy, 'vae', 'ae.safetensors'));
    expect(r.loras).toEqual([join(comfy, 'loras', 'style.safetensors')]);
    expect(r.siglip).toBeUndefined();
  });

  it('lists the candidates when more than one file fits, and takes the one named', () => {
    const extra = put('diffusion_models', 'flux1-dev-legacy.gguf', fluxGguf());
    try {
      expect(() => resolveComfyui(comfy, {}, false)).toThrow(/2 files under unet\/ or diffusion_models\/ fit --flux; name one with --flux: flux1-dev-kquants\.gguf, flux1-dev-legacy\.gguf/);
      expect(resolveComfyui(comfy, { flux: 'flux1-dev-legacy.gguf' }, false).flux).toBe(extra);
    } finally {
      rmSync(extra);
    }
  });

  it('says why nothing fits, and refuses a named file of the wrong kind', () => {
    expect(() => resolveComfyui(comfy, { t5: 'umt5_xxl.safetensors' }, false)).toThrow('--t5 umt5_xxl.safetensors: no such file, nor under clip/ or text_encoders/');
    // clip/ is one of T5's folders too: the name is found, and its tensors refuse it.
    expect(() => resolveComfyui(comfy, { t5: 'clip_l.safetensors' }, false)).toThrow(/clip\/clip_l\.safetensors: no T5 encoder tensors/);
    expect(() => resolveComfyui(comfy, {}, true)).toThrow(/no file under clip_vision\/ fits --siglip/);
    expect(() => resolveComfyui(comfy, { loras: ['nope.safetensors'] }, false)).toThrow(/nope\.safetensors: no such file, nor under loras\//);
  });

  it('takes clip_vision/sigclip_vision_patch14_384.safetensors for --siglip only when it holds SigLIP so400m', () => {
    const small = put('clip_vision', 'sigclip_vision_patch14_384.safetensors', goldenPath('instantcharacter_e2e', 'siglip', 'model.safetensors'));
    expect(() => resolveComfyui(comfy, {}, true)).toThrow(/sigclip_vision_patch14_384\.safetensors \(not the SigLIP so400m-patch14-384 vision tower/);
    rmSync(small);
    so400mHeader(small);
    try {
      expect(resolveComfyui(comfy, {}, true).siglip).toBe(small);
    } finally {
      rmSync(small);
    }
  });
});

describe('models convert --comfyui with GGUF FLUX and T5', () => {
  it('converts; FLUX and T5 keep their GGUF codes (the graphs built from the GGUF files directly, byte for byte)', async () => {
    const { main } = await import('../../cli/main.ts');
    const models = join(root, 'models');
    // README's route: the GGUF files named, the rest found, the tokenizers from --base.
    const code = await main([
      'models', 'convert', '--comfyui', comfy, '--flux', 'flux1-dev-kquants.gguf', '--t5', 't5-v1_1-xxl-encoder-Q8_0.gguf',
      '--base', paths.flux, '--name', 'comfy', '--dtype', 'fp32',
      '--siglip', paths.siglip, '--dinov2', paths.dinov2, '--adapter', paths.adapter, '--adapter-config', paths.adapterConfig!, '--models', models,
    ]);
    expect(code).toBe(0);
    const set = openModelSet(models, 'comfy');
    // GGUF parts left to the default are written quantized (their own codes); the rest as asked.
    expect(set.manifest.files.flux.weights).toBe('int4');
    expect(set.manifest.files.t5.weights).toBe('int8');
    expect(set.manifest.files.clip.weights ?? 'fp32').toBe('fp32');

    const flux = openFluxTransformer(join(comfy, 'unet', 'flux1-dev-kquants.gguf'));
    const t5 = openT5(join(comfy, 'text_encoders', 't5-v1_1-xxl-encoder-Q8_0.gguf'));
    try {
      const base = goldenSpec({ ...E2E_SEQ, t5SeqLen: 512, clipSeqLen: set.manifest.clip.seqLen });
      const formats = resolveFormats(COMPONENTS, { base: 'fp32', overrides: { flux: 'int4', t5: 'int8' }, fp32: ['vae', 'vae_encoder'] });
      const spec = specWithFormats({ ...base, flux: { ...base.flux, cfg: flux.cfg, weights: flux.weights }, t5: { ...base.t5, cfg: t5.cfg, weights: t5.weights } }, formats);
      const direct = await writeModelSet({ ...spec, name: 'direct' }, join(models, 'direct'));
      expect(set.manifest.files.flux.sha256).toBe(direct.files.flux.sha256);
      expect(set.manifest.files.t5.sha256).toBe(direct.files.t5.sha256);
    } finally {
      flux.weights.close?.();
      t5.weights.close?.();
    }
    // A re-run keeps everything (resumable as for safetensors inputs).
    expect(await main([
      'models', 'convert', '--comfyui', comfy, '--name', 'comfy', '--dtype', 'fp32',
      '--siglip', paths.siglip, '--dinov2', paths.dinov2, '--adapter', paths.adapter, '--adapter-config', paths.adapterConfig!,
      '--clip-tokenizer', join(paths.flux, 'tokenizer'), '--t5-tokenizer', join(paths.flux, 'tokenizer_2'), '--models', models,
    ])).toBe(0);
  }, 600_000);

  it('a truncated GGUF fails naming the file and the tensor, and nothing of the set is written', async () => {
    const { main } = await import('../../cli/main.ts');
    const bytes = readFileSync(fluxGguf());
    const cut = join(root, 'cut.gguf');
    writeFileSync(cut, bytes.subarray(0, bytes.length - 1000));
    const models = join(root, 'models-cut');
    const errors: string[] = [];
    const write = process.stderr.write.bind(process.stderr);
    process.stderr.write = ((chunk: string | Uint8Array) => { errors.push(String(chunk)); return true; }) as typeof process.stderr.write;
    const codes: number[] = [];
    const common = ['--name', 'cut', '--siglip', paths.siglip, '--dinov2', paths.dinov2, '--adapter', paths.adapter, '--adapter-config', paths.adapterConfig!, '--models', models];
    try {
      // Through --comfyui the file is looked at while resolving (an argument error, exit 2); named directly,
      // when the converter opens it (exit 1). Both before anything is written.
      codes.push(await main(['models', 'convert', '--comfyui', comfy, '--flux', cut, '--base', paths.flux, ...common]));
      codes.push(await main(['models', 'convert', '--flux', cut, '--base', paths.flux, ...common]));
    } finally {
      process.stderr.write = write;
    }
    expect(codes).toEqual([2, 1]);
    const pattern = new RegExp(`${cut.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: tensor '[^']+' .*runs past the end of the file`, 'g');
    expect(errors.join('').match(pattern)?.length).toBe(2);
    expect(existsSync(join(models, 'cut'))).toBe(false);
  });

  it('without --comfyui, --flux and --siglip stay required (exit 2)', async () => {
    const { main } = await import('../../cli/main.ts');
    expect(await main(['models', 'convert', '--dinov2', paths.dinov2, '--adapter', paths.adapter, '--models', join(root, 'm2')])).toBe(2);
  });
});
