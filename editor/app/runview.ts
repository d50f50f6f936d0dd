// Shows a run on the graph: the running node highlighted with a progress bar, DiTSample's live
// preview, errors on the node that failed, finished images on their output nodes.
import type { LGraph } from '@comfyorg/litegraph';
import type { ImageRef, RunEventMessage } from '../protocol.ts';
import { type CharflowNode, isCharflowNode, loadImage } from './nodes.ts';

export interface RunViewHost {
  graph: LGraph;
  redraw(): void;
  message(text: string, kind?: 'info' | 'error' | 'ok'): void;
  /** A run of this tab ended (finished, failed or cancelled). */
  ended(runId: string): void;
}

export interface NodeProblem {
  nodeId?: string;
  nodeType?: string;
  field?: string;
  message: string;
}

export class RunView {
  /** Runs this tab started, with the graph generation they were started on. */
  private runs = new Map<string, number>();
  /** Bumped when another workflow is loaded: events of older runs then no longer match the nodes. */
  generation = 0;
  /** Every event received, for the status line and tests. */
  readonly log: { runId: string; event: RunEventMessage }[] = [];

  constructor(private readonly host: RunViewHost) {}

  private nodes(): CharflowNode[] {
    return this.host.graph._nodes.filter(isCharflowNode);
  }

  private node(id: string): CharflowNode | undefined {
    const n = this.host.graph.getNodeById(/^\d{1,15}$/.test(id) ? Number(id) : id);
    return isCharflowNode(n) ? n : undefined;
  }

  /** Clears earlier results and errors before a new run. */
  reset(): void {
    for (const n of this.nodes()) n.clearRun();
    this.host.redraw();
  }

  started(runId: string): void {
    this.runs.set(runId, this.generation);
  }

  get activeRuns(): string[] {
    return [...this.runs.keys()];
  }

  /** Validation errors of a refused run, each on its node. */
  showProblems(problems: NodeProblem[]): number {
    let placed = 0;
    for (const p of problems) {
      const node = p.nodeId !== undefined ? this.node(p.nodeId) : undefined;
      if (!node) continue;
      node.run.error = node.run.error ? `${node.run.error}\n${p.message}` : p.message;
      node.has_errors = true;
      placed++;
    }
    this.host.redraw();
    return placed;
  }

  private images(refs: ImageRef[] | undefined): CharflowNode['run']['images'] {
    return (refs ?? []).map((ref) => ({ ref, img: loadImage(ref.url, () => this.host.redraw()) }));
  }

  handle(runId: string, event: RunEventMessage): void {
    this.log.push({ runId, event });
    const generation = this.runs.get(runId);
    if (generation === undefined) return;
    const current = generation === this.generation;
    const node = current && 'nodeId' in event ? this.node(event.nodeId) : undefined;
    switch (event.type) {
      case 'run_queued':
        this.host.message(`queued at position ${event.position}`);
        break;
      case 'run_started':
        if (current) for (const id of event.nodeIds) { const n = this.node(id); if (n) n.run.state = 'queued'; }
        this.host.message(`running ${event.nodeIds.length} nodes…`);
        break;
      case 'node_started':
        if (node) node.run = { ...node.run, state: 'running', step: 0, total: undefined };
        this.host.message(`running ${node?.title ?? event.nodeType}…`);
        break;
      case 'node_progress':
        if (node) {
          node.run.state = 'running';
          node.run.step = event.step;
          node.run.total = event.total;
          if (event.preview) {
            // Keep showing the last preview until the new one has decoded (no flicker).
            const img = new Image();
            img.addEventListener('load', () => {
              node.run.preview = img;
              this.host.redraw();
            });
            img.src = event.preview;
          }
        }
        this.host.message(`${node?.title ?? event.nodeId}: step ${event.step}/${event.total}`);
        break;
      case 'node_cached':
        if (node) node.run = { ...node.run, state: 'cached', images: this.images(event.images), summary: summaryLines(event.summary) };
        break;
      case 'node_finished':
        if (node) node.run = { ...node.run, state: 'done', ms: event.ms, step: undefined, total: undefined, images: this.images(event.images), summary: summaryLines(event.summary) };
        break;
      case 'node_failed':
        if (node) {
          node.run = { ...node.run, state: 'failed', error: event.field ? `${event.field}: ${event.message}` : event.message };
          node.has_errors = true;
        }
        this.host.message(`${node?.title ?? event.nodeType} failed: ${event.message}`, 'error');
        break;
      case 'node_skipped':
        if (node) node.run = { ...node.run, state: 'skipped' };
        break;
      case 'run_finished':
        this.finish(runId);
        this.host.message(event.status === 'done' ? `finished in ${(event.ms / 1000).toFixed(1)} s` : `run failed after ${(event.ms / 1000).toFixed(1)} s`, event.status === 'done' ? 'ok' : 'error');
        break;
      case 'run_cancelled':
        this.finish(runId);
        this.host.message('run cancelled');
        break;
    }
    this.host.redraw();
  }

  private finish(runId: string): void {
    const current = this.runs.get(runId) === this.generation;
    this.runs.delete(runId);
    if (current) {
      for (const n of this.nodes()) {
        if (n.run.state === 'running' || n.run.state === 'queued') n.run.state = undefined;
      }
    }
    this.host.ended(runId);
  }
}

/** Lines for a node's summary: identity scores as "#1 DINO-I 0.912 SigLIP-I 0.874", anything else as JSON. */
export function summaryLines(summary: Record<string, unknown> | undefined): string[] | undefined {
  if (!summary) return undefined;
  const scores = summary.scores;
  if (Array.isArray(scores)) {
    return scores.map((s: { dino_i?: number; siglip_i?: number }, i) => {
      const part = (name: string, v: number | undefined) => (typeof v === 'number' ? ` ${name} ${v.toFixed(3)}` : '');
      return `#${i + 1}${part('DINO-I', s.dino_i)}${part('SigLIP-I', s.siglip_i)}`;
    });
  }
  return [JSON.stringify(summary).slice(0, 120)];
}
