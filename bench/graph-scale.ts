// Engine overhead on a large synthetic graph: validation, scheduling (planning) and executor
// overhead per node, with trivial nodes so that only the engine is measured.
// Targets: 10,000 nodes validate + schedule in <= 200 ms; executor overhead <= 50 us per node.
// Run alone: `npx tsx bench/graph-scale.ts`; `npm run bench` calls benchGraphScale().
import { pathToFileURL } from 'node:url';
import { performance } from 'node:perf_hooks';
import { Executor } from '../engine/executor/executor.ts';
import { planRun } from '../engine/executor/scheduler.ts';
import type { NodeDef } from '../engine/node.ts';
import { validateWorkflow } from '../engine/workflow/validate.ts';
import type { InputValue, Workflow } from '../engine/workflow/types.ts';

const SOURCE: NodeDef = {
  type: 'BenchSource',
  version: 1,
  category: 'bench',
  description: 'A number.',
  inputs: {},
  params: { value: { type: 'number', default: 0 } },
  outputs: { value: { type: 'FLOAT' } },
  run: async (_ctx, i) => ({ value: i.value }),
};

const MIX: NodeDef = {
  type: 'BenchMix',
  version: 1,
  category: 'bench',
  description: 'a * k + b.',
  inputs: {},
  params: {
    a: { type: 'number', default: 0 },
    b: { type: 'number', default: 0 },
    k: { type: 'number', minimum: -10, maximum: 10, default: 1 },
    mode: { type: 'string', enum: ['add', 'mul'], default: 'add' },
  },
  outputs: { value: { type: 'FLOAT' } },
  run: async (_ctx, i) => ({ value: (i.a as number) * (i.k as number) + (i.b as number) }),
};

const SINK: NodeDef = {
  type: 'BenchSink',
  version: 1,
  category: 'bench',
  description: 'An output.',
  output: true,
  inputs: { value: { type: 'FLOAT' } },
  params: {},
  outputs: { value: { type: 'FLOAT' } },
  run: async (_ctx, i) => ({ value: i.value }),
};

const REGISTRY = new Map<string, NodeDef>([SOURCE, MIX, SINK].map((d) => [d.type, d]));

/**
 * `width` parallel lanes of `n` nodes in all: sources first, then mixers that each take the node
 * `width` places back (so every node feeds an output) plus a pseudo-random earlier node, then one
 * output per lane.
 */
export function syntheticWorkflow(n: number, width = 50): Workflow {
  const nodes: Workflow['nodes'] = {};
  let seed = 12345;
  const rand = (k: number): number => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return seed % k;
  };
  const link = (i: number): InputValue => ({ node: String(i), output: 'value' });
  for (let i = 0; i < n; i++) {
    const id = String(i);
    if (i < width) nodes[id] = { type: 'BenchSource', inputs: { value: i } };
    else if (i >= n - width) nodes[id] = { type: 'BenchSink', inputs: { value: link(i - width) } };
    else nodes[id] = { type: 'BenchMix', inputs: { a: link(i - width), b: link(rand(i)), k: 0.5 }, ui: { pos: [i % 100, i / 100] } };
  }
  return { format: 'charflow.workflow', version: 1, nodes };
}

function best(times: number[]): number {
  return Math.min(...times);
}

export async function benchGraphScale(
  nodes = 10_000,
  repeats = 3,
): Promise<{ validateMs: number; scheduleMs: number; perNodeUs: number }> {
  // Warm the JIT on a smaller graph, as a long-running server would be.
  const warm = validateWorkflow(syntheticWorkflow(1000), REGISTRY).workflow!;
  await new Executor({ registry: REGISTRY, services: undefined }).run(warm);

  const wf = syntheticWorkflow(nodes);
  const validateTimes: number[] = [];
  const scheduleTimes: number[] = [];
  const runTimes: number[] = [];
  for (let r = 0; r < repeats; r++) {
    let t = performance.now();
    const result = validateWorkflow(wf, REGISTRY);
    validateTimes.push(performance.now() - t);
    if (!result.ok) throw new Error(`synthetic workflow invalid: ${result.errors[0]?.message}`);

    t = performance.now();
    const plan = planRun(result.workflow!, REGISTRY);
    scheduleTimes.push(performance.now() - t);
    if (plan.nodes.length !== nodes) throw new Error(`plan has ${plan.nodes.length} nodes, expected ${nodes}`);

    // A fresh executor each time: nothing cached, every node runs (hashing + cache insert included).
    const ex = new Executor({ registry: REGISTRY, services: undefined, concurrency: 2 });
    t = performance.now();
    const run = await ex.run(result.workflow!);
    runTimes.push(performance.now() - t);
    if (run.counts.done !== nodes) throw new Error(`ran ${run.counts.done} nodes, expected ${nodes}`);
  }
  const validateMs = best(validateTimes);
  const scheduleMs = best(scheduleTimes);
  // Executor overhead: a run minus its planning, per node (the nodes themselves do nothing).
  const perNodeUs = ((best(runTimes) - scheduleMs) * 1000) / nodes;
  return { validateMs, scheduleMs, perNodeUs };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const r = await benchGraphScale();
  const ok = (v: boolean): string => (v ? 'ok' : 'OVER TARGET');
  console.log(`graph-scale (10,000 nodes)`);
  console.log(`  validate:  ${r.validateMs.toFixed(1)} ms`);
  console.log(`  schedule:  ${r.scheduleMs.toFixed(1)} ms`);
  console.log(`  validate + schedule: ${(r.validateMs + r.scheduleMs).toFixed(1)} ms (target <= 200 ms: ${ok(r.validateMs + r.scheduleMs <= 200)})`);
  console.log(`  executor overhead: ${r.perNodeUs.toFixed(1)} us/node (target <= 50 us: ${ok(r.perNodeUs <= 50)})`);
}
