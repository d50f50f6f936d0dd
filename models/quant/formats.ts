// Weight formats of a model set's graphs: fp32 / fp16 (float graphs) or int8 / int4 (Linears as
// MatMulNBits, everything else float32). One base format with per-component overrides, as the converter's
// `--weights int4 --int8 t5` and the tiny set's `--weights` ask for.
import type { ComponentName, GraphDType, ModelSetSpec } from '../modelset.ts';
import { type QuantSpec, checkBlock } from './quantize.ts';

import { type WeightFormat, WEIGHT_FORMATS } from './weight-format.ts';

export { type WeightFormat, WEIGHT_FORMATS } from './weight-format.ts';

/**
 * Default block: ONNX Runtime's quantizer default. With float32 scales it keeps FLUX + the adapter's
 * layers under 14.5 GB at int8 (block 32 would be ~15.4 GB); pass --block 32 for finer int4 blocks.
 */
export const DEFAULT_BLOCK = 128;

/** Convolution models: their few Linears (the VAE's mid-block attention) are not worth 4/8 bits. */
export const FLOAT_ONLY: readonly string[] = ['vae', 'vae_encoder'];

export function isQuantized(f: WeightFormat): f is 'int8' | 'int4' {
  return f === 'int8' || f === 'int4';
}

export function parseWeightFormat(value: string, where = '--weights'): WeightFormat {
  const v = value.trim().toLowerCase();
  if (!(WEIGHT_FORMATS as readonly string[]).includes(v)) {
    throw new Error(`${where}: unknown weight format "${value}"; use one of ${WEIGHT_FORMATS.join(', ')}`);
  }
  return v as WeightFormat;
}

/** How one graph is written. */
export interface ComponentFormat {
  format: WeightFormat;
  /** Float dtype of the graph (activations, norms, scales): float32 for quantized graphs. */
  dtype: GraphDType;
  quant?: QuantSpec;
}

export interface FormatOptions {
  /** The format of every component not named elsewhere. */
  base: WeightFormat;
  /** Per-component formats (overrides). */
  overrides?: Partial<Record<ComponentName, WeightFormat>>;
  /** Components kept float32 when the base format would make them fp16 or quantized (the VAE by default). */
  fp32?: readonly ComponentName[];
  block?: number;
  symmetric?: boolean;
}

/**
 * The format of each component. Quantized formats use float32 for everything that stays float: the CPU's
 * fast MatMulNBits path (accuracy_level 4) takes float32 activations, and the weights dominate memory.
 * An override that asks a convolution model (the VAE) for int8/int4 is refused.
 */
export function resolveFormats(components: readonly ComponentName[], opts: FormatOptions): Record<ComponentName, ComponentFormat> {
  const block = opts.block ?? DEFAULT_BLOCK;
  checkBlock(block);
  const out = {} as Record<ComponentName, ComponentFormat>;
  for (const c of components) {
    const explicit = opts.overrides?.[c];
    if (explicit && isQuantized(explicit) && FLOAT_ONLY.includes(c)) {
      throw new Error(`${explicit} was asked of ${c}, a convolution model: it stays float (fp32 or fp16)`);
    }
    let format: WeightFormat = explicit ?? opts.base;
    if (!explicit && opts.fp32?.includes(c) && format !== 'fp32') format = 'fp32';
    if (!explicit && isQuantized(format) && FLOAT_ONLY.includes(c)) format = 'fp32';
    out[c] = isQuantized(format)
      ? { format, dtype: 'float32', quant: { bits: format === 'int8' ? 8 : 4, block, symmetric: opts.symmetric || undefined } }
      : { format, dtype: format === 'fp16' ? 'float16' : 'float32' };
  }
  return out;
}

/** `spec` with each component's dtype and quantization set from `formats` (the set's dtype: float32 unless all fp16). */
export function specWithFormats(spec: ModelSetSpec, formats: Partial<Record<ComponentName, ComponentFormat>>): ModelSetSpec {
  const entries = Object.entries(formats) as [ComponentName, ComponentFormat][];
  return {
    ...spec,
    dtype: entries.every(([, f]) => f.dtype === 'float16') ? 'float16' : entries.some(([, f]) => f.quant) ? 'float32' : spec.dtype,
    dtypes: Object.fromEntries(entries.map(([c, f]) => [c, f.dtype])),
    quant: Object.fromEntries(entries.flatMap(([c, f]) => (f.quant ? [[c, f.quant]] : []))),
  };
}
