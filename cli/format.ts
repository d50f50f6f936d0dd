// Turning engine values into text for the terminal and for JSON lines.

/** Milliseconds as "12 ms" / "3.4 s" / "2 min 5 s". */
export function formatMs(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)} min ${s % 60} s`;
}

function describeBinary(v: ArrayBufferView | ArrayBuffer): Record<string, unknown> {
  if (v instanceof ArrayBuffer) return { $type: 'ArrayBuffer', byteLength: v.byteLength };
  const name = Buffer.isBuffer(v) ? 'Buffer' : v.constructor.name;
  const length = 'length' in v ? (v as unknown as { length: number }).length : v.byteLength;
  return { $type: name, length };
}

/**
 * JSON with binary data summarised (typed arrays, buffers: type and length, not contents),
 * bigints as strings and cycles cut, so any node output can go into a JSON line.
 */
export function toJsonLine(value: unknown): string {
  const ancestors: object[] = [];
  return JSON.stringify(value, function (this: unknown, key: string, v: unknown) {
    // `this[key]` is the value before toJSON (Buffer.toJSON would expand every byte).
    const orig = key === '' ? v : (this as Record<string, unknown>)[key];
    if (typeof orig === 'bigint') return orig.toString();
    if (orig instanceof ArrayBuffer || ArrayBuffer.isView(orig)) return describeBinary(orig);
    if (orig instanceof Error) return { $type: 'Error', message: orig.message };
    if (typeof v === 'object' && v !== null) {
      // Keep only the chain of objects that contain this one; a repeat there is a cycle.
      while (ancestors.length > 0 && ancestors[ancestors.length - 1] !== this) ancestors.pop();
      if (ancestors.includes(v)) return '[circular]';
      ancestors.push(v);
    }
    return v;
  });
}
