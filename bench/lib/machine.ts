// What the figures were measured on: CPU model, cores, memory, versions, and how busy it was.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism, loadavg, totalmem } from 'node:os';

export interface Machine {
  cpuModel: string;
  cores: number;
  /** Vector extensions that decide MatMul speed. */
  cpuFlags: string;
  ramBytes: number;
  node: string;
  onnxruntime: string;
  platform: string;
  loadStart: number[];
  loadEnd?: number[];
}

function cpuInfo(): { model: string; flags: string } {
  try {
    const text = readFileSync('/proc/cpuinfo', 'utf8');
    const field = (name: string) => new RegExp(`^${name}\\s*:\\s*(.+)$`, 'm').exec(text)?.[1]?.trim();
    const extra = [
      field('cpu family') && `family ${field('cpu family')}`,
      field('model') && `model ${field('model')}`,
      field('cpu MHz') && `${Number(field('cpu MHz')).toFixed(0)} MHz`,
      field('cache size') && `L2 ${field('cache size')}`,
    ].filter(Boolean);
    const model = `${field('model name') ?? 'unknown'}${extra.length ? ` (${extra.join(', ')})` : ''}`;
    const flags = /^flags\s*:\s*(.+)$/m.exec(text)?.[1]?.split(/\s+/) ?? [];
    const simd = ['avx512f', 'avx2', 'fma', 'avx512_bf16', 'avx512_vnni'].filter((f) => flags.includes(f));
    return { model, flags: simd.join(' ') || 'no AVX' };
  } catch {
    return { model: 'unknown (no /proc/cpuinfo)', flags: 'unknown' };
  }
}

export function describeMachine(): Machine {
  const { model, flags } = cpuInfo();
  const ort = (createRequire(import.meta.url)('onnxruntime-node/package.json') as { version: string }).version;
  return {
    cpuModel: model,
    cores: availableParallelism(),
    cpuFlags: flags,
    ramBytes: totalmem(),
    node: process.version,
    onnxruntime: ort,
    platform: `${process.platform}/${process.arch}`,
    loadStart: loadavg(),
  };
}
