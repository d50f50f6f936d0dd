// Bicubic resize with torch semantics: F.interpolate(x, size=..., mode='bicubic', align_corners=False).
// Used at graph-build time to resize learned position-embedding grids (DINOv2 37x37 -> 27x27), so the
// result is a constant of the graph. Keys (A = -0.75), source index scale*(dst+0.5)-0.5 without clamping,
// and taps clamped to the border, all as in torch's upsample_bicubic2d.

const A = -0.75;

/** Cubic convolution kernel for |x| <= 1. */
function cubicNear(x: number): number {
  return ((A + 2) * x - (A + 3)) * x * x + 1;
}

/** Cubic convolution kernel for 1 < |x| < 2. */
function cubicFar(x: number): number {
  return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A;
}

interface Taps {
  /** The 4 source indices per output position, clamped into [0, inSize). */
  index: Int32Array;
  /** Their 4 weights. */
  weight: Float64Array;
}

/** For each output position along one axis: which 4 inputs it reads and with which weights. */
function cubicTaps(inSize: number, outSize: number): Taps {
  const scale = inSize / outSize;
  const index = new Int32Array(outSize * 4);
  const weight = new Float64Array(outSize * 4);
  for (let o = 0; o < outSize; o++) {
    const src = scale * (o + 0.5) - 0.5; // may be negative: torch does not clamp it for cubic
    const base = Math.floor(src);
    const t = src - base;
    const w = [cubicFar(t + 1), cubicNear(t), cubicNear(1 - t), cubicFar(2 - t)];
    for (let j = 0; j < 4; j++) {
      index[o * 4 + j] = Math.min(Math.max(base - 1 + j, 0), inSize - 1);
      weight[o * 4 + j] = w[j]!;
    }
  }
  return { index, weight };
}

/**
 * Resizes a channels-last grid [inH, inW, C] to [outH, outW, C] (the layout of a ViT's position
 * embeddings, so no permutes are needed). Accumulates in float64.
 */
export function resizeBicubicHWC(src: Float32Array, inH: number, inW: number, channels: number, outH: number, outW: number): Float32Array {
  if (src.length !== inH * inW * channels) throw new Error(`resizeBicubicHWC: ${src.length} values do not make [${inH}, ${inW}, ${channels}]`);
  const ty = cubicTaps(inH, outH);
  const tx = cubicTaps(inW, outW);
  const out = new Float32Array(outH * outW * channels);
  const acc = new Float64Array(channels);
  for (let oy = 0; oy < outH; oy++) {
    for (let ox = 0; ox < outW; ox++) {
      acc.fill(0);
      for (let i = 0; i < 4; i++) {
        const y = ty.index[oy * 4 + i]!;
        const wy = ty.weight[oy * 4 + i]!;
        for (let j = 0; j < 4; j++) {
          const x = tx.index[ox * 4 + j]!;
          const w = wy * tx.weight[ox * 4 + j]!;
          const row = (y * inW + x) * channels;
          for (let c = 0; c < channels; c++) acc[c] += w * src[row + c]!;
        }
      }
      out.set(acc, (oy * outW + ox) * channels);
    }
  }
  return out;
}
