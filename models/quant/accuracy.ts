// MatMulNBits' accuracy_level for this machine. Level 4 quantizes the activations to int8 and multiplies in
// int8: fast where the CPU has int8 dot-product instructions (x86 AVX512-VNNI / AVX-VNNI, Arm dot product),
// but on an AVX2-only CPU (an AMD EPYC without VNNI) the bench's mid-size DiT step measured slower with int8
// weights at level 4 than with float32 weights (564 vs 393 ms), while a VNNI machine measured it faster.
// Level 0 dequantizes blocks and multiplies in float32, so the weights stay small either way.
// CHARFLOW_NBITS_ACCURACY=0|4 overrides the choice.
import { readFileSync } from 'node:fs';

export interface AccuracyChoice {
  level: 0 | 4;
  /** Why, for the log. */
  why: string;
}

/** The CPU feature flags (/proc/cpuinfo's first `flags` or `Features` line); undefined where unreadable. */
export function cpuFlags(cpuinfo?: string): Set<string> | undefined {
  let text = cpuinfo;
  if (text === undefined) {
    try {
      text = readFileSync('/proc/cpuinfo', 'utf8');
    } catch {
      return undefined;
    }
  }
  const line = text.split('\n').find((l) => /^(flags|Features)\s*:/.test(l));
  return line ? new Set(line.slice(line.indexOf(':') + 1).trim().split(/\s+/)) : undefined;
}

/** The level for a CPU with these flags (undefined: unknown CPU) and an optional override. */
export function chooseAccuracyLevel(flags: Set<string> | undefined = cpuFlags(), override = process.env.CHARFLOW_NBITS_ACCURACY): AccuracyChoice {
  if (override !== undefined && override !== '') {
    if (override !== '0' && override !== '4') throw new Error(`CHARFLOW_NBITS_ACCURACY must be 0 or 4, got "${override}"`);
    return { level: Number(override) as 0 | 4, why: 'set by CHARFLOW_NBITS_ACCURACY' };
  }
  if (!flags) return { level: 4, why: 'CPU features unknown (no /proc/cpuinfo): onnxruntime\'s int8-compute default' };
  const dot = ['avx512_vnni', 'avx_vnni', 'amx_int8', 'asimddp', 'i8mm'].filter((f) => flags.has(f));
  if (dot.length) return { level: 4, why: `the CPU has int8 dot-product instructions (${dot.join(', ')}): int8 compute is faster` };
  if (flags.has('avx2')) return { level: 0, why: 'the CPU has AVX2 but no VNNI: int8 compute is slower than float32 here, so blocks are dequantized and multiplied in float32' };
  return { level: 0, why: 'the CPU has no int8 dot-product instructions: float32 compute on dequantized blocks' };
}
