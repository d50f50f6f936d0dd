// A weight source: a lazily read state dict with the checkpoint's own key names.
import type { Tensor } from '../tensor.ts';
import type { GgmlBlocks, GgmlTypeName } from './ggml.ts';

export interface WeightSource {
  /** All keys, in file order. */
  keys(): string[];
  /** Shape without reading data, or undefined if the key is absent. */
  shape(key: string): number[] | undefined;
  /** Reads one tensor (its stored dtype; float16/bfloat16 as raw 16-bit patterns). */
  get(key: string): Tensor;
  /** Releases file handles. */
  close?(): void;
  /**
   * The stored GGML blocks of a quantized 2-D weight (GGUF), so a quantized graph can keep its codes instead
   * of rounding the decoded values again; undefined for float tensors and sources that have none.
   */
  blocks?(key: string): GgmlBlocks | undefined;
  /** The GGML type a tensor is stored in (GGUF sources), without reading it. */
  ggmlType?(key: string): GgmlTypeName | undefined;
}

/** Checks that `key` is there with shape `dims`, with an error that names the tensor and both shapes. */
export function takeShape(source: WeightSource, key: string, dims: readonly number[]): void {
  const shape = source.shape(key);
  if (!shape) throw new Error(`missing tensor '${key}' in the checkpoint`);
  if (shape.length !== dims.length || shape.some((d, i) => d !== dims[i])) {
    throw new Error(`tensor '${key}' has shape [${shape}] but the model config expects [${dims}]`);
  }
}

/** Reads `key` and checks its shape, with an error that names the tensor and both shapes. */
export function takeWeight(source: WeightSource, key: string, dims: readonly number[]): Tensor {
  takeShape(source, key, dims);
  return source.get(key);
}

/** A view of a source with a key prefix added (e.g. 'image_proj.' inside a combined file). */
export function withPrefix(source: WeightSource, prefix: string): WeightSource {
  return {
    keys: () => source.keys().filter((k) => k.startsWith(prefix)).map((k) => k.slice(prefix.length)),
    shape: (key) => source.shape(prefix + key),
    get: (key) => source.get(prefix + key),
    blocks: source.blocks && ((key) => source.blocks!(prefix + key)),
    ggmlType: source.ggmlType && ((key) => source.ggmlType!(prefix + key)),
  };
}

/** An in-memory source (generated tiny weights, tests). */
export function memorySource(tensors: Map<string, Tensor> | Record<string, Tensor>): WeightSource {
  const map = tensors instanceof Map ? tensors : new Map(Object.entries(tensors));
  return {
    keys: () => [...map.keys()],
    shape: (key) => map.get(key)?.dims,
    get: (key) => {
      const t = map.get(key);
      if (!t) throw new Error(`missing tensor '${key}'`);
      return t;
    },
  };
}

/** Several sources seen as one (e.g. sharded checkpoints). */
export function mergeSources(sources: WeightSource[]): WeightSource {
  const owner = new Map<string, WeightSource>();
  for (const s of sources) for (const k of s.keys()) owner.set(k, s);
  return {
    keys: () => [...owner.keys()],
    shape: (key) => owner.get(key)?.shape(key),
    get: (key) => {
      const s = owner.get(key);
      if (!s) throw new Error(`missing tensor '${key}'`);
      return s.get(key);
    },
    blocks: (key) => owner.get(key)?.blocks?.(key),
    ggmlType: (key) => owner.get(key)?.ggmlType?.(key),
    close: () => sources.forEach((s) => s.close?.()),
  };
}

const BLOCKS = new WeakMap<WeightSource, boolean>();

/** Whether a source holds GGML block weights (a quantized GGUF), which a quantized graph keeps as they are. */
export function storesBlocks(source: WeightSource): boolean {
  const type = source.ggmlType;
  if (!type) return false;
  let has = BLOCKS.get(source);
  if (has === undefined) {
    has = source.keys().some((k) => {
      const t = type(k);
      return t !== undefined && t !== 'F32' && t !== 'F16' && t !== 'BF16';
    });
    BLOCKS.set(source, has);
  }
  return has;
}
