// Prompt tokenisation (T5 / CLIP) and the tiny tokenizer.json files for the tiny models.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { buildClip, clipConfigFromJson } from '../../models/clip.ts';
import { Graph } from '../../models/onnx/graph.ts';
import { runOnce } from '../../models/onnx/ort.ts';
import { toFloat32 } from '../../models/tensor.ts';
import {
  type TextTokenizer, encodeClip, encodeT5, inputIdsTensor, loadTokenizer, tinyTokenizerJson, tokenizerFromJson,
} from '../../models/tokenizers.ts';
import { goldenConfig, goldenWeights } from '../helpers/goldens.ts';

const PROMPT = 'A photo of a girl wearing a red hat, standing in the city at night.';
const UNKNOWN = 'Zürich ÉTÉ 北京 ☃ {x}';
/** The tiny CLIP tokenizer of vocabulary 100 (invented here, not a golden): its specials sit at the top. */
const BOS = 100 - 2;
const EOS = 100 - 1;
const UNK = 100 - 3;
const tmp = mkdtempSync(join(tmpdir(), 'charflow-tok-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function tiny(kind: 't5' | 'clip', vocabSize: number): TextTokenizer {
  return tokenizerFromJson(tinyTokenizerJson(kind, vocabSize));
}

function expectValidIds(tok: TextTokenizer, ids: number[], vocabSize: number): void {
  for (const id of ids) {
    expect(Number.isInteger(id)).toBe(true);
    expect(id).toBeGreaterThanOrEqual(0);
    expect(id).toBeLessThan(vocabSize);
    expect(tok.tokenizer.id_to_token(id), `id ${id} has a token`).toBeDefined();
  }
}

describe('tiny tokenizer.json', () => {
  for (const kind of ['t5', 'clip'] as const) {
    for (const V of [8, 100, 1000]) {
      it(`${kind}, vocab ${V}: ids are exactly 0..${V - 1} and every prompt encodes to valid ids`, () => {
        const json = tinyTokenizerJson(kind, V);
        expect(JSON.stringify(tinyTokenizerJson(kind, V))).toBe(JSON.stringify(json)); // deterministic
        const tok = tokenizerFromJson(json);
        expect(tok.vocabSize).toBe(V);
        expect([...tok.tokenizer.get_vocab(true).values()].sort((a, b) => a - b)).toEqual([...Array(V).keys()]);
        for (const text of [PROMPT, UNKNOWN, '', '   ', 'the the the']) {
          expectValidIds(tok, tok.tokenizer.encode(text, { add_special_tokens: false }).ids, V);
        }
      });
    }
  }

  it('T5: Unigram + Metaspace, pad 0, EOS 1, unknown characters become <unk>', () => {
    const json = tinyTokenizerJson('t5', 100);
    expect(json.model).toMatchObject({ type: 'Unigram', unk_id: 2 });
    const tok = tokenizerFromJson(json);
    expect(tok.special).toMatchObject({ eos: 1, pad: 0, unk: 2 });
    expect(tok.tokenizer.tokenize('the cat with a hat')).toEqual(['\u2581the', '\u2581cat', '\u2581with', '\u2581a', '\u2581hat']);
    expect(tok.tokenizer.tokenize('cats')).toEqual(['\u2581cat', 's']);
    const ids = tok.tokenizer.encode('Zürich', { add_special_tokens: false }).ids;
    expect(ids).toContain(2);
    // The file's own post-processor appends </s>, as the real T5 tokenizer.json does.
    expect(tok.tokenizer.encode('a cat').ids).toEqual([tok.tokenizer.token_to_id('\u2581a'), tok.tokenizer.token_to_id('\u2581cat'), 1]);
  });

  it('CLIP: byte-level BPE, BOS = V-2 and EOS = V-1, unknown bytes become <|unk|>', () => {
    const V = 100;
    const json = tinyTokenizerJson('clip', V);
    expect(json.model).toMatchObject({ type: 'BPE', end_of_word_suffix: '</w>' });
    const tok = tokenizerFromJson(json);
    expect(tok.special).toMatchObject({ bos: V - 2, eos: V - 1, pad: V - 1, unk: V - 3 });
    expect(tok.tokenizer.tokenize('The  CAT')).toEqual(['the</w>', 'cat</w>']); // merged words, lowercased
    expect(tok.tokenizer.tokenize('zap')).toEqual(['z', 'a', 'p</w>']);
    expect(tok.tokenizer.encode('Zürich', { add_special_tokens: false }).ids).toContain(V - 3);
    const withSpecials = tok.tokenizer.encode('a cat').ids; // the RobertaProcessing post-processor
    expect(withSpecials[0]).toBe(V - 2);
    expect(withSpecials.at(-1)).toBe(V - 1);
  });

  it('rejects vocabularies too small to hold the special tokens', () => {
    expect(() => tinyTokenizerJson('clip', 3)).toThrow(/vocabSize/);
    expect(() => tinyTokenizerJson('t5', 7.5)).toThrow(/vocabSize/);
  });
});

describe('prompt encoding', () => {
  it('encodeT5: ids + EOS, truncated, padded with 0 to maxLength', () => {
    const tok = tiny('t5', 100);
    const text = tok.tokenizer.encode(PROMPT, { add_special_tokens: false }).ids;
    const ids = encodeT5(tok, PROMPT);
    expect(ids).toHaveLength(512);
    expect(ids.slice(0, text.length + 1)).toEqual([...text, 1]);
    expect(ids.slice(text.length + 1).every((id) => id === 0)).toBe(true);

    const short = encodeT5(tok, PROMPT, 5);
    expect(short).toEqual([...text.slice(0, 4), 1]);
    expect(encodeT5(tok, '', 3)).toEqual([1, 0, 0]);
    expectValidIds(tok, encodeT5(tok, UNKNOWN, 64), 100);
  });

  it('encodeClip: BOS + ids + EOS, truncated, padded with the pad token (EOS by default)', () => {
    const tok = tiny('clip', 100);
    const text = tok.tokenizer.encode(PROMPT, { add_special_tokens: false }).ids;
    const ids = encodeClip(tok, PROMPT);
    expect(ids).toHaveLength(77);
    expect(ids.slice(0, text.length + 2)).toEqual([BOS, ...text, EOS]);
    expect(ids.slice(text.length + 2).every((id) => id === EOS)).toBe(true);

    expect(encodeClip(tok, PROMPT, 6)).toEqual([BOS, ...text.slice(0, 4), EOS]);
    expect(encodeClip(tok, '', 4)).toEqual([BOS, EOS, EOS, EOS]);
    expect(encodeClip(tok, 'a', 4, { pad: 0 })).toEqual([BOS, ids[1], EOS, 0]);
    expectValidIds(tok, encodeClip(tok, UNKNOWN), 100);
  });

  it('inputIdsTensor makes int64 [B, T]', () => {
    const t = inputIdsTensor([[1, 2, 3], [4, 5, 6]]);
    expect(t.dtype).toBe('int64');
    expect(t.dims).toEqual([2, 3]);
    expect(Array.from(t.data as BigInt64Array, Number)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(() => inputIdsTensor([[1], [2, 3]])).toThrow(/length/);
  });
});

describe('loadTokenizer', () => {
  /** A fresh folder under the test's temporary directory holding `files`. */
  function folder(name: string, files: Record<string, string>): string {
    const dir = join(tmp, name);
    mkdirSync(dir);
    for (const [f, text] of Object.entries(files)) writeFileSync(join(dir, f), text);
    return dir;
  }

  it('loads a tokenizer.json file, or a folder with tokenizer_config.json naming the specials', () => {
    const t5Dir = folder('t5', { 'tokenizer.json': JSON.stringify(tinyTokenizerJson('t5', 100)) });
    const t5 = loadTokenizer(join(t5Dir, 'tokenizer.json'));
    expect(encodeT5(t5, PROMPT, 32)).toEqual(encodeT5(tiny('t5', 100), PROMPT, 32));
    expect(loadTokenizer(t5Dir).special).toEqual(t5.special);

    const clipDir = folder('clip', {
      'tokenizer.json': JSON.stringify(tinyTokenizerJson('clip', 100)),
      'tokenizer_config.json': JSON.stringify({ pad_token: { content: 'a</w>', __type: 'AddedToken' } }),
    });
    const clip = loadTokenizer(clipDir);
    const aId = clip.tokenizer.token_to_id('a</w>')!;
    expect(clip.special).toMatchObject({ bos: BOS, eos: EOS, pad: aId });
    expect(encodeClip(clip, 'cat', 5)).toEqual([BOS, clip.tokenizer.token_to_id('cat</w>'), EOS, aId, aId]);

    expect(() => loadTokenizer(folder('empty', {}))).toThrow(/no tokenizer.json/);
  });

  it('rebuilds a CLIP tokenizer from vocab.json + merges.txt (FLUX.1-dev tokenizer/ layout)', () => {
    const json = tinyTokenizerJson('clip', 100);
    const model = json.model as { vocab: Record<string, number>; merges: string[] };
    const dir = folder('slow', {
      'vocab.json': JSON.stringify(model.vocab),
      // A header line as in the real file, and a merge whose result is not in the vocabulary.
      'merges.txt': `#version: 0.2\n${model.merges.join('\n')}\nq z\n`,
      'tokenizer_config.json': JSON.stringify({ unk_token: '<|unk|>', pad_token: '<|endoftext|>' }),
    });
    const slow = loadTokenizer(dir);
    const fast = tokenizerFromJson(json);
    for (const text of [PROMPT, UNKNOWN, 'the cat and the dog', 'qz']) expect(encodeClip(slow, text)).toEqual(encodeClip(fast, text));
    expect(slow.special).toMatchObject({ bos: BOS, eos: EOS, pad: EOS, unk: UNK });
  });
});

describe('tiny CLIP tokenizer with the clip_text golden model (its vocabulary size)', () => {
  it('pools at the EOS that encodeClip writes', async () => {
    const cfg = clipConfigFromJson(goldenConfig('clip_text'));
    const T = cfg.maxPositions;
    const tok = tiny('clip', cfg.vocabSize);
    const rows = [encodeClip(tok, 'a cat', T), encodeClip(tok, PROMPT, T)];
    const w = goldenWeights('clip_text');
    const g = new Graph({ name: 'clip_text' });
    try {
      buildClip({ g, w }, cfg);
    } finally {
      w.close();
    }
    const out = await runOnce(g.toBytes(), { input_ids: inputIdsTensor(rows) });
    const C = cfg.hiddenSize;
    const last = toFloat32(out.last_hidden_state!);
    const pooled = toFloat32(out.pooler_output!);
    rows.forEach((row, b) => {
      const eosAt = row.indexOf(tok.special.eos!);
      expect(eosAt).toBeGreaterThan(0);
      expect(Array.from(pooled.subarray(b * C, (b + 1) * C))).toEqual(Array.from(last.subarray((b * T + eosAt) * C, (b * T + eosAt + 1) * C)));
    });
  });
});
