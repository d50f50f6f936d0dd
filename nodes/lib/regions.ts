// Character regions on the packed latent grid (one cell per transformer image token, H/16 x W/16),
// and their bounding boxes for per-region identity crops.
import type { CharacterRegion } from '../types.ts';

/**
 * Integral of the 1-D feathered rectangle profile p over [a, b]. p is the indicator of [x0, x0 + w]
 * box-blurred with width f (a linear ramp of width f centred on each edge); f = 0 is the indicator.
 */
function profileIntegral(x0: number, w: number, f: number, a: number, b: number): number {
  // G(s) = |[x0, x0 + w] ∩ (-inf, s]|, H(s) = ∫ G.
  const G = (s: number) => Math.min(Math.max(s - x0, 0), w);
  const H = (s: number) => (s <= x0 ? 0 : s <= x0 + w ? (s - x0) ** 2 / 2 : w * w / 2 + w * (s - x0 - w));
  if (f <= 0) return G(b) - G(a);
  const h = f / 2;
  return (H(b + h) - H(a + h) - H(b - h) + H(a - h)) / f;
}

/** Area-averaged 1-D profile over `n` equal cells of [0, 1]. */
function cells1d(x0: number, w: number, f: number, n: number): Float64Array {
  const out = new Float64Array(n);
  const SNAP = 1e-9; // rounding residue of the integrals: fully outside is 0, fully inside 1
  for (let i = 0; i < n; i++) {
    const v = profileIntegral(x0, w, f, i / n, (i + 1) / n) * n;
    out[i] = v < SNAP ? 0 : v > 1 - SNAP ? 1 : v;
  }
  return out;
}

/**
 * Box (area-average) weights from `src` samples to `dst` cells over the same extent: w[d][s] is the
 * fraction of cell d covered by sample s; every row sums to 1.
 */
function areaWeights(src: number, dst: number): { start: number; weights: number[] }[] {
  const rows: { start: number; weights: number[] }[] = [];
  for (let d = 0; d < dst; d++) {
    const a = (d * src) / dst;
    const b = ((d + 1) * src) / dst;
    const start = Math.floor(a);
    const weights: number[] = [];
    for (let s = start; s < Math.min(src, Math.ceil(b)); s++) weights.push((Math.min(b, s + 1) - Math.max(a, s)) / (b - a));
    rows.push({ start, weights });
  }
  return rows;
}

/** The region's mask over a rows x cols grid, values in [0, 1], row-major [rows * cols]. */
export function rasteriseRegion(region: CharacterRegion, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  if (region.kind === 'rect') {
    // Separable: the cell average of px(u) py(v) is the product of the 1-D averages. An edge on the
    // picture's border is no edge inside it: the rectangle goes on past it, unfeathered there.
    const span = (a: number, len: number): [number, number] => {
      const lo = a <= 0 ? -1 : a;
      return [lo, (a + len >= 1 ? 2 : a + len) - lo];
    };
    const px = cells1d(...span(region.x, region.w), region.feather, cols);
    const py = cells1d(...span(region.y, region.h), region.feather, rows);
    for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[i * cols + j] = py[i]! * px[j]!;
    return out;
  }
  const wx = areaWeights(region.width, cols);
  const wy = areaWeights(region.height, rows);
  // Rows first: tmp [rows, width], then columns.
  const tmp = new Float64Array(rows * region.width);
  for (let i = 0; i < rows; i++) {
    const { start, weights } = wy[i]!;
    for (let k = 0; k < weights.length; k++) {
      const src = (start + k) * region.width;
      for (let x = 0; x < region.width; x++) tmp[i * region.width + x]! += weights[k]! * region.data[src + x]!;
    }
  }
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      const { start, weights } = wx[j]!;
      let v = 0;
      for (let k = 0; k < weights.length; k++) v += weights[k]! * tmp[i * region.width + start + k]!;
      out[i * cols + j] = Math.min(1, Math.max(0, v));
    }
  }
  return out;
}

/** Relative bounding box {x, y, w, h} of the region: the rectangle itself, or the mask's non-zero pixels. */
export function regionBox(region: CharacterRegion): { x: number; y: number; w: number; h: number } {
  if (region.kind === 'rect') return { x: region.x, y: region.y, w: region.w, h: region.h };
  let x0 = region.width, y0 = region.height, x1 = -1, y1 = -1;
  for (let y = 0; y < region.height; y++) {
    for (let x = 0; x < region.width; x++) {
      if (region.data[y * region.width + x]! > 0) {
        x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
      }
    }
  }
  if (x1 < 0) return { x: 0, y: 0, w: 0, h: 0 };
  return { x: x0 / region.width, y: y0 / region.height, w: (x1 + 1 - x0) / region.width, h: (y1 + 1 - y0) / region.height };
}
