// A model set: the ONNX graphs the pipeline nodes load, with a manifest that records each file's
// size and hash and the numbers the nodes need (image sizes, layer indices, sequence lengths).
// The tiny generator and the checkpoint converter both write sets through writeModelSet.
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Graph, type GraphOptions } from './onnx/graph.ts';
import type { Module } from './layers.ts';
import { type AttentionForm, FUSED_FROM_SCORES, countParameters } from './layers.ts';
import type { WeightSource } from './weights/source.ts';
import { type SiglipConfig, buildSiglip, siglipHasHead, siglipWeightShapes } from './siglip.ts';
import { type Dinov2Config, buildDinov2, dinov2WeightShapes } from './dinov2.ts';
import { type AdapterConfig, adapterWeightShapes, buildAdapterStatic, buildAdapterTime } from './adapter.ts';
import { type FluxConfig, buildFlux, fluxWeightShapes } from './flux.ts';
import { type VaeConfig, buildVaeDecoder, buildVaeEncoder, vaeEncoderWeightShapes, vaeWeightShapes } from './vae.ts';
import { type T5Config, buildT5, t5WeightShapes } from './t5.ts';
import { type ClipTextConfig, buildClip, clipWeightShapes } from './clip.ts';
import { type TextTokenizer, loadTokenizer } from './tokenizers.ts';
import type { QuantSpec } from './quant/quantize.ts';
import { chooseAccuracyLevel } from './quant/accuracy.ts';
import type { WeightFormat } from './quant/weight-format.ts';

export const MANIFEST_FILE = 'manifest.json';

/** Precision of a graph's weights and activations. */
export type GraphDType = 'float32' | 'float16';

export interface FileEntry {
  file: string;
  bytes: number;
  sha256: string;
  /** External-data files that belong to the graph. */
  data?: { file: string; bytes: number; sha256: string }[];
  parameters: number;
  /** The graph's precision; absent in sets written before components could differ (then the set's dtype). */
  dtype?: GraphDType;
  /** Weight format: fp32 / fp16 (= dtype) or int8 / int4 (Linears as MatMulNBits); absent in older sets (float). */
  weights?: WeightFormat;
  /** Quantized graphs: values per block along K, and whether the blocks are symmetric (no zero points). */
  block?: number;
  symmetric?: boolean;
  /** Quantized graphs: MatMulNBits' accuracy_level, chosen for the CPU that wrote the set (models/quant/accuracy.ts). */
  accuracyLevel?: number;
}

export interface VisionSettings {
  imageSize: number;
  shallowLayers: number[];
  mean: number[];
  std: number[];
  width: number;
  /** DINOv2 puts a CLS token first, which the pipeline drops. */
  clsToken: boolean;
}

export interface ModelSetManifest {
  format: 'charflow.models';
  version: 1;
  name: string;
  /** The precision asked for; a component may differ (files[c].dtype, e.g. a float32 VAE in a float16 set). */
  dtype: GraphDType;
  files: Record<ComponentName, FileEntry>;
  tokenizers: { t5: string; clip: string };
  siglip: VisionSettings;
  dinov2: VisionSettings;
  adapter: { numQueries: number; outputDim: number; innerDim: number };
  flux: {
    inChannels: number; latentChannels: number; jointDim: number; pooledDim: number; axesDims: number[]; theta: number;
    /** Attention heads and head width (for activation-memory estimates; absent in sets written before them). */
    numHeads?: number; headDim?: number;
    /** How the transformer (and the VAE's mid block) write attention; absent in sets from before: 'plain'. */
    attention?: AttentionSetting;
  };
  vae: { latentChannels: number; downscale: number };
  t5: { seqLen: number; width: number; padId: number; eosId: number };
  clip: { seqLen: number; width: number; bosId: number; eosId: number; padId: number };
}

/** layers.ts AttentionForm, and for 'auto' the score elements per image (heads x Tq x Tk) from which the fused op runs. */
export interface AttentionSetting {
  form: AttentionForm;
  fusedFrom?: number;
}

/** What new sets write: both forms behind an If at the CPU crossover (docs/attention.md). */
export const DEFAULT_ATTENTION: AttentionSetting = { form: 'auto', fusedFrom: FUSED_FROM_SCORES };

/** A set's attention setting; sets written before fused attention have plain MatMul -> Softmax -> MatMul. */
export function attentionOf(manifest: ModelSetManifest): AttentionSetting {
  return manifest.flux.attention ?? { form: 'plain' };
}

/** Whether attention with `heads` x `tq` x `tk` scores runs fused (none of them held) in a set with `setting`. */
export function attentionFusedAt(setting: AttentionSetting, heads: number, tq: number, tk = tq): boolean {
  if (setting.form === 'auto') return heads * tq * tk >= (setting.fusedFrom ?? FUSED_FROM_SCORES);
  return setting.form === 'fused';
}

export type ComponentName = 'siglip' | 'dinov2' | 'adapter_static' | 'adapter_time' | 'flux' | 'vae' | 'vae_encoder' | 't5' | 'clip';

export interface ModelSetSpec {
  name: string;
  dtype: GraphDType;
  /** Components built in another precision than `dtype`. */
  dtypes?: Partial<Record<ComponentName, GraphDType>>;
  /** Components whose Linears are quantized (MatMulNBits); their dtype should be float32. */
  quant?: Partial<Record<ComponentName, QuantSpec>>;
  siglip: { cfg: SiglipConfig; weights: WeightSource; shallowLayers: number[] };
  dinov2: { cfg: Dinov2Config; weights: WeightSource; shallowLayers: number[] };
  adapter: { cfg: AdapterConfig; weights: WeightSource };
  flux: { cfg: FluxConfig; weights: WeightSource; ip: WeightSource };
  vae: { cfg: VaeConfig; weights: WeightSource };
  t5: { cfg: T5Config; weights: WeightSource; seqLen: number; tokenizer: string; padId: number; eosId: number };
  clip: { cfg: ClipTextConfig; weights: WeightSource; seqLen: number; tokenizer: string; bosId: number; eosId: number; padId: number };
  /** How FLUX and the VAE write attention (default DEFAULT_ATTENTION). */
  attention?: AttentionSetting;
}

/** Graphs whose weights exceed this are written with external data (protobuf caps at 2 GB). */
const EXTERNAL_THRESHOLD = 1.5 * 1024 ** 3;
/**
 * Quantized graphs go external from 256 MiB: inline weights stay in memory until the graph is saved, and
 * a 1 GB int4 graph held inline would lift the conversion's peak RSS over 1 GB.
 */
export const QUANT_EXTERNAL_THRESHOLD = 256 * 1024 ** 2;

const SIGLIP_NORM = { mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] };
const IMAGENET_NORM = { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };
/** The pipeline's encoder resolution: low-res input and each high-res crop. */
export const ENCODER_IMAGE_SIZE = 384;

/** The adapter's weights split between its two graphs: the resampler runs per step, the rest once. */
function adapterShapes(cfg: AdapterConfig, timePart: boolean): Record<string, number[]> {
  const all = adapterWeightShapes(cfg);
  return Object.fromEntries(Object.entries(all).filter(([k]) => k.startsWith('resampler.') === timePart));
}

async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

interface ComponentJob {
  name: ComponentName;
  parameters: number;
  build: (m: Module) => void;
  weights: WeightSource;
}

export interface WriteProgress {
  (component: ComponentName, index: number, total: number): void;
}

/** Hooks for a resumable writer (the checkpoint converter). */
export interface WriteOptions {
  /** Components whose files are already in `dir` and verified: their entries are reused, their graphs not rebuilt. */
  reuse?: Partial<Record<ComponentName, FileEntry>>;
  /** Called once a component's files are in place and hashed, so a caller can record progress. */
  onComponentWritten?: (component: ComponentName, entry: FileEntry) => void;
  /** Replaces the block quantizer of quantized graphs (synthetic size checks only: scripts/quant-sizes.ts). */
  quantizer?: GraphOptions['quantizer'];
}

/** Builds every graph of the set into `dir` and writes the manifest last (so a set is complete or absent). */
export async function writeModelSet(spec: ModelSetSpec, dir: string, onProgress?: WriteProgress, opts: WriteOptions = {}): Promise<ModelSetManifest> {
  mkdirSync(dir, { recursive: true });
  const attention = spec.attention ?? DEFAULT_ATTENTION;
  const attn = { attention: attention.form, fusedFrom: attention.fusedFrom };
  const jobs: ComponentJob[] = [
    {
      name: 'siglip', weights: spec.siglip.weights, parameters: countParameters(siglipWeightShapes(spec.siglip.cfg, { head: siglipHasHead(spec.siglip.weights) })),
      // pooler_output (the pooling head, for Identity Score) where the checkpoint has it.
      build: (m) => buildSiglip(m, spec.siglip.cfg, { hiddenStates: spec.siglip.shallowLayers, imageSize: ENCODER_IMAGE_SIZE, pooled: siglipHasHead(spec.siglip.weights) }),
    },
    {
      name: 'dinov2', weights: spec.dinov2.weights, parameters: countParameters(dinov2WeightShapes(spec.dinov2.cfg)),
      build: (m) => buildDinov2(m, spec.dinov2.cfg, { hiddenStates: spec.dinov2.shallowLayers, imageSize: ENCODER_IMAGE_SIZE }),
    },
    {
      name: 'adapter_static', weights: spec.adapter.weights, parameters: countParameters(adapterShapes(spec.adapter.cfg, false)),
      build: (m) => buildAdapterStatic(m, spec.adapter.cfg),
    },
    {
      name: 'adapter_time', weights: spec.adapter.weights, parameters: countParameters(adapterShapes(spec.adapter.cfg, true)),
      build: (m) => buildAdapterTime(m, spec.adapter.cfg),
    },
    {
      name: 'flux', weights: spec.flux.weights, parameters: countParameters(fluxWeightShapes(spec.flux.cfg)),
      build: (m) => buildFlux(m, spec.flux.ip, spec.flux.cfg, attn),
    },
    { name: 'vae', weights: spec.vae.weights, parameters: countParameters(vaeWeightShapes(spec.vae.cfg)), build: (m) => buildVaeDecoder(m, spec.vae.cfg, attn) },
    // The same checkpoint's encoder.* half, for image-to-image.
    {
      name: 'vae_encoder', weights: spec.vae.weights, parameters: countParameters(vaeEncoderWeightShapes(spec.vae.cfg)),
      build: (m) => buildVaeEncoder(m, spec.vae.cfg, attn),
    },
    { name: 't5', weights: spec.t5.weights, parameters: countParameters(t5WeightShapes(spec.t5.cfg)), build: (m) => buildT5(m, spec.t5.cfg, { seqLen: spec.t5.seqLen }) },
    { name: 'clip', weights: spec.clip.weights, parameters: countParameters(clipWeightShapes(spec.clip.cfg)), build: (m) => buildClip(m, spec.clip.cfg, { seqLen: spec.clip.seqLen }) },
  ];
  const files = {} as Record<ComponentName, FileEntry>;
  for (const [i, job] of jobs.entries()) {
    onProgress?.(job.name, i, jobs.length);
    const dtype = spec.dtypes?.[job.name] ?? spec.dtype;
    const reused = opts.reuse?.[job.name];
    if (reused) {
      // The caller vouches that the files were built in this dtype (older records do not name it).
      files[job.name] = { ...reused, dtype };
      continue;
    }
    const file = `${job.name}.onnx`;
    const asked = spec.quant?.[job.name];
    // accuracy_level follows the writing machine's CPU unless the spec sets it (models/quant/accuracy.ts).
    const quant = asked && { ...asked, accuracyLevel: asked.accuracyLevel ?? chooseAccuracyLevel().level };
    // Quantized: at most bits/8 per weight plus a float32 scale and a zero point per block (16 at the least).
    const bytesPerWeight = quant ? quant.bits / 8 + 5 / 16 : dtype === 'float16' ? 2 : 4;
    const external = job.parameters * bytesPerWeight > (quant ? QUANT_EXTERNAL_THRESHOLD : EXTERNAL_THRESHOLD) ? { dir, file: `${job.name}.onnx.data` } : undefined;
    const g = new Graph({ name: job.name, dtype, external, quant, quantizer: opts.quantizer });
    try {
      job.build({ g, w: job.weights });
      g.save(join(dir, file));
    } catch (err) {
      g.discard();
      throw new Error(`building ${job.name}: ${(err as Error).message}`);
    }
    const entry: FileEntry = { file, bytes: statSync(join(dir, file)).size, sha256: await sha256File(join(dir, file)), parameters: job.parameters, dtype };
    if (quant) Object.assign(entry, { weights: quant.bits === 8 ? 'int8' : 'int4', block: quant.block, ...(quant.symmetric ? { symmetric: true } : {}), accuracyLevel: quant.accuracyLevel });
    else entry.weights = dtype === 'float16' ? 'fp16' : 'fp32';
    if (external) {
      const p = join(dir, external.file);
      entry.data = [{ file: external.file, bytes: statSync(p).size, sha256: await sha256File(p) }];
    }
    files[job.name] = entry;
    opts.onComponentWritten?.(job.name, entry);
  }
  onProgress?.('clip', jobs.length, jobs.length);

  writeFileSync(join(dir, 't5_tokenizer.json'), spec.t5.tokenizer);
  writeFileSync(join(dir, 'clip_tokenizer.json'), spec.clip.tokenizer);
  const manifest: ModelSetManifest = {
    format: 'charflow.models',
    version: 1,
    name: spec.name,
    dtype: spec.dtype,
    files,
    tokenizers: { t5: 't5_tokenizer.json', clip: 'clip_tokenizer.json' },
    siglip: { imageSize: ENCODER_IMAGE_SIZE, shallowLayers: spec.siglip.shallowLayers, ...SIGLIP_NORM, width: spec.siglip.cfg.hiddenSize, clsToken: false },
    dinov2: { imageSize: ENCODER_IMAGE_SIZE, shallowLayers: spec.dinov2.shallowLayers, ...IMAGENET_NORM, width: spec.dinov2.cfg.hiddenSize, clsToken: true },
    adapter: { numQueries: spec.adapter.cfg.numQueries, outputDim: spec.adapter.cfg.outputDim, innerDim: spec.adapter.cfg.innerDim },
    flux: {
      inChannels: spec.flux.cfg.inChannels, latentChannels: spec.flux.cfg.inChannels / 4,
      jointDim: spec.flux.cfg.jointAttentionDim, pooledDim: spec.flux.cfg.pooledProjectionDim,
      axesDims: [...spec.flux.cfg.axesDimsRope], theta: spec.flux.cfg.ropeTheta,
      numHeads: spec.flux.cfg.numHeads, headDim: spec.flux.cfg.headDim,
      attention,
    },
    vae: { latentChannels: spec.vae.cfg.latentChannels, downscale: 2 ** (spec.vae.cfg.blockOutChannels.length - 1) },
    t5: { seqLen: spec.t5.seqLen, width: spec.t5.cfg.dModel, padId: spec.t5.padId, eosId: spec.t5.eosId },
    clip: { seqLen: spec.clip.seqLen, width: spec.clip.cfg.hiddenSize, bosId: spec.clip.bosId, eosId: spec.clip.eosId, padId: spec.clip.padId },
  };
  const tmp = join(dir, `${MANIFEST_FILE}.partial`);
  writeFileSync(tmp, JSON.stringify(manifest, null, 2));
  renameSync(tmp, join(dir, MANIFEST_FILE));
  return manifest;
}

/** A loaded set: its folder and manifest, with helpers for file paths. */
export interface ModelSet {
  name: string;
  dir: string;
  manifest: ModelSetManifest;
  /** Content identity of the set, for cache keys. */
  digest: string;
  path(component: ComponentName): string;
  /** The precision of a component's graph (sets may mix: a float32 VAE in a float16 set). */
  dtype(component: ComponentName): GraphDType;
  tokenizerPath(kind: 't5' | 'clip'): string;
  /** The loaded tokenizer (parsed once per opened set). */
  tokenizer(kind: 't5' | 'clip'): TextTokenizer;
}

export function modelSetDir(modelsRoot: string, name: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(name)) throw new Error(`"${name}" is not a valid model set name (letters, digits, '.', '_', '-')`);
  return join(modelsRoot, name);
}

export function modelSetExists(modelsRoot: string, name: string): boolean {
  return existsSync(join(modelSetDir(modelsRoot, name), MANIFEST_FILE));
}

/** Every graph a set written by this charflow holds; sets written by older versions may lack newer ones (vae_encoder). */
export const COMPONENT_NAMES: readonly ComponentName[] = ['siglip', 'dinov2', 'adapter_static', 'adapter_time', 'flux', 'vae', 'vae_encoder', 't5', 'clip'];

/**
 * The set exists, has every graph this charflow writes and records the attention setting this charflow
 * writes (generated sets: one that does not can simply be rewritten).
 */
export function modelSetComplete(modelsRoot: string, name: string): boolean {
  if (!modelSetExists(modelsRoot, name)) return false;
  try {
    const manifest = JSON.parse(readFileSync(join(modelSetDir(modelsRoot, name), MANIFEST_FILE), 'utf8')) as ModelSetManifest;
    // Sets from before fused attention, or with another threshold, are complete but outdated: a generated set is rewritten.
    const attention = manifest.flux?.attention;
    return COMPONENT_NAMES.every((c) => manifest.files?.[c] !== undefined)
      && attention?.form === DEFAULT_ATTENTION.form && attention.fusedFrom === DEFAULT_ATTENTION.fusedFrom;
  } catch {
    return false;
  }
}

/** Opens a set and checks that every file it lists is present with the recorded size. */
export function openModelSet(modelsRoot: string, name: string): ModelSet {
  const dir = modelSetDir(modelsRoot, name);
  const manifestPath = join(dir, MANIFEST_FILE);
  if (!existsSync(manifestPath)) {
    throw new Error(`model set "${name}" not found in ${modelsRoot}: run \`charflow models tiny\` for the test set, or \`charflow models convert\` for real checkpoints`);
  }
  let manifest: ModelSetManifest;
  try {
    manifest = JSON.parse(readFileSync(manifestPath, 'utf8')) as ModelSetManifest;
  } catch (err) {
    throw new Error(`model set "${name}": ${manifestPath} is not valid JSON (${(err as Error).message})`);
  }
  if (manifest.format !== 'charflow.models' || manifest.version !== 1) throw new Error(`model set "${name}": unsupported manifest format`);
  for (const [component, entry] of Object.entries(manifest.files)) {
    for (const f of [entry, ...(entry.data ?? [])]) {
      const p = join(dir, f.file);
      if (!existsSync(p)) throw new Error(`model set "${name}": ${component} file ${f.file} is missing`);
      if (statSync(p).size !== f.bytes) throw new Error(`model set "${name}": ${component} file ${f.file} has the wrong size (damaged or partial)`);
    }
  }
  const digest = createHash('sha256').update(JSON.stringify(manifest.files)).digest('hex').slice(0, 16);
  const tokenizerPath = (kind: 't5' | 'clip'): string => join(dir, manifest.tokenizers[kind]);
  const tokenizers = new Map<'t5' | 'clip', TextTokenizer>();
  return {
    name, dir, manifest, digest, tokenizerPath,
    path(component) {
      const entry = manifest.files[component] as FileEntry | undefined;
      if (!entry) {
        throw new Error(`model set "${name}" has no ${component} graph (it was written by an older charflow): rewrite it with \`charflow models tiny --force\` or re-run \`charflow models convert\``);
      }
      return join(dir, entry.file);
    },
    dtype: (component) => manifest.files[component].dtype ?? manifest.dtype,
    tokenizer(kind) {
      let tok = tokenizers.get(kind);
      if (!tok) tokenizers.set(kind, (tok = loadTokenizer(tokenizerPath(kind))));
      return tok;
    },
  };
}
