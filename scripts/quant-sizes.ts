// Sizes of a full-size model set in int8 / int4 (and fp16 for reference) without checkpoints: every graph is
// written by writeModelSet from synthetic weights with the real shapes; the quantized ones get random codes
// instead of a real quantization (same layout, same bytes, seconds instead of many minutes). Reports the
// bytes on disk per component, FLUX + the adapter's IP layers, and the whole set; deletes what it wrote.
//   node --import tsx scripts/quant-sizes.ts [--formats int8,int4,fp16] [--block 128] [--dir DIR] [--only flux,t5]
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FULL_SIGLIP, siglipWeightShapes } from '../models/siglip.ts';
import { FULL_DINOV2, dinov2WeightShapes } from '../models/dinov2.ts';
import { FULL_ADAPTER, adapterWeightShapes } from '../models/adapter.ts';
import { FULL_FLUX, fluxWeightShapes, ipAdapterWeightShapes } from '../models/flux.ts';
import { FULL_VAE, vaeEncoderWeightShapes, vaeWeightShapes } from '../models/vae.ts';
import { FULL_T5, T5_FLUX_SEQ_LEN, t5WeightShapes } from '../models/t5.ts';
import { FULL_CLIP, clipWeightShapes } from '../models/clip.ts';
import { tinyTokenizerJson } from '../models/tokenizers.ts';
import { type ModelSetSpec, writeModelSet } from '../models/modelset.ts';
import { COMPONENTS } from '../models/convert/convert.ts';
import { type WeightFormat, parseWeightFormat, resolveFormats, specWithFormats } from '../models/quant/formats.ts';
import { type QuantSpec, type QuantizedMatrix, blobBytes, kBlocksOf, zeroPointBytesPerRow } from '../models/quant/quantize.ts';
import type { WeightSource } from '../models/weights/source.ts';
import { type Tensor, numel } from '../models/tensor.ts';

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1]! : fallback;
}

const POOL = new Float32Array(1 << 26);
for (let i = 0; i < 1 << 16; i++) POOL[i] = Math.sin(i * 12.9898) * 0.02;
for (let n = 1 << 16; n < POOL.length; n *= 2) POOL.copyWithin(n, 0, n);

/** A checkpoint of the given shapes whose tensors are views of POOL (norm scales ones); float32 or bf16 storage does not change the output. */
function source(shapes: Record<string, readonly number[]>): WeightSource {
  return {
    keys: () => Object.keys(shapes),
    shape: (k) => (shapes[k] ? [...shapes[k]!] : undefined),
    get: (k): Tensor => {
      const dims = shapes[k];
      if (!dims) throw new Error(`missing tensor '${k}'`);
      const n = numel(dims);
      if (n > POOL.length) return { dtype: 'float32', dims: [...dims], data: new Float32Array(n) };
      return { dtype: 'float32', dims: [...dims], data: POOL.subarray(0, n) };
    },
  };
}

function randomQuantizer(_rows: Float32Array, N: number, K: number, spec: QuantSpec): QuantizedMatrix {
  const kb = kBlocksOf(K, spec.block);
  const packed = new Uint8Array(N * kb * blobBytes(spec.bits, spec.block)).fill(0x5a);
  const scales = new Float32Array(N * kb).fill(1e-3);
  const zeroPoints = spec.symmetric ? undefined : new Uint8Array(N * zeroPointBytesPerRow(spec.bits, kb)).fill(spec.bits === 4 ? 0x88 : 128);
  return { N, K, bits: spec.bits, block: spec.block, packed, scales, zeroPoints };
}

function fullSpec(): ModelSetSpec {
  const t5Tok = JSON.stringify(tinyTokenizerJson('t5', FULL_T5.vocabSize));
  const clipTok = JSON.stringify(tinyTokenizerJson('clip', FULL_CLIP.vocabSize));
  return {
    name: 'fullsize', dtype: 'float32',
    siglip: { cfg: FULL_SIGLIP, weights: source(siglipWeightShapes(FULL_SIGLIP)), shallowLayers: [7, 13, 26] },
    dinov2: { cfg: FULL_DINOV2, weights: source(dinov2WeightShapes(FULL_DINOV2)), shallowLayers: [9, 19, 29] },
    adapter: { cfg: FULL_ADAPTER, weights: source(adapterWeightShapes(FULL_ADAPTER)) },
    flux: { cfg: FULL_FLUX, weights: source(fluxWeightShapes(FULL_FLUX)), ip: source(ipAdapterWeightShapes(FULL_FLUX, FULL_ADAPTER.outputDim)) },
    vae: { cfg: FULL_VAE, weights: source({ ...vaeWeightShapes(FULL_VAE), ...vaeEncoderWeightShapes(FULL_VAE) }) },
    t5: { cfg: FULL_T5, weights: source(t5WeightShapes(FULL_T5)), seqLen: T5_FLUX_SEQ_LEN, tokenizer: t5Tok, padId: 0, eosId: 1 },
    clip: { cfg: FULL_CLIP, weights: source(clipWeightShapes(FULL_CLIP)), seqLen: 77, tokenizer: clipTok, bosId: 0, eosId: 2, padId: 1 },
  };
}

const GB = 1e9;
async function main(): Promise<void> {
  const formats = arg('formats', 'int8,int4').split(',').map((f) => parseWeightFormat(f));
  const block = Number(arg('block', '128'));
  for (const format of formats) {
    const dir = mkdtempSync(join(arg('dir', tmpdir()), `charflow-sizes-${format}-`));
    const t0 = Date.now();
    try {
      const res = resolveFormats(COMPONENTS, { base: format as WeightFormat, fp32: ['vae', 'vae_encoder'], block });
      const m = await writeModelSet({ ...specWithFormats(fullSpec(), res), name: `fullsize-${format}` }, dir, (c, i, n) => {
        if (i < n) process.stdout.write(`  ${format}: ${c} ...\n`);
      }, { quantizer: randomQuantizer });
      let total = 0;
      const lines: string[] = [];
      for (const [c, e] of Object.entries(m.files)) {
        const bytes = e.bytes + (e.data ?? []).reduce((n, d) => n + d.bytes, 0);
        total += bytes;
        lines.push(`    ${c.padEnd(15)} ${(bytes / GB).toFixed(3)} GB  ${e.weights}${e.block ? ` block ${e.block}` : ''}, ${(e.parameters / 1e9).toFixed(3)} B params`);
      }
      const flux = m.files.flux;
      const fluxBytes = flux.bytes + (flux.data ?? []).reduce((n, d) => n + d.bytes, 0);
      console.log(`${format} (block ${block}): FLUX + IP layers ${(fluxBytes / GB).toFixed(2)} GB, whole set ${(total / GB).toFixed(2)} GB (written in ${((Date.now() - t0) / 1000).toFixed(0)} s)`);
      console.log(lines.join('\n'));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
}

await main();
