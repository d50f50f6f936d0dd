// MatMulNBits accuracy_level from the CPU's features (models/quant/accuracy.ts): int8 compute (4) only where
// the CPU has int8 dot-product instructions, float compute (0) on AVX2-only CPUs; an override wins.
import { describe, expect, it } from 'vitest';
import { chooseAccuracyLevel, cpuFlags } from '../../models/quant/accuracy.ts';

const cpuinfo = (flags: string, key = 'flags') => `processor\t: 0\nmodel name\t: Some CPU\n${key}\t\t: ${flags}\n\nprocessor\t: 1\n`;

describe('MatMulNBits accuracy level per CPU', () => {
  it('reads the flags line of /proc/cpuinfo (x86 flags, Arm Features)', () => {
    expect(cpuFlags(cpuinfo('fpu sse2 avx2 fma'))).toEqual(new Set(['fpu', 'sse2', 'avx2', 'fma']));
    expect(cpuFlags(cpuinfo('fp asimd asimddp', 'Features'))).toEqual(new Set(['fp', 'asimd', 'asimddp']));
    expect(cpuFlags('processor : 0\n')).toBeUndefined();
  });

  it('takes int8 compute with VNNI or dot product, float compute on AVX2 alone', () => {
    const level = (flags: string, key?: string) => chooseAccuracyLevel(cpuFlags(cpuinfo(flags, key)), '');
    expect(level('sse2 avx2 fma')).toMatchObject({ level: 0, why: expect.stringMatching(/AVX2 but no VNNI/) });
    expect(level('sse2 avx2 avx512f avx512_vnni')).toMatchObject({ level: 4, why: expect.stringMatching(/avx512_vnni/) });
    expect(level('sse2 avx2 avx_vnni')).toMatchObject({ level: 4, why: expect.stringMatching(/avx_vnni/) });
    expect(level('fp asimd asimddp', 'Features')).toMatchObject({ level: 4, why: expect.stringMatching(/asimddp/) });
    expect(level('fp asimd', 'Features').level).toBe(0);
    expect(chooseAccuracyLevel(undefined, '').level).toBe(4);
  });

  it('follows CHARFLOW_NBITS_ACCURACY, and refuses other values', () => {
    const vnni = cpuFlags(cpuinfo('avx2 avx512_vnni'));
    expect(chooseAccuracyLevel(vnni, '0')).toEqual({ level: 0, why: 'set by CHARFLOW_NBITS_ACCURACY' });
    expect(chooseAccuracyLevel(cpuFlags(cpuinfo('avx2')), '4').level).toBe(4);
    expect(() => chooseAccuracyLevel(vnni, '2')).toThrow(/CHARFLOW_NBITS_ACCURACY must be 0 or 4/);
  });

  it('decides this machine from its own flags', () => {
    const flags = cpuFlags();
    const choice = chooseAccuracyLevel(flags, '');
    const dot = flags && ['avx512_vnni', 'avx_vnni', 'amx_int8', 'asimddp', 'i8mm'].some((f) => flags.has(f));
    expect(choice.level).toBe(!flags || dot ? 4 : 0);
    console.log(`this machine: accuracy_level ${choice.level} (${choice.why})`);
  });
});
