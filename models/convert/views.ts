// WeightSource views used by the converter: renaming, splitting and reshaping a checkpoint's tensors
// on the fly, so a checkpoint in another layout reads as the key names the architecture files expect.
// Nothing is copied up front: each tensor is read from disk when the builder asks for it.
import type { WeightSource } from '../weights/source.ts';
import { type GgmlBlocks, stackGgmlRows } from '../weights/ggml.ts';
import { type Tensor, type TensorData, numel } from '../tensor.ts';

/** Part of a source tensor: all of it, or rows [start, end) of its first axis. */
export interface Piece {
  key: string;
  rows?: readonly [number, number];
}

/** How one target key is made: its pieces concatenated along axis 0, optionally reshaped (same numel). */
export interface Mapping {
  pieces: readonly Piece[];
  reshape?: (dims: number[]) => number[];
}

export type KeyMap = Map<string, Mapping>;

/** A simple rename. */
export const renamed = (key: string): Mapping => ({ pieces: [{ key }] });

/**
 * A view of `source` where each key of `map` reads as its mapping. `label` (a file path) is used in
 * errors. A one-entry cache keeps the last fused tensor read, because its slices (q, k, v of a fused qkv)
 * are asked for one after the other.
 */
export function mappedSource(source: WeightSource, map: KeyMap, label: string): WeightSource {
  let cached: { key: string; tensor: Tensor } | undefined;
  let cachedBlocks: { key: string; blocks: GgmlBlocks | undefined } | undefined;
  const read = (key: string): Tensor => {
    if (cached?.key === key) return cached.tensor;
    const tensor = source.get(key);
    cached = { key, tensor };
    return tensor;
  };
  const shapeOf = (key: string): number[] | undefined => {
    const m = map.get(key);
    if (!m) return undefined;
    let dims: number[] | undefined;
    for (const p of m.pieces) {
      const s = source.shape(p.key);
      if (!s) return undefined;
      const rows = pieceRows(p, s, key, label);
      if (!dims) dims = [rows, ...s.slice(1)];
      else {
        if (s.length !== dims.length || s.slice(1).some((d, i) => d !== dims![i + 1])) {
          throw new Error(`${label}: '${p.key}' has shape [${s}], which cannot be joined with the other parts of '${key}'`);
        }
        dims[0]! += rows;
      }
    }
    return dims && m.reshape ? m.reshape(dims) : dims;
  };
  return {
    keys: () => [...map.keys()].filter((k) => map.get(k)!.pieces.every((p) => source.shape(p.key) !== undefined)),
    shape: shapeOf,
    get: (key) => {
      const m = map.get(key);
      const dims = shapeOf(key);
      if (!m || !dims) throw new Error(`${label}: missing tensor '${key}' (from ${m ? m.pieces.map((p) => `'${p.key}'`).join(' + ') : 'no source key'})`);
      if (m.pieces.length === 1 && !m.pieces[0]!.rows) {
        const t = source.get(m.pieces[0]!.key);
        return { ...t, dims };
      }
      const parts = m.pieces.map((p) => {
        const t = read(p.key);
        const rowSize = numel(t.dims.slice(1));
        const [start, end] = p.rows ?? [0, t.dims[0]!];
        return { dtype: t.dtype, data: t.data.subarray(start * rowSize, end * rowSize) };
      });
      const dtype = parts[0]!.dtype;
      if (parts.some((p) => p.dtype !== dtype)) throw new Error(`${label}: the parts of '${key}' have different dtypes`);
      return { dtype, dims, data: concatData(parts.map((p) => p.data)) };
    },
    // GGML blocks pass through renames and row slices (blocks never cross rows); not reshapes.
    blocks: source.blocks && ((key) => {
      const m = map.get(key);
      if (!m || m.reshape) return undefined;
      const parts: { blocks: GgmlBlocks; rows?: readonly [number, number] }[] = [];
      for (const p of m.pieces) {
        // The same one-entry cache as for tensors: q, k, v (and the MLP) are rows of one fused tensor.
        if (cachedBlocks?.key !== p.key) cachedBlocks = { key: p.key, blocks: source.blocks!(p.key) };
        const b = cachedBlocks.blocks;
        if (!b || (parts.length && (b.type !== parts[0]!.blocks.type || b.cols !== parts[0]!.blocks.cols))) return undefined;
        if (p.rows) pieceRows(p, [b.rows, b.cols], key, label);
        parts.push({ blocks: b, rows: p.rows });
      }
      return stackGgmlRows(parts);
    }),
    ggmlType: source.ggmlType && ((key) => {
      const types = map.get(key)?.pieces.map((p) => source.ggmlType!(p.key));
      return types?.every((t) => t === types[0]) ? types[0] : undefined;
    }),
    close: () => source.close?.(),
  };
}

function pieceRows(p: Piece, shape: number[], target: string, label: string): number {
  if (!p.rows) return shape[0] ?? 1;
  const [start, end] = p.rows;
  if (!(shape.length >= 1 && start >= 0 && end <= shape[0]! && start < end)) {
    throw new Error(`${label}: tensor '${p.key}' has shape [${shape}], too small for rows ${start}..${end} of '${target}'`);
  }
  return end - start;
}

function concatData(parts: TensorData[]): TensorData {
  if (parts.length === 1) return parts[0]!.slice();
  const total = parts.reduce((n, p) => n + p.length, 0);
  const Ctor = parts[0]!.constructor as new (n: number) => TensorData;
  const out = new Ctor(total);
  let off = 0;
  for (const p of parts) {
    (out as { set(a: ArrayLike<number | bigint>, o: number): void }).set(p as ArrayLike<number | bigint>, off);
    off += p.length;
  }
  return out;
}

/** A view that reports every tensor read (progress bars). */
export function trackedSource(source: WeightSource, onRead: (key: string, elements: number) => void): WeightSource {
  return {
    keys: () => source.keys(),
    shape: (key) => source.shape(key),
    get: (key) => {
      const t = source.get(key);
      onRead(key, numel(t.dims));
      return t;
    },
    blocks: source.blocks && ((key) => {
      const b = source.blocks!(key);
      if (b) onRead(key, b.rows * b.cols);
      return b;
    }),
    ggmlType: source.ggmlType && ((key) => source.ggmlType!(key)),
    close: () => source.close?.(),
  };
}

/**
 * The prefix under which `probe` sits in `source` ('' when at the top), e.g. 'model.diffusion_model.' in a
 * ComfyUI checkpoint or 'vision_model.' nesting. Undefined when no key ends with it.
 */
export function findPrefix(keys: readonly string[], probe: string): string | undefined {
  if (keys.includes(probe)) return '';
  let best: string | undefined;
  for (const k of keys) {
    if (k.endsWith(`.${probe}`)) {
      const p = k.slice(0, k.length - probe.length);
      if (best === undefined || p.length < best.length) best = p;
    }
  }
  return best;
}
