// Small node types for engine tests: arithmetic, delays, failures, an output node, a file reader
// with cacheKey. They record what ran in TestServices so tests can assert order and concurrency.
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { NodeInputError, type NodeContext, type NodeDef, type NodeOutputs } from '../../engine/node.ts';
import type { InputValue, Link, Workflow } from '../../engine/workflow/types.ts';

export interface TestServices {
  /** How many times each node id ran. */
  calls: Record<string, number>;
  /** "start:<id>" / "end:<id>" in the order they happened. */
  log: string[];
  running: number;
  maxRunning: number;
  /** Values Collect received, in order. */
  collected: { nodeId: string; value: unknown }[];
}

export function createTestServices(): TestServices {
  return { calls: {}, log: [], running: 0, maxRunning: 0, collected: [] };
}

type TestDef = NodeDef<TestServices>;

/** Wraps a node body with bookkeeping: call counts, start/end log, simultaneous-run count. */
async function tracked(ctx: NodeContext<TestServices>, body: () => Promise<NodeOutputs> | NodeOutputs): Promise<NodeOutputs> {
  const s = ctx.services;
  s.calls[ctx.nodeId] = (s.calls[ctx.nodeId] ?? 0) + 1;
  s.log.push(`start:${ctx.nodeId}`);
  s.running++;
  s.maxRunning = Math.max(s.maxRunning, s.running);
  try {
    // Yield once so that nodes started together really overlap.
    await new Promise<void>((r) => setImmediate(r));
    return await body();
  } finally {
    s.running--;
    s.log.push(`end:${ctx.nodeId}`);
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason as Error);
    const t = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(t);
      reject(signal.reason as Error);
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

export const Const: TestDef = {
  type: 'Const',
  version: 1,
  category: 'test',
  description: 'A number.',
  inputs: {},
  params: { value: { type: 'number', default: 0 } },
  outputs: { value: { type: 'FLOAT' } },
  run: (ctx, inputs) => tracked(ctx, () => ({ value: inputs.value })),
};

export const Add: TestDef = {
  type: 'Add',
  version: 1,
  category: 'test',
  description: 'a + b.',
  inputs: {},
  params: { a: { type: 'number', default: 0 }, b: { type: 'number', default: 0 } },
  outputs: { sum: { type: 'FLOAT' } },
  run: (ctx, inputs) => tracked(ctx, () => ({ sum: (inputs.a as number) + (inputs.b as number) })),
};

/** Passes a value on after `steps` waits of ms/steps each, reporting progress; honours ctx.signal. */
export const Delay: TestDef = {
  type: 'Delay',
  version: 1,
  category: 'test',
  description: 'Waits, then passes its value on.',
  inputs: {},
  params: {
    value: { type: 'number', default: 0 },
    ms: { type: 'integer', minimum: 0, maximum: 600_000, default: 1 },
    steps: { type: 'integer', minimum: 1, maximum: 100_000, default: 1 },
  },
  outputs: { value: { type: 'FLOAT' } },
  run: (ctx, inputs) =>
    tracked(ctx, async () => {
      const steps = inputs.steps as number;
      for (let s = 1; s <= steps; s++) {
        await sleep((inputs.ms as number) / steps, ctx.signal);
        ctx.progress(s, steps);
      }
      return { value: inputs.value };
    }),
};

export const Fail: TestDef = {
  type: 'Fail',
  version: 1,
  category: 'test',
  description: 'Always fails; with `field` set it raises a NodeInputError for that field.',
  inputs: {},
  params: {
    value: { type: 'number', default: 0 },
    message: { type: 'string', default: 'boom' },
    field: { type: 'string', optional: true },
  },
  outputs: { value: { type: 'FLOAT' } },
  run: (ctx, inputs) =>
    tracked(ctx, () => {
      if (typeof inputs.field === 'string') throw new NodeInputError(inputs.field, inputs.message as string);
      throw new Error(inputs.message as string);
    }),
};

/** The output node: records what it receives. */
export const Collect: TestDef = {
  type: 'Collect',
  version: 1,
  category: 'test',
  description: 'Collects a value.',
  output: true,
  inputs: { value: { type: '*' } },
  params: { label: { type: 'string', optional: true, maxLength: 8 } },
  outputs: { value: { type: '*' } },
  run: (ctx, inputs) =>
    tracked(ctx, () => {
      ctx.services.collected.push({ nodeId: ctx.nodeId, value: inputs.value });
      return { value: inputs.value };
    }),
};

/** Reads a text file; its cache key is the file's content hash, so edits are noticed. */
export const ReadText: TestDef = {
  type: 'ReadText',
  version: 1,
  category: 'test',
  description: 'Reads a UTF-8 file.',
  inputs: {},
  params: { path: { type: 'string' } },
  outputs: { text: { type: 'STRING' } },
  async cacheKey(inputs) {
    try {
      return createHash('sha256')
        .update(await readFile(inputs.path as string))
        .digest('hex');
    } catch {
      throw new NodeInputError('path', `cannot read ${String(inputs.path)}`);
    }
  },
  run: (ctx, inputs) => tracked(ctx, async () => ({ text: await readFile(inputs.path as string, 'utf8') })),
};

export const Random: TestDef = {
  type: 'Random',
  version: 1,
  category: 'test',
  description: 'A random number each run.',
  cacheable: false,
  inputs: {},
  params: {},
  outputs: { value: { type: 'FLOAT' } },
  run: (ctx) => tracked(ctx, () => ({ value: Math.random() })),
};

/** A Float32Array of n elements (n*4 bytes), for cache-budget tests; sizeOf counts exactly. */
export const Blob: TestDef = {
  type: 'Blob',
  version: 1,
  category: 'test',
  description: 'n floats.',
  inputs: {},
  params: { n: { type: 'integer', minimum: 0, maximum: 10_000_000, default: 256 }, fill: { type: 'number', default: 0 } },
  outputs: { data: { type: 'BLOB' } },
  sizeOf: (v) => (v as Float32Array).byteLength,
  run: (ctx, inputs) => tracked(ctx, () => ({ data: new Float32Array(inputs.n as number).fill(inputs.fill as number) })),
};

/** Parameters of every kind, for validation tests. */
export const MakeImage: TestDef = {
  type: 'MakeImage',
  version: 1,
  category: 'test',
  description: 'A fake image.',
  inputs: {},
  params: {
    width: { type: 'integer', minimum: 1, maximum: 4096, default: 64 },
    scale: { type: 'number', minimum: 0, maximum: 4, multipleOf: 0.25, default: 1 },
    mode: { type: 'string', enum: ['rgb', 'gray'], default: 'rgb' },
    color: { type: 'string', pattern: '^#[0-9a-f]{6}$', default: '#000000', format: 'color' },
    title: { type: 'string', maxLength: 8, optional: true },
    flip: { type: 'boolean', default: false },
    prompt: { type: 'string', format: 'prompt' }, // required: no default
  },
  outputs: { image: { type: 'IMAGE' } },
  run: (ctx, inputs) => tracked(ctx, () => ({ image: { width: inputs.width, mode: inputs.mode } })),
};

/** An output node with a link-only input. */
export const ShowImage: TestDef = {
  type: 'ShowImage',
  version: 1,
  category: 'test',
  description: 'Shows an image.',
  output: true,
  inputs: { image: { type: 'IMAGE' }, mask: { type: 'MASK', optional: true } },
  params: {},
  outputs: {},
  run: (ctx, inputs) => tracked(ctx, () => ({ shown: inputs.image })),
};

export const TEST_NODES: readonly TestDef[] = [Const, Add, Delay, Fail, Collect, ReadText, Random, Blob, MakeImage, ShowImage];

export function testRegistry(): Map<string, TestDef> {
  return new Map(TEST_NODES.map((d) => [d.type, d]));
}

// ---- building workflows in tests -----------------------------------------------------------

export function link(node: string, output: string): Link {
  return { node, output };
}

/** A workflow from `{ id: [type, inputs] }`. */
export function wf(nodes: Record<string, [string, Record<string, InputValue>?]>): Workflow {
  const out: Workflow = { format: 'charflow.workflow', version: 1, nodes: {} };
  for (const [id, [type, inputs]] of Object.entries(nodes)) out.nodes[id] = { type, inputs: inputs ?? {} };
  return out;
}
