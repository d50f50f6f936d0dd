// Deterministic filler tensors for feeding graphs directly (values in [-scale, scale)).
import { f32, type Tensor } from '../../models/tensor.ts';

export function noise(dims: number[], seed: number, scale = 1): Tensor {
  const t = f32(dims);
  const d = t.data as Float32Array;
  let s = seed >>> 0;
  for (let i = 0; i < d.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    d[i] = scale * (s / 2 ** 31 - 1);
  }
  return t;
}
