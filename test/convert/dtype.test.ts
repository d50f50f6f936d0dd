// Per-component precision: `--dtype fp16` keeps the VAE decoder in float32 unless told otherwise, the
// manifest records each graph's dtype, mixed sets load and run (graph by graph and through the nodes),
// and fp16 T5 graphs clamp the residual stream as transformers' T5Block does.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expectClose, goldenConfig, goldenTensors, goldenWeights, indexedNames, need, scaledVariant } from '../helpers/goldens.ts';
import { e2eStagePath } from '../helpers/e2e.ts';
import { fluxConfigFromJson } from '../../models/flux.ts';
import { E2E_SEQ, goldenCheckpoints } from './fixtures.ts';
import { type ConvertEvent, type ConvertOptions, COMPONENTS, DEFAULT_FP32, componentDtypes, convertCheckpoints } from '../../models/convert/convert.ts';
import { parseFp32List } from '../../cli/checkpoints.ts';
import { type ComponentName, type ModelSet, openModelSet, writeModelSet } from '../../models/modelset.ts';
import { type Attrs, Graph, type Value } from '../../models/onnx/graph.ts';
import * as ort from 'onnxruntime-node';
import { fromOrt, runOnce, toOrt } from '../../models/onnx/ort.ts';
import { buildT5, t5ConfigFromJson } from '../../models/t5.ts';
import { type Tensor, f32, float16ToFloat32, float32ToFloat16, toFloat32 } from '../../models/tensor.ts';
import { type WeightSource, memorySource } from '../../models/weights/source.ts';
import { fluxRope } from '../../models/rope.ts';
import { decodeImage, pixelValues } from '../../nodes/lib/image.ts';
import { tinySpec } from '../../models/tiny.ts';
import { resolvePaths } from '../../engine/paths.ts';
import { Executor } from '../../engine/executor/index.ts';
import { validateWorkflow } from '../../engine/workflow/index.ts';
import { createServices, PACKAGE_ROOT } from '../../nodes/services.ts';
import { nodeRegistry } from '../../nodes/registry.ts';

let root: string;
let paths: ReturnType<typeof goldenCheckpoints>;
let models: string;

function options(over: Partial<ConvertOptions> = {}): ConvertOptions {
  return { ...paths, modelsDir: models, name: 'mixed', dtype: 'float16', ...E2E_SEQ, warn: () => {}, ...over };
}

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'charflow-dtype-'));
  paths = goldenCheckpoints(join(root, 'checkpoints'));
  models = join(root, 'models');
});

afterAll(() => {
  if (root) rmSync(root, { recursive: true, force: true });
});

const asF32 = (t: Tensor): Tensor => ({ dtype: 'float32', dims: t.dims, data: toFloat32(t) });
const asF16 = (t: Tensor): Tensor => (t.dtype === 'float32' ? { dtype: 'float16', dims: t.dims, data: float32ToFloat16(t.data as Float32Array) } : t);

/** Runs one component as the worker does: float32 fed to float16 inputs is converted, outputs come back as float32. */
async function runComponent(set: ModelSet, c: ComponentName, feeds: Record<string, Tensor>): Promise<Record<string, Tensor>> {
  const session = await ort.InferenceSession.create(set.path(c));
  try {
    const ortFeeds: Record<string, ort.Tensor> = {};
    for (const [k, t] of Object.entries(feeds)) {
      const meta = session.inputMetadata.find((m) => m.name === k);
      ortFeeds[k] = toOrt(meta?.isTensor && meta.type === 'float16' ? asF16(t) : t);
    }
    const out = await session.run(ortFeeds);
    const result: Record<string, Tensor> = {};
    for (const [k, v] of Object.entries(out)) {
      expect(v.type, `${c} output ${k}`).toBe(set.dtype(c));
      result[k] = asF32(fromOrt(v));
    }
    return result;
  } finally {
    await session.release();
  }
}

/** The VAE's two graphs (decoder and encoder) stay float32 by default. */
const isVae = (c: string): boolean => c === 'vae' || c === 'vae_encoder';
const finite = (t: Tensor | undefined): boolean => Boolean(t) && toFloat32(t!).every(Number.isFinite);

describe('precision policy', () => {
  it('keeps the VAE in float32 under fp16 by default; fp32 sets are all float32', () => {
    expect(DEFAULT_FP32).toEqual(['vae', 'vae_encoder']);
    const half = componentDtypes('float16');
    for (const c of COMPONENTS) expect(half[c], c).toBe(isVae(c) ? 'float32' : 'float16');
    expect(Object.values(componentDtypes('float16', []))).toEqual(COMPONENTS.map(() => 'float16'));
    expect(Object.values(componentDtypes('float32', []))).toEqual(COMPONENTS.map(() => 'float32'));
  });

  it('parses --fp32 lists', () => {
    expect(parseFp32List('vae,t5')).toEqual(['vae', 'vae_encoder', 't5']);
    expect(parseFp32List(' VAE , adapter ')).toEqual(['vae', 'vae_encoder', 'adapter_static', 'adapter_time']);
    expect(parseFp32List('none')).toEqual([]);
    expect(() => parseFp32List('vea')).toThrow(/"vea" is not a component.*siglip, dinov2, adapter, flux, vae, t5, clip, or none/);
    expect(() => parseFp32List(',')).toThrow(/or none/);
  });
});

describe('models convert --dtype fp16: a mixed set', () => {
  it('records a float32 VAE and float16 others, and every graph runs in its own dtype', async () => {
    const { manifest } = await convertCheckpoints(options());
    expect(manifest.dtype).toBe('float16');
    for (const c of COMPONENTS) expect(manifest.files[c].dtype, c).toBe(isVae(c) ? 'float32' : 'float16');

    const set = openModelSet(models, 'mixed');
    for (const c of COMPONENTS) expect(set.dtype(c), c).toBe(isVae(c) ? 'float32' : 'float16');

    // The float32 VAE matches the golden within the float32 tolerance; the half graphs within fp16 ones.
    const vin = goldenTensors('vae_decoder', 'inputs.safetensors');
    const vae = await runComponent(set, 'vae', { latents: need(vin, 'latents') });
    console.log('mixed vae sample', expectClose(vae.sample, goldenTensors('vae_decoder', 'outputs.safetensors').get('sample'), 2e-4, 'sample'));

    const ein = goldenTensors('instantcharacter_e2e', 'inputs.safetensors');
    const t5 = await runComponent(set, 't5', { input_ids: need(ein, 't5_input_ids') });
    console.log('mixed fp16 t5 prompt_embeds', expectClose(t5.last_hidden_state, ein.get('prompt_embeds'), 2e-2, 'prompt_embeds'));
    const clip = await runComponent(set, 'clip', { input_ids: need(ein, 'clip_input_ids') });
    console.log('mixed fp16 clip pooled', expectClose(clip.pooler_output, ein.get('pooled_prompt_embeds'), 2e-2, 'pooled_prompt_embeds'));

    const img = await decodeImage(readFileSync(e2eStagePath('low_res')));
    const m = set.manifest;
    const sig = await runComponent(set, 'siglip', { pixel_values: pixelValues([img], m.siglip.mean, m.siglip.std) });
    const dino = await runComponent(set, 'dinov2', { pixel_values: pixelValues([img], m.dinov2.mean, m.dinov2.std) });
    expect(finite(sig.last_hidden_state) && finite(dino.last_hidden_state)).toBe(true);

    const pin = goldenTensors('ic_projector', 'inputs.safetensors');
    const st = await runComponent(set, 'adapter_static', {
      low_res_deep: need(pin, 'low_res_deep'), low_res_shallow: need(pin, 'low_res_shallow'), high_res_deep: need(pin, 'high_res_deep'),
    });
    const k = indexedNames(pin, 'timesteps')[0]!;
    const at = await runComponent(set, 'adapter_time', { resampler_input: st.resampler_input!, timestep: need(pin, `timesteps.${k}`) });
    console.log('mixed fp16 adapter', expectClose(at.ip_hidden_states, goldenTensors('ic_projector', 'outputs.safetensors').get(`ip_hidden_states.${k}`), 5e-2, `ip_hidden_states.${k}`));

    const fin = goldenTensors('flux_transformer_ip', 'inputs.safetensors');
    const ids = Float32Array.from([...toFloat32(need(fin, 'txt_ids')), ...toFloat32(need(fin, 'img_ids'))]);
    const fcfg = fluxConfigFromJson(goldenConfig('flux_transformer_ip'));
    const rope = fluxRope(ids, fcfg.axesDimsRope, fcfg.ropeTheta);
    const flux = await runComponent(set, 'flux', {
      ...Object.fromEntries(['hidden_states', 'encoder_hidden_states', 'pooled_projections', 'timestep', 'guidance', 'ip_hidden_states']
        .map((k) => [k, asF32(need(fin, k))])),
      ip_masks: f32([1, need(fin, 'hidden_states').dims[1]!], new Float32Array(need(fin, 'hidden_states').dims[1]!).fill(toFloat32(need(fin, 'subject_scale'))[0]!)),
      rope_cos: rope.cos, rope_sin: rope.sin,
    });
    const expected = scaledVariant(goldenTensors('flux_transformer_ip', 'outputs.safetensors'), 'noise_pred', toFloat32(need(fin, 'subject_scale'))[0]!);
    console.log('mixed fp16 flux', expectClose(flux.noise_pred, expected, 5e-2, 'noise_pred'));
  }, 300_000);

  it('rebuilds only the components whose precision changed (with --force), and --fp32 none makes all fp16', async () => {
    const events: ConvertEvent[] = [];
    await expect(convertCheckpoints(options({ fp32: ['vae', 'vae_encoder', 't5'] }))).rejects.toThrow(/t5 differ.*--force/s);
    const r = await convertCheckpoints(options({ fp32: ['vae', 'vae_encoder', 't5'], force: true, onEvent: (e) => events.push(e) }));
    expect(r.built).toEqual(['t5']);
    expect(r.manifest.files.t5.dtype).toBe('float32');
    expect(r.manifest.files.vae.dtype).toBe('float32');
    expect(r.manifest.files.flux.dtype).toBe('float16');

    const { main } = await import('../../cli/main.ts');
    const code = await main(['models', 'convert', '--flux', paths.flux, '--siglip', paths.siglip, '--dinov2', paths.dinov2,
      '--adapter', paths.adapter, '--adapter-config', paths.adapterConfig!, '--models', models, '--name', 'allhalf', '--fp32', 'none']);
    expect(code).toBe(0);
    const all = openModelSet(models, 'allhalf');
    for (const c of COMPONENTS) expect(all.dtype(c), c).toBe('float16');
  }, 300_000);

  it('opens sets written before components could differ: every graph has the set\'s dtype', () => {
    const dir = join(models, 'mixed');
    const manifestPath = join(dir, 'manifest.json');
    const json = JSON.parse(readFileSync(manifestPath, 'utf8')) as { files: Record<string, { dtype?: string }> };
    for (const e of Object.values(json.files)) delete e.dtype;
    writeFileSync(manifestPath, JSON.stringify(json));
    const set = openModelSet(models, 'mixed');
    for (const c of COMPONENTS) expect(set.dtype(c), c).toBe('float16');
  });
});

describe('a mixed set through the nodes', () => {
  it('runs the default workflow with float32 VAE, T5 and SigLIP next to float16 graphs', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'charflow-dtype-nodes-'));
    const services = await createServices(resolvePaths({ data: dir }), { device: 'cpu' });
    try {
      const data = resolvePaths({ data: dir });
      const manifest = await writeModelSet(
        { ...tinySpec(), name: 'mixed', dtype: 'float16', dtypes: { vae: 'float32', t5: 'float32', siglip: 'float32' } },
        join(data.models, 'mixed'),
      );
      expect(manifest.files.t5.dtype).toBe('float32');
      expect(manifest.files.clip.dtype).toBe('float16');
      const registry = nodeRegistry();
      const base = JSON.parse(readFileSync(join(PACKAGE_ROOT, 'workflows/instantcharacter.json'), 'utf8')) as {
        nodes: Record<string, { inputs: Record<string, unknown> }>;
      };
      Object.assign(base.nodes['1']!.inputs, { set: 'mixed' });
      Object.assign(base.nodes['7']!.inputs, { width: 96, height: 64, steps: 2 });
      const v = validateWorkflow(base, registry);
      if (!v.ok) throw new Error(v.errors.map((e) => e.message).join('\n'));
      const executor = new Executor({ registry, services, logger: { info: () => {}, warn: () => {} } });
      const result = await executor.run(v.workflow!);
      expect(result.status, JSON.stringify(result.nodes)).toBe('done');
    } finally {
      await services.close();
      rmSync(dir, { recursive: true, force: true });
    }
  }, 300_000);
});

// ---------------------------------------------------------------------------------------------
// T5 in fp16

const T5_CASE = 't5_encoder';
const t5Cfg = t5ConfigFromJson(goldenConfig(T5_CASE));
const t5Ids = need(goldenTensors(T5_CASE, 'inputs.safetensors'), 'input_ids');

/** A Graph that remembers its op types and the inputs of its Clip nodes. */
class SpyGraph extends Graph {
  ops: string[] = [];
  clipped: Value[] = [];
  override node(type: string, inputs: readonly (Value | undefined)[], attrs: Attrs = {}): Value {
    this.ops.push(type);
    if (type === 'Clip') this.clipped.push(inputs[0]!);
    return super.node(type, inputs, attrs);
  }
}

/** The golden T5 weights, with the first block's attention scaled so its residual sum passes fp16's range. */
function loudT5(): WeightSource {
  const file = goldenWeights(T5_CASE);
  const scale: Record<string, number> = {
    'encoder.block.0.layer.0.SelfAttention.v.weight': 100,
    'encoder.block.0.layer.0.SelfAttention.o.weight': 30_000,
  };
  const map = new Map<string, Tensor>();
  try {
    for (const k of file.keys()) {
      const t = file.get(k);
      const s = scale[k];
      map.set(k, s ? { dtype: 'float32', dims: t.dims, data: toFloat32(t).map((v) => v * s) } : t);
    }
  } finally {
    file.close();
  }
  return memorySource(map);
}

function spyT5(dtype: 'float32' | 'float16', w?: WeightSource): SpyGraph {
  const g = new SpyGraph({ name: 't5', dtype });
  const file = w ? undefined : goldenWeights(T5_CASE);
  try {
    buildT5({ g, w: w ?? file! }, t5Cfg, { seqLen: t5Ids.dims[1]! });
  } finally {
    file?.close();
  }
  return g;
}

describe('T5 in fp16', () => {
  it('float32 graphs have no Clip; float16 graphs clamp block 0\'s attention residual only (the stream is float32 after the first wo)', async () => {
    expect(spyT5('float32').ops).not.toContain('Clip');
    const g = spyT5('float16');
    expect(g.ops.filter((t) => t === 'Clip')).toHaveLength(1);
    // With ordinary activations the clamp changes nothing: the fp16 graph stays close to the golden.
    const out = await runOnce(g.toBytes(), { input_ids: t5Ids });
    expect(out.last_hidden_state!.dtype).toBe('float16');
    const d = expectClose(asF32(out.last_hidden_state!), goldenTensors(T5_CASE, 'outputs.safetensors').get('last_hidden_state'), 2e-2, 'fp16 last_hidden_state');
    console.log('fp16 t5 last_hidden_state max abs diff', d);
  });

  it('gives finite outputs when the residual stream overflows half precision', async () => {
    // The residual stream before the clamp, as a float16 output: the attention's sum holds inf in fp16,
    // which an unclamped fp16 graph carries on (inf, then NaN through the next norm) on fp16 hardware.
    // (ORT's CPU provider runs most fp16 ops in float32, so an unclamped graph cannot show that here.)
    const g = spyT5('float16', loudT5());
    g.clipped.forEach((v, i) => g.output(v, `residual_${i}`, 'float16'));
    const out = await runOnce(g.toBytes(), { input_ids: t5Ids });
    const residual = toFloat32(out.residual_0!);
    expect(residual.some((v) => v === Infinity || v === -Infinity)).toBe(true);
    expect(finite(out.last_hidden_state)).toBe(true);
    // The clamp is what keeps it finite: the same graph without it ...
    const plain = new SpyGraph({ name: 't5', dtype: 'float16' });
    buildT5({ g: plain, w: loudT5() }, t5Cfg, { seqLen: t5Ids.dims[1]!, clampHalf: false });
    expect(plain.ops).not.toContain('Clip');
    // ... differs from the clamped one, which has cut the overflowing values to ±64504.
    const unclamped = await runOnce(plain.toBytes(), { input_ids: t5Ids });
    expect(toFloat32(unclamped.last_hidden_state!)).not.toEqual(toFloat32(out.last_hidden_state!));
  });
});
