// `charflow models convert`: the user's checkpoints -> a model set, through writeModelSet.
// Streaming: every weight is read from disk when its graph asks for it and, for the big graphs, written
// straight to the external-data file, so memory holds one tensor (plus one fused matrix) at a time.
// Resumable: after each component the set folder's convert-state.json records its files (size, sha256)
// and a fingerprint of what it was made from (source files' paths, sizes and times, dtype, LoRAs, configs).
// A re-run verifies those files and rebuilds only what is missing, damaged or made from other inputs.
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { countParameters } from '../layers.ts';
import { siglipWeightShapes } from '../siglip.ts';
import { dinov2WeightShapes } from '../dinov2.ts';
import { adapterWeightShapes } from '../adapter.ts';
import { fluxWeightShapes, ipAdapterWeightShapes } from '../flux.ts';
import { vaeEncoderWeightShapes, vaeWeightShapes } from '../vae.ts';
import { T5_FLUX_SEQ_LEN, t5WeightShapes } from '../t5.ts';
import { clipWeightShapes } from '../clip.ts';
import type { WeightSource } from '../weights/source.ts';
import {
  type ComponentName, type FileEntry, type GraphDType, type ModelSetManifest, type ModelSetSpec, DEFAULT_ATTENTION, MANIFEST_FILE, modelSetDir, writeModelSet,
} from '../modelset.ts';
import { type CheckpointPaths, type OpenedCheckpoints, openCheckpoints } from './layouts.ts';
import { type LoraSpec, mergeLoras } from './lora.ts';
import { trackedSource } from './views.ts';
import { storesBlocks } from './gguf-layouts.ts';
import { type ComponentFormat, type WeightFormat, resolveFormats } from '../quant/formats.ts';

export const STATE_FILE = 'convert-state.json';
/** Bumped when the converter's output for the same inputs changes, so old components are rebuilt. */
const CONVERTER_VERSION = 1;
/** The pipeline's hidden-state layers (pipeline.py encode_siglip_image_emb / encode_dinov2_image_emb). */
const SIGLIP_SHALLOW = [7, 13, 26];
const DINOV2_SHALLOW = [9, 19, 29];
const CLIP_SEQ_LEN = 77;

export const COMPONENTS: readonly ComponentName[] = ['siglip', 'dinov2', 'adapter_static', 'adapter_time', 'flux', 'vae', 'vae_encoder', 't5', 'clip'];

/**
 * Components a float16 conversion keeps in float32 unless told otherwise: the VAE overflows half precision
 * at high resolutions (diffusers' force_upcast covers encode and decode), and at ~50 M (decoder) and ~34 M
 * (encoder) weights float32 costs little.
 */
export const DEFAULT_FP32: readonly ComponentName[] = ['vae', 'vae_encoder'];

/** The precision of each component: `dtype`, except the `fp32` ones when `dtype` is float16. */
export function componentDtypes(dtype: GraphDType, fp32: readonly ComponentName[] = DEFAULT_FP32): Record<ComponentName, GraphDType> {
  return Object.fromEntries(COMPONENTS.map((c) => [c, fp32.includes(c) ? 'float32' : dtype])) as Record<ComponentName, GraphDType>;
}

export interface ConvertOptions extends CheckpointPaths {
  /** Models folder; the set goes to <modelsDir>/<name>. */
  modelsDir: string;
  name: string;
  dtype: GraphDType;
  /** With dtype float16: the components kept in float32 (default DEFAULT_FP32; [] for all float16). */
  fp32?: readonly ComponentName[];
  /**
   * Weight format of every component (overrides `dtype`): int8 / int4 write Linears as MatMulNBits
   * (block-wise, `block` values per block); `formats` sets single components (e.g. t5: 'int8').
   */
  weights?: WeightFormat;
  formats?: Partial<Record<ComponentName, WeightFormat>>;
  block?: number;
  symmetric?: boolean;
  loras?: readonly LoraSpec[];
  /** Sequence lengths the text graphs are built for (FLUX: 512 and 77). */
  t5SeqLen?: number;
  clipSeqLen?: number;
  /** Replace an existing set that was made from other checkpoints. */
  force?: boolean;
  onEvent?: (e: ConvertEvent) => void;
  warn?: (message: string) => void;
}

export type ConvertEvent =
  | { type: 'plan'; build: ComponentName[]; reuse: ComponentName[]; parameters: Record<ComponentName, number> }
  | { type: 'verify'; component: ComponentName; ok: boolean }
  | { type: 'start'; component: ComponentName; parameters: number }
  | { type: 'weights'; component: ComponentName; done: number; total: number }
  | { type: 'written'; component: ComponentName; entry: FileEntry };

export interface ConvertResult {
  dir: string;
  manifest: ModelSetManifest;
  built: ComponentName[];
  reused: ComponentName[];
}

interface StateFile {
  version: 1;
  components: Partial<Record<ComponentName, { fingerprint: string; entry: FileEntry }>>;
}

// ---------------------------------------------------------------------------------------------

function readState(dir: string): StateFile {
  const p = join(dir, STATE_FILE);
  if (!existsSync(p)) return { version: 1, components: {} };
  try {
    const s = JSON.parse(readFileSync(p, 'utf8')) as StateFile;
    return s.version === 1 && typeof s.components === 'object' ? s : { version: 1, components: {} };
  } catch {
    return { version: 1, components: {} };
  }
}

function writeState(dir: string, state: StateFile): void {
  const p = join(dir, STATE_FILE);
  writeFileSync(`${p}.partial`, JSON.stringify(state, null, 2));
  renameSync(`${p}.partial`, p);
}

async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** A component's files are present with the recorded sizes and hashes. */
async function verifyEntry(dir: string, entry: FileEntry): Promise<boolean> {
  for (const f of [entry, ...(entry.data ?? [])]) {
    const p = join(dir, f.file);
    if (!existsSync(p) || statSync(p).size !== f.bytes) return false;
  }
  for (const f of [entry, ...(entry.data ?? [])]) if ((await sha256File(join(dir, f.file))) !== f.sha256) return false;
  return true;
}

/** Identity of a file for the fingerprint: path, size, modification time (hashing 40 GB per run is too slow). */
function fileStamp(path: string): [string, number, number] {
  const st = statSync(path);
  return [resolve(path), st.size, Math.round(st.mtimeMs)];
}

function fingerprint(parts: unknown): string {
  return createHash('sha256').update(JSON.stringify(parts)).digest('hex');
}

/** What each component is made from. */
function fingerprints(
  ck: OpenedCheckpoints, opts: ConvertOptions, dtypes: Record<ComponentName, GraphDType>, t5SeqLen: number, clipSeqLen: number,
  formats?: Record<ComponentName, ComponentFormat>,
): Record<ComponentName, string> {
  // Each component's own dtype (same key and order as when a set had one dtype, so those sets still resume);
  // quantized components add their format.
  const base = (c: ComponentName) => {
    const q = formats?.[c]?.quant;
    return q ? { v: CONVERTER_VERSION, dtype: dtypes[c], quant: [q.bits, q.block, Boolean(q.symmetric)] } : { v: CONVERTER_VERSION, dtype: dtypes[c] };
  };
  const stamps = (files: string[]) => files.map(fileStamp);
  const adapter = (c: ComponentName) => ({ ...base(c), files: stamps(ck.adapter.files), cfg: ck.adapter.cfg });
  return {
    siglip: fingerprint({ ...base('siglip'), c: 'siglip', files: stamps(ck.siglip.files), cfg: ck.siglip.cfg, layers: SIGLIP_SHALLOW }),
    dinov2: fingerprint({ ...base('dinov2'), c: 'dinov2', files: stamps(ck.dinov2.files), cfg: ck.dinov2.cfg, layers: DINOV2_SHALLOW }),
    adapter_static: fingerprint({ ...adapter('adapter_static'), c: 'adapter_static' }),
    adapter_time: fingerprint({ ...adapter('adapter_time'), c: 'adapter_time' }),
    flux: fingerprint({
      ...base('flux'), c: 'flux', files: stamps(ck.flux.files), cfg: ck.flux.cfg, ip: stamps(ck.adapter.files), attention: DEFAULT_ATTENTION,
      loras: (opts.loras ?? []).map((l) => [...fileStamp(l.path), l.weight]),
    }),
    // The attention form is part of the FLUX and VAE graphs: a graph from before fused attention is rebuilt.
    vae: fingerprint({ ...base('vae'), c: 'vae', files: stamps(ck.vae.files), cfg: ck.vae.cfg, attention: DEFAULT_ATTENTION }),
    vae_encoder: fingerprint({ ...base('vae_encoder'), c: 'vae_encoder', files: stamps(ck.vae.files), cfg: ck.vae.cfg, attention: DEFAULT_ATTENTION }),
    t5: fingerprint({
      ...base('t5'), c: 't5', files: stamps(ck.t5.files), cfg: ck.t5.cfg, seqLen: t5SeqLen,
      ...(opts.loras?.length ? { loras: opts.loras.map((l) => [...fileStamp(l.path), l.weight]) } : {}),
    }),
    clip: fingerprint({
      ...base('clip'), c: 'clip', files: stamps(ck.clip.files), cfg: ck.clip.cfg, seqLen: clipSeqLen,
      ...(opts.loras?.length ? { loras: opts.loras.map((l) => [...fileStamp(l.path), l.weight]) } : {}),
    }),
  };
}

function parameterCounts(ck: OpenedCheckpoints, ipDim: number): Record<ComponentName, number> {
  const adapter = adapterWeightShapes(ck.adapter.cfg);
  const part = (time: boolean) => countParameters(Object.fromEntries(Object.entries(adapter).filter(([k]) => k.startsWith('resampler.') === time)));
  return {
    siglip: countParameters(siglipWeightShapes(ck.siglip.cfg)),
    dinov2: countParameters(dinov2WeightShapes(ck.dinov2.cfg)),
    adapter_static: part(false),
    adapter_time: part(true),
    flux: countParameters(fluxWeightShapes(ck.flux.cfg)) + countParameters(ipAdapterWeightShapes(ck.flux.cfg, ipDim)),
    vae: countParameters(vaeWeightShapes(ck.vae.cfg)),
    vae_encoder: countParameters(vaeEncoderWeightShapes(ck.vae.cfg)),
    t5: countParameters(t5WeightShapes(ck.t5.cfg)),
    clip: countParameters(clipWeightShapes(ck.clip.cfg)),
  };
}

/** Formats for GGUF parts left to the default: int4 for the transformer, int8 for T5 (the GGUF's types decide the bits). */
function ggufFormats(ck: OpenedCheckpoints, opts: ConvertOptions): Partial<Record<ComponentName, WeightFormat>> {
  if (opts.weights) return {};
  const out: Partial<Record<ComponentName, WeightFormat>> = {};
  if (!opts.formats?.flux && storesBlocks(ck.flux.weights)) out.flux = 'int4';
  if (!opts.formats?.t5 && storesBlocks(ck.t5.weights)) out.t5 = 'int8';
  return out;
}

function required(id: number | undefined, what: string, where: string): number {
  if (id === undefined) throw new Error(`${where}: the tokenizer has no ${what} token`);
  return id;
}

// ---------------------------------------------------------------------------------------------

/** Converts the checkpoints in `opts` into the model set <modelsDir>/<name>. */
export async function convertCheckpoints(opts: ConvertOptions): Promise<ConvertResult> {
  const dir = modelSetDir(opts.modelsDir, opts.name);
  const warn = opts.warn ?? ((m: string) => console.warn(m));
  const emit = opts.onEvent ?? (() => {});
  const t5SeqLen = opts.t5SeqLen ?? T5_FLUX_SEQ_LEN;
  const ck = openCheckpoints(opts);
  const clipSeqLen = opts.clipSeqLen ?? Math.min(CLIP_SEQ_LEN, ck.clip.cfg.maxPositions);
  const closers: (() => void)[] = [() => ck.close()];
  try {
    let fluxWeights: WeightSource = ck.flux.weights;
    let clipWeights: WeightSource = ck.clip.weights;
    let t5Weights: WeightSource = ck.t5.weights;
    if (opts.loras?.length) {
      // The text encoders' part too, as the official flux_load_lora (CLIP-L) and the run-time LoraLoader apply it.
      const merged = mergeLoras(ck.flux.weights, opts.loras, ck.flux.cfg, warn, { clip: ck.clip.cfg, t5: ck.t5.cfg });
      closers.push(() => merged.close());
      fluxWeights = merged.source;
      clipWeights = merged.mergeText('clip', ck.clip.weights).source;
      t5Weights = merged.mergeText('t5', ck.t5.weights).source;
    }
    const ipDim = ck.ip.shape('0.to_k_ip.weight')?.[1] ?? ck.adapter.cfg.outputDim;
    const parameters = parameterCounts(ck, ipDim);
    // A quantized GGUF transformer or T5 is written quantized unless a format is asked for: MatMulNBits keeps
    // its codes (bits and blocks from its types), where float weights would be 3-7x the file.
    const overrides = { ...ggufFormats(ck, opts), ...opts.formats };
    const formats = opts.weights || Object.keys(overrides).length
      ? resolveFormats(COMPONENTS, {
        base: opts.weights ?? (opts.dtype === 'float16' ? 'fp16' : 'fp32'), overrides, fp32: opts.fp32 ?? DEFAULT_FP32,
        block: opts.block, symmetric: opts.symmetric,
      })
      : undefined;
    const dtypes = formats
      ? Object.fromEntries(COMPONENTS.map((c) => [c, formats[c].dtype])) as Record<ComponentName, GraphDType>
      : componentDtypes(opts.dtype, opts.fp32);
    const quant = formats ? Object.fromEntries(COMPONENTS.flatMap((c) => (formats[c].quant ? [[c, formats[c].quant]] : []))) : undefined;
    const prints = fingerprints(ck, opts, dtypes, t5SeqLen, clipSeqLen, formats);

    // Which components can be kept.
    const state = readState(dir);
    const complete = existsSync(join(dir, MANIFEST_FILE));
    // A component the state has never seen (added to charflow after this set was made, e.g. vae_encoder) is
    // missing, not made from other inputs: it is built without --force and the rest is kept.
    const known = Object.keys(state.components).length > 0;
    const stale = COMPONENTS.filter((c) => (known ? state.components[c] !== undefined : true) && state.components[c]?.fingerprint !== prints[c]);
    if (complete && stale.length && !opts.force) {
      throw new Error(`model set "${opts.name}" already exists in ${opts.modelsDir} and was made from other checkpoints or settings (${stale.join(', ')} differ); pass --force to replace it, or choose another --name`);
    }
    const reuse: Partial<Record<ComponentName, FileEntry>> = {};
    for (const c of COMPONENTS) {
      const s = state.components[c];
      if (!s || s.fingerprint !== prints[c]) continue;
      const ok = await verifyEntry(dir, s.entry);
      emit({ type: 'verify', component: c, ok });
      if (ok) reuse[c] = s.entry;
      else delete state.components[c];
    }
    const build = COMPONENTS.filter((c) => !reuse[c]);
    emit({ type: 'plan', build, reuse: Object.keys(reuse) as ComponentName[], parameters });
    // The set is absent while it is incomplete.
    if (build.length) rmSync(join(dir, MANIFEST_FILE), { force: true });

    // Per-tensor progress: every read is counted against the component being built.
    let current: ComponentName = 'siglip';
    let done = 0;
    const track = (s: WeightSource) => trackedSource(s, (_k, n) => {
      done += n;
      emit({ type: 'weights', component: current, done, total: parameters[current] });
    });
    const spec: ModelSetSpec = {
      name: opts.name,
      dtype: opts.dtype,
      dtypes,
      quant,
      siglip: { cfg: ck.siglip.cfg, weights: track(ck.siglip.weights), shallowLayers: SIGLIP_SHALLOW },
      dinov2: { cfg: ck.dinov2.cfg, weights: track(ck.dinov2.weights), shallowLayers: DINOV2_SHALLOW },
      adapter: { cfg: ck.adapter.cfg, weights: track(ck.adapter.weights) },
      flux: { cfg: ck.flux.cfg, weights: track(fluxWeights), ip: track(ck.ip) },
      vae: { cfg: ck.vae.cfg, weights: track(ck.vae.weights) },
      t5: {
        cfg: ck.t5.cfg, weights: track(t5Weights), seqLen: t5SeqLen, tokenizer: ck.t5Tokenizer.json,
        padId: required(ck.t5Tokenizer.pad, 'pad', 'T5'), eosId: required(ck.t5Tokenizer.eos, 'EOS', 'T5'),
      },
      clip: {
        cfg: ck.clip.cfg, weights: track(clipWeights), seqLen: clipSeqLen, tokenizer: ck.clipTokenizer.json,
        bosId: required(ck.clipTokenizer.bos, 'BOS', 'CLIP'), eosId: required(ck.clipTokenizer.eos, 'EOS', 'CLIP'),
        padId: required(ck.clipTokenizer.pad ?? ck.clipTokenizer.eos, 'pad', 'CLIP'),
      },
    };
    const describe: Record<ComponentName, string> = {
      siglip: ck.siglip.describe, dinov2: ck.dinov2.describe, adapter_static: ck.adapter.describe, adapter_time: ck.adapter.describe,
      flux: `${ck.flux.describe}${opts.loras?.length ? ` with LoRAs ${opts.loras.map((l) => l.path).join(', ')}` : ''}, IP layers from ${ck.adapter.describe}`,
      vae: ck.vae.describe, vae_encoder: ck.vae.describe, t5: ck.t5.describe, clip: ck.clip.describe,
    };

    let manifest: ModelSetManifest;
    try {
      manifest = await writeModelSet(spec, dir, (component, index, total) => {
        if (index >= total) return; // the writer's final "all done" call
        current = component;
        done = 0;
        if (!reuse[component]) emit({ type: 'start', component, parameters: parameters[component] });
      }, {
        reuse,
        onComponentWritten: (component, entry) => {
          state.components[component] = { fingerprint: prints[component], entry };
          writeState(dir, state);
          emit({ type: 'written', component, entry });
        },
      });
    } catch (err) {
      throw new Error(`${(err as Error).message}\n  while converting ${describe[current]}`);
    }
    return { dir, manifest, built: build, reused: Object.keys(reuse) as ComponentName[] };
  } finally {
    closers.forEach((c) => c());
  }
}
