// FLUX rotary position tables (diffusers FluxPosEmbed), computed on the host. The transformer graph takes
// them as inputs `rope_cos` / `rope_sin` [T+L, headDim], so one graph serves every resolution and prompt length.
import type { Tensor } from './tensor.ts';

export interface RopeTables {
  cos: Tensor; // [n, sum(axesDims)]
  sin: Tensor; // [n, sum(axesDims)]
}

/**
 * cos/sin tables for position ids [n, axes] (FLUX: 3 axes, (0 | index, row, col)). Each axis of size d
 * rotates pairs with frequencies theta^(-2j/d), j < d/2; every angle is repeated for the two members of
 * its pair (interleaved layout). Angles and cos/sin are computed in float64 and cast to float32, like diffusers.
 */
export function fluxRope(ids: Float32Array, axesDims: readonly number[] = [16, 56, 56], theta = 10000): RopeTables {
  const axes = axesDims.length;
  if (ids.length % axes !== 0) throw new Error(`fluxRope: ${ids.length} ids are not a multiple of ${axes} axes`);
  const n = ids.length / axes;
  const width = axesDims.reduce((a, b) => a + b, 0);
  const cos = new Float32Array(n * width);
  const sin = new Float32Array(n * width);

  // Inverse frequencies per output column (both members of a pair share one).
  const freqs = new Float64Array(width);
  let col = 0;
  for (const d of axesDims) {
    if (d % 2 !== 0) throw new Error(`fluxRope: axis dim ${d} is odd`);
    for (let j = 0; j < d / 2; j++) {
      const f = 1 / theta ** ((2 * j) / d);
      freqs[col++] = f;
      freqs[col++] = f;
    }
  }
  // Which axis each column reads its position from.
  const axisOf = new Int32Array(width);
  col = 0;
  axesDims.forEach((d, a) => axisOf.fill(a, col, (col += d)));

  for (let t = 0; t < n; t++) {
    for (let c = 0; c < width; c++) {
      const angle = ids[t * axes + axisOf[c]!]! * freqs[c]!;
      cos[t * width + c] = Math.cos(angle);
      sin[t * width + c] = Math.sin(angle);
    }
  }
  return {
    cos: { dtype: 'float32', dims: [n, width], data: cos },
    sin: { dtype: 'float32', dims: [n, width], data: sin },
  };
}

/** Text position ids: all zeros, [T, 3]. */
export function fluxTextIds(tokens: number): Float32Array {
  return new Float32Array(tokens * 3);
}

/** Packed-latent position ids (0, row, col) for a rows x cols grid (latent H/2 x W/2), row-major, [rows*cols, 3]. */
export function fluxImageIds(rows: number, cols: number): Float32Array {
  const ids = new Float32Array(rows * cols * 3);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const i = (r * cols + c) * 3;
      ids[i + 1] = r;
      ids[i + 2] = c;
    }
  }
  return ids;
}

/** Tables for concat(txt_ids, img_ids), the order of the joint sequence in the transformer. */
export function fluxRopeFor(textTokens: number, rows: number, cols: number, axesDims: readonly number[] = [16, 56, 56], theta = 10000): RopeTables {
  const txt = fluxTextIds(textTokens);
  const img = fluxImageIds(rows, cols);
  const ids = new Float32Array(txt.length + img.length);
  ids.set(txt, 0);
  ids.set(img, txt.length);
  return fluxRope(ids, axesDims, theta);
}
