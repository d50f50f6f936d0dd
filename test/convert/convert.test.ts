// `charflow models convert` on the golden tiny checkpoints laid out as the real ones are published:
// the converted graphs reproduce the golden outputs, match the graphs built straight from the goldens byte
// for byte, convert in fp16 too, accept the original BFL single-file transformer, resume after an
// interruption, and name the tensor and the file when a checkpoint is not what it claims to be.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { appendFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expectClose, goldenPath, goldenTensors } from '../helpers/goldens.ts';
import { goldenSpec } from '../helpers/goldenset.ts';
import { E2E_SEQ, goldenCheckpoints, writeBflTransformer } from './fixtures.ts';
import { type ConvertEvent, type ConvertOptions, STATE_FILE, convertCheckpoints } from '../../models/convert/convert.ts';
import { type ComponentName, type ModelSetManifest, openModelSet, writeModelSet } from '../../models/modelset.ts';
import { runOnce } from '../../models/onnx/ort.ts';
import { fluxRope } from '../../models/rope.ts';
import { type Tensor, float16ToFloat32, float32ToFloat16, toFloat32 } from '../../models/tensor.ts';
import { decodeImage, pixelValues } from '../../nodes/lib/image.ts';
import { readSafetensors, writeSafetensors } from '../../models/weights/safetensors.ts';
import { loadTokenizer } from '../../models/tokenizers.ts';

let root: string;
let paths: ReturnType<typeof goldenCheckpoints>;
let models: string;
let converted: ModelSetManifest;
let golden: ModelSetManifest;

function options(over: Partial<ConvertOptions> = {}): ConvertOptions {
  return { ...paths, modelsDir: models, name: 'converted', dtype: 'float32', ...E2E_SEQ, warn: () => {}, ...over };
}

const fluxIn = goldenTensors('flux_transformer_ip', 'inputs.safetensors');
const fluxOut = goldenTensors('flux_transformer_ip', 'outputs.safetensors');

function fluxFeeds(half = false): Record<string, Tensor> {
  const txt = toFloat32(fluxIn.get('txt_ids')!);
  const img = toFloat32(fluxIn.get('img_ids')!);
  const ids = new Float32Array(txt.length + img.length);
  ids.set(txt);
  ids.set(img, txt.length);
  const rope = fluxRope(ids);
  const feeds: Record<string, Tensor> = {
    hidden_states: fluxIn.get('hidden_states')!, encoder_hidden_states: fluxIn.get('encoder_hidden_states')!,
    pooled_projections: fluxIn.get('pooled_projections')!, timestep: fluxIn.get('timestep')!, guidance: fluxIn.get('guidance')!,
    rope_cos: rope.cos, rope_sin: rope.sin, ip_hidden_states: fluxIn.get('ip_hidden_states')!, subject_scale: fluxIn.get('subject_scale')!,
  };
  if (!half) return feeds;
  return Object.fromEntries(Object.entries(feeds).map(([k, t]) => [k, { dtype: 'float16', dims: t.dims, data: float32ToFloat16(toFloat32(t)) } as Tensor]));
}

const asF32 = (t: Tensor | undefined): Tensor | undefined =>
  t && t.dtype === 'float16' ? { dtype: 'float32', dims: t.dims, data: float16ToFloat32(t.data as Uint16Array) } : t;

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'charflow-convert-'));
  paths = goldenCheckpoints(join(root, 'checkpoints'));
  models = join(root, 'models');
  converted = (await convertCheckpoints(options())).manifest;
  golden = await writeModelSet(goldenSpec(E2E_SEQ), join(models, 'golden'));
}, 600_000);

afterAll(() => {
  if (root) rmSync(root, { recursive: true, force: true });
});

describe('models convert: Hugging Face layout', () => {
  it('writes the same graphs as the golden set, byte for byte, with a loadable manifest', () => {
    for (const c of Object.keys(golden.files) as ComponentName[]) {
      expect(converted.files[c].sha256, c).toBe(golden.files[c].sha256);
      expect(converted.files[c].bytes, c).toBe(golden.files[c].bytes);
    }
    const set = openModelSet(models, 'converted');
    expect(set.manifest.dtype).toBe('float32');
    expect(set.manifest.clip).toEqual(golden.clip);
    expect(set.manifest.t5).toEqual(golden.t5);
    // The CLIP tokenizer rebuilt from vocab.json + merges.txt and the T5 tokenizer.json both load.
    expect(loadTokenizer(set.tokenizerPath('clip')).special.eos).toBe(golden.clip.eosId);
    expect(loadTokenizer(set.tokenizerPath('t5')).special.pad).toBe(golden.t5.padId);
  });

  it('reproduces the golden outputs through the converted ONNX files', async () => {
    const set = openModelSet(models, 'converted');
    const flux = await runOnce(set.path('flux'), fluxFeeds());
    console.log('flux noise_pred.scale_0.9', expectClose(flux.noise_pred, fluxOut.get('noise_pred.scale_0.9'), 2e-4, 'noise_pred.scale_0.9'));

    const pin = goldenTensors('ic_projector', 'inputs.safetensors');
    const pout = goldenTensors('ic_projector', 'outputs.safetensors');
    const st = await runOnce(set.path('adapter_static'), { low_res_deep: pin.get('low_res_deep')!, low_res_shallow: pin.get('low_res_shallow')!, high_res_deep: pin.get('high_res_deep')! });
    for (const k of [0, 1]) {
      const t = await runOnce(set.path('adapter_time'), { resampler_input: st.resampler_input!, timestep: pin.get(`timesteps.${k}`)! });
      console.log(`adapter ip_hidden_states.${k}`, expectClose(t.ip_hidden_states, pout.get(`ip_hidden_states.${k}`), 1e-4, `ip_hidden_states.${k}`));
    }

    const vin = goldenTensors('vae_decoder', 'inputs.safetensors');
    const vout = goldenTensors('vae_decoder', 'outputs.safetensors');
    const vae = await runOnce(set.path('vae'), { latents: vin.get('latents')! });
    console.log('vae sample', expectClose(vae.sample, vout.get('sample'), 2e-4, 'sample'));

    const ein = goldenTensors('instantcharacter_e2e', 'inputs.safetensors');
    const t5 = await runOnce(set.path('t5'), { input_ids: ein.get('t5_input_ids')! });
    console.log('t5 prompt_embeds', expectClose(t5.last_hidden_state, ein.get('prompt_embeds'), 1e-4, 'prompt_embeds'));
    const clip = await runOnce(set.path('clip'), { input_ids: ein.get('clip_input_ids')! });
    console.log('clip pooled', expectClose(clip.pooler_output, ein.get('pooled_prompt_embeds'), 1e-4, 'pooled_prompt_embeds'));

    // The e2e encoders on the 384-px stage image: channel-concat of SigLIP and DINOv2 (CLS dropped).
    const img = await decodeImage(readFileSync(goldenPath('instantcharacter_e2e', 'stage_low_res_384.png')));
    const m = set.manifest;
    const sig = await runOnce(set.path('siglip'), { pixel_values: pixelValues([img], m.siglip.mean, m.siglip.std) });
    const dino = await runOnce(set.path('dinov2'), { pixel_values: pixelValues([img], m.dinov2.mean, m.dinov2.std) });
    const a = toFloat32(sig.last_hidden_state!);
    const b = toFloat32(dino.last_hidden_state!);
    const [ws, wd] = [m.siglip.width, m.dinov2.width];
    const tokens = a.length / ws;
    const deep = new Float32Array(tokens * (ws + wd));
    for (let t = 0; t < tokens; t++) {
      deep.set(a.subarray(t * ws, (t + 1) * ws), t * (ws + wd));
      deep.set(b.subarray((t + 1) * wd, (t + 2) * wd), t * (ws + wd) + ws);
    }
    const expected = goldenTensors('instantcharacter_e2e', 'intermediates.safetensors').get('image_embeds_low_res_deep')!;
    console.log('siglip+dinov2 low_res_deep', expectClose({ dtype: 'float32', dims: [1, tokens, ws + wd], data: deep }, expected, 2e-4, 'image_embeds_low_res_deep'));
  }, 120_000);
});

describe('models convert: fp16', () => {
  it('converts to float16 graphs that stay close to the golden outputs', async () => {
    const { manifest } = await convertCheckpoints(options({ name: 'half', dtype: 'float16' }));
    expect(manifest.dtype).toBe('float16');
    const set = openModelSet(models, 'half');
    const flux = await runOnce(set.path('flux'), fluxFeeds(true));
    expect(flux.noise_pred!.dtype).toBe('float16');
    const d = expectClose(asF32(flux.noise_pred), fluxOut.get('noise_pred.scale_0.9'), 5e-2, 'fp16 noise_pred.scale_0.9');
    console.log('fp16 flux noise_pred max abs diff', d);
    // fp16 weights: half the bytes of the fp32 graph, give or take the graph itself.
    expect(manifest.files.flux.bytes).toBeLessThan(converted.files.flux.bytes * 0.6);
  }, 300_000);
});

describe('models convert: original BFL single-file transformer', () => {
  it('converts flux1-dev.safetensors (with a ComfyUI prefix) plus --base to the same flux graph', async () => {
    const file = join(root, 'checkpoints', 'flux1-dev.safetensors');
    writeBflTransformer(file, 'model.diffusion_model.');
    const { manifest } = await convertCheckpoints(options({ name: 'bfl', flux: file, base: paths.flux }));
    expect(manifest.files.flux.sha256).toBe(golden.files.flux.sha256);
    expect(manifest.files.vae.sha256).toBe(golden.files.vae.sha256);
  }, 300_000);

  it('takes text encoders embedded in the single file (ComfyUI prefixes), read with the real models\' configs', async () => {
    const file = join(root, 'checkpoints', 'flux1-dev-all-in-one.safetensors');
    const clip = readSafetensors(goldenPath('clip_text', 'model.safetensors'));
    writeBflTransformer(file, 'model.diffusion_model.', new Map([...clip].map(([k, t]) => [`text_encoders.clip_l.transformer.${k}`, t])));
    // No config travels with an embedded encoder: the real CLIP-L's is assumed, which the tiny one does not fit.
    await expect(convertCheckpoints(options({ name: 'aio', flux: file, base: paths.flux })))
      .rejects.toThrow(/'text_model\.embeddings\.token_embedding\.weight' has shape \[100,32\] but the model config expects \[49408,768\][\s\S]*CLIP text encoder \(.*all-in-one/);
  }, 300_000);

  it('says what is missing when a single file comes without the other parts', async () => {
    const file = join(root, 'checkpoints', 'flux1-dev.safetensors');
    await expect(convertCheckpoints(options({ name: 'lonely', flux: file }))).rejects.toThrow(/no VAE: pass --vae, or --base/);
  });
});

describe('models convert: resume', () => {
  it('skips verified components and rebuilds only a damaged or unfinished one', async () => {
    const events: ConvertEvent[] = [];
    const first = await convertCheckpoints(options({ onEvent: (e) => events.push(e) }));
    expect(first.built).toEqual([]);
    expect(first.reused.sort()).toEqual(Object.keys(golden.files).sort());

    // Damage the VAE (same size, other bytes) and "interrupt" the T5 (no record, no manifest yet): both are
    // rebuilt, nothing else.
    const set = openModelSet(models, 'converted');
    const vaePath = set.path('vae');
    const bytes = readFileSync(vaePath);
    bytes[bytes.length - 1] ^= 0xff;
    writeFileSync(vaePath, bytes);
    const statePath = join(set.dir, STATE_FILE);
    const state = JSON.parse(readFileSync(statePath, 'utf8'));
    delete state.components.t5;
    writeFileSync(statePath, JSON.stringify(state));
    rmSync(join(set.dir, 'manifest.json'));

    events.length = 0;
    const second = await convertCheckpoints(options({ onEvent: (e) => events.push(e) }));
    expect(second.built.sort()).toEqual(['t5', 'vae']);
    expect(events.filter((e) => e.type === 'start').map((e) => (e as { component: string }).component).sort()).toEqual(['t5', 'vae']);
    expect(events.some((e) => e.type === 'verify' && e.component === 'vae' && !e.ok)).toBe(true);
    expect(second.manifest.files).toEqual(converted.files);
  }, 300_000);

  it('refuses to overwrite a set made from other inputs without --force', async () => {
    await expect(convertCheckpoints(options({ t5SeqLen: 16 }))).rejects.toThrow(/already exists.*t5.*--force/s);
  });
});

describe('models convert: the command line', () => {
  it('converts with `charflow models convert` and reports errors as one line with exit code 1', async () => {
    const { Command } = await import('commander');
    const { registerModels } = await import('../../cli/checkpoints.ts');
    const run = async (...args: string[]) => {
      const program = new Command().exitOverride();
      registerModels(program);
      process.exitCode = 0;
      await program.parseAsync(args, { from: 'user' });
      const code = Number(process.exitCode ?? 0);
      process.exitCode = 0;
      return code;
    };
    const common = ['--siglip', paths.siglip, '--dinov2', paths.dinov2, '--adapter', paths.adapter, '--adapter-config', paths.adapterConfig!, '--models', models];
    expect(await run('models', 'convert', '--flux', paths.flux, '--name', 'cli', '--dtype', 'fp32', ...common)).toBe(0);
    const set = openModelSet(models, 'cli');
    expect(set.manifest.files.flux.sha256).toBe(golden.files.flux.sha256);
    expect(set.manifest.t5.seqLen).toBe(512);
    expect(await run('models', 'convert', '--flux', join(root, 'nowhere'), '--name', 'cli2', ...common)).toBe(1);
  }, 300_000);
});

describe('models convert: broken checkpoints', () => {
  it('names the missing tensor and the file', async () => {
    const file = join(root, 'checkpoints', 'missing.safetensors');
    const t = readSafetensors(goldenPath('flux_transformer_ip', 'diffusion_pytorch_model.safetensors'));
    t.delete('transformer_blocks.1.attn.to_k.weight');
    writeSafetensors(file, t);
    const err = await convertCheckpoints(options({ name: 'broken', flux: file, base: paths.flux })).catch((e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(/transformer_blocks\.1\.attn\.to_k\.weight/);
    expect((err as Error).message).toContain(file);
  }, 300_000);

  it('names the mismatched tensor, its shapes and the file', async () => {
    const dir = join(root, 'checkpoints', 'bad-vae');
    mkdirSync(dir);
    symlinkSync(goldenPath('vae_decoder', 'config.json'), join(dir, 'config.json'));
    const t = readSafetensors(goldenPath('vae_decoder', 'diffusion_pytorch_model.safetensors'));
    const w = t.get('decoder.conv_out.weight')!;
    t.set('decoder.conv_out.weight', { ...w, dims: [w.dims[1]!, w.dims[0]!, w.dims[2]!, w.dims[3]!] });
    writeSafetensors(join(dir, 'diffusion_pytorch_model.safetensors'), t);
    const err = await convertCheckpoints(options({ name: 'broken2', vae: dir })).catch((e: Error) => e);
    expect((err as Error).message).toMatch(/'decoder\.conv_out\.weight' has shape \[16,3,3,3\] but the model config expects \[3,16,3,3\]/);
    expect((err as Error).message).toContain(dir);
  }, 300_000);

  it('asks for tokenizer.json when tokenizer_2 has only spiece.model', async () => {
    const dir = join(root, 'checkpoints', 'spiece-only');
    mkdirSync(dir, { recursive: true });
    appendFileSync(join(dir, 'spiece.model'), 'x');
    await expect(convertCheckpoints(options({ name: 'tok', t5Tokenizer: dir }))).rejects.toThrow(/only spiece\.model.*tokenizer\.json/);
  });

  it('rejects a file that is not an adapter', async () => {
    await expect(convertCheckpoints(options({ name: 'noadapter', adapter: goldenPath('clip_text', 'model.safetensors') })))
      .rejects.toThrow(/not an InstantCharacter adapter/);
  });
});
