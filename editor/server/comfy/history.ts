// Jobs in ComfyUI's shapes: queue items [number, prompt_id, prompt, extra_data, outputs_to_execute]
// and history entries {prompt, outputs, status: {status_str, completed, messages}, meta}. Jobs the
// editor queued are shown too, their workflow converted to an API prompt.
import type { NodeDef } from '../../../engine/node.ts';
import { isLink } from '../../../engine/workflow/types.ts';
import type { Job, JsonValue } from '../../../engine/queue/types.ts';
import { workflowToApi, type ApiPrompt } from './convert.ts';

type Registry = ReadonlyMap<string, NodeDef<unknown>>;

/** What the ComfyUI layer keeps in job.extra for a job that came through POST /prompt. */
export interface ComfyExtra {
  comfy: {
    /** The prompt as submitted (API format), or the API form of a submitted charflow workflow. */
    prompt: ApiPrompt;
    extra_data: Record<string, JsonValue>;
    /** What the client sent in `prompt`. */
    format: 'api' | 'charflow';
  };
}

export type QueueItem = [number, string, ApiPrompt, Record<string, unknown>, string[]];
export type HistoryMessage = [string, Record<string, unknown>];

export interface HistoryEntry {
  prompt: QueueItem;
  outputs: Job['outputs'];
  status: { status_str: 'success' | 'error'; completed: boolean; messages: HistoryMessage[] };
  meta: Record<string, { node_id: string; display_node: string; parent_node: null; real_node_id: string }>;
  /** The worker that ran it (scale-out only). */
  worker?: string;
}

export function comfyExtra(job: Pick<Job, 'extra'>): ComfyExtra['comfy'] | undefined {
  const x = job.extra;
  if (typeof x !== 'object' || x === null || Array.isArray(x)) return undefined;
  const c = x.comfy;
  if (typeof c !== 'object' || c === null || Array.isArray(c)) return undefined;
  const { prompt, extra_data } = c;
  if (typeof prompt !== 'object' || prompt === null || Array.isArray(prompt)) return undefined;
  return {
    prompt: prompt as unknown as ApiPrompt,
    extra_data: typeof extra_data === 'object' && extra_data !== null && !Array.isArray(extra_data) ? extra_data : {},
    format: c.format === 'charflow' ? 'charflow' : 'api',
  };
}

/** The API prompt of a job: as submitted, or converted from its workflow. */
export function apiPromptOf(job: Job, registry: Registry): ApiPrompt {
  return comfyExtra(job)?.prompt ?? workflowToApi(job.workflow, registry);
}

function outputsToExecute(job: Job, registry: Registry): string[] {
  if (job.targets) return [...job.targets];
  return Object.entries(job.workflow.nodes)
    .filter(([, n]) => registry.get(n.type)?.output === true)
    .map(([id]) => id);
}

export function queueItem(job: Job, registry: Registry): QueueItem {
  const base = comfyExtra(job)?.extra_data ?? { client_id: job.clientId, create_time: job.createdAt };
  // Scale-out: which worker runs (or ran) it, as ComfyUI users ask for instance ids (#8056).
  const extra = job.worker !== null ? { ...base, worker: job.worker } : base;
  return [job.number, job.id, apiPromptOf(job, registry), extra, outputsToExecute(job, registry)];
}

/** The node that was running when a job stopped: started, never finished (from the event log). */
function unfinishedNode(job: Job): string | null {
  const open = new Set<string>();
  for (const [type, data] of job.messages) {
    const id = typeof data.nodeId === 'string' ? data.nodeId : undefined;
    if (id === undefined) continue;
    if (type === 'node_started') open.add(id);
    else open.delete(id);
  }
  return [...open].pop() ?? null;
}

function executedNodes(job: Job): string[] {
  return Object.entries(job.nodes)
    .filter(([, o]) => o.status === 'done' || o.status === 'cached')
    .map(([id]) => id);
}

/** Constants a node was given, for execution_error's current_inputs. */
function constantsOf(job: Pick<Job, 'workflow'>, nodeId: string): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(job.workflow.nodes[nodeId]?.inputs ?? {})) if (!isLink(v)) out[k] = v;
  return out;
}

/** execution_error's data for a failed node (or for a job that failed before any node ran). */
export function executionError(
  job: Pick<Job, 'id' | 'workflow'>,
  nodeId: string | null,
  failure: { message: string; field?: string },
  executed: string[],
  timestamp: number,
): Record<string, unknown> {
  return {
    prompt_id: job.id,
    node_id: nodeId,
    node_type: nodeId === null ? null : (job.workflow.nodes[nodeId]?.type ?? null),
    executed,
    exception_message: failure.message,
    exception_type: failure.field !== undefined ? 'NodeInputError' : 'Error',
    traceback: [],
    current_inputs: nodeId === null ? {} : constantsOf(job, nodeId),
    current_outputs: {},
    timestamp,
  };
}

/** ComfyUI's status messages, rebuilt from what the job recorded. */
function statusMessages(job: Job): HistoryMessage[] {
  if (job.startedAt === null) return [];
  const end = job.finishedAt ?? job.startedAt;
  const cached = Object.entries(job.nodes).filter(([, o]) => o.status === 'cached').map(([id]) => id);
  const msgs: HistoryMessage[] = [
    ['execution_start', { prompt_id: job.id, timestamp: job.startedAt }],
    ['execution_cached', { nodes: cached, prompt_id: job.id, timestamp: job.startedAt }],
  ];
  if (job.status === 'done') msgs.push(['execution_success', { prompt_id: job.id, timestamp: end }]);
  else if (job.status === 'failed') {
    const failed = Object.entries(job.nodes).find(([, o]) => o.status === 'failed');
    const o = failed?.[1];
    const failure = o && o.status === 'failed' ? { message: o.message, ...(o.field !== undefined ? { field: o.field } : {}) } : { message: job.error ?? 'the run failed' };
    msgs.push(['execution_error', executionError(job, failed?.[0] ?? null, failure, executedNodes(job), end)]);
  } else {
    const node = unfinishedNode(job);
    msgs.push([
      'execution_interrupted',
      { prompt_id: job.id, node_id: node, node_type: node === null ? null : (job.workflow.nodes[node]?.type ?? null), executed: executedNodes(job), timestamp: end },
    ]);
  }
  return msgs;
}

export function historyEntry(job: Job, registry: Registry): HistoryEntry {
  const meta: HistoryEntry['meta'] = {};
  for (const id of Object.keys(job.outputs)) meta[id] = { node_id: id, display_node: id, parent_node: null, real_node_id: id };
  return {
    prompt: queueItem(job, registry),
    outputs: job.outputs,
    status: { status_str: job.status === 'done' ? 'success' : 'error', completed: job.status === 'done', messages: statusMessages(job) },
    meta,
    ...(job.worker !== null ? { worker: job.worker } : {}),
  };
}
