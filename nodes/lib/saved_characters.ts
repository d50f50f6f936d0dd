// Saved characters: a character encoded once and kept by name in <data>/characters/NAME.safetensors,
// so later runs load neither SigLIP nor DINOv2. One small safetensors file holds the character tokens
// (the adapter's static output), the reference's DINOv2 CLS and SigLIP pooled embeddings (for Identity
// Score), a thumbnail, and in its JSON header the model set it was made with: its name and an identity
// hash of the graphs that made the tokens and consume them (SigLIP, DINOv2, the adapter's two parts).
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { NodeContext } from '../../engine/node.ts';
import type { ComponentName, ModelSet } from '../../models/modelset.ts';
import { SafetensorsFile, writeSafetensors } from '../../models/weights/safetensors.ts';
import { type Tensor, numel } from '../../models/tensor.ts';
import type { Services } from '../services.ts';
import type { CharacterTokens, ReferenceEmbeddings, RgbImage } from '../types.ts';
import { encodeReference } from './vision.ts';
import { fuseFeatures } from '../adapter_fuse.ts';
import { embedImages, hasSiglipPooled } from './identity.ts';
import { resizeImage } from './image.ts';

export const CHARACTER_FORMAT = 'charflow.character';
export const CHARACTER_EXT = '.safetensors';
/** A character name: a file name without path characters. */
export const CHARACTER_NAME_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$';
const NAME_RE = new RegExp(CHARACTER_NAME_PATTERN);
/** Side of the square thumbnail kept in the file (raw RGB). */
export const THUMBNAIL_SIZE = 96;
/** Character files above this are refused before reading (a full-size fp32 character is about 16 MB). */
export const MAX_CHARACTER_BYTES = 256 * 1024 * 1024;
/** The graphs whose identity a saved character records. */
const IDENTITY_COMPONENTS: readonly ComponentName[] = ['siglip', 'dinov2', 'adapter_static', 'adapter_time'];
const TENSORS = ['tokens', 'dinov2_cls', 'siglip_pooled', 'thumbnail'] as const;

/** Why a character file or name was refused; `kind` lets the CLI and server pick an exit code or status. */
export class CharacterError extends Error {
  constructor(readonly kind: 'invalid' | 'exists' | 'not_found' | 'mismatch', message: string) {
    super(message);
    this.name = 'CharacterError';
  }
}

export interface SavedCharacter {
  name: string;
  /** The model set's name when it was saved, and the identity hash of its graphs. */
  set: string;
  identity: string;
  created: string;
  /** Adapter static output [1, 2N, C] in the set's dtype, bit for bit. */
  tokens: Tensor;
  reference: ReferenceEmbeddings;
  thumbnail: RgbImage;
  /** sha256 of the tensors' bytes (recorded in the header, checked on reading). */
  sha256: string;
}

export interface CharacterInfo {
  name: string;
  set: string;
  bytes: number;
  created: string;
  /** Content hash of the whole file (what travels to workers); only when listed with `hash`. */
  fileSha256?: string;
}

export function charactersDir(dataRoot: string): string {
  return join(dataRoot, 'characters');
}

/** The name checked: no path characters, no leading dot. */
export function checkCharacterName(name: string): string {
  if (typeof name !== 'string' || !NAME_RE.test(name)) {
    throw new CharacterError('invalid', `"${name}" is not a valid character name: 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit (no path characters)`);
  }
  return name;
}

export function characterPath(dir: string, name: string): string {
  return join(dir, `${checkCharacterName(name)}${CHARACTER_EXT}`);
}

/** Identity of a model set as far as saved characters go: a hash of the graphs that make and use the tokens. */
export function modelSetIdentity(set: ModelSet): string {
  const h = createHash('sha256');
  for (const c of IDENTITY_COMPONENTS) {
    const f = set.manifest.files[c];
    h.update(`${c}:${f.sha256}`);
    for (const d of f.data ?? []) h.update(`+${d.sha256}`);
    h.update('\n');
  }
  return h.digest('hex');
}

function tensorsSha(tensors: Map<string, Tensor>): string {
  const h = createHash('sha256');
  for (const k of [...tensors.keys()].sort()) {
    const d = tensors.get(k)!.data;
    h.update(`${k}:${tensors.get(k)!.dtype}:${tensors.get(k)!.dims.join('x')}\n`);
    h.update(new Uint8Array(d.buffer, d.byteOffset, d.byteLength));
  }
  return h.digest('hex');
}

/** The thumbnail kept in the file: the (square) reference resized. */
export function thumbnailOf(image: RgbImage): RgbImage {
  return resizeImage(image, THUMBNAIL_SIZE, THUMBNAIL_SIZE);
}

/**
 * Encodes a reference picture into everything a saved character keeps: the tokens (both encoders, then the
 * adapter's static part, exactly as SigLIP Encode, DINOv2 Encode and Adapter Fuse do) unless given, and the
 * embeddings Identity Score takes from the reference.
 */
export async function encodeCharacter(
  ctx: NodeContext<Services>, models: ModelSet, image: RgbImage, tokens?: CharacterTokens,
): Promise<{ tokens: Tensor; reference: ReferenceEmbeddings }> {
  let character = tokens;
  if (!character) {
    const [siglip, dinov2] = await Promise.all([encodeReference(ctx, models, image, 'siglip'), encodeReference(ctx, models, image, 'dinov2')]);
    character = await fuseFeatures(ctx, models, siglip, dinov2);
  }
  const reference: ReferenceEmbeddings = { dinov2: (await embedImages(ctx, models, [image], 'dinov2'))[0]! };
  if (await hasSiglipPooled(ctx, models)) reference.siglip = (await embedImages(ctx, models, [image], 'siglip'))[0]!;
  return { tokens: character.resamplerInput, reference };
}

/** Checks a character's tensors against a model set: token width and dtype, embedding widths. */
export function checkShapes(c: Pick<SavedCharacter, 'name' | 'tokens' | 'reference'>, models: ModelSet): void {
  const inner = models.manifest.adapter.innerDim;
  const d = c.tokens.dims;
  const dtype = models.dtype('adapter_static');
  if (d.length !== 3 || d[0] !== 1 || d[1]! < 1 || d[2] !== inner || c.tokens.dtype !== dtype) {
    throw new CharacterError('mismatch', `character "${c.name}": its tokens are [${d.join(', ')}] ${c.tokens.dtype}, the adapter of model set "${models.name}" takes [1, n, ${inner}] ${dtype}`);
  }
  if (c.reference.dinov2.length !== models.manifest.dinov2.width) {
    throw new CharacterError('mismatch', `character "${c.name}": its DINOv2 embedding has ${c.reference.dinov2.length} values, model set "${models.name}" makes ${models.manifest.dinov2.width}`);
  }
  if (c.reference.siglip && c.reference.siglip.length !== models.manifest.siglip.width) {
    throw new CharacterError('mismatch', `character "${c.name}": its SigLIP embedding has ${c.reference.siglip.length} values, model set "${models.name}" makes ${models.manifest.siglip.width}`);
  }
}

/** Refuses a character made with other graphs than `models`' (names both sets), or whose shapes do not fit. */
export function checkCharacterForSet(c: Pick<SavedCharacter, 'name' | 'set' | 'identity' | 'tokens' | 'reference'>, models: ModelSet): void {
  const mine = modelSetIdentity(models);
  if (c.identity !== mine) {
    throw new CharacterError('mismatch', `saved character "${c.name}" was made with model set "${c.set}" (identity ${c.identity.slice(0, 12)}), `
      + `but this uses model set "${models.name}" (identity ${mine.slice(0, 12)}): save the character again with "${models.name}"`);
  }
  checkShapes(c, models);
}

/** The file's tensors and header for a character. */
function fileContents(c: SavedCharacter): { tensors: Map<string, Tensor>; metadata: Record<string, string> } {
  const tensors = new Map<string, Tensor>([
    ['tokens', c.tokens],
    ['dinov2_cls', { dtype: 'float32', dims: [c.reference.dinov2.length], data: c.reference.dinov2 }],
    ['thumbnail', { dtype: 'uint8', dims: [c.thumbnail.height, c.thumbnail.width, 3], data: c.thumbnail.data }],
  ]);
  if (c.reference.siglip) tensors.set('siglip_pooled', { dtype: 'float32', dims: [c.reference.siglip.length], data: c.reference.siglip });
  const metadata = { format: CHARACTER_FORMAT, version: '1', name: c.name, set: c.set, set_identity: c.identity, created: c.created, sha256: tensorsSha(tensors) };
  return { tensors, metadata };
}

/** A character ready to write, from what encodeCharacter made. */
export function newCharacter(name: string, models: ModelSet, tokens: Tensor, reference: ReferenceEmbeddings, image: RgbImage): SavedCharacter {
  const c: SavedCharacter = {
    name: checkCharacterName(name), set: models.name, identity: modelSetIdentity(models), created: new Date().toISOString(),
    tokens, reference, thumbnail: thumbnailOf(image), sha256: '',
  };
  checkShapes(c, models);
  c.sha256 = fileContents(c).metadata.sha256!;
  return c;
}

/**
 * Writes `<dir>/<name>.safetensors` atomically. An existing character is refused unless `force`; nothing is
 * written when the name or the character is refused.
 */
export function writeCharacter(dir: string, c: SavedCharacter, opts: { force?: boolean } = {}): string {
  const file = characterPath(dir, c.name);
  if (existsSync(file) && !opts.force) throw new CharacterError('exists', `a character named "${c.name}" exists already (${file}); choose another name or replace it (--force, or overwrite on the node)`);
  const { tensors, metadata } = fileContents(c);
  mkdirSync(dir, { recursive: true });
  writeSafetensors(file, tensors, metadata);
  return file;
}

function meta(f: SafetensorsFile, key: string, label: string): string {
  const v = f.metadata[key];
  if (typeof v !== 'string' || v === '') throw new CharacterError('invalid', `${label}: its header has no "${key}"`);
  return v;
}

/** Reads and checks a character file: safetensors layout, header fields, tensor kinds and the content hash. */
export function readCharacter(file: string, label = file): SavedCharacter {
  let size: number;
  try {
    size = statSync(file).size;
  } catch {
    throw new CharacterError('not_found', `${label}: no such file`);
  }
  if (size > MAX_CHARACTER_BYTES) throw new CharacterError('invalid', `${label} is ${size} bytes, over the ${MAX_CHARACTER_BYTES} byte limit of a character file`);
  let f: SafetensorsFile;
  try {
    f = new SafetensorsFile(file);
  } catch (err) {
    throw new CharacterError('invalid', `${label} is not a character file (corrupt or truncated): ${(err as Error).message.replace(`${file}: `, '')}`);
  }
  try {
    if (f.metadata.format !== CHARACTER_FORMAT) throw new CharacterError('invalid', `${label} is a safetensors file but not a charflow character (header format "${f.metadata.format ?? ''}")`);
    if (f.metadata.version !== '1') throw new CharacterError('invalid', `${label}: character file version "${f.metadata.version}" is not one this charflow reads (1)`);
    const extra = f.keys().filter((k) => !(TENSORS as readonly string[]).includes(k));
    if (extra.length) throw new CharacterError('invalid', `${label}: unexpected tensors ${extra.join(', ')}`);
    for (const k of ['tokens', 'dinov2_cls', 'thumbnail']) if (!f.keys().includes(k)) throw new CharacterError('invalid', `${label}: missing tensor "${k}"`);
    const kind = (k: string, dtypes: string[], rank: number) => {
      const s = f.shape(k)!;
      if (!dtypes.includes(f.dtype(k)!) || s.length !== rank || numel(s) === 0) {
        throw new CharacterError('invalid', `${label}: tensor "${k}" is [${s.join(', ')}] ${f.dtype(k)}, expected rank ${rank} ${dtypes.join(' or ')}`);
      }
    };
    kind('tokens', ['float32', 'float16'], 3);
    kind('dinov2_cls', ['float32'], 1);
    if (f.keys().includes('siglip_pooled')) kind('siglip_pooled', ['float32'], 1);
    kind('thumbnail', ['uint8'], 3);
    const th = f.shape('thumbnail')!;
    if (th[2] !== 3) throw new CharacterError('invalid', `${label}: the thumbnail has ${th[2]} channels, expected 3 (RGB)`);
    const name = meta(f, 'name', label);
    try {
      checkCharacterName(name);
    } catch (err) {
      throw new CharacterError('invalid', `${label}: ${(err as Error).message}`);
    }
    const tensors = new Map(f.keys().map((k) => [k, f.get(k)]));
    const sha256 = meta(f, 'sha256', label);
    if (tensorsSha(tensors) !== sha256) throw new CharacterError('invalid', `${label}: its tensors do not match the hash in its header (the file is corrupt or was edited)`);
    const thumb = tensors.get('thumbnail')!;
    return {
      name, set: meta(f, 'set', label), identity: meta(f, 'set_identity', label), created: meta(f, 'created', label),
      tokens: tensors.get('tokens')!,
      reference: {
        dinov2: tensors.get('dinov2_cls')!.data as Float32Array,
        ...(tensors.has('siglip_pooled') ? { siglip: tensors.get('siglip_pooled')!.data as Float32Array } : {}),
      },
      thumbnail: { width: thumb.dims[1]!, height: thumb.dims[0]!, data: thumb.data as Uint8Array },
      sha256,
    };
  } finally {
    f.close();
  }
}

/** Only the header of a character file: name, set, identity (the tensors are not read). */
export function readCharacterHeader(file: string): { name: string; set: string; identity: string; created: string } {
  if (!existsSync(file)) throw new CharacterError('not_found', `${file}: no such file`);
  let f: SafetensorsFile;
  try {
    f = new SafetensorsFile(file);
  } catch (err) {
    throw new CharacterError('invalid', `${file} is not a character file (corrupt or truncated): ${(err as Error).message.replace(`${file}: `, '')}`);
  }
  try {
    if (f.metadata.format !== CHARACTER_FORMAT) throw new CharacterError('invalid', `${file} is not a charflow character`);
    return { name: meta(f, 'name', file), set: meta(f, 'set', file), identity: meta(f, 'set_identity', file), created: meta(f, 'created', file) };
  } finally {
    f.close();
  }
}

/** The saved character `name` in `dir`, read and checked. */
export function loadCharacter(dir: string, name: string): SavedCharacter {
  const file = characterPath(dir, name);
  if (!existsSync(file)) throw new CharacterError('not_found', `no saved character named "${name}" in ${dir}`);
  return readCharacter(file, `character "${name}" (${file})`);
}

/** Content hash of a whole (small) file. */
export function fileSha256(file: string): string {
  return createHash('sha256').update(readFileSync(file)).digest('hex');
}

/** Every character in `dir` whose header reads, sorted by name (files that do not read are skipped); `hash`: with each file's hash. */
export function listCharacters(dir: string, opts: { hash?: boolean } = {}): CharacterInfo[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  const out: CharacterInfo[] = [];
  for (const entry of names.sort()) {
    if (!entry.endsWith(CHARACTER_EXT)) continue;
    const name = entry.slice(0, -CHARACTER_EXT.length);
    if (!NAME_RE.test(name)) continue;
    const file = join(dir, entry);
    try {
      const h = readCharacterHeader(file);
      out.push({ name, set: h.set, bytes: statSync(file).size, created: h.created, ...(opts.hash ? { fileSha256: fileSha256(file) } : {}) });
    } catch {
      // Not a character (or a half-written one): not listed.
    }
  }
  return out;
}

export function removeCharacter(dir: string, name: string): void {
  const file = characterPath(dir, name);
  if (!existsSync(file)) throw new CharacterError('not_found', `no saved character named "${name}" in ${dir}`);
  rmSync(file);
}

/**
 * Imports a shared character file: checked (header, hash, shapes and identity against `models`) before
 * anything is written; stored under `name` (default: the name in its header).
 */
export function importCharacter(dir: string, source: string, models: ModelSet, opts: { name?: string; force?: boolean } = {}): SavedCharacter {
  const c = readCharacter(source);
  checkCharacterForSet(c, models);
  const name = checkCharacterName(opts.name ?? c.name);
  const file = characterPath(dir, name);
  if (existsSync(file) && !opts.force) throw new CharacterError('exists', `a character named "${name}" exists already (${file}); import it under another name (--name) or replace it (--force)`);
  mkdirSync(dir, { recursive: true });
  if (name === c.name) {
    // The shared file as it is: its bytes (and so its hash) stay the same everywhere.
    copyFileSync(source, `${file}.partial`);
    renameSync(`${file}.partial`, file);
    return c;
  }
  const renamed = { ...c, name };
  writeCharacter(dir, renamed, { force: true });
  return renamed;
}
