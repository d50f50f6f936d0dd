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
  const ids = Object.keys(nodes);
  const pos = new Map<string, number>();
  for (let i = 0; i < ids.length; i++) pos.set(ids[i]!, i);
  for (const t of wanted) {
    if (!pos.has(t)) {
      throw new WorkflowError([{ code: 'unknown_target', nodeId: t, message: `run target node ${t} does not exist` }]);
    }
  }

  // A node's inputs, split into constants and links (resolved to positions), on first visit.
  const consts: (Record<string, unknown> | undefined)[] = new Array(ids.length);
  const links: (PlanLink[] | undefined)[] = new Array(ids.length); // `from` holds a position for now
  const depsOf = (i: number): PlanLink[] => {
    const id = ids[i]!;
    const node = nodes[id]!;
    const c: Record<string, unknown> = {};
    const deps: PlanLink[] = [];
    for (const name in node.inputs) {
      const v = node.inputs[name];
      if (!isLink(v)) {
        c[name] = v;
        continue;
      }
      const d = pos.get(v.node);
      if (d === undefined) {
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
      deps.push({ input: name, from: d, output: v.output });
    }
    consts[i] = c;
    links[i] = deps;
    return deps;
  };

  // Iterative DFS post-order. mark: 0 unvisited, 1 on the current path (seeing it again is a
  // cycle), 2 placed in the plan.
  const mark = new Uint8Array(ids.length);
  const order: number[] = [];
  const stackNode: number[] = [];
  const stackDeps: PlanLink[][] = [];
  const stackNext: number[] = [];
  for (const t of wanted) {
    const root = pos.get(t)!;
    if (mark[root] === 2) continue;
    mark[root] = 1;
    stackNode.push(root);
    stackDeps.push(depsOf(root));
    stackNext.push(0);
    while (stackNode.length) {
      const top = stackNode.length - 1;
      const deps = stackDeps[top]!;
      if (stackNext[top]! < deps.length) {
        const d = deps[stackNext[top]!++]!.from;
        if (mark[d] === 2) continue;
        if (mark[d] === 1) {
          const id = ids[d]!;
          const type = nodes[id]!.type;
          throw new WorkflowError([{ code: 'cycle', nodeId: id, nodeType: type, message: `${nodeLabel(id, type)}: links form a cycle` }]);
        }
        mark[d] = 1;
        stackNode.push(d);
        stackDeps.push(depsOf(d));
        stackNext.push(0);
        continue;
      }
      const v = stackNode.pop()!;
      stackDeps.pop();
      stackNext.pop();
      mark[v] = 2;
      order.push(v);
    }
  }

  const planIndex = new Int32Array(ids.length).fill(-1);
  const index = new Map<string, number>();
  const plan: PlanNode<S>[] = new Array<PlanNode<S>>(order.length);
  for (let i = 0; i < order.length; i++) {
    const at = order[i]!;
    const id = ids[at]!;
    planIndex[at] = i;
    index.set(id, i);
    plan[i] = makeNode(id, workflow.nodes[id]!.type, registry, consts[at]!, links[at]!);
  }
  // Links now point at plan indices; upstream/dependants follow.
  for (let i = 0; i < plan.length; i++) {
    const p = plan[i]!;
    for (const l of p.links) {
      const from = (l.from = planIndex[l.from]!);
      if (!p.upstream.includes(from)) {
        p.upstream.push(from);
        plan[from]!.dependants.push(i);
      }
    }
    sortLinks(p.links);
  }
  for (const t of wanted) plan[index.get(t)!]!.target = true;
  return { nodes: plan, index, targets: wanted };
}

/** Insertion sort by input name: links are few, and Array#sort's setup dominates at this size. */
function sortLinks(links: PlanLink[]): void {
  for (let i = 1; i < links.length; i++) {
    const x = links[i]!;
    let j = i - 1;
    while (j >= 0 && links[j]!.input > x.input) {
      links[j + 1] = links[j]!;
      j--;
    }
    links[j + 1] = x;
  }
}

function makeNode<S>(
  id: string,
  type: string,
  registry: ReadonlyMap<string, NodeDef<S>>,
  consts: Record<string, unknown>,
  links: PlanLink[],
): PlanNode<S> {
  const def = registry.get(type);
  if (!def) {
    throw new WorkflowError([
      { code: 'unknown_type', nodeId: id, nodeType: type, message: `${nodeLabel(id, type)}: unknown node type "${type}"` },
    ]);
  }
  return { id, type, def, consts, links, upstream: [], dependants: [], target: false };
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
