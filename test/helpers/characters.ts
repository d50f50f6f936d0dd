// Character files crafted for the bad-input tests: a copy of a saved character with its tensors or header
// changed and its own content hash kept right, so only the change itself is wrong.
import { createHash } from 'node:crypto';
import { writeSafetensors } from '../../models/weights/safetensors.ts';
import type { Tensor } from '../../models/tensor.ts';
import { readCharacter } from '../../nodes/lib/saved_characters.ts';

export function rewriteCharacter(from: string, to: string, change: (tensors: Map<string, Tensor>, meta: Record<string, string>) => void): void {
  const c = readCharacter(from);
  const tensors = new Map<string, Tensor>([
    ['tokens', c.tokens],
    ['dinov2_cls', { dtype: 'float32', dims: [c.reference.dinov2.length], data: c.reference.dinov2 }],
    ['thumbnail', { dtype: 'uint8', dims: [c.thumbnail.height, c.thumbnail.width, 3], data: c.thumbnail.data }],
  ]);
  if (c.reference.siglip) tensors.set('siglip_pooled', { dtype: 'float32', dims: [c.reference.siglip.length], data: c.reference.siglip });
  const meta: Record<string, string> = { format: 'charflow.character', version: '1', name: c.name, set: c.set, set_identity: c.identity, created: c.created, sha256: '' };
  change(tensors, meta);
  const h = createHash('sha256');
  for (const k of [...tensors.keys()].sort()) {
    const t = tensors.get(k)!;
    h.update(`${k}:${t.dtype}:${t.dims.join('x')}\n`);
    h.update(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  }
  meta.sha256 = h.digest('hex');
  writeSafetensors(to, tensors, meta);
}
