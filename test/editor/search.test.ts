// The pure parts of the editor's everyday helpers: the node search's ranking with ComfyUI names, the
// gallery's identity-score line and reference picture.
import { describe, expect, it } from 'vitest';
import { buildCatalog } from '../../editor/server/catalog.ts';
import { nodeRegistry } from '../../nodes/registry.ts';
import { COMFY_ALIASES, searchNodes } from '../../editor/app/search.ts';
import { referenceOf, scoresText } from '../../editor/app/gallery.ts';

const catalog = buildCatalog(nodeRegistry());

describe('node search', () => {
  it('finds charflow nodes by their ComfyUI names first', () => {
    expect(searchNodes('KSampler', catalog)[0]!.type).toBe('DiTSample');
    expect(searchNodes('VAEDecode', catalog)[0]!.type).toBe('Decode');
    expect(searchNodes('CLIPTextEncode', catalog)[0]!.type).toBe('TextEncode');
    expect(searchNodes('CheckpointLoaderSimple', catalog)[0]!.type).toBe('LoadModels');
    expect(searchNodes('vae encode', catalog)[0]!.type).toBe('VAEEncode');
  });

  it('every alias names a registered node type, and an empty query lists them all in catalogue order', () => {
    for (const type of Object.keys(COMFY_ALIASES)) expect(catalog.map((c) => c.type)).toContain(type);
    expect(searchNodes('', catalog).map((c) => c.type)).toEqual(catalog.map((c) => c.type));
    expect(searchNodes('zzzz-nothing', catalog)).toEqual([]);
  });
});

describe('gallery helpers', () => {
  it('reads the identity scores Identity Score stores in the PNG', () => {
    expect(scoresText(JSON.stringify({ dino_i: 0.81234, siglip_i: 0.7 }))).toBe('DINO-I 0.812 · SigLIP-I 0.700');
    expect(scoresText(JSON.stringify({ dino_i: 0.5 }))).toBe('DINO-I 0.500');
    expect(scoresText(undefined)).toBe('');
    expect(scoresText('not json')).toBe('');
  });

  it('takes the reference picture from the first Load Character', () => {
    const wf = { nodes: { '1': { type: 'LoadModels', inputs: {} }, '2': { type: 'LoadCharacter', inputs: { path: 'me/hero.png' } } } };
    expect(referenceOf(wf)).toBe('/api/view?filename=hero.png&subfolder=me&type=input');
    expect(referenceOf({ nodes: {} })).toBeUndefined();
  });
});
