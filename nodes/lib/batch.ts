// Batches on IMAGE links: one picture travels as an RgbImage, a batch as an array of them (each may
// carry its origin: the sampler node and seed that make it alone).
import { NodeInputError } from '../../engine/node.ts';
import type { BatchImage, ImageValue } from '../types.ts';

/** The pictures of an IMAGE value, one or many. */
export function imagesOf(value: unknown, field = 'image'): BatchImage[] {
  const list = Array.isArray(value) ? value : [value];
  if (list.length === 0) throw new NodeInputError(field, 'the image batch is empty');
  for (const img of list) {
    const ok = img && typeof img === 'object' && (img as BatchImage).data instanceof Uint8Array
      && Number.isInteger((img as BatchImage).width) && Number.isInteger((img as BatchImage).height);
    if (!ok) throw new NodeInputError(field, 'is not an image');
  }
  return list as BatchImage[];
}

/** One picture stays an RgbImage (what every image node took before batches); several become an array. */
export function imageValue(images: BatchImage[]): ImageValue {
  return images.length === 1 ? images[0]! : images;
}

/** Byte size of an IMAGE value, for the output cache budget. */
export function imageBytes(value: unknown): number {
  const list = Array.isArray(value) ? value : [value];
  return list.reduce((n: number, img) => n + ((img as BatchImage | undefined)?.data?.byteLength ?? 0), 0);
}

/**
 * The workflow that makes one image of a batch alone: its sampler node gets the image's seed and
 * batch size 1. Anything that is not a workflow with that node is returned unchanged.
 */
export function workflowForImage(workflow: unknown, image: BatchImage): unknown {
  const origin = image.origin;
  const wf = workflow as { nodes?: Record<string, { inputs?: Record<string, unknown> }> } | undefined;
  const node = origin && wf?.nodes?.[origin.node];
  if (!origin || !node) return workflow;
  return {
    ...wf,
    nodes: { ...wf.nodes, [origin.node]: { ...node, inputs: { ...(node.inputs ?? {}), seed: origin.seed, batch_size: 1 } } },
  };
}
