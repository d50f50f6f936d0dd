// How much of the CPU other processes took while a measurement ran: all cores' busy time (os.cpus)
// minus this process's own CPU time (all its threads, ORT's included). On a shared machine this
// tells a real slowdown from a neighbour's.
import { cpus } from 'node:os';
import { performance } from 'node:perf_hooks';

export interface CpuShare {
  wallMs: number;
  /** Average cores this process kept busy. */
  ownCores: number;
  /** Average cores busy with other processes. */
  otherCores: number;
  cores: number;
}

function busyMs(): number {
  let busy = 0;
  for (const c of cpus()) busy += c.times.user + c.times.nice + c.times.sys + c.times.irq;
  return busy;
}

/** Starts a meter; calling the returned function reads it. */
export function cpuMeter(): () => CpuShare {
  const t = performance.now();
  const b = busyMs();
  const own = process.cpuUsage();
  return () => {
    const wallMs = performance.now() - t;
    const d = process.cpuUsage(own);
    const ownMs = (d.user + d.system) / 1000;
    const allMs = busyMs() - b;
    return { wallMs, ownCores: ownMs / wallMs, otherCores: Math.max(0, allMs - ownMs) / wallMs, cores: cpus().length };
  };
}

export function describeShare(s: CpuShare): string {
  return `other processes kept ${s.otherCores.toFixed(2)} of ${s.cores} cores busy meanwhile (this one ${s.ownCores.toFixed(2)})`;
}
