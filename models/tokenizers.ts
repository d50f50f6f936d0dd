// Prompt tokenisation for FLUX's two text encoders, on @huggingface/tokenizers (pure JS):
// T5 (SentencePiece Unigram, `</s>` appended, padded with `<pad>` to 512) and CLIP (byte-level BPE,
// `<|startoftext|>` ... `<|endoftext|>`, padded to 77 with the pad token, EOS for openai's CLIP).
// Also builds small but real tokenizer.json files for the tiny test models.
import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import type { Tensor } from './tensor.ts';

/** One entry of tokenizer.json's `added_tokens`. */
export interface AddedTokenJson {
  id: number;
  content: string;
  single_word: boolean;
  lstrip: boolean;
  rstrip: boolean;
  normalized: boolean;
  special: boolean;
}

/** tokenizer.json as the Rust `tokenizers` library writes it; the pipeline components stay opaque here. */
export interface TokenizerJson {
  version: string;
  truncation: unknown;
  padding: unknown;
  added_tokens: AddedTokenJson[];
  normalizer: unknown;
  pre_tokenizer: unknown;
  post_processor: unknown;
  decoder: unknown;
  model: unknown;
}

/**
 * The part of @huggingface/tokenizers' `Tokenizer` used here. Its bundled .d.ts uses extensionless
 * relative imports that do not resolve under NodeNext (the class types as `any`), so it is typed here.
 */
export interface HfTokenizer {
  encode(text: string, options?: { add_special_tokens?: boolean }): { ids: number[]; tokens: string[]; attention_mask: number[] };
  tokenize(text: string, options?: { add_special_tokens?: boolean }): string[];
  decode(ids: number[], options?: { skip_special_tokens?: boolean }): string;
  token_to_id(token: string): number | undefined;
  id_to_token(id: number): string | undefined;
  get_vocab(withAddedTokens?: boolean): Map<string, number>;
}

/** Special token ids; any may be absent from a tokenizer. */
export interface SpecialTokenIds {
  bos?: number;
  eos?: number;
  pad?: number;
  unk?: number;
}

export interface TextTokenizer {
  readonly tokenizer: HfTokenizer;
  /** Resolved from tokenizer_config.json / special_tokens_map.json, else from the tokenizer.json itself. */
  readonly special: SpecialTokenIds;
  /** Number of distinct ids (model vocabulary plus added tokens); every id is below it. */
  readonly vocabSize: number;
}

type Json = Record<string, unknown>;

const isRecord = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

/** A token in tokenizer_config.json: a plain string or an AddedToken object `{content, ...}`. */
function tokenString(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (isRecord(v) && typeof v['content'] === 'string') return v['content'];
  return undefined;
}

/** BOS / EOS as the post-processor inserts them (RobertaProcessing cls/sep, TemplateProcessing around $A). */
function postProcessorSpecials(pp: unknown): { bos?: string; eos?: string } {
  if (!isRecord(pp)) return {};
  const name = (pair: unknown) => (Array.isArray(pair) && typeof pair[0] === 'string' ? pair[0] : undefined);
  switch (pp['type']) {
    case 'RobertaProcessing':
    case 'BertProcessing':
      return { bos: name(pp['cls']), eos: name(pp['sep']) };
    case 'TemplateProcessing': {
      const single = Array.isArray(pp['single']) ? pp['single'] : [];
      const seqAt = single.findIndex((item) => isRecord(item) && 'Sequence' in item);
      const specialAt = (i: number) => {
        const item: unknown = single[i];
        const st = isRecord(item) ? item['SpecialToken'] : undefined;
        return isRecord(st) && typeof st['id'] === 'string' ? st['id'] : undefined;
      };
      return seqAt < 0 ? {} : { bos: seqAt > 0 ? specialAt(seqAt - 1) : undefined, eos: specialAt(seqAt + 1) };
    }
    case 'Sequence': {
      const found = (Array.isArray(pp['processors']) ? pp['processors'] : []).map(postProcessorSpecials);
      return { bos: found.find((f) => f.bos)?.bos, eos: found.find((f) => f.eos)?.eos };
    }
    default:
      return {};
  }
}

function modelUnk(model: unknown): string | number | undefined {
  if (!isRecord(model)) return undefined;
  if (typeof model['unk_id'] === 'number') return model['unk_id'];
  return typeof model['unk_token'] === 'string' ? model['unk_token'] : undefined;
}

/**
 * Wraps a parsed tokenizer.json. `config` is tokenizer_config.json merged with special_tokens_map.json;
 * its bos/eos/pad/unk tokens win, then the post-processor's, then the usual T5 and CLIP token names.
 * Without a pad token the EOS pads, as for openai's CLIP.
 */
export function tokenizerFromJson(json: TokenizerJson, config: Json = {}): TextTokenizer {
  const tokenizer: HfTokenizer = new Tokenizer(json, config);
  const idOf = (...names: (string | undefined)[]) => {
    for (const n of names) {
      const id = n === undefined ? undefined : tokenizer.token_to_id(n);
      if (id !== undefined) return id;
    }
    return undefined;
  };
  const pp = postProcessorSpecials(json.post_processor);
  const unk = modelUnk(json.model);
  const eos = idOf(tokenString(config['eos_token']), pp.eos, '</s>', '<|endoftext|>');
  const special: SpecialTokenIds = {
    bos: idOf(tokenString(config['bos_token']), pp.bos, '<|startoftext|>'),
    eos,
    pad: idOf(tokenString(config['pad_token']), '<pad>') ?? eos,
    unk: typeof unk === 'number' ? unk : idOf(tokenString(config['unk_token']), unk, '<unk>'),
  };
  let vocabSize = 0;
  for (const id of tokenizer.get_vocab(true).values()) vocabSize = Math.max(vocabSize, id + 1);
  return { tokenizer, special, vocabSize };
}

function readJson(path: string): Json {
  const v: unknown = JSON.parse(readFileSync(path, 'utf8'));
  if (!isRecord(v)) throw new Error(`${path}: expected a JSON object`);
  return v;
}

const CLIP_SPLIT = String.raw`'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`;

const addedToken = (id: number, content: string): AddedTokenJson => ({
  id, content, single_word: false, lstrip: false, rstrip: false, normalized: true, special: true,
});

/** The pipeline of transformers' CLIP fast tokenizer (its CLIPConverter), around a given BPE vocabulary. */
function clipTokenizerJson(vocab: Record<string, number>, merges: string[], bos: string, eos: string, unk: string): TokenizerJson {
  const id = (t: string) => {
    const v = vocab[t];
    if (v === undefined) throw new Error(`clip tokenizer: special token ${t} is not in the vocabulary`);
    return v;
  };
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [...new Set([bos, eos, unk])].map((t) => addedToken(id(t), t)).sort((a, b) => a.id - b.id),
    normalizer: {
      type: 'Sequence',
      normalizers: [{ type: 'NFC' }, { type: 'Replace', pattern: { Regex: String.raw`\s+` }, content: ' ' }, { type: 'Lowercase' }],
    },
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: CLIP_SPLIT }, behavior: 'Removed', invert: true },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
      ],
    },
    post_processor: { type: 'RobertaProcessing', sep: [eos, id(eos)], cls: [bos, id(bos)], trim_offsets: false, add_prefix_space: false },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE', dropout: null, unk_token: unk, continuing_subword_prefix: '', end_of_word_suffix: '</w>',
      fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges,
    },
  };
}

/**
 * A CLIP tokenizer folder without tokenizer.json (FLUX.1-dev's `tokenizer/` has only vocab.json and
 * merges.txt, for the slow CLIPTokenizer): rebuilt as the fast tokenizer would convert it. Merges whose
 * result is not in the vocabulary are dropped, as the slow tokenizer reads only the merges it can use.
 */
export function clipFromVocabFiles(dir: string, config: Json = {}): TokenizerJson {
  const vocabJson = readJson(join(dir, 'vocab.json'));
  const vocab: Record<string, number> = {};
  for (const [k, v] of Object.entries(vocabJson)) if (typeof v === 'number') vocab[k] = v;
  const merges = readFileSync(join(dir, 'merges.txt'), 'utf8').split('\n')
    .filter((line) => line.trim() && !line.startsWith('#version'))
    .filter((line) => {
      const [a, b] = line.split(' ');
      return a !== undefined && b !== undefined && vocab[a + b] !== undefined;
    });
  const eos = tokenString(config['eos_token']) ?? '<|endoftext|>';
  return clipTokenizerJson(vocab, merges, tokenString(config['bos_token']) ?? '<|startoftext|>', eos, tokenString(config['unk_token']) ?? eos);
}

/**
 * Loads a tokenizer from a tokenizer.json file or a folder holding one (or, for CLIP, vocab.json +
 * merges.txt). tokenizer_config.json and special_tokens_map.json beside it are read when present.
 */
export function loadTokenizer(path: string): TextTokenizer {
  const isDir = statSync(path).isDirectory();
  const dir = isDir ? path : dirname(path);
  const config: Json = {};
  for (const f of ['special_tokens_map.json', 'tokenizer_config.json']) {
    if (existsSync(join(dir, f))) Object.assign(config, readJson(join(dir, f)));
  }
  const file = isDir ? join(dir, 'tokenizer.json') : path;
  if (existsSync(file)) return tokenizerFromJson(readJson(file) as unknown as TokenizerJson, config);
  if (isDir && existsSync(join(dir, 'vocab.json')) && existsSync(join(dir, 'merges.txt'))) {
    return tokenizerFromJson(clipFromVocabFiles(dir, config), config);
  }
  throw new Error(`${path}: no tokenizer.json (nor vocab.json + merges.txt) found`);
}

/** The text's ids without special tokens, each checked to be a valid id. */
function textIds(tok: TextTokenizer, text: string): number[] {
  const ids = tok.tokenizer.encode(text, { add_special_tokens: false }).ids;
  for (const id of ids) {
    if (!Number.isInteger(id) || id < 0 || id >= tok.vocabSize) throw new Error(`tokenizer produced an invalid id ${id} for ${JSON.stringify(text)}`);
  }
  return ids;
}

function required(id: number | undefined, what: string): number {
  if (id === undefined) throw new Error(`tokenizer has no ${what} token; pass its id in the options`);
  return id;
}

function padTo(ids: number[], maxLength: number, pad: number): number[] {
  return ids.concat(new Array<number>(maxLength - ids.length).fill(pad));
}

/**
 * T5 prompt ids as FLUX makes them (padding "max_length", truncation): the text's ids cut to
 * maxLength - 1, then EOS, then pad up to maxLength.
 */
export function encodeT5(tok: TextTokenizer, text: string, maxLength = 512, opts: SpecialTokenIds = {}): number[] {
  if (maxLength < 1) throw new Error(`encodeT5: maxLength must be at least 1, got ${maxLength}`);
  const eos = required(opts.eos ?? tok.special.eos, 'EOS');
  const pad = required(opts.pad ?? tok.special.pad, 'pad');
  return padTo([...textIds(tok, text).slice(0, maxLength - 1), eos], maxLength, pad);
}

/** CLIP prompt ids: BOS, the text's ids cut to maxLength - 2, EOS, then pad (EOS by default) up to maxLength. */
export function encodeClip(tok: TextTokenizer, text: string, maxLength = 77, opts: SpecialTokenIds = {}): number[] {
  if (maxLength < 2) throw new Error(`encodeClip: maxLength must be at least 2, got ${maxLength}`);
  const bos = required(opts.bos ?? tok.special.bos, 'BOS');
  const eos = required(opts.eos ?? tok.special.eos, 'EOS');
  const pad = opts.pad ?? tok.special.pad ?? eos;
  return padTo([bos, ...textIds(tok, text).slice(0, maxLength - 2), eos], maxLength, pad);
}

/** Rows of equal length as the graphs' `input_ids`: int64 [B, T]. */
export function inputIdsTensor(rows: readonly (readonly number[])[]): Tensor {
  const T = rows[0]?.length ?? 0;
  if (rows.some((r) => r.length !== T)) throw new Error('inputIdsTensor: rows differ in length');
  return { dtype: 'int64', dims: [rows.length, T], data: BigInt64Array.from(rows.flat(), (v) => BigInt(v)) };
}

// ---- tiny tokenizers for the tiny random-weight models ----

/** Prompt words that get their own tokens in the tiny vocabularies, most useful first. */
const TINY_WORDS = [
  'a', 'the', 'of', 'and', 'in', 'with', 'on', 'girl', 'boy', 'man', 'woman', 'cat', 'dog', 'character',
  'photo', 'portrait', 'red', 'blue', 'hat', 'hair', 'wearing', 'standing', 'sitting', 'street', 'city',
  'forest', 'smiling', 'holding', 'background', 'style', 'anime', 'realistic', 'light', 'night', 'white',
  'black', 'green', 'young', 'old', 'dress', 'book', 'flower', 'garden', 'beach', 'sky', 'table', 'window',
];
const LOWER = 'abcdefghijklmnopqrstuvwxyz';
const DIGITS = '0123456789';
const PUNCT = ".,!?'-";
const MIN_TINY_VOCAB = 8;

/**
 * T5-style Unigram vocabulary: <pad>=0, </s>=1, <unk>=2, the metaspace piece, lowercase letters,
 * digits, punctuation, whole words ("▁cat"), capitals, then <extra_id_N> sentinels. Word pieces score far
 * above single characters, so known words come out as one token; other text falls back to characters,
 * and characters outside the vocabulary become <unk>.
 */
function tinyT5Json(vocabSize: number): TokenizerJson {
  const chars = [...'\u2581', ...LOWER, ...DIGITS, ...PUNCT].map((c, i): [string, number] => [c, -10 - i * 0.01]);
  const words = TINY_WORDS.map((w, i): [string, number] => [`\u2581${w}`, -3 - i * 0.01]);
  const capitals = [...LOWER.toUpperCase()].map((c, i): [string, number] => [c, -12 - i * 0.01]);
  const specials: [string, number][] = [['<pad>', 0], ['</s>', 0], ['<unk>', 0]];
  const vocab = [...specials, ...chars, ...words, ...capitals].slice(0, vocabSize);
  // Like the real T5 vocabulary, the tail is sentinel tokens <extra_id_N> (added tokens, never produced from text).
  const extraFrom = vocab.length;
  for (let k = vocabSize - extraFrom - 1; k >= 0; k--) vocab.push([`<extra_id_${k}>`, 0]);
  const extras = vocab.slice(extraFrom).map(([t], i) => addedToken(extraFrom + i, t));
  const metaspace = { replacement: '\u2581', prepend_scheme: 'always', split: true };
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [...specials.map(([t], id) => addedToken(id, t)), ...extras].map((t) => ({ ...t, normalized: false })),
    normalizer: { type: 'Sequence', normalizers: [{ type: 'NFKC' }, { type: 'Replace', pattern: { Regex: ' {2,}' }, content: ' ' }] },
    pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'WhitespaceSplit' }, { type: 'Metaspace', ...metaspace }] },
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '</s>', type_id: 0 } }],
      pair: [
        { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '</s>', type_id: 0 } },
        { Sequence: { id: 'B', type_id: 0 } }, { SpecialToken: { id: '</s>', type_id: 0 } },
      ],
      special_tokens: { '</s>': { id: '</s>', ids: [1], tokens: ['</s>'] } },
    },
    decoder: { type: 'Metaspace', ...metaspace },
    model: { type: 'Unigram', unk_id: 2, vocab, byte_fallback: false },
  };
}

/** BPE segmentation of one word under `ranks` (lowest rank merges first), end-of-word suffix on the last symbol. */
function bpeSegment(word: string, ranks: Map<string, number>): string[] {
  const parts = [...word];
  parts[parts.length - 1] += '</w>';
  for (;;) {
    let best = -1;
    let bestRank = Infinity;
    for (let i = 0; i + 1 < parts.length; i++) {
      const r = ranks.get(`${parts[i]} ${parts[i + 1]}`);
      if (r !== undefined && r < bestRank) [best, bestRank] = [i, r];
    }
    if (best < 0) return parts;
    parts.splice(best, 2, parts[best]! + parts[best + 1]!);
  }
}

/**
 * CLIP-style byte-level BPE: lowercase letters with and without `</w>`, digits and punctuation as
 * whole words, then merges that build the tiny word list, `<|unk|>` at vocabSize-3, BOS
 * `<|startoftext|>` at vocabSize-2 and EOS `<|endoftext|>` at vocabSize-1 (the largest id, so the
 * legacy argmax pooling finds the EOS). Bytes outside the vocabulary map to `<|unk|>`.
 */
function tinyClipJson(vocabSize: number): TokenizerJson {
  const base = [...LOWER, ...[...LOWER].map((c) => `${c}</w>`), ...[...DIGITS, ...PUNCT.replace("'", '')].map((c) => `${c}</w>`), "'"];
  const tokens = base.slice(0, vocabSize - 3);
  const known = new Set(tokens);
  const ranks = new Map<string, number>();
  const merges: string[] = [];
  for (const word of TINY_WORDS) {
    for (let parts = bpeSegment(word, ranks); parts.length > 1 && tokens.length < vocabSize - 3; parts = bpeSegment(word, ranks)) {
      if (!parts.every((p) => known.has(p))) break; // a letter left out of a very small vocabulary
      const merged = parts[0]! + parts[1]!;
      ranks.set(`${parts[0]} ${parts[1]}`, merges.length);
      merges.push(`${parts[0]} ${parts[1]}`);
      if (!known.has(merged)) {
        known.add(merged);
        tokens.push(merged);
      }
    }
  }
  // Unused fillers when the word list runs out, so the specials land on the last three ids.
  for (let k = 0; tokens.length < vocabSize - 3; k++) tokens.push(`<|extra_${k}|>`);
  tokens.push('<|unk|>', '<|startoftext|>', '<|endoftext|>');
  const vocab: Record<string, number> = {};
  tokens.forEach((t, i) => (vocab[t] = i));
  const json = clipTokenizerJson(vocab, merges, '<|startoftext|>', '<|endoftext|>', '<|unk|>');
  json.added_tokens = json.added_tokens.filter((t) => t.content !== '<|unk|>');
  return json;
}

/**
 * A small but real tokenizer.json (T5: Unigram + Metaspace; CLIP: byte-level BPE with its special
 * tokens) whose ids are exactly 0..vocabSize-1, for the tiny random-weight models. Deterministic.
 */
export function tinyTokenizerJson(kind: 't5' | 'clip', vocabSize: number): TokenizerJson {
  if (!Number.isInteger(vocabSize) || vocabSize < MIN_TINY_VOCAB) {
    throw new Error(`tinyTokenizerJson: vocabSize must be an integer >= ${MIN_TINY_VOCAB}, got ${vocabSize}`);
  }
  return kind === 't5' ? tinyT5Json(vocabSize) : tinyClipJson(vocabSize);
}
