// Checks `charflow validate` adds to the validator's: problems a run would only meet at some node later,
// knowable before it starts: an image-to-image init latent whose size differs from its sampler's, a picture
// that is not there; and, as a warning (serve and demo write the tiny set themselves), a model set not installed.
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { NodeDef } from '../engine/node.ts';
import type { DataPaths } from '../engine/paths.ts';
import { isLink, nodeLabel, type ValidationError, type ValidWorkflow } from '../engine/workflow/types.ts';
import { listModelSets } from '../models/modelsets.ts';
import { PACKAGE_ROOT } from '../nodes/services.ts';

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

/** Files and model sets the workflow names as constants: errors for missing pictures, warnings for sets. */
export function fileChecks(wf: ValidWorkflow, registry: ReadonlyMap<string, NodeDef<unknown>>, paths: DataPaths): { errors: ValidationError[]; warnings: string[] } {
  const errors: ValidationError[] = [];
  const warnings: string[] = [];
  let installed: string[] | undefined;
  for (const [id, node] of Object.entries(wf.nodes)) {
    const def = registry.get(node.type);
    if (!def) continue;
    for (const [name, p] of Object.entries(def.params)) {
      const v = node.inputs[name];
      if (typeof v !== 'string' || v === '') continue;
      if (p.format === 'image') {
        // Where the image nodes look: the path itself when absolute, else the inputs folder, then the package.
        const candidates = path.isAbsolute(v) ? [v] : [path.join(paths.inputs, v), path.join(PACKAGE_ROOT, v)];
        if (!candidates.some((c) => existsSync(c))) {
          errors.push({ nodeId: id, nodeType: node.type, field: name, code: 'file', message: `${nodeLabel(id, node.type)} input "${name}": image "${v}" not found in ${paths.inputs} or the bundled examples (\`charflow run --set ${id}.${name}=/path/to/picture\` copies one in)` });
        }
      } else if (p.format === 'modelset') {
        installed ??= listModelSets(paths.models).map((m) => m.name);
        if (!installed.includes(v)) warnings.push(`${nodeLabel(id, node.type)} input "${name}": model set "${v}" is not in ${paths.models} (installed: ${installed.join(', ') || 'none'}); \`charflow models tiny\` or \`models pull\` writes one`);
      }
    }
  }
  return { errors, warnings };
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
