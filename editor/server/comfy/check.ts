// Whether a submitted prompt (API format or a charflow workflow) can be queued, or its refusal in
// ComfyUI's shape. Pure and synchronous, so it runs the same in the request handler and in the
// prompt-check thread (check-thread.ts), which takes large prompts off the event loop.
import type { NodeDef } from '../../../engine/node.ts';
import { validateWorkflow } from '../../../engine/workflow/index.ts';
import type { ValidWorkflow } from '../../../engine/workflow/types.ts';
import { apiToWorkflow, isCharflowWorkflow, workflowToApi, type ApiPrompt, type Converted } from './convert.ts';
import { errorBody, issuesFromValidation, promptError, type Issue } from './errors.ts';
import { inputConfig } from './object-info.ts';

export type Accepted = { workflow: ValidWorkflow; api: ApiPrompt; format: 'api' | 'charflow' };
export type Refusal = { status: number; body: unknown };

/** Validates a submitted prompt; every step is linear in the prompt's size. */
export function checkPrompt<S>(prompt: unknown, registry: ReadonlyMap<string, NodeDef<S>>, maxNodes: number): Accepted | Refusal {
  const configs = new Map<string, unknown>();
  const configOf = (type: string, field: string): unknown => {
    const key = `${type}\0${field}`;
    if (!configs.has(key)) configs.set(key, inputConfig(registry, type, field));
    return configs.get(key);
  };
  const format = isCharflowWorkflow(prompt) ? 'charflow' : 'api';
  const conv: Converted = format === 'charflow' ? { workflow: prompt as Converted['workflow'], issues: [] } : apiToWorkflow(prompt, registry);
  if (!conv.workflow) return { status: 400, body: errorBody(conv.issues, undefined, registry, configOf) };
  const v = validateWorkflow(conv.workflow, registry, { maxNodes });
  // A bad link the conversion reported also fails validation; say it once.
  const seen = new Set(conv.issues.map((i) => `${i.nodeId}\0${i.field}`));
  const issues: Issue[] = [...conv.issues, ...issuesFromValidation(v.errors, conv.workflow, registry).filter((i) => i.field === undefined || !seen.has(`${i.nodeId}\0${i.field}`))];
  if (issues.length || !v.ok) return { status: 400, body: errorBody(issues, conv.workflow, registry, configOf) };
  let workflow = v.workflow!;
  if (format === 'api') {
    // ComfyUI's PNGs carry the API prompt beside the workflow; SaveImage embeds what meta.png_text asks for.
    // Added once the prompt is valid: a refused one never pays for serialising itself.
    workflow = { ...workflow, meta: { ...workflow.meta, png_text: { prompt: JSON.stringify(prompt) } } };
  }
  if (!Object.values(workflow.nodes).some((n) => registry.get(n.type)?.output === true)) {
    return { status: 400, body: promptError('prompt_no_outputs', 'the prompt has no output node (e.g. SaveImage or PreviewImage)') };
  }
  return { workflow, api: format === 'api' ? (prompt as ApiPrompt) : workflowToApi(workflow, registry), format };
}
