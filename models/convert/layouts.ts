// Finds each model part in the checkpoints a user brings and opens it as a WeightSource with the key
// names the architecture files read, plus its config. Accepted layouts:
// - the Hugging Face FLUX.1-dev folder: transformer/, vae/, text_encoder/ (CLIP-L), text_encoder_2/ (T5-XXL),
//   tokenizer/ (vocab.json + merges.txt), tokenizer_2/ (tokenizer.json), sharded safetensors with an index;
// - a single-file transformer (flux1-dev.safetensors, original BFL names, or diffusers names), possibly with
//   a prefix (model.diffusion_model.) and embedded VAE / text encoders (vae., text_encoders.clip_l.transformer.,
//   text_encoders.t5xxl.transformer.); the other parts then come from --vae/--clip/--t5 or a --base folder;
// - ae.safetensors (LDM autoencoder names) for the VAE;
// - google/siglip-so400m-patch14-384 (a full SiglipModel: only vision_model.* is read), facebook/dinov2-giant;
// - instantcharacter_ip-adapter.bin (ip_adapter.* and image_proj.*), whose config is hard-coded upstream;
// - GGUF files (ComfyUI-GGUF's FLUX in BFL names, llama.cpp's T5 encoder): see gguf-layouts.ts.
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { detectFormat, openWeights } from '../weights/open.ts';
import { GgufFile } from '../weights/gguf.ts';
import { checkGgufArchitecture, openT5Gguf } from './gguf-layouts.ts';
import { type WeightSource, withPrefix } from '../weights/source.ts';
import { type FluxConfig, fluxConfigFromJson } from '../flux.ts';
import { type SiglipConfig, FULL_SIGLIP, siglipConfigFromJson } from '../siglip.ts';
import { type Dinov2Config, FULL_DINOV2, dinov2ConfigFromJson } from '../dinov2.ts';
import { type AdapterConfig, FULL_ADAPTER, adapterConfigFromJson } from '../adapter.ts';
import { type VaeConfig, FULL_VAE, vaeConfigFromJson } from '../vae.ts';
import { type T5Config, FULL_T5, t5ConfigFromJson } from '../t5.ts';
import { type ClipTextConfig, FULL_CLIP, clipConfigFromJson } from '../clip.ts';
import { clipFromVocabFiles, loadTokenizer } from '../tokenizers.ts';
import { FLUX_PROBE, LDM_VAE_PROBE, bflFluxKeyMap, fluxConfigJsonFromShapes, ldmVaeKeyMap } from './keymaps.ts';
import { findPrefix, mappedSource } from './views.ts';

/** What the user points at. Folders or files; see the header for the layouts. */
export interface CheckpointPaths {
  /** FLUX.1-dev Hugging Face folder, or a single-file transformer. */
  flux: string;
  /** A FLUX.1 Hugging Face folder that supplies the parts a single-file --flux lacks. */
  base?: string;
  vae?: string;
  clip?: string;
  t5?: string;
  clipTokenizer?: string;
  t5Tokenizer?: string;
  siglip: string;
  dinov2: string;
  adapter: string;
  /** Constructor kwargs of the adapter (JSON file); default: the official hard-coded ones (FULL_ADAPTER). */
  adapterConfig?: string;
}

/** One opened part: its weights (already renamed), its config, and the files it came from. */
export interface Part<C> {
  cfg: C;
  weights: WeightSource;
  /** Files read, for the resume fingerprint and for error messages. */
  files: string[];
  /** "transformer (BFL single file /x/flux1-dev.safetensors)", for messages. */
  describe: string;
}

export interface TokenizerPart {
  json: string;
  bos?: number;
  eos?: number;
  pad?: number;
  files: string[];
}

export interface OpenedCheckpoints {
  flux: Part<FluxConfig>;
  ip: WeightSource;
  vae: Part<VaeConfig>;
  t5: Part<T5Config>;
  clip: Part<ClipTextConfig>;
  siglip: Part<SiglipConfig>;
  dinov2: Part<Dinov2Config>;
  adapter: Part<AdapterConfig>;
  t5Tokenizer: TokenizerPart;
  clipTokenizer: TokenizerPart;
  close(): void;
}

type Json = Record<string, unknown>;

function readJson(path: string): Json {
  try {
    const v: unknown = JSON.parse(readFileSync(path, 'utf8'));
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('expected a JSON object');
    return v as Json;
  } catch (err) {
    throw new Error(`${path}: ${(err as Error).message}`);
  }
}

const isDir = (p: string): boolean => existsSync(p) && statSync(p).isDirectory();

/** The weight files of a folder (top level), or the file itself. */
function weightFiles(path: string): string[] {
  if (!isDir(path)) return [resolve(path)];
  return readdirSync(path)
    .filter((n) => /\.(safetensors|bin|pt|pth|index\.json)$/.test(n) || n === 'config.json')
    .map((n) => resolve(path, n))
    .filter((p) => statSync(p).isFile())
    .sort();
}

/** A component folder's config.json, when it has one. */
function folderConfig(path: string): Json | undefined {
  const p = isDir(path) ? join(path, 'config.json') : join(dirname(path), 'config.json');
  return existsSync(p) ? readJson(p) : undefined;
}

/** A source with `prefix` stripped (no-op for ''). */
const strip = (s: WeightSource, prefix: string): WeightSource => (prefix ? { ...withPrefix(s, prefix), close: () => s.close?.() } : s);

/** Opens `path`, finds where `probe` sits in it and returns the view below that prefix. */
function openAt(path: string, probe: string, what: string): WeightSource {
  const src = openWeights(path);
  const prefix = findPrefix(src.keys(), probe);
  if (prefix === undefined) {
    src.close?.();
    throw new Error(`${path}: this does not look like a ${what} checkpoint (no tensor '${probe}')`);
  }
  return strip(src, prefix);
}

// ---------------------------------------------------------------------------------------------
// FLUX transformer

/** A transformer checkpoint (folder or file) in diffusers or BFL names, as a diffusers-named source. */
export function openFluxTransformer(path: string): Part<FluxConfig> {
  const src = openWeights(path);
  if (src instanceof GgufFile) {
    try {
      checkGgufArchitecture(src, 'flux');
    } catch (err) {
      src.close();
      throw err;
    }
  }
  const keys = src.keys();
  const dPrefix = findPrefix(keys, FLUX_PROBE.diffusers);
  const bPrefix = findPrefix(keys, FLUX_PROBE.bfl);
  if (dPrefix === undefined && bPrefix === undefined) {
    src.close?.();
    throw new Error(`${path}: no FLUX transformer found (neither '${FLUX_PROBE.diffusers}' nor the original '${FLUX_PROBE.bfl}')`);
  }
  const layout = dPrefix !== undefined ? 'diffusers' : 'bfl';
  const inner = strip(src, (dPrefix ?? bPrefix)!);
  const innerKeys = inner.keys();
  const config = layout === 'diffusers' ? folderConfig(path) : undefined;
  const cfg = fluxConfigFromJson(config ?? fluxConfigJsonFromShapes((k) => inner.shape(k), innerKeys, layout));
  const files = weightFiles(path);
  if (layout === 'diffusers') return { cfg, weights: inner, files, describe: `transformer (${path})` };
  return { cfg, weights: mappedSource(inner, bflFluxKeyMap(cfg), path), files, describe: `transformer (original BFL layout, ${path})` };
}

// ---------------------------------------------------------------------------------------------
// VAE, text encoders

export function openVae(path: string): Part<VaeConfig> {
  const src = openWeights(path);
  const keys = src.keys();
  const files = weightFiles(path);
  const ldm = findPrefix(keys, LDM_VAE_PROBE);
  if (ldm !== undefined) {
    // ae.safetensors has no config: it is the FLUX autoencoder.
    const cfg = FULL_VAE;
    return { cfg, weights: mappedSource(strip(src, ldm), ldmVaeKeyMap(cfg), path), files, describe: `VAE (original layout, ${path})` };
  }
  const prefix = findPrefix(keys, 'decoder.conv_in.weight');
  if (prefix === undefined) {
    src.close?.();
    throw new Error(`${path}: this does not look like a VAE checkpoint (no tensor 'decoder.conv_in.weight')`);
  }
  const config = folderConfig(path);
  return { cfg: config ? vaeConfigFromJson(config) : FULL_VAE, weights: strip(src, prefix), files, describe: `VAE (${path})` };
}

export function openT5(path: string): Part<T5Config> {
  if (!isDir(path) && existsSync(path) && detectFormat(path) === 'gguf') return openT5Gguf(path);
  const weights = openAt(path, 'encoder.final_layer_norm.weight', 'T5 encoder');
  const config = folderConfig(path);
  return { cfg: config ? t5ConfigFromJson(config) : FULL_T5, weights, files: weightFiles(path), describe: `T5 text encoder (${path})` };
}

export function openClip(path: string): Part<ClipTextConfig> {
  const weights = openAt(path, 'text_model.final_layer_norm.weight', 'CLIP text encoder');
  const config = folderConfig(path);
  return { cfg: config ? clipConfigFromJson(config) : FULL_CLIP, weights, files: weightFiles(path), describe: `CLIP text encoder (${path})` };
}

// ---------------------------------------------------------------------------------------------
// Tokenizers

function tokenizerConfig(dir: string): Json {
  const config: Json = {};
  for (const f of ['special_tokens_map.json', 'tokenizer_config.json']) if (existsSync(join(dir, f))) Object.assign(config, readJson(join(dir, f)));
  return config;
}

function tokenizerFiles(dir: string): string[] {
  return readdirSync(dir).filter((n) => /\.(json|txt|model)$/.test(n)).map((n) => resolve(dir, n)).sort();
}

/** A CLIP tokenizer folder (tokenizer.json, or vocab.json + merges.txt) or tokenizer.json file. */
export function readClipTokenizer(path: string): TokenizerPart {
  const dir = isDir(path) ? path : dirname(path);
  const file = isDir(path) ? join(path, 'tokenizer.json') : path;
  let json: string;
  if (existsSync(file)) json = readFileSync(file, 'utf8');
  else if (existsSync(join(dir, 'vocab.json')) && existsSync(join(dir, 'merges.txt'))) json = JSON.stringify(clipFromVocabFiles(dir, tokenizerConfig(dir)));
  else throw new Error(`${path}: no CLIP tokenizer (expected tokenizer.json, or vocab.json and merges.txt)`);
  const { special } = loadTokenizer(path);
  return { json, bos: special.bos, eos: special.eos, pad: special.pad, files: tokenizerFiles(dir) };
}

/** A T5 tokenizer folder or tokenizer.json file. A SentencePiece model alone is not enough. */
export function readT5Tokenizer(path: string): TokenizerPart {
  const dir = isDir(path) ? path : dirname(path);
  const file = isDir(path) ? join(path, 'tokenizer.json') : path;
  if (!existsSync(file)) {
    if (existsSync(join(dir, 'spiece.model'))) {
      throw new Error(`${dir}: has only spiece.model; charflow needs the fast tokenizer's tokenizer.json (FLUX.1-dev ships it as tokenizer_2/tokenizer.json; or save one with transformers: AutoTokenizer.from_pretrained(dir).save_pretrained(dir))`);
    }
    throw new Error(`${path}: no T5 tokenizer.json found`);
  }
  const { special } = loadTokenizer(path);
  return { json: readFileSync(file, 'utf8'), bos: special.bos, eos: special.eos, pad: special.pad, files: tokenizerFiles(dir) };
}

// ---------------------------------------------------------------------------------------------
// Vision encoders and adapter

export function openSiglip(path: string): Part<SiglipConfig> {
  const weights = openAt(path, 'vision_model.post_layernorm.weight', 'SigLIP');
  const config = folderConfig(path);
  return { cfg: config ? siglipConfigFromJson(config) : FULL_SIGLIP, weights, files: weightFiles(path), describe: `SigLIP (${path})` };
}

export function openDinov2(path: string): Part<Dinov2Config> {
  const weights = openAt(path, 'embeddings.cls_token', 'DINOv2');
  const config = folderConfig(path);
  return { cfg: config ? dinov2ConfigFromJson(config) : FULL_DINOV2, weights, files: weightFiles(path), describe: `DINOv2 (${path})` };
}

/** Reads an adapter config file: the constructor kwargs, or our golden format { CrossLayerCrossScaleProjector: kwargs }. */
export function readAdapterConfig(path: string): AdapterConfig {
  const json = readJson(path);
  const inner = json['CrossLayerCrossScaleProjector'];
  return adapterConfigFromJson((typeof inner === 'object' && inner !== null ? inner : json) as Json);
}

export function openAdapter(path: string, configPath?: string): { part: Part<AdapterConfig>; ip: WeightSource } {
  const src = openWeights(path);
  const keys = src.keys();
  const has = (p: string) => keys.some((k) => k.startsWith(p));
  if (!has('ip_adapter.') || !has('image_proj.')) {
    src.close?.();
    throw new Error(`${path}: not an InstantCharacter adapter (expected 'ip_adapter.*' and 'image_proj.*' tensors)`);
  }
  const cfg = configPath ? readAdapterConfig(configPath) : FULL_ADAPTER;
  const files = [resolve(path), ...(configPath ? [resolve(configPath)] : [])];
  return {
    part: { cfg, weights: withPrefix(src, 'image_proj.'), files, describe: `adapter (${path})` },
    ip: { ...withPrefix(src, 'ip_adapter.'), close: () => src.close?.() },
  };
}

// ---------------------------------------------------------------------------------------------
// Everything together

/** The first of `candidates` that exists. */
function firstExisting(...candidates: (string | undefined)[]): string | undefined {
  return candidates.find((c) => c !== undefined && existsSync(c));
}

/** A key prefix inside the single file, if it embeds that part. */
function embedded(file: string, probe: string): string | undefined {
  const src = openWeights(file);
  try {
    const p = findPrefix(src.keys(), probe);
    return p === undefined || p === '' ? undefined : p;
  } finally {
    src.close?.();
  }
}

/** Opens every part; throws naming what is missing and where it was looked for. */
export function openCheckpoints(paths: CheckpointPaths): OpenedCheckpoints {
  const opened: { close?(): void }[] = [];
  const keep = <T extends { weights?: WeightSource; close?(): void }>(x: T): T => {
    opened.push(x.weights ?? x);
    return x;
  };
  try {
    if (!existsSync(paths.flux)) throw new Error(`--flux ${paths.flux}: no such file or folder`);
    const fluxIsDir = isDir(paths.flux);
    if (fluxIsDir && !isDir(join(paths.flux, 'transformer'))) {
      throw new Error(`${paths.flux}: not a FLUX.1 Hugging Face folder (no transformer/ inside); pass the folder that holds model_index.json, or a single .safetensors file`);
    }
    const root = fluxIsDir ? paths.flux : paths.base;
    const sub = (name: string) => (root ? join(root, name) : undefined);
    const single = fluxIsDir ? undefined : paths.flux;

    const flux = keep(openFluxTransformer(fluxIsDir ? join(paths.flux, 'transformer') : paths.flux));

    const missing = (what: string, flag: string, sub: string) =>
      new Error(`no ${what}: pass ${flag}, or --base with a FLUX.1 Hugging Face folder (its ${sub}/)${single ? `; ${single} does not embed one` : ''}`);
    const vaeEmbedded = single && (embedded(single, LDM_VAE_PROBE) ?? embedded(single, 'decoder.conv_in.weight'));
    const vae = keep(paths.vae ? openVae(paths.vae)
      : vaeEmbedded ? openVae(single) : (() => { const p = firstExisting(sub('vae')); if (!p) throw missing('VAE', '--vae', 'vae'); return openVae(p); })());
    const clipEmbedded = single && embedded(single, 'text_model.final_layer_norm.weight');
    const clip = keep(paths.clip ? openClip(paths.clip)
      : clipEmbedded ? openClip(single) : (() => { const p = firstExisting(sub('text_encoder')); if (!p) throw missing('CLIP text encoder', '--clip', 'text_encoder'); return openClip(p); })());
    const t5Embedded = single && embedded(single, 'encoder.final_layer_norm.weight');
    const t5 = keep(paths.t5 ? openT5(paths.t5)
      : t5Embedded ? openT5(single) : (() => { const p = firstExisting(sub('text_encoder_2')); if (!p) throw missing('T5 text encoder', '--t5', 'text_encoder_2'); return openT5(p); })());

    const clipTokPath = firstExisting(paths.clipTokenizer, sub('tokenizer'), paths.clip && isDir(paths.clip) && (existsSync(join(paths.clip, 'vocab.json')) || existsSync(join(paths.clip, 'tokenizer.json'))) ? paths.clip : undefined);
    if (!clipTokPath) throw new Error('no CLIP tokenizer: pass --clip-tokenizer (a folder with vocab.json + merges.txt or tokenizer.json), or --base with a FLUX.1 folder (its tokenizer/)');
    const t5TokPath = firstExisting(paths.t5Tokenizer, sub('tokenizer_2'), paths.t5 && isDir(paths.t5) && (existsSync(join(paths.t5, 'tokenizer.json')) || existsSync(join(paths.t5, 'spiece.model'))) ? paths.t5 : undefined);
    if (!t5TokPath) throw new Error('no T5 tokenizer: pass --t5-tokenizer (a tokenizer.json or its folder), or --base with a FLUX.1 folder (its tokenizer_2/)');

    const siglip = keep(openSiglip(paths.siglip));
    const dinov2 = keep(openDinov2(paths.dinov2));
    const { part: adapter, ip } = openAdapter(paths.adapter, paths.adapterConfig);
    opened.push(ip);
    return {
      flux, ip, vae, t5, clip, siglip, dinov2, adapter,
      t5Tokenizer: readT5Tokenizer(t5TokPath),
      clipTokenizer: readClipTokenizer(clipTokPath),
      close: () => opened.forEach((o) => o.close?.()),
    };
  } catch (err) {
    opened.forEach((o) => o.close?.());
    throw err;
  }
}
