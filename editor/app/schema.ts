// Reading a catalogue parameter (the JSON Schema subset of engine/node.ts ParamSchema) safely.
import type { CatalogNode } from '../protocol.ts';

export type Constant = string | number | boolean;

export interface ParamInfo {
  name: string;
  type: 'number' | 'integer' | 'string' | 'boolean';
  socket: string;
  description?: string;
  default?: Constant;
  minimum?: number;
  maximum?: number;
  multipleOf?: number;
  enum?: (string | number)[];
  maxLength?: number;
  pattern?: string;
  format?: string;
  optional: boolean;
}

const num = (v: unknown): number | undefined => (typeof v === 'number' && Number.isFinite(v) ? v : undefined);
const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);

export function paramInfo(name: string, raw: CatalogNode['params'][string]): ParamInfo {
  const def = raw.default;
  return {
    name,
    type: raw.type,
    socket: raw.socket,
    description: str(raw.description),
    default: typeof def === 'string' || typeof def === 'number' || typeof def === 'boolean' ? def : undefined,
    minimum: num(raw.minimum),
    maximum: num(raw.maximum),
    multipleOf: num(raw.multipleOf),
    enum: Array.isArray(raw.enum) ? raw.enum.filter((v): v is string | number => typeof v === 'string' || typeof v === 'number') : undefined,
    maxLength: num(raw.maxLength),
    pattern: str(raw.pattern),
    format: str(raw.format),
    optional: raw.optional === true,
  };
}

/** The value a fresh widget starts with. */
export function initialValue(p: ParamInfo): Constant {
  if (p.default !== undefined) return p.default;
  if (p.enum?.length) return p.enum[0]!;
  switch (p.type) {
    case 'boolean':
      return false;
    case 'string':
      return p.format === 'color' ? '#000000' : '';
    default:
      return snapNumber(p, p.minimum ?? 0);
  }
}

/** Clamps to [minimum, maximum] and rounds integers (and multipleOf) to a valid value. */
export function snapNumber(p: ParamInfo, value: number): number {
  if (!Number.isFinite(value)) value = typeof p.default === 'number' ? p.default : (p.minimum ?? 0);
  const step = p.multipleOf ?? (p.type === 'integer' ? 1 : 0);
  if (step > 0) {
    value = Math.round(value / step) * step;
    // Clamping can leave a non-multiple (min 0 < 64); move inwards to the next multiple.
    if (p.minimum !== undefined && value < p.minimum) value = Math.ceil(p.minimum / step) * step;
    if (p.maximum !== undefined && value > p.maximum) value = Math.floor(p.maximum / step) * step;
    // Float steps (0.1) leave binary noise; keep the decimals of the step.
    const decimals = (String(step).split('.')[1] ?? '').length;
    return decimals ? Number(value.toFixed(decimals)) : value;
  }
  if (p.minimum !== undefined && value < p.minimum) value = p.minimum;
  if (p.maximum !== undefined && value > p.maximum) value = p.maximum;
  return value;
}

/** Step the widget arrows take: multipleOf, 1 for integers, about 1/100 of the range for floats. */
export function numberStep(p: ParamInfo): number {
  if (p.multipleOf) return p.multipleOf;
  if (p.type === 'integer') return 1;
  if (p.minimum !== undefined && p.maximum !== undefined) {
    const range = p.maximum - p.minimum;
    return range <= 2 ? 0.01 : range <= 50 ? 0.1 : 1;
  }
  return 0.1;
}

export function numberPrecision(p: ParamInfo): number {
  if (p.type === 'integer') return 0;
  const s = String(numberStep(p));
  return Math.max(1, (s.split('.')[1] ?? '').length);
}

/** A random seed inside the parameter's range (up to 2^53 - 1; Math.random gives ~52 bits). */
export function randomSeed(p: ParamInfo): number {
  const min = p.minimum ?? 0;
  const max = Math.min(p.maximum ?? Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER);
  const hi = Math.floor(Math.random() * 2 ** 21);
  const lo = Math.floor(Math.random() * 2 ** 32);
  const r = hi * 2 ** 32 + lo;
  return min + (r % (max - min + 1));
}
