// Graph <-> workflow: the litegraph canvas state and the charflow workflow file (one format for the
// editor, the CLI and the server), including node positions and sizes in `ui`.
import { LGraph, LGraphGroup, LGraphNode, LiteGraph } from '@comfyorg/litegraph';
import {
  type InputValue,
  type Workflow,
  type WorkflowGroup,
  type WorkflowNode,
  WORKFLOW_FORMAT,
  WORKFLOW_VERSION,
  compareIds,
  isLink,
} from '../../engine/workflow/types.ts';
import { migrateWorkflow } from '../../engine/workflow/migrate.ts';
import { CharflowNode, isCharflowNode } from './nodes.ts';

/** Groups as the file had them, so keys the editor does not use (and an unset colour) stay as they were. */
const rawGroups = new WeakMap<LGraphGroup, WorkflowGroup>();
const DEFAULT_GROUP_COLOR = new LGraphGroup().color;

/** Workflow node keys the editor handles itself; anything else in `ui` is kept as it was. */
const KNOWN_UI = new Set(['pos', 'size', 'title', 'color', 'collapsed', 'randomize']);

/** Stands in for a node whose type the server does not offer: keeps its data so saving loses nothing. */
export class MissingNode extends LGraphNode {
  raw: WorkflowNode;
  constructor(raw: WorkflowNode) {
    super(`${raw.type} (unknown type)`, raw.type);
    this.raw = raw;
    this.color = '#6b1f1f';
    this.bgcolor = '#3a2222';
    this.has_errors = true;
  }
}

function nodeKey(id: string): string | number {
  return /^\d{1,15}$/.test(id) ? Number(id) : id;
}

export interface LoadReport {
  warnings: string[];
}

/** Replaces the graph's content with `wf`. The workflow should be of the current version (the server migrates). */
export function workflowToGraph(wf: Workflow, graph: LGraph): LoadReport {
  const warnings: string[] = [];
  graph.clear();
  const created = new Map<string, LGraphNode>();
  const ids = Object.keys(wf.nodes ?? {}).sort(compareIds);

  for (const id of ids) {
    const raw = wf.nodes[id]!;
    const made = LiteGraph.createNode(raw.type);
    const node: LGraphNode = made ?? new MissingNode(raw);
    if (!made) warnings.push(`node ${id}: unknown type "${raw.type}"`);
    node.id = nodeKey(id);
    const ui = raw.ui ?? {};
    if (Array.isArray(ui.pos)) node.pos = [Number(ui.pos[0]) || 0, Number(ui.pos[1]) || 0];
    if (typeof ui.title === 'string') node.title = ui.title;
    if (typeof ui.color === 'string') node.color = ui.color;
    graph.add(node, true);
    if (Array.isArray(ui.size)) {
      // Never smaller than the widgets need (sizes saved by another tool may be tight).
      const min = made ? node.computeSize() : [0, 0];
      node.size = [Math.max(Number(ui.size[0]) || 0, min[0]), Math.max(Number(ui.size[1]) || 0, min[1])];
    }
    if (ui.collapsed === true) node.collapse(true);
    if (isCharflowNode(node)) {
      node.extraUi = Object.fromEntries(Object.entries(ui).filter(([k]) => !KNOWN_UI.has(k)));
      if (Array.isArray(ui.randomize)) {
        for (const name of ui.randomize) {
          const toggle = node.widgets?.find((w) => w.name === `${name}_random`);
          if (toggle) toggle.value = true;
        }
      }
    }
    created.set(id, node);
  }

  // Constants first, then links (a link needs both ends to exist).
  for (const id of ids) {
    const node = created.get(id)!;
    const inputs = wf.nodes[id]!.inputs ?? {};
    for (const [name, value] of Object.entries(inputs)) {
      if (isLink(value)) continue;
      if (!isCharflowNode(node)) continue;
      const binding = node.params.get(name);
      if (binding) binding.set(value);
      else if (node.def.inputs[name]) warnings.push(`node ${id} (${node.type}) input "${name}" takes a link, not a constant; dropped`);
      else warnings.push(`node ${id} (${node.type}) has no input "${name}"; dropped`);
    }
  }
  for (const id of ids) {
    const node = created.get(id)!;
    const inputs = wf.nodes[id]!.inputs ?? {};
    for (const [name, value] of Object.entries(inputs)) {
      if (!isLink(value)) continue;
      const from = created.get(value.node);
      if (!from) {
        warnings.push(`node ${id} input "${name}": node ${value.node} does not exist; link dropped`);
        continue;
      }
      const outIndex = ensureSlot(from, 'output', value.output);
      const inIndex = ensureSlot(node, 'input', name);
      if (outIndex < 0 || inIndex < 0) {
        warnings.push(`node ${id} input "${name}": cannot link to ${value.node}.${value.output}; dropped`);
        continue;
      }
      if (!from.connect(outIndex, node, inIndex)) {
        warnings.push(`node ${id} input "${name}": ${from.outputs[outIndex]!.type} does not fit ${node.inputs[inIndex]!.type}; link dropped`);
      }
    }
  }

  for (const g of wf.groups ?? []) {
    const group = new LGraphGroup(typeof g.title === 'string' ? g.title : 'Group');
    if (Array.isArray(g.bounding) && g.bounding.length === 4) group._bounding.set(g.bounding.map(Number));
    if (typeof g.color === 'string') group.color = g.color;
    rawGroups.set(group, g);
    graph.add(group);
  }
  graph.updateExecutionOrder();
  graph.setDirtyCanvas(true, true);
  return { warnings };
}

/** Slot index by name; placeholders for unknown types grow '*' slots as links need them. */
function ensureSlot(node: LGraphNode, kind: 'input' | 'output', name: string): number {
  const slots = kind === 'input' ? node.inputs : node.outputs;
  const i = slots.findIndex((s) => s.name === name);
  if (i >= 0 || !(node instanceof MissingNode)) return i;
  // Adding a slot grows the node to fit; keep the size the file gave (we cannot know better).
  const size: [number, number] = [node.size[0], node.size[1]];
  if (kind === 'input') node.addInput(name, '*');
  else node.addOutput(name, '*');
  node.size = size;
  return (kind === 'input' ? node.inputs : node.outputs).length - 1;
}

const round = (v: number): number => Math.round(v * 10) / 10;

function linkInto(graph: LGraph, node: LGraphNode, slot: number): InputValue | undefined {
  const linkId = node.inputs[slot]?.link;
  if (linkId == null) return undefined;
  const link = graph.getLink(linkId);
  if (!link) return undefined;
  const from = graph.getNodeById(link.origin_id);
  const output = from?.outputs[link.origin_slot];
  if (!from || !output) return undefined;
  return { node: String(from.id), output: output.name };
}

function nodeToWorkflow(graph: LGraph, node: LGraphNode): WorkflowNode {
  const inputs: Record<string, InputValue> = {};
  if (node instanceof MissingNode) {
    for (const [k, v] of Object.entries(node.raw.inputs ?? {})) if (!isLink(v)) inputs[k] = v;
  }
  node.inputs.forEach((slot, i) => {
    const link = linkInto(graph, node, i);
    if (link) inputs[slot.name] = link;
  });
  const ui: WorkflowNode['ui'] = {};
  if (isCharflowNode(node)) {
    for (const [name, b] of node.params) {
      if (inputs[name] !== undefined) continue; // fed by a link
      const v = b.get();
      if (b.info.optional && b.info.default === undefined && v === '') continue;
      inputs[name] = v;
    }
    // Keep the declared order (links and constants mixed) so files diff nicely.
    const order = [...Object.keys(node.def.inputs), ...Object.keys(node.def.params)];
    const sorted: Record<string, InputValue> = {};
    for (const k of order) if (inputs[k] !== undefined) sorted[k] = inputs[k];
    Object.assign(ui, node.extraUi);
    const type = node.def;
    ui.pos = [round(node.pos[0]), round(node.pos[1])];
    ui.size = [round(node.size[0]), round(node.size[1])];
    if (node.title !== (type.displayName || type.type)) ui.title = node.title;
    const randomize = [...node.params.values()]
      .filter((b) => node.widgets?.find((w) => w.name === `${b.info.name}_random`)?.value === true)
      .map((b) => b.info.name);
    if (randomize.length) ui.randomize = randomize;
    if (node.flags.collapsed) ui.collapsed = true;
    return { type: node.type, inputs: sorted, ui };
  }
  const raw = (node as MissingNode).raw;
  return { ...raw, inputs, ui: { ...raw.ui, pos: [round(node.pos[0]), round(node.pos[1])], size: [round(node.size[0]), round(node.size[1])] } };
}

/** The graph as a charflow workflow (nodes in id order). `base` supplies meta to keep. */
export function graphToWorkflow(graph: LGraph, base?: Pick<Workflow, 'meta'>): Workflow {
  const nodes: Record<string, WorkflowNode> = {};
  const sorted = [...graph._nodes].sort((a, b) => compareIds(String(a.id), String(b.id)));
  for (const node of sorted) nodes[String(node.id)] = nodeToWorkflow(graph, node);
  const groups: WorkflowGroup[] = graph._groups.map((g) => {
    const raw = rawGroups.get(g);
    const out: WorkflowGroup = { ...raw, title: g.title, bounding: Array.from(g._bounding, round) as [number, number, number, number] };
    // litegraph gives every group a colour; write it only when the file had one or it was changed.
    if (g.color && (raw?.color !== undefined || (raw === undefined ? true : g.color !== DEFAULT_GROUP_COLOR))) out.color = g.color;
    else delete out.color;
    return out;
  });
  const wf: Workflow = { format: WORKFLOW_FORMAT, version: WORKFLOW_VERSION, nodes, groups };
  if (base?.meta) wf.meta = base.meta;
  return wf;
}

/** A charflow workflow brought to the current version, or an error message saying why not. */
export function asWorkflow(value: unknown): Workflow | string {
  if (!value || typeof value !== 'object') return 'not a JSON object';
  const migrated = migrateWorkflow(value);
  if (!migrated.ok) return migrated.error.message;
  const wf = migrated.workflow as Partial<Workflow>;
  if (wf.format !== WORKFLOW_FORMAT) return `not a charflow workflow (format is ${JSON.stringify(wf.format)})`;
  if (!wf.nodes || typeof wf.nodes !== 'object') return 'the workflow has no nodes object';
  return wf as Workflow;
}

export { CharflowNode };
