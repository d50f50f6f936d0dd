// The activation estimate that refuses a batch before anything loads follows how the set writes attention:
// a [heads, T+L, T+L] scores-and-probabilities term where MatMul -> Softmax -> MatMul runs, none where the
// fused MultiHeadAttention does (sets from before fused attention have no setting: plain).
import { describe, expect, it } from 'vitest';
import { checkBatchFits, fluxBytesPerImage } from '../../nodes/dit_sample.ts';
import type { AttentionSetting, FileEntry, ModelSet, ModelSetManifest } from '../../models/modelset.ts';
import { DEFAULT_ATTENTION } from '../../models/modelset.ts';

const HEADS = 24, HEAD_DIM = 128, TEXT = 512;
const FLUX_BYTES = 1_000_000;

/** A set with only what the estimate reads: FLUX geometry, float32, the VAE's downscale and the flux file size. */
function setWith(attention: AttentionSetting | undefined): ModelSet {
  const manifest = {
    flux: { numHeads: HEADS, headDim: HEAD_DIM, ...(attention ? { attention } : {}) },
    vae: { latentChannels: 16, downscale: 8 },
    files: { flux: { file: 'flux.onnx', bytes: FLUX_BYTES, sha256: '', parameters: 0 } as FileEntry },
  } as unknown as ModelSetManifest;
  return { name: 'probe', manifest, dtype: () => 'float32' } as unknown as ModelSet;
}

const tokensAt = (px: number): number => (px / 16) ** 2; // packed latent tokens of a px x px image
const linearTerm = (n: number): number => 4 * 12 * n * HEADS * HEAD_DIM;
const scoresTerm = (n: number): number => 4 * 2 * HEADS * n * n;

describe('activation estimate and the attention form', () => {
  it('counts the T-squared term only where attention is plain', () => {
    const n1024 = TEXT + tokensAt(1024); // 4608
    const n512 = TEXT + tokensAt(512); // 1536
    const old = setWith(undefined);
    expect(fluxBytesPerImage(old, TEXT, tokensAt(1024))).toBe(linearTerm(n1024) + scoresTerm(n1024));
    expect(fluxBytesPerImage(setWith({ form: 'plain' }), TEXT, tokensAt(1024))).toBe(linearTerm(n1024) + scoresTerm(n1024));
    expect(fluxBytesPerImage(setWith({ form: 'fused' }), TEXT, tokensAt(512))).toBe(linearTerm(n512));
    // auto: plain below its threshold, fused from it on.
    const auto = setWith({ form: 'auto', fusedFrom: 2 ** 27 }); // FLUX's 24 heads: from ~2365 tokens
    expect(fluxBytesPerImage(auto, TEXT, tokensAt(512))).toBe(linearTerm(n512) + scoresTerm(n512));
    expect(fluxBytesPerImage(auto, TEXT, tokensAt(1024))).toBe(linearTerm(n1024));
    expect(fluxBytesPerImage(setWith({ form: 'auto', fusedFrom: HEADS * n1024 ** 2 }), TEXT, tokensAt(1024))).toBe(linearTerm(n1024));
    expect(fluxBytesPerImage(setWith({ form: 'auto', fusedFrom: HEADS * n1024 ** 2 + 1 }), TEXT, tokensAt(1024))).toBe(linearTerm(n1024) + scoresTerm(n1024));
    // What new sets write: FLUX's 24 heads run fused from 512 x 512 on.
    expect(fluxBytesPerImage(setWith(DEFAULT_ATTENTION), TEXT, tokensAt(512))).toBe(linearTerm(n512));
    // At 1024 x 1024 the fused estimate is a seventh of the plain one (FLUX geometry: 0.68 GB vs 4.8 GB).
    expect(linearTerm(n1024) / (linearTerm(n1024) + scoresTerm(n1024))).toBeLessThan(0.15);
  });

  it('takes a batch at 1024 x 1024 with fused attention that the plain form refuses', () => {
    const n = TEXT + tokensAt(1024);
    // Room for 4 images with the fused estimate, but not for one with the plain one.
    const budget = FLUX_BYTES + 4 * linearTerm(n) + 1;
    const pool = { device: 'cpu', budgetBytes: budget };
    const req = { batch: 4, width: 1024, height: 1024, textTokens: TEXT, trueCfg: false };
    expect(() => checkBatchFits(setWith({ form: 'auto', fusedFrom: 2 ** 27 }), pool, req)).not.toThrow();
    expect(() => checkBatchFits(setWith({ form: 'auto', fusedFrom: 2 ** 27 }), pool, { ...req, batch: 5 })).toThrow(/at most 4 fit/);
    expect(() => checkBatchFits(setWith(undefined), pool, { ...req, batch: 1 })).toThrow(/not even one image fits/);
    // True CFG doubles the passes: 2 images.
    expect(() => checkBatchFits(setWith({ form: 'fused' }), pool, { ...req, trueCfg: true })).toThrow(/at most 2 fit/);
  });
});
