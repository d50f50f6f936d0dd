// Planning a run: which nodes feed the requested outputs, and in what order to prefer them. The
// order is a depth-first post-order from the targets, so one branch tends to finish (and free its
// intermediate values) before the next starts, and runs are deterministic.
import type { NodeDef } from '../node.ts';
import { isLink, nodeLabel, WorkflowError, type ValidWorkflow } from '../workflow/types.ts';

export interface PlanLink {
  /** Input name on this node. */
  input: string;
  /** Plan index of the upstream node. */
  from: number;
  /** Output name on the upstream node. */
  output: string;
}

export interface PlanNode<S> {
  id: string;
  type: string;
  def: NodeDef<S>;
  /** Constant inputs (defaults filled by validation). */
  consts: Record<string, unknown>;
  /** Link inputs, sorted by input name (so cache keys do not depend on key order in the file). */
  links: PlanLink[];
  /** Distinct upstream plan indices. */
  upstream: number[];
  /** Distinct downstream plan indices. */
  dependants: number[];
  /** Requested by the run (its outputs are reported). */
  target: boolean;
}

export interface RunPlan<S> {
  /** Nodes that feed the targets, in topological (dependency-first) priority order. */
  nodes: PlanNode<S>[];
  /** Node id -> plan index. */
  index: Map<string, number>;
  targets: string[];
}

/** The run's targets: the ones given, else every output node of the workflow. */
export function defaultTargets<S>(workflow: ValidWorkflow, registry: ReadonlyMap<string, NodeDef<S>>): string[] {
  const out: string[] = [];
  for (const id in workflow.nodes) if (registry.get(workflow.nodes[id]!.type)?.output) out.push(id);
  return out;
}

/**
 * Builds the plan for running `targets` (default: all output nodes). Throws WorkflowError for an
 * unknown target, unknown node type, dangling link or cycle (none survive validateWorkflow).
 */
export function planRun<S>(
  workflow: ValidWorkflow,
  registry: ReadonlyMap<string, NodeDef<S>>,
  targets?: readonly string[],
): RunPlan<S> {
  const wanted = targets ? [...new Set(targets)] : defaultTargets(workflow, registry);
  const nodes = workflow.nodes;
  for (const t of wanted) {
    if (!Object.prototype.hasOwnProperty.call(nodes, t)) {
      throw new WorkflowError([{ code: 'unknown_target', nodeId: t, message: `run target node ${t} does not exist` }]);
    }
  }

  const plan: PlanNode<S>[] = [];
  const index = new Map<string, number>();
  // Iterative DFS: 0 = unvisited, 1 = on the path (a repeat means a cycle), 2 = placed.
  const mark = new Map<string, 1 | 2>();
  const stack: { id: string; deps: string[]; next: number }[] = [];
  const depsOf = (id: string): string[] => {
    const node = nodes[id]!;
    const deps: string[] = [];
    for (const name in node.inputs) {
      const v = node.inputs[name];
      if (isLink(v)) {
        if (!Object.prototype.hasOwnProperty.call(nodes, v.node)) {
          throw new WorkflowError([
            {
              code: 'missing_node',
              nodeId: id,
              nodeType: node.type,
              field: name,
              message: `${nodeLabel(id, node.type)} input "${name}": links to node ${v.node}, which does not exist`,
            },
          ]);
        }
        deps.push(v.node);
      }
    }
    return deps;
  };

  for (const t of wanted) {
    if (mark.get(t) === 2) continue;
    mark.set(t, 1);
    stack.push({ id: t, deps: depsOf(t), next: 0 });
    while (stack.length) {
      const top = stack[stack.length - 1]!;
      if (top.next < top.deps.length) {
        const d = top.deps[top.next++]!;
        const m = mark.get(d);
        if (m === 2) continue;
        if (m === 1) {
          const t2 = nodes[d]!.type;
          throw new WorkflowError([
            { code: 'cycle', nodeId: d, nodeType: t2, message: `${nodeLabel(d, t2)}: links form a cycle` },
          ]);
        }
        mark.set(d, 1);
        stack.push({ id: d, deps: depsOf(d), next: 0 });
        continue;
      }
      stack.pop();
      mark.set(top.id, 2);
      index.set(top.id, plan.length);
      plan.push(makeNode(top.id, workflow, registry));
    }
  }

  // Resolve links to plan indices now that every node has one.
  for (let i = 0; i < plan.length; i++) {
    const p = plan[i]!;
    const inputs = nodes[p.id]!.inputs;
    for (const name in inputs) {
      const v = inputs[name];
      if (!isLink(v)) {
        p.consts[name] = v;
        continue;
      }
      const from = index.get(v.node)!;
      p.links.push({ input: name, from, output: v.output });
      if (!p.upstream.includes(from)) {
        p.upstream.push(from);
        plan[from]!.dependants.push(i);
      }
    }
    if (p.links.length > 1) p.links.sort((a, b) => (a.input < b.input ? -1 : a.input > b.input ? 1 : 0));
  }
  for (const t of wanted) plan[index.get(t)!]!.target = true;
  return { nodes: plan, index, targets: wanted };
}

function makeNode<S>(id: string, workflow: ValidWorkflow, registry: ReadonlyMap<string, NodeDef<S>>): PlanNode<S> {
  const type = workflow.nodes[id]!.type;
  const def = registry.get(type);
  if (!def) {
    throw new WorkflowError([
      { code: 'unknown_type', nodeId: id, nodeType: type, message: `${nodeLabel(id, type)}: unknown node type "${type}"` },
    ]);
  }
  return { id, type, def, consts: {}, links: [], upstream: [], dependants: [], target: false };
}

/** A binary min-heap of plan indices: the ready node with the lowest index runs first. */
export class IndexHeap {
  private readonly a: number[] = [];

  get size(): number {
    return this.a.length;
  }

  push(v: number): void {
    const a = this.a;
    let i = a.length;
    a.push(v);
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (a[p]! <= v) break;
      a[i] = a[p]!;
      i = p;
    }
    a[i] = v;
  }

  pop(): number | undefined {
    const a = this.a;
    if (a.length === 0) return undefined;
    const top = a[0]!;
    const last = a.pop()!;
    if (a.length > 0) {
      let i = 0;
      const n = a.length;
      for (;;) {
        const l = 2 * i + 1;
        if (l >= n) break;
        const r = l + 1;
        const c = r < n && a[r]! < a[l]! ? r : l;
        if (a[c]! >= last) break;
        a[i] = a[c]!;
        i = c;
      }
      a[i] = last;
    }
    return top;
  }
}
