// Bicubic resampling with the exact arithmetic of Pillow's 8-bit resize (the official pipeline
// resizes the reference with PIL): a = -0.5 cubic, support widened by the downscale factor,
// coefficients in 22-bit fixed point, a horizontal pass then a vertical pass, each rounded to 8 bits.
import type { RgbImage } from './rgb.ts';

const PRECISION_BITS = 32 - 8 - 2;

function cubic(x: number): number {
  const a = -0.5;
  const t = Math.abs(x);
  if (t < 1) return ((a + 2) * t - (a + 3)) * t * t + 1;
  if (t < 2) return (((t - 5) * t + 8) * t - 4) * a;
  return 0;
}

interface Taps {
  start: Int32Array;
  count: Int32Array;
  /** Fixed-point weights, `size` per output pixel. */
  weights: Int32Array;
  size: number;
}

function taps(inSize: number, outSize: number): Taps {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = 2 * filterScale;
  const size = Math.ceil(support) * 2 + 1;
  const start = new Int32Array(outSize);
  const count = new Int32Array(outSize);
  const weights = new Int32Array(outSize * size);
  const k = new Float64Array(size);
  for (let o = 0; o < outSize; o++) {
    const center = (o + 0.5) * scale;
    const lo = Math.max(Math.trunc(center - support + 0.5), 0);
    const n = Math.min(Math.trunc(center + support + 0.5), inSize) - lo;
    let sum = 0;
    for (let i = 0; i < n; i++) {
      k[i] = cubic((i + lo - center + 0.5) / filterScale);
      sum += k[i]!;
    }
    for (let i = 0; i < n; i++) {
      const w = sum !== 0 ? k[i]! / sum : k[i]!;
      weights[o * size + i] = Math.trunc(w < 0 ? -0.5 + w * (1 << PRECISION_BITS) : 0.5 + w * (1 << PRECISION_BITS));
    }
    start[o] = lo;
    count[o] = n;
  }
  return { start, count, weights, size };
}

function clip8(v: number): number {
  if (v >= 1 << PRECISION_BITS << 8) return 255;
  if (v <= 0) return 0;
  return v >> PRECISION_BITS;
}

/** Resamples along one axis; `stride` steps between taps, `lines`/`lineStride` walk the other axis. */
function pass(src: Uint8Array, inW: number, inH: number, outW: number, outH: number, horizontal: boolean): Uint8Array {
  const t = horizontal ? taps(inW, outW) : taps(inH, outH);
  const out = new Uint8Array(outW * outH * 3);
  const half = 1 << (PRECISION_BITS - 1);
  for (let y = 0; y < outH; y++) {
    for (let x = 0; x < outW; x++) {
      const o = horizontal ? x : y;
      const lo = t.start[o]!;
      const n = t.count[o]!;
      let s0 = half, s1 = half, s2 = half;
      for (let i = 0; i < n; i++) {
        const w = t.weights[o * t.size + i]!;
        const p = horizontal ? (y * inW + lo + i) * 3 : ((lo + i) * inW + x) * 3;
        s0 += src[p]! * w;
        s1 += src[p + 1]! * w;
        s2 += src[p + 2]! * w;
      }
      const q = (y * outW + x) * 3;
      out[q] = clip8(s0);
      out[q + 1] = clip8(s1);
      out[q + 2] = clip8(s2);
    }
  }
  return out;
}

/** PIL `Image.resize((width, height), BICUBIC)` for 8-bit RGB, bit for bit. */
export function resizeBicubic(img: RgbImage, width: number, height: number): RgbImage {
  let data = img.data;
  let w = img.width;
  if (width !== img.width) {
    data = pass(data, img.width, img.height, width, img.height, true);
    w = width;
  }
  if (height !== img.height) data = pass(data, w, img.height, w, height, false);
  return { width, height, data: data === img.data ? new Uint8Array(data) : data };
}
