// The block quantizer against a plain scalar transcription of the rule (models/quant/quantize.ts header):
// codes, scales, zero points and the packed byte layout, for 4 and 8 bits, several block sizes, K that is
// not a multiple of the block, all-zero, constant and extreme blocks, asymmetric and symmetric.
import { describe, expect, it } from 'vitest';
import {
  type QuantBits, blockFor, checkBlock, codeAt, dequantize, quantizeRows, quantizedBytes, zeroPointAt,
} from '../../models/quant/quantize.ts';

const f = Math.fround;
/** C roundf, written independently of the quantizer's helper. */
function roundf(x: number): number {
  const a = Math.abs(x);
  const whole = Math.floor(a);
  return Math.sign(x) * (a - whole >= 0.5 ? whole + 1 : whole);
}

/** The rule for one block of float32 values, one value at a time. */
function referenceBlock(values: number[], bits: QuantBits, symmetric: boolean): { codes: number[]; scale: number; zp: number } {
  const qmax = 2 ** bits - 1;
  let scale: number;
  let zp: number;
  if (symmetric) {
    let m = 0;
    for (const v of values) if (Math.abs(v) > Math.abs(m)) m = v;
    scale = f(m / -(2 ** (bits - 1)));
    zp = 2 ** (bits - 1);
  } else {
    const lo = Math.min(0, ...values);
    const hi = Math.max(0, ...values);
    scale = f(f(hi - lo) / qmax);
    zp = scale === 0 ? 0 : Math.min(qmax, Math.max(0, roundf(f(-lo / scale))));
  }
  const codes = values.map((v) => (scale === 0 ? zp : Math.min(qmax, Math.max(0, roundf(f(f(v / scale) + zp))))));
  return { codes, scale, zp };
}

/** The whole matrix in MatMulNBits' layout, packed bit by bit. */
function reference(rows: Float32Array, N: number, K: number, bits: QuantBits, block: number, symmetric: boolean) {
  const kb = Math.ceil(K / block);
  const blob = (block * bits) / 8;
  const zpRow = Math.ceil((kb * bits) / 8);
  const packed = new Uint8Array(N * kb * blob);
  const scales: number[] = [];
  const zps = new Uint8Array(N * zpRow);
  for (let n = 0; n < N; n++) {
    for (let b = 0; b < kb; b++) {
      const vals: number[] = [];
      for (let i = 0; i < block; i++) vals.push(b * block + i < K ? rows[n * K + b * block + i]! : 0); // padding quantizes 0
      const r = referenceBlock(vals.slice(0, Math.min(block, K - b * block)), bits, symmetric);
      const padCode = r.scale === 0 ? r.zp : Math.min(2 ** bits - 1, Math.max(0, roundf(f(0 / r.scale + r.zp))));
      const codes = vals.map((_, i) => (i < r.codes.length ? r.codes[i]! : padCode));
      scales.push(r.scale);
      codes.forEach((c, i) => {
        const bit = i * bits;
        packed[(n * kb + b) * blob + (bit >> 3)]! |= c << (bit & 7);
      });
      const zbit = b * bits;
      zps[n * zpRow + (zbit >> 3)]! |= r.zp << (zbit & 7);
    }
    if (bits === 4 && kb % 2 === 1) zps[n * zpRow + zpRow - 1]! |= 8 << 4;
  }
  return { packed, scales: Float32Array.from(scales), zps };
}

function normals(n: number, seed: number): Float32Array {
  let s = seed;
  const u = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) + 0.5) / 2 ** 32;
  return Float32Array.from({ length: n }, () => Math.sqrt(-2 * Math.log(u())) * Math.cos(2 * Math.PI * u()));
}

/** N rows: random, all-zero, constant positive, constant negative, extremes, one value per block, ties. */
function testMatrix(K: number, block: number): { rows: Float32Array; N: number } {
  const N = 8;
  const rows = new Float32Array(N * K);
  rows.set(normals(K, 1), 0);
  // row 1: all zero
  rows.fill(3.25, 2 * K, 3 * K);
  rows.fill(-0.75, 3 * K, 4 * K);
  const ext = [3e38, -3e38, 1e-40, -1e-40, 65504, -1e30, 1e30, 0];
  for (let k = 0; k < K; k++) rows[4 * K + k] = ext[k % ext.length]! * (k % block === 0 ? 1 : 0.5);
  for (let k = 0; k < K; k++) rows[5 * K + k] = k % block === 0 ? -7 : 0; // one non-zero value per block
  for (let k = 0; k < K; k++) rows[6 * K + k] = (k % 16) - 7.5; // exact halves: rounding ties
  rows.set(normals(K, 7).map((v) => v * 1e-3 + 2), 7 * K); // a large offset: zero point clamps to 0
  return { rows, N };
}

describe('block quantizer = the scalar rule', () => {
  for (const bits of [4, 8] as const) {
    for (const block of [32, 64, 128]) {
      for (const K of [3 * block, 2 * block + 5, 7, block + 17]) {
        for (const symmetric of [false, true]) {
          it(`${bits} bits, block ${block}, K ${K}${symmetric ? ', symmetric' : ''}`, () => {
            const { rows, N } = testMatrix(K, block);
            const q = quantizeRows(rows, N, K, { bits, block, symmetric });
            const ref = reference(rows, N, K, bits, block, symmetric);
            const kb = Math.ceil(K / block);
            expect(q.packed.length).toBe(N * kb * (block * bits) / 8);
            expect(Array.from(q.scales)).toEqual(Array.from(ref.scales));
            expect(Array.from(q.packed)).toEqual(Array.from(ref.packed));
            if (symmetric) expect(q.zeroPoints).toBeUndefined();
            else expect(Array.from(q.zeroPoints!)).toEqual(Array.from(ref.zps));
            expect(q.packed.length + q.scales.length * 4 + (q.zeroPoints?.length ?? 0)).toBe(quantizedBytes(N, K, { bits, block, symmetric }));
            // The accessors agree with the layout (they are what dequantize uses).
            for (let n = 0; n < N; n++) {
              for (let k = 0; k < K; k++) {
                const byte = ref.packed[(n * kb + Math.floor(k / block)) * (block * bits) / 8 + Math.floor(((k % block) * bits) / 8)]!;
                expect(codeAt(q, n, k)).toBe(bits === 8 ? byte : (byte >> (((k % block) % 2) * 4)) & 15);
              }
            }
          });
        }
      }
    }
  }

  it('keeps the special blocks exact: zero rows, constants, a lone value', () => {
    const K = 64;
    const { rows, N } = testMatrix(K, 32);
    const q = quantizeRows(rows, N, K, { bits: 4, block: 32 });
    const deq = dequantize(q);
    // all-zero: scale 0, zero point 0, every code 0, dequantized exactly 0
    expect([q.scales[2], q.scales[3], zeroPointAt(q, 1, 0)]).toEqual([0, 0, 0]);
    expect(Array.from(deq.subarray(K, 2 * K)).every((v) => v === 0)).toBe(true);
    // a positive constant c: min' = 0, max' = c, so c maps to code 15 and comes back as 15 * (c/15)
    expect(zeroPointAt(q, 2, 0)).toBe(0);
    expect(codeAt(q, 2, 0)).toBe(15);
    expect(deq[2 * K]).toBeCloseTo(3.25, 6);
    // a negative constant: zero point 15, code 0
    expect([zeroPointAt(q, 3, 0), codeAt(q, 3, 0)]).toEqual([15, 0]);
    expect(deq[3 * K]).toBeCloseTo(-0.75, 6);
    // a lone -7 with zeros: exactly representable at both ends
    expect(deq[5 * K]).toBe(-7);
    expect(deq[5 * K + 1]).toBe(0);
  });

  it('bounds the error by half a step wherever the block range is finite', () => {
    for (const bits of [4, 8] as const) {
      const K = 200;
      const rows = normals(3 * K, 3);
      const q = quantizeRows(rows, 3, K, { bits, block: 32 });
      const deq = dequantize(q);
      const kb = Math.ceil(K / 32);
      for (let n = 0; n < 3; n++) {
        for (let k = 0; k < K; k++) {
          const s = q.scales[n * kb + Math.floor(k / 32)]!;
          expect(Math.abs(deq[n * K + k]! - rows[n * K + k]!)).toBeLessThanOrEqual(s * 0.5 * (1 + 1e-5));
        }
      }
    }
  });

  it('shrinks the block to a row shorter than it (a power of two, at least 16), never otherwise', () => {
    expect([blockFor(128, 16), blockFor(128, 40), blockFor(128, 100), blockFor(128, 3072), blockFor(32, 3072), blockFor(64, 33), blockFor(32, 7)])
      .toEqual([16, 64, 128, 128, 32, 64, 16]);
  });

  it('refuses block sizes MatMulNBits cannot take', () => {
    for (const bad of [0, 8, 48, 100, 512, 1.5]) expect(() => checkBlock(bad)).toThrow(/power of two/);
    expect(() => quantizeRows(new Float32Array(64), 1, 64, { bits: 4, block: 24 })).toThrow(/block size 24/);
    for (const ok of [16, 32, 64, 128, 256]) expect(() => checkBlock(ok)).not.toThrow();
  });
});
