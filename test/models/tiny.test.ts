// The tiny model set is complete and deterministic: the same bytes every time it is written.
import { describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeTinyModelSet } from '../../models/tiny.ts';
import { openModelSet } from '../../models/modelset.ts';

describe('the tiny model set', () => {
  it('is written identically twice, with every component the pipeline loads', async () => {
    const root = mkdtempSync(join(tmpdir(), 'charflow-tinyset-'));
    try {
      const a = await writeTinyModelSet(join(root, 'a'));
      const b = await writeTinyModelSet(join(root, 'b'));
      expect(Object.keys(a.files).sort()).toEqual(['adapter_static', 'adapter_time', 'clip', 'dinov2', 'flux', 'siglip', 't5', 'vae', 'vae_encoder']);
      for (const [name, entry] of Object.entries(a.files)) {
        expect(b.files[name as keyof typeof b.files].sha256, name).toBe(entry.sha256);
      }
      const set = openModelSet(root, 'a');
      expect(set.manifest.siglip.shallowLayers).toEqual([7, 13, 26]);
      expect(set.manifest.dinov2.shallowLayers).toEqual([9, 19, 29]);
      expect(set.manifest.t5.seqLen).toBe(512);
      expect(set.manifest.clip.seqLen).toBe(77);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
