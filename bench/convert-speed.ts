// Checkpoint conversion kernels on a FLUX-sized Linear weight ([3072, 12288]): the per-element code
// that dominates `charflow models convert`. Each row times the naive reference kept here (the code
// before the fast paths) against models/tensor.ts / models/layers.ts, checks the outputs are
// bit-identical, and prints MB/s of SOURCE bytes (median of a few runs). Run: npx tsx bench/convert-speed.ts
import { performance } from 'node:perf_hooks';
import { bf16ToFloat16, bf16ToFloat32, castFloatTensor, float32ToFloat16 } from '../models/tensor.ts';
import { transposeMatrix } from '../models/layers.ts';
import { median } from './lib/stats.ts';
import { refBf16ToFloat32, refFloat32ToFloat16, refTranspose } from '../test/helpers/reference-kernels.ts';

const ROWS = 3072;
const COLS = 12288;
const N = ROWS * COLS;
const REPS = Number(process.env.REPS ?? 3);

// ---------------------------------------------------------------------------------------------
// Naive references (the code as it was: one float load and scratch round trip per element)

// Element-by-element transposes into fresh arrays, as before.
const refTransposeF32 = (src: Float32Array, rows: number, cols: number) => refTranspose(src, new Float32Array(rows * cols), rows, cols);
const refTransposeU16 = (src: Uint16Array, rows: number, cols: number) => refTranspose(src, new Uint16Array(rows * cols), rows, cols);

// ---------------------------------------------------------------------------------------------

/** Weight-like values (~N(0, 0.02)) with a sprinkle of tiny, huge and special ones. */
function sampleWeights(): { f32: Float32Array; bf16: Uint16Array } {
  const f32 = new Float32Array(N);
  let seed = 12345;
  const rand = () => ((seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  for (let i = 0; i < N; i++) f32[i] = (rand() + rand() + rand() - 1.5) * 0.035;
  for (let i = 0; i < N; i += 9973) f32[i] = [1e-7, -3e-6, 7e4, -1e9, 0, -0, Infinity, NaN][i % 8]!;
  const bits = new Uint32Array(f32.buffer);
  const bf16 = new Uint16Array(N);
  for (let i = 0; i < N; i++) bf16[i] = bits[i]! >>> 16;
  return { f32, bf16 };
}

function sameBits(a: ArrayBufferView, b: ArrayBufferView): boolean {
  if (a.byteLength !== b.byteLength) return false;
  const x = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const y = new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
  return Buffer.compare(x, y) === 0;
}

function time(fn: () => ArrayBufferView): { ms: number; out: ArrayBufferView } {
  const ms: number[] = [];
  let out: ArrayBufferView = new Uint8Array(0);
  for (let i = 0; i < REPS; i++) {
    const t0 = performance.now();
    out = fn();
    ms.push(performance.now() - t0);
  }
  return { ms: median(ms), out };
}

const mbps = (bytes: number, ms: number) => `${(bytes / 1e6 / (ms / 1e3)).toFixed(0)} MB/s`;
const { f32, bf16 } = sampleWeights();
// Outputs written into these (already touched) buffers show the kernels' own speed, without the
// page faults of a fresh allocation, which in a VM can cost as much as the conversion itself.
const out16 = new Uint16Array(N).fill(1);
const out32 = new Float32Array(N).fill(1);
interface Row { name: string; bytes: number; before: () => ArrayBufferView; after: () => ArrayBufferView; reused?: () => ArrayBufferView }
const rows: Row[] = [
  { name: 'f32 -> f16', bytes: N * 4, before: () => refFloat32ToFloat16(f32), after: () => float32ToFloat16(f32), reused: () => float32ToFloat16(f32, out16) },
  {
    name: 'bf16 -> f16', bytes: N * 2, before: () => refFloat32ToFloat16(refBf16ToFloat32(bf16)), after: () => bf16ToFloat16(bf16),
    reused: () => bf16ToFloat16(bf16, out16),
  },
  { name: 'bf16 -> f32', bytes: N * 2, before: () => refBf16ToFloat32(bf16), after: () => bf16ToFloat32(bf16), reused: () => bf16ToFloat32(bf16, out32) },
  { name: 'transpose f32', bytes: N * 4, before: () => refTransposeF32(f32, ROWS, COLS), after: () => transposeMatrix({ dtype: 'float32', dims: [ROWS, COLS], data: f32 }).data,
    reused: () => transposeMatrix({ dtype: 'float32', dims: [ROWS, COLS], data: f32 }, out32).data },
  { name: 'transpose u16', bytes: N * 2, before: () => refTransposeU16(bf16, ROWS, COLS), after: () => transposeMatrix({ dtype: 'bfloat16', dims: [ROWS, COLS], data: bf16 }).data,
    reused: () => transposeMatrix({ dtype: 'bfloat16', dims: [ROWS, COLS], data: bf16 }, out16).data },
  // A whole bf16 Linear weight into an fp16 graph: before = transposeMatrix (bf16 -> f32, transpose) then
  // Graph.weight's float32ToFloat16; after = transpose the 16-bit patterns, then convert them in place
  // (one fresh array instead of three).
  {
    name: 'linear bf16 -> f16^T',
    bytes: N * 2,
    before: () => refFloat32ToFloat16(refTransposeF32(refBf16ToFloat32(bf16), ROWS, COLS)),
    after: () => castFloatTensor(transposeMatrix({ dtype: 'bfloat16', dims: [ROWS, COLS], data: bf16 }), 'float16', { inPlace: true }).data,
  },
  {
    // The same with a long-lived scratch for the transpose (g.weight copies or writes the bytes out at once).
    name: 'linear bf16, scratch',
    bytes: N * 2,
    before: () => refFloat32ToFloat16(refTransposeF32(refBf16ToFloat32(bf16), ROWS, COLS)),
    after: () => castFloatTensor(transposeMatrix({ dtype: 'bfloat16', dims: [ROWS, COLS], data: bf16 }, out16), 'float16', { inPlace: true }).data,
  },
  {
    name: 'linear f32 -> f16^T',
    bytes: N * 4,
    before: () => refFloat32ToFloat16(refTransposeF32(f32, ROWS, COLS)),
    after: () => castFloatTensor(transposeMatrix({ dtype: 'float32', dims: [ROWS, COLS], data: f32 }), 'float16', { inPlace: true }).data,
  },
];

console.log(`[${ROWS}, ${COLS}] (${(N / 1e6).toFixed(1)}M elements), median of ${REPS}, MB/s of source bytes`);
// What first writes to fresh memory cost here (page faults): a floor under every fresh-output kernel.
const fresh = time(() => new Uint16Array(N).fill(1));
console.log(`first touch of a fresh ${(N * 2 / 1e6).toFixed(0)} MB array: ${fresh.ms.toFixed(0)} ms (${mbps(N * 2, fresh.ms)})`);
console.log(`${'kernel'.padEnd(22)} ${'before'.padStart(11)} ${'after'.padStart(11)} ${'speedup'.padStart(8)} ${'after, reused out'.padStart(18)}  bit-exact`);
for (const row of rows) {
  const before = time(row.before);
  const after = time(row.after);
  const reused = row.reused ? time(row.reused) : undefined;
  const exact = sameBits(before.out, after.out) && (!reused || sameBits(before.out, reused.out));
  console.log(
    `${row.name.padEnd(22)} ${mbps(row.bytes, before.ms).padStart(11)} ${mbps(row.bytes, after.ms).padStart(11)} ` +
    `${(before.ms / after.ms).toFixed(1).padStart(7)}x ${(reused ? mbps(row.bytes, reused.ms) : '-').padStart(18)}  ${exact ? 'yes' : 'NO'}`,
  );
  if (!exact) process.exitCode = 1;
}
