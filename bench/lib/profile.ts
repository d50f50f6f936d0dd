// Where the main thread spends its time: a sampling CPU profile (V8 inspector) of the main thread
// only, reduced to the functions with the most self time. Worker threads are not sampled, so ORT
// inference does not show; what shows is what can block the event loop.
import { Session } from 'node:inspector/promises';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
}

interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

export interface HotFunction {
  name: string;
  /** Self time, milliseconds. */
  ms: number;
}

const IDLE = new Set(['(idle)', '(program)', '(root)']);

/** Runs `fn` under the profiler; returns its result and the `top` functions by self time. */
export async function profileMainThread<T>(fn: () => Promise<T>, top = 8): Promise<{ result: T; hot: HotFunction[]; busyMs: number }> {
  const session = new Session();
  session.connect();
  try {
    await session.post('Profiler.enable');
    await session.post('Profiler.setSamplingInterval', { interval: 500 });
    await session.post('Profiler.start');
    const result = await fn();
    const { profile } = (await session.post('Profiler.stop')) as unknown as { profile: Profile };
    const byId = new Map(profile.nodes.map((n) => [n.id, n]));
    const self = new Map<string, number>();
    let busy = 0;
    profile.samples.forEach((id, i) => {
      const node = byId.get(id);
      if (!node) return;
      const f = node.callFrame;
      const ms = (profile.timeDeltas[i] ?? 0) / 1000;
      if (IDLE.has(f.functionName)) return;
      busy += ms;
      // Line numbers are those of tsx's transpiled code, so only the file is named.
      const where = f.url ? f.url.replace(/^file:\/\/.*?\/(engine|nodes|models|bench|editor|node_modules)\//, '$1/').replace(/\?.*$/, '') : 'native';
      const key = `${f.functionName || '(anonymous)'} ${where}`;
      self.set(key, (self.get(key) ?? 0) + ms);
    });
    const hot = [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, top).map(([name, ms]) => ({ name, ms }));
    return { result, hot, busyMs: busy };
  } finally {
    await session.post('Profiler.disable').catch(() => {});
    session.disconnect();
  }
}
