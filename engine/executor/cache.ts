// Node outputs kept between runs of one process, bounded by a byte budget with least-recently-used
// eviction. Keys come from the executor (a hash of what determines a node's result).
import type { NodeOutputs } from '../node.ts';

/** Default budget: enough for many images and embeddings, far below model weights. */
export const DEFAULT_CACHE_BUDGET = 1024 * 1024 * 1024;

export interface CacheStats {
  entries: number;
  bytes: number;
  budget: number;
  hits: number;
  misses: number;
  evictions: number;
}

interface Entry {
  outputs: NodeOutputs;
  size: number;
}

export class OutputCache {
  private readonly map = new Map<string, Entry>(); // insertion order = recency order
  private used = 0;
  private hits = 0;
  private misses = 0;
  private evictions = 0;

  constructor(readonly budget: number = DEFAULT_CACHE_BUDGET) {
    if (!(budget >= 0)) throw new RangeError(`cache budget must be >= 0, got ${budget}`);
  }

  /** The outputs stored under `key`, marking them as recently used. */
  get(key: string): NodeOutputs | undefined {
    const e = this.map.get(key);
    if (!e) {
      this.misses++;
      return undefined;
    }
    this.hits++;
    this.map.delete(key);
    this.map.set(key, e);
    return e.outputs;
  }

  has(key: string): boolean {
    return this.map.has(key);
  }

  /**
   * Stores outputs of `size` bytes, evicting the least recently used entries to stay within the
   * budget. Returns false (and stores nothing) when the entry alone exceeds the budget.
   */
  set(key: string, outputs: NodeOutputs, size: number): boolean {
    this.delete(key);
    if (size > this.budget) return false;
    while (this.used + size > this.budget) {
      const oldest = this.map.keys().next().value as string;
      this.delete(oldest);
      this.evictions++;
    }
    this.map.set(key, { outputs, size });
    this.used += size;
    return true;
  }

  delete(key: string): boolean {
    const e = this.map.get(key);
    if (!e) return false;
    this.map.delete(key);
    this.used -= e.size;
    return true;
  }

  clear(): void {
    this.map.clear();
    this.used = 0;
  }

  /** Keys from least to most recently used. */
  keys(): string[] {
    return [...this.map.keys()];
  }

  get stats(): CacheStats {
    return {
      entries: this.map.size,
      bytes: this.used,
      budget: this.budget,
      hits: this.hits,
      misses: this.misses,
      evictions: this.evictions,
    };
  }
}

const MAX_VISITS = 100_000;

/**
 * A rough byte size of any value: typed arrays, buffers and strings dominate; objects and arrays
 * are walked (shared objects counted once, at most MAX_VISITS objects, then a flat guess).
 */
export function estimateSize(value: unknown): number {
  const seen = new Set<object>();
  let visits = 0;
  const walk = (v: unknown): number => {
    switch (typeof v) {
      case 'string':
        return 16 + 2 * v.length;
      case 'number':
      case 'boolean':
      case 'undefined':
        return 8;
      case 'bigint':
        return 16;
      case 'object':
        break;
      default:
        return 8; // functions, symbols: references only
    }
    if (v === null) return 8;
    if (seen.has(v)) return 8;
    seen.add(v);
    if (ArrayBuffer.isView(v)) return 64 + v.byteLength;
    if (v instanceof ArrayBuffer || (typeof SharedArrayBuffer !== 'undefined' && v instanceof SharedArrayBuffer)) {
      return 64 + v.byteLength;
    }
    if (++visits > MAX_VISITS) return 64;
    let size = 32;
    if (Array.isArray(v)) {
      for (const x of v) size += walk(x);
    } else if (v instanceof Map) {
      for (const [k, x] of v) size += walk(k) + walk(x);
    } else if (v instanceof Set) {
      for (const x of v) size += walk(x);
    } else {
      for (const k of Object.keys(v)) size += 16 + 2 * k.length + walk((v as Record<string, unknown>)[k]);
    }
    return size;
  };
  return walk(value);
}
