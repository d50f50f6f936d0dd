// Full-size conversion check (run on demand, not in CI):
//   node --import tsx scripts/fullsize-check.ts [--only siglip,dinov2,adapter,vae,clip,t5,flux] [--dir DIR] [--no-session] [--keep]
//     [--weights int8|int4 [--block N]]  (quantized graphs, as `models convert --weights`)
// For each model it writes, in a temporary folder, a checkpoint with the real key names, shapes and storage
// dtypes (constant-ish values, streamed to disk one tensor at a time: safetensors, sharded where the hub
// shards, a bf16 torch.save zip for the adapter), converts it as `models convert --dtype fp16` would (fp16, VAE fp32) through the converter's own
// readers (models/convert/layouts.ts) and the streaming Graph writer, then creates an onnxruntime session
// for each graph in a child process. It reports time, peak RSS and disk use per step, checks free disk
// (df) and RAM before each step and skips with a message what does not fit, and deletes its files.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Graph } from '../models/onnx/graph.ts';
import type { Module } from '../models/layers.ts';
import type { WeightSource } from '../models/weights/source.ts';
import { BYTES_PER_ELEMENT, type DType, type TensorData, floatToHalf, numel } from '../models/tensor.ts';
import { FULL_SIGLIP, buildSiglip, siglipWeightShapes } from '../models/siglip.ts';
import { FULL_DINOV2, buildDinov2, dinov2WeightShapes } from '../models/dinov2.ts';
import { FULL_ADAPTER, adapterWeightShapes, buildAdapterStatic, buildAdapterTime } from '../models/adapter.ts';
import { FULL_FLUX, buildFlux, fluxWeightShapes, ipAdapterWeightShapes } from '../models/flux.ts';
import { FULL_VAE, buildVaeDecoder, vaeWeightShapes } from '../models/vae.ts';
import { FULL_T5, T5_FLUX_SEQ_LEN, buildT5, t5WeightShapes } from '../models/t5.ts';
import { FULL_CLIP, buildClip, clipWeightShapes } from '../models/clip.ts';
import { openAdapter, openClip, openDinov2, openFluxTransformer, openSiglip, openT5, openVae } from '../models/convert/layouts.ts';
import { type TensorSpec, writeSafetensorsStreaming, writeTorchZipStreaming } from '../models/convert/writers.ts';
import { componentDtypes } from '../models/convert/convert.ts';
import { type ComponentName, QUANT_EXTERNAL_THRESHOLD } from '../models/modelset.ts';
import { type ComponentFormat, type WeightFormat, parseWeightFormat, resolveFormats } from '../models/quant/formats.ts';
import { COMPONENTS } from '../models/convert/convert.ts';

type Name = 'siglip' | 'dinov2' | 'adapter' | 'vae' | 'clip' | 't5' | 'flux';
const ALL: Name[] = ['siglip', 'dinov2', 'adapter', 'vae', 'clip', 't5', 'flux'];
const GB = 1024 ** 3;
const EXTERNAL_THRESHOLD = 1.5 * GB; // as models/modelset.ts
const FP16_POLICY = componentDtypes('float16');

// ---------------------------------------------------------------------------------------------
// Measurements

function resetPeak(): void {
  // With --expose-gc: drop what the previous step left (its buffers), so the peak is this step's own.
  (globalThis as { gc?: () => void }).gc?.();
  try {
    writeFileSync('/proc/self/clear_refs', '5');
  } catch { /* not Linux: the peak then covers the whole run */ }
}
function peakRss(): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) * 1024 : process.memoryUsage().rss;
}
function memAvailable(): number {
  const m = /MemAvailable:\s+(\d+) kB/.exec(readFileSync('/proc/meminfo', 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}
function diskFree(dir: string): number {
  const out = execFileSync('df', ['-B1', '--output=avail', dir], { encoding: 'utf8' }).trim().split('\n');
  return Number(out[out.length - 1]);
}
function sizeOf(path: string): number {
  if (!existsSync(path)) return 0;
  const st = statSync(path);
  return st.isDirectory() ? readdirSync(path).reduce((n, f) => n + sizeOf(join(path, f)), 0) : st.size;
}
const gb = (n: number) => `${(n / GB).toFixed(2)} GB`;
const secs = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e9;

// ---------------------------------------------------------------------------------------------
// Checkpoint contents: real keys and shapes, storage dtype as published

/** A tiled block of small pseudo-random values, so tensors are not all equal but cost nothing to make. */
const BLOCK = 1 << 16;
const f32Block = Float32Array.from({ length: BLOCK }, (_, i) => Math.sin(i * 12.9898) * 0.02);
const bf16Block = Uint16Array.from(new Uint32Array(f32Block.buffer), (u) => u >>> 16);
const f16Block = Uint16Array.from(f32Block, (v) => floatToHalf(v));

function produce(s: TensorSpec): TensorData {
  const n = numel(s.dims);
  const norm = s.dims.length === 1 && !s.key.endsWith('.bias') && /norm|scale|lambda/.test(s.key);
  const start = (s.key.length * 977) % BLOCK;
  const fill = <T extends Float32Array | Uint16Array>(out: T, block: T, one: number): T => {
    if (norm) return out.fill(one) as T;
    for (let i = 0; i < n; i += BLOCK - start) out.set(block.subarray(start, Math.min(BLOCK, start + n - i)), i);
    return out;
  };
  switch (s.dtype) {
    case 'float32': return fill(new Float32Array(n), f32Block, 1);
    case 'bfloat16': return fill(new Uint16Array(n), bf16Block, 0x3f80);
    case 'float16': return fill(new Uint16Array(n), f16Block, 0x3c00);
    default: throw new Error(`no generator for ${s.dtype}`);
  }
}

const specs = (shapes: Record<string, number[]>, dtype: DType, prefix = ''): TensorSpec[] =>
  Object.entries(shapes).map(([k, dims]) => ({ key: prefix + k, dtype, dims }));

/** Splits tensors into shards of about `maxBytes` each, as save_pretrained does. */
function shard(all: TensorSpec[], maxBytes: number): TensorSpec[][] {
  const shards: TensorSpec[][] = [[]];
  let bytes = 0;
  for (const s of all) {
    const b = numel(s.dims) * BYTES_PER_ELEMENT[s.dtype];
    if (bytes + b > maxBytes && shards[shards.length - 1]!.length) {
      shards.push([]);
      bytes = 0;
    }
    shards[shards.length - 1]!.push(s);
    bytes += b;
  }
  return shards;
}

/** A Hugging Face component folder: config.json + model file(s) (+ index when sharded). */
function writeFolder(dir: string, config: unknown, all: TensorSpec[], file: string, maxShard = Infinity): void {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config, null, 2));
  const shards = shard(all, maxShard);
  if (shards.length === 1) return writeSafetensorsStreaming(join(dir, `${file}.safetensors`), all, produce);
  const weightMap: Record<string, string> = {};
  shards.forEach((ss, i) => {
    const name = `${file}-${String(i + 1).padStart(5, '0')}-of-${String(shards.length).padStart(5, '0')}.safetensors`;
    writeSafetensorsStreaming(join(dir, name), ss, produce);
    for (const s of ss) weightMap[s.key] = name;
  });
  writeFileSync(join(dir, `${file}.safetensors.index.json`), JSON.stringify({ metadata: {}, weight_map: weightMap }));
}

const bytesOf = (ss: TensorSpec[]) => ss.reduce((n, s) => n + numel(s.dims) * BYTES_PER_ELEMENT[s.dtype], 0);

interface Plan {
  /** Bytes of the generated checkpoint. */
  sourceBytes: number;
  /** Parameters the graphs hold (fp16: 2 bytes each). */
  parameters: number;
  generate(dir: string): void;
  /** Builds the graphs (name, weights source, builder); returns the sources to close. */
  graphs(dir: string): { name: ComponentName; weights: WeightSource; build: (m: Module) => void; parameters: number }[];
}

function siglipPlan(): Plan {
  const vision = specs(siglipWeightShapes(FULL_SIGLIP), 'float32');
  // The full SiglipModel file also holds the pooling head and the text tower: present, never read.
  const extra: TensorSpec[] = [
    { key: 'vision_model.head.probe', dtype: 'float32', dims: [1, 1, 1152] },
    { key: 'vision_model.head.attention.in_proj_weight', dtype: 'float32', dims: [3456, 1152] },
    { key: 'text_model.embeddings.token_embedding.weight', dtype: 'float32', dims: [32000, 1152] },
    { key: 'text_model.encoder.layers.0.mlp.fc1.weight', dtype: 'float32', dims: [4304, 1152] },
    { key: 'logit_scale', dtype: 'float32', dims: [1] },
  ];
  const all = [...vision, ...extra];
  const params = countOf(siglipWeightShapes(FULL_SIGLIP));
  return {
    sourceBytes: bytesOf(all), parameters: params,
    generate: (dir) => writeFolder(join(dir, 'siglip'), {
      architectures: ['SiglipModel'], model_type: 'siglip',
      text_config: { hidden_size: 1152, intermediate_size: 4304, num_attention_heads: 16, num_hidden_layers: 27, model_type: 'siglip_text_model' },
      vision_config: { hidden_size: 1152, image_size: 384, intermediate_size: 4304, num_attention_heads: 16, num_hidden_layers: 27, patch_size: 14, model_type: 'siglip_vision_model' },
    }, all, 'model'),
    graphs: (dir) => {
      const p = openSiglip(join(dir, 'siglip'));
      return [{ name: 'siglip', weights: p.weights, parameters: params, build: (m) => buildSiglip(m, p.cfg, { hiddenStates: [7, 13, 26], imageSize: 384 }) }];
    },
  };
}

function dinov2Plan(): Plan {
  const all = [...specs(dinov2WeightShapes(FULL_DINOV2), 'float32'), { key: 'embeddings.mask_token', dtype: 'float32' as DType, dims: [1, 1536] }];
  const params = countOf(dinov2WeightShapes(FULL_DINOV2));
  return {
    sourceBytes: bytesOf(all), parameters: params,
    generate: (dir) => writeFolder(join(dir, 'dinov2'), {
      architectures: ['Dinov2Model'], model_type: 'dinov2', hidden_size: 1536, num_hidden_layers: 40, num_attention_heads: 24, mlp_ratio: 4,
      use_swiglu_ffn: true, image_size: 518, patch_size: 14, layerscale_value: 1.0, hidden_act: 'gelu', layer_norm_eps: 1e-6, qkv_bias: true,
    }, all, 'model'),
    graphs: (dir) => {
      const p = openDinov2(join(dir, 'dinov2'));
      return [{ name: 'dinov2', weights: p.weights, parameters: params, build: (m) => buildDinov2(m, p.cfg, { hiddenStates: [9, 19, 29], imageSize: 384 }) }];
    },
  };
}

const countOf = (shapes: Record<string, number[]>) => Object.values(shapes).reduce((n, d) => n + numel(d), 0);
const ADAPTER_PATH = (dir: string) => join(dir, 'instantcharacter_ip-adapter.bin');

function adapterPlan(): Plan {
  const ip = specs(ipAdapterWeightShapes(FULL_FLUX, FULL_ADAPTER.outputDim), 'bfloat16');
  const proj = specs(adapterWeightShapes(FULL_ADAPTER), 'bfloat16');
  const shapes = adapterWeightShapes(FULL_ADAPTER);
  const part = (time: boolean) => countOf(Object.fromEntries(Object.entries(shapes).filter(([k]) => k.startsWith('resampler.') === time)));
  return {
    sourceBytes: bytesOf([...ip, ...proj]), parameters: countOf(shapes),
    generate: (dir) => writeTorchZipStreaming(ADAPTER_PATH(dir), { ip_adapter: ip, image_proj: proj }, produce, 'instantcharacter_ip-adapter'),
    graphs: (dir) => {
      const { part: a } = openAdapter(ADAPTER_PATH(dir));
      return [
        { name: 'adapter_static', weights: a.weights, parameters: part(false), build: (m) => buildAdapterStatic(m, a.cfg) },
        { name: 'adapter_time', weights: a.weights, parameters: part(true), build: (m) => buildAdapterTime(m, a.cfg) },
      ];
    },
  };
}

function vaePlan(): Plan {
  const all = specs(vaeWeightShapes(FULL_VAE), 'bfloat16');
  return {
    sourceBytes: bytesOf(all), parameters: countOf(vaeWeightShapes(FULL_VAE)),
    generate: (dir) => writeFolder(join(dir, 'vae'), {
      _class_name: 'AutoencoderKL', act_fn: 'silu', block_out_channels: [128, 256, 512, 512], in_channels: 3, out_channels: 3, latent_channels: 16,
      layers_per_block: 2, norm_num_groups: 32, scaling_factor: 0.3611, shift_factor: 0.1159, use_quant_conv: false, use_post_quant_conv: false,
      force_upcast: true, up_block_types: Array(4).fill('UpDecoderBlock2D'), down_block_types: Array(4).fill('DownEncoderBlock2D'),
    }, all, 'diffusion_pytorch_model'),
    graphs: (dir) => {
      const p = openVae(join(dir, 'vae'));
      return [{ name: 'vae', weights: p.weights, parameters: countOf(vaeWeightShapes(p.cfg)), build: (m) => buildVaeDecoder(m, p.cfg) }];
    },
  };
}

function clipPlan(): Plan {
  const all = specs(clipWeightShapes(FULL_CLIP), 'bfloat16');
  return {
    sourceBytes: bytesOf(all), parameters: countOf(clipWeightShapes(FULL_CLIP)),
    generate: (dir) => writeFolder(join(dir, 'text_encoder'), {
      architectures: ['CLIPTextModel'], model_type: 'clip_text_model', vocab_size: 49408, hidden_size: 768, intermediate_size: 3072,
      num_hidden_layers: 12, num_attention_heads: 12, max_position_embeddings: 77, hidden_act: 'quick_gelu', layer_norm_eps: 1e-5,
      bos_token_id: 0, eos_token_id: 2, pad_token_id: 1, projection_dim: 768,
    }, all, 'model'),
    graphs: (dir) => {
      const p = openClip(join(dir, 'text_encoder'));
      return [{ name: 'clip', weights: p.weights, parameters: countOf(clipWeightShapes(p.cfg)), build: (m) => buildClip(m, p.cfg, { seqLen: 77 }) }];
    },
  };
}

function t5Plan(): Plan {
  const all = specs(t5WeightShapes(FULL_T5), 'bfloat16');
  return {
    sourceBytes: bytesOf(all), parameters: countOf(t5WeightShapes(FULL_T5)),
    generate: (dir) => writeFolder(join(dir, 'text_encoder_2'), {
      architectures: ['T5EncoderModel'], model_type: 't5', vocab_size: 32128, d_model: 4096, d_kv: 64, d_ff: 10240, num_layers: 24, num_heads: 64,
      relative_attention_num_buckets: 32, relative_attention_max_distance: 128, layer_norm_epsilon: 1e-6, feed_forward_proj: 'gated-gelu', is_gated_act: true, dense_act_fn: 'gelu_new',
    }, all, 'model', 5 * GB),
    graphs: (dir) => {
      const p = openT5(join(dir, 'text_encoder_2'));
      return [{ name: 't5', weights: p.weights, parameters: countOf(t5WeightShapes(p.cfg)), build: (m) => buildT5(m, p.cfg, { seqLen: T5_FLUX_SEQ_LEN }) }];
    },
  };
}

function fluxPlan(): Plan {
  const all = specs(fluxWeightShapes(FULL_FLUX), 'bfloat16');
  const params = countOf(fluxWeightShapes(FULL_FLUX)) + countOf(ipAdapterWeightShapes(FULL_FLUX, FULL_ADAPTER.outputDim));
  return {
    sourceBytes: bytesOf(all), parameters: params,
    generate: (dir) => writeFolder(join(dir, 'transformer'), {
      _class_name: 'FluxTransformer2DModel', patch_size: 1, in_channels: 64, num_layers: 19, num_single_layers: 38, attention_head_dim: 128,
      num_attention_heads: 24, joint_attention_dim: 4096, pooled_projection_dim: 768, guidance_embeds: true, axes_dims_rope: [16, 56, 56],
    }, all, 'diffusion_pytorch_model', 10 * GB),
    graphs: (dir) => {
      const p = openFluxTransformer(join(dir, 'transformer'));
      const { ip } = openAdapter(ADAPTER_PATH(dir)); // generated by the adapter step, kept for this one
      return [{ name: 'flux', weights: p.weights, parameters: params, build: (m) => buildFlux(m, ip, p.cfg) }];
    },
  };
}

const PLANS: Record<Name, () => Plan> = {
  siglip: siglipPlan, dinov2: dinov2Plan, adapter: adapterPlan, vae: vaePlan, clip: clipPlan, t5: t5Plan, flux: fluxPlan,
};

// ---------------------------------------------------------------------------------------------
// Steps

/**
 * Creates an onnxruntime session in a child process; returns its time, peak RSS, or why it failed. The child's
 * address space is capped (ulimit -v) below the available RAM, so running short fails the child cleanly
 * instead of waking the OOM killer on a shared machine.
 */
function sessionCheck(model: string, capBytes: number): { ok: boolean; seconds: number; peak: number; message: string } {
  const code = `
    import * as ort from 'onnxruntime-node';
    import { readFileSync } from 'node:fs';
    const t0 = Date.now();
    const s = await ort.InferenceSession.create(process.argv[1], { executionProviders: ['cpu'], graphOptimizationLevel: 'all', logSeverityLevel: 3 });
    const peak = Number(/VmHWM:\\s+(\\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))[1]) * 1024;
    console.log(JSON.stringify({ seconds: (Date.now() - t0) / 1000, peak, inputs: s.inputNames.length, outputs: s.outputNames.length }));
  `;
  const limit = `ulimit -v ${Math.floor(capBytes / 1024)}; exec "$0" "$@"`;
  const r = spawnSync('bash', ['-c', limit, process.execPath, '--input-type=module', '-e', code, model], { cwd: resolve(import.meta.dirname, '..'), encoding: 'utf8', maxBuffer: 1 << 24 });
  const line = r.stdout.trim().split('\n').pop() ?? '';
  if (r.status === 0 && line.startsWith('{')) {
    const j = JSON.parse(line) as { seconds: number; peak: number; inputs: number; outputs: number };
    return { ok: true, seconds: j.seconds, peak: j.peak, message: `${j.inputs} inputs, ${j.outputs} outputs` };
  }
  return { ok: false, seconds: 0, peak: 0, message: `exit ${r.status ?? r.signal}: ${(r.stderr || r.stdout).trim().split('\n').slice(-3).join(' | ')}` };
}

interface Row {
  component: string;
  note: string;
}
const rows: Row[] = [];
function report(component: string, note: string): void {
  rows.push({ component, note });
  console.log(`[${component}] ${note}`);
}

function parseArgs(argv: string[]): { only: Name[]; dir?: string; session: boolean; keep: boolean; weights?: WeightFormat; block?: number } {
  const get = (flag: string) => {
    const i = argv.indexOf(flag);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const only = (get('--only')?.split(',') ?? ALL) as Name[];
  for (const n of only) if (!ALL.includes(n)) throw new Error(`unknown component ${n} (expected ${ALL.join(', ')})`);
  const weights = get('--weights');
  const block = get('--block');
  return {
    only, dir: get('--dir'), session: !argv.includes('--no-session'), keep: argv.includes('--keep'),
    weights: weights ? parseWeightFormat(weights) : undefined, block: block ? Number(block) : undefined,
  };
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  // --weights int8|int4 [--block N]: as `models convert --weights ...` (the VAE stays float32).
  const formats: Record<ComponentName, ComponentFormat> | undefined = args.weights
    ? resolveFormats(COMPONENTS, { base: args.weights, fp32: ['vae', 'vae_encoder'], block: args.block })
    : undefined;
  const root = mkdtempSync(join(args.dir ?? tmpdir(), 'charflow-fullsize-'));
  const checkpoints = join(root, 'checkpoints');
  const out = join(root, 'set');
  mkdirSync(checkpoints, { recursive: true });
  mkdirSync(out, { recursive: true });
  console.log(`working in ${root}; free disk ${gb(diskFree(root))}, available RAM ${gb(memAvailable())}`);
  // FLUX reads its IP layers from the adapter file, so the adapter is generated first when FLUX is checked.
  const order = ALL.filter((n) => args.only.includes(n) || (n === 'adapter' && args.only.includes('flux')));
  try {
    for (const name of order) {
      const plan = PLANS[name]();
      const outBytes = plan.parameters * 2;
      const need = plan.sourceBytes + outBytes + 2 * GB;
      const free = diskFree(root);
      if (free < need) {
        report(name, `SKIPPED: needs ${gb(need)} of disk (checkpoint ${gb(plan.sourceBytes)} + fp16 graphs ${gb(outBytes)} + 2 GB margin), ${gb(free)} free`);
        continue;
      }
      let t0 = process.hrtime.bigint();
      resetPeak();
      const before = sizeOf(checkpoints);
      plan.generate(checkpoints);
      report(name, `checkpoint written: ${gb(sizeOf(checkpoints) - before)} on disk in ${secs(t0).toFixed(1)} s (peak RSS ${gb(peakRss())})`);

      for (const job of plan.graphs(checkpoints)) {
        const dtype = formats?.[job.name].dtype ?? FP16_POLICY[job.name]; // as `charflow models convert --dtype fp16` (the VAE stays float32)
        const quant = formats?.[job.name].quant;
        const perWeight = quant ? quant.bits / 8 + 5 / 16 : dtype === 'float16' ? 2 : 4;
        const external = job.parameters * perWeight > (quant ? QUANT_EXTERNAL_THRESHOLD : EXTERNAL_THRESHOLD) ? { dir: out, file: `${job.name}.onnx.data` } : undefined;
        const g = new Graph({ name: job.name, dtype, external, quant });
        t0 = process.hrtime.bigint();
        resetPeak();
        try {
          job.build({ g, w: job.weights });
          g.save(join(out, `${job.name}.onnx`));
        } catch (err) {
          g.discard();
          report(job.name, `CONVERSION FAILED: ${(err as Error).message}`);
          continue;
        } finally {
          job.weights.close?.();
        }
        const files = [`${job.name}.onnx`, ...(external ? [external.file] : [])].map((f) => join(out, f));
        const bytes = files.reduce((n, f) => n + sizeOf(f), 0);
        report(job.name, `converted to ${formats?.[job.name].format ?? (dtype === 'float16' ? 'fp16' : 'fp32')}${quant ? ` (block ${quant.block})` : ''}: ${(job.parameters / 1e9).toFixed(3)} B params, ${gb(bytes)} of graphs in ${secs(t0).toFixed(1)} s, peak RSS ${gb(peakRss())}`);
        if (args.session) {
          const avail = memAvailable();
          if (avail < bytes + 3 * GB) {
            report(job.name, `session SKIPPED: the weights alone (${gb(bytes)}) plus 3 GB exceed the ${gb(avail)} of RAM available`);
          } else {
            const s = sessionCheck(join(out, `${job.name}.onnx`), avail - 1.5 * GB);
            report(job.name, s.ok ? `onnxruntime session created in ${s.seconds.toFixed(1)} s, peak RSS ${gb(s.peak)} (${s.message})` : `SESSION FAILED: ${s.message}`);
          }
        }
        if (!args.keep) files.forEach((f) => rmSync(f, { force: true }));
      }
      if (!args.keep) {
        // Each step deletes its checkpoint; the adapter waits for FLUX, which reads its IP layers.
        const keepAdapter = order.includes('flux') && name !== 'flux';
        for (const f of readdirSync(checkpoints)) {
          if (!(keepAdapter && join(checkpoints, f) === ADAPTER_PATH(checkpoints))) rmSync(join(checkpoints, f), { recursive: true, force: true });
        }
      }
    }
  } finally {
    if (!args.keep) rmSync(root, { recursive: true, force: true });
  }
  console.log('\nsummary');
  for (const r of rows) console.log(`  ${r.component.padEnd(15)} ${r.note}`);
}

await main();
