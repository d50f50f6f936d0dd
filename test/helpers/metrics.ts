// How far a result is from a reference, as the quantization test and benchmark report it.
import type { Tensor } from '../../models/tensor.ts';

/** max |a - b| / max |b|: the largest error relative to the reference's magnitude. */
export function relMaxError(a: Tensor, b: Tensor): number {
  if (a.dims.join() !== b.dims.join()) throw new Error(`shapes differ: [${a.dims}] vs [${b.dims}]`);
  const x = a.data as Float32Array;
  const y = b.data as Float32Array;
  let d = 0;
  let m = 0;
  for (let i = 0; i < y.length; i++) {
    d = Math.max(d, Math.abs(x[i]! - y[i]!));
    m = Math.max(m, Math.abs(y[i]!));
  }
  return d / m;
}

/** PSNR in dB of two 8-bit pictures of the same size. */
export function psnr8(a: { data: Uint8Array }, b: { data: Uint8Array }): number {
  if (a.data.length !== b.data.length) throw new Error(`sizes differ: ${a.data.length} vs ${b.data.length} bytes`);
  let se = 0;
  for (let i = 0; i < a.data.length; i++) se += (a.data[i]! - b.data[i]!) ** 2;
  return 10 * Math.log10((255 * 255) / Math.max(se / a.data.length, 1e-12));
}
