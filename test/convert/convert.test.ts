// `charflow models convert` on the golden tiny checkpoints laid out as the real ones are published:
// the converted graphs reproduce the golden outputs, match the graphs built straight from the goldens byte
// for byte, convert in fp16 too, accept the original BFL single-file transformer, resume after an
// interruption, and name the tensor and the file when a checkpoint is not what it claims to be.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { appendFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expectClose, goldenConfig, goldenPath, goldenTensors, indexedNames, scaledVariant } from '../helpers/goldens.ts';
import { e2eStagePath } from '../helpers/e2e.ts';
import { fluxConfigFromJson } from '../../models/flux.ts';
import { goldenSpec } from '../helpers/goldenset.ts';
import { E2E_SEQ, goldenCheckpoints, writeBflTransformer } from './fixtures.ts';
import { type ConvertEvent, type ConvertOptions, STATE_FILE, convertCheckpoints } from '../../models/convert/convert.ts';
import { type ComponentName, type ModelSetManifest, openModelSet, writeModelSet } from '../../models/modelset.ts';
import { runOnce } from '../../models/onnx/ort.ts';
import { fluxRope } from '../../models/rope.ts';
import { type Tensor, f32, float16ToFloat32, float32ToFloat16, toFloat32 } from '../../models/tensor.ts';
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
const fluxCfg = fluxConfigFromJson(goldenConfig('flux_transformer_ip'));
/** The golden noise_pred at the inputs' subject_scale. */
const fluxExpected = scaledVariant(fluxOut, 'noise_pred', toFloat32(fluxIn.get('subject_scale')!)[0]!);

function fluxFeeds(half = false): Record<string, Tensor> {
  const txt = toFloat32(fluxIn.get('txt_ids')!);
  const img = toFloat32(fluxIn.get('img_ids')!);
  const ids = new Float32Array(txt.length + img.length);
  ids.set(txt);
  ids.set(img, txt.length);
  const rope = fluxRope(ids, fluxCfg.axesDimsRope, fluxCfg.ropeTheta);
  const feeds: Record<string, Tensor> = {
    hidden_states: fluxIn.get('hidden_states')!, encoder_hidden_states: fluxIn.get('encoder_hidden_states')!,
    pooled_projections: fluxIn.get('pooled_projections')!, timestep: fluxIn.get('timestep')!, guidance: fluxIn.get('guidance')!,
    rope_cos: rope.cos, rope_sin: rope.sin, ip_hidden_states: fluxIn.get('ip_hidden_states')!,
    ip_masks: f32([1, fluxIn.get('hidden_states')!.dims[1]!], new Float32Array(fluxIn.get('hidden_states')!.dims[1]!).fill(toFloat32(fluxIn.get('subject_scale')!)[0]!)),
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
    console.log('flux noise_pred', expectClose(flux.noise_pred, fluxExpected, 2e-4, 'noise_pred'));

    const pin = goldenTensors('ic_projector', 'inputs.safetensors');
    const pout = goldenTensors('ic_projector', 'outputs.safetensors');
    const st = await runOnce(set.path('adapter_static'), { low_res_deep: pin.get('low_res_deep')!, low_res_shallow: pin.get('low_res_shallow')!, high_res_deep: pin.get('high_res_deep')! });
    for (const k of indexedNames(pin, 'timesteps')) {
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

    // The e2e encoders on the low-res stage image: channel-concat of SigLIP and DINOv2 (CLS dropped).
    const img = await decodeImage(readFileSync(e2eStagePath('low_res')));
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
    const d = expectClose(asF32(flux.noise_pred), fluxExpected, 5e-2, 'fp16 noise_pred');
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
    const [vocab, width] = clip.get('text_model.embeddings.token_embedding.weight')!.dims;
    const err = await convertCheckpoints(options({ name: 'aio', flux: file, base: paths.flux })).catch((e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toContain(`'text_model.embeddings.token_embedding.weight' has shape [${vocab},${width}] but the model config expects [49408,768]`);
    expect((err as Error).message).toMatch(/CLIP text encoder \(.*all-in-one/);
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

  it('builds a component that charflow gained after the set was made (the VAE encoder) without --force, keeping the rest', async () => {
    const set = openModelSet(models, 'converted');
    const statePath = join(set.dir, STATE_FILE);
    const state = JSON.parse(readFileSync(statePath, 'utf8'));
    delete state.components.vae_encoder;
    writeFileSync(statePath, JSON.stringify(state));
    const manifestPath = join(set.dir, 'manifest.json');
    const manifest = JSON.parse(readFileSync(manifestPath, 'utf8'));
    rmSync(join(set.dir, manifest.files.vae_encoder.file));
    delete manifest.files.vae_encoder;
    writeFileSync(manifestPath, JSON.stringify(manifest));
    expect(() => openModelSet(models, 'converted').path('vae_encoder')).toThrow(/no vae_encoder graph.*older charflow/);
    const again = await convertCheckpoints(options());
    expect(again.built).toEqual(['vae_encoder']);
    expect(again.manifest.files).toEqual(converted.files);
  }, 300_000);

  it('refuses to overwrite a set made from other inputs without --force', async () => {
    await expect(convertCheckpoints(options({ t5SeqLen: E2E_SEQ.t5SeqLen + 1 }))).rejects.toThrow(/already exists.*t5.*--force/s);
  });
});

describe('models convert: the command line', () => {
  it('converts with `charflow models convert`; a path that does not exist is an argument error (exit 2)', async () => {
    const { main } = await import('../../cli/main.ts');
    const run = (...args: string[]) => main(args);
    const common = ['--siglip', paths.siglip, '--dinov2', paths.dinov2, '--adapter', paths.adapter, '--adapter-config', paths.adapterConfig!, '--models', models];
    expect(await run('models', 'convert', '--flux', paths.flux, '--name', 'cli', '--dtype', 'fp32', ...common)).toBe(0);
    const set = openModelSet(models, 'cli');
    expect(set.manifest.files.flux.sha256).toBe(golden.files.flux.sha256);
    expect(set.manifest.t5.seqLen).toBe(512);
    expect(await run('models', 'convert', '--flux', join(root, 'nowhere'), '--name', 'cli2', ...common)).toBe(2);
  }, 300_000);
});

describe('models convert: broken checkpoints', () => {
  it('names the missing tensor and the file', async () => {
    const file = join(root, 'checkpoints', 'missing.safetensors');
    const t = readSafetensors(goldenPath('flux_transformer_ip', 'diffusion_pytorch_model.safetensors'));
    const gone = `transformer_blocks.${fluxCfg.numLayers - 1}.attn.to_k.weight`;
    t.delete(gone);
    writeSafetensors(file, t);
    const err = await convertCheckpoints(options({ name: 'broken', flux: file, base: paths.flux })).catch((e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toContain(gone);
    expect((err as Error).message).toContain(file);
  }, 300_000);

  it('names the mismatched tensor, its shapes and the file', async () => {
    const dir = join(root, 'checkpoints', 'bad-vae');
    mkdirSync(dir);
    symlinkSync(goldenPath('vae_decoder', 'config.json'), join(dir, 'config.json'));
    const t = readSafetensors(goldenPath('vae_decoder', 'diffusion_pytorch_model.safetensors'));
    const w = t.get('decoder.conv_out.weight')!;
    const swapped = [w.dims[1]!, w.dims[0]!, w.dims[2]!, w.dims[3]!];
    t.set('decoder.conv_out.weight', { ...w, dims: swapped });
    writeSafetensors(join(dir, 'diffusion_pytorch_model.safetensors'), t);
    const err = await convertCheckpoints(options({ name: 'broken2', vae: dir })).catch((e: Error) => e);
    expect((err as Error).message).toContain(`'decoder.conv_out.weight' has shape [${swapped.join(',')}] but the model config expects [${w.dims.join(',')}]`);
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
