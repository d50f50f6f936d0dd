// Checks `charflow validate` adds to the validator's: problems a run would only meet at some node later,
// knowable from the workflow alone. Today: an image-to-image init latent whose size differs from its sampler's.
import { isLink, nodeLabel, type ValidationError, type ValidWorkflow } from '../engine/workflow/types.ts';

interface Size { width: number; height: number; from: string }

/**
 * The pixel size of what a link carries, where constants decide it: a node with constant `width` and
 * `height` (Load Image, DiT Sample), or Decode / VAE Encode passing their input's size on.
 */
function sizeOf(wf: ValidWorkflow, link: unknown, seen = new Set<string>()): Size | undefined {
  if (!isLink(link) || seen.has(link.node)) return undefined;
  seen.add(link.node);
  const node = wf.nodes[link.node];
  if (!node) return undefined;
  const { width, height } = node.inputs;
  if (typeof width === 'number' && typeof height === 'number') return { width, height, from: nodeLabel(link.node, node.type) };
  if (node.type === 'Decode') return sizeOf(wf, node.inputs.latent, seen);
  if (node.type === 'VAEEncode') return sizeOf(wf, node.inputs.image, seen);
  return undefined;
}

export function workflowChecks(wf: ValidWorkflow): ValidationError[] {
  const errors: ValidationError[] = [];
  for (const [id, node] of Object.entries(wf.nodes)) {
    if (node.type !== 'DiTSample' || !isLink(node.inputs.init)) continue;
    const { width, height } = node.inputs;
    const init = sizeOf(wf, node.inputs.init);
    if (!init || typeof width !== 'number' || typeof height !== 'number') continue;
    if (init.width !== width || init.height !== height) {
      errors.push({
        nodeId: id,
        nodeType: node.type,
        field: 'init',
        code: 'type_mismatch',
        message: `${nodeLabel(id, node.type)} input "init": the init latent is ${init.width}x${init.height} (from ${init.from}) but the sampler makes ${width}x${height}; give both the same width and height`,
      });
    }
  }
  return errors;
}
