// A process's own memory figures. The peak comes from /proc/self/status' VmHWM where there is one, not from
// getrusage's maxrss: Linux carries maxrss over a fork and exec, so a child of a bench process that holds
// GBs reported at least its parent's size (every child of `npm run bench` read 3.8 GiB).
import { readFileSync } from 'node:fs';

/** A `kB` field of /proc/self/status (Linux), or undefined elsewhere. */
export function statusKiB(field: 'VmHWM' | 'VmRSS'): number | undefined {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync('/proc/self/status', 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** This process's peak resident set since it started, KiB. */
export function peakRssKiB(): number {
  return statusKiB('VmHWM') ?? process.resourceUsage().maxRSS;
}
