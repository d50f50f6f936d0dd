// Small host-side tensor reshuffles between graphs: batch slicing and concatenation of [B, T, C].
import type { Tensor } from '../../models/tensor.ts';
import { toFloat32 } from '../../models/tensor.ts';

function dims3(t: Tensor): [number, number, number] {
  if (t.dims.length !== 3) throw new Error(`expected a [B, T, C] tensor, got [${t.dims}]`);
  return t.dims as [number, number, number];
}

/** Rows [start, end) of the batch, optionally dropping the first `skipTokens` tokens of each. */
export function sliceBatch(t: Tensor, start: number, end: number, skipTokens = 0): Tensor {
  const [, tokens, c] = dims3(t);
  const src = toFloat32(t);
  const keep = tokens - skipTokens;
  const out = new Float32Array((end - start) * keep * c);
  for (let b = start; b < end; b++) {
    out.set(src.subarray((b * tokens + skipTokens) * c, (b + 1) * tokens * c), (b - start) * keep * c);
  }
  return { dtype: 'float32', dims: [end - start, keep, c], data: out };
}

/** Concatenates [B, T_i, C] tensors along the sequence axis (batch 1). */
export function concatTokens(parts: Tensor[]): Tensor {
  const c = dims3(parts[0]!)[2];
  const total = parts.reduce((n, p) => n + dims3(p)[0] * dims3(p)[1], 0);
  const out = new Float32Array(total * c);
  let o = 0;
  for (const p of parts) {
    if (dims3(p)[2] !== c) throw new Error('concatTokens: channel counts differ');
    const d = toFloat32(p);
    out.set(d, o);
    o += d.length;
  }
  return { dtype: 'float32', dims: [1, total, c], data: out };
}

/** Concatenates [1, T, C_i] tensors along channels. */
export function concatChannels(a: Tensor, b: Tensor): Tensor {
  const [ba, ta, ca] = dims3(a);
  const [bb, tb, cb] = dims3(b);
  if (ba !== bb || ta !== tb) throw new Error(`concatChannels: [${a.dims}] and [${b.dims}] differ in batch or tokens`);
  const x = toFloat32(a);
  const y = toFloat32(b);
  const out = new Float32Array(ba * ta * (ca + cb));
  for (let r = 0; r < ba * ta; r++) {
    out.set(x.subarray(r * ca, (r + 1) * ca), r * (ca + cb));
    out.set(y.subarray(r * cb, (r + 1) * cb), r * (ca + cb) + ca);
  }
  return { dtype: 'float32', dims: [ba, ta, ca + cb], data: out };
}

/** Byte size of the typed arrays inside a node value, for the output cache budget. */
export function tensorBytes(value: unknown): number {
  if (ArrayBuffer.isView(value)) return value.byteLength;
  if (value && typeof value === 'object') {
    let n = 0;
    for (const v of Object.values(value)) n += tensorBytes(v);
    return n;
  }
  return 16;
}
