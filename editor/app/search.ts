// The double-click node search, in the app's own look, that also finds charflow's nodes by the names of
// their ComfyUI counterparts (KSampler finds DiT Sample, VAEDecode finds Decode, ...).
import type { CatalogNode } from '../protocol.ts';
import { el } from './dialogs.ts';

/** ComfyUI node names (and a few words people type) per charflow node type. */
export const COMFY_ALIASES: Readonly<Record<string, readonly string[]>> = {
  DiTSample: ['KSampler', 'KSamplerAdvanced', 'SamplerCustom', 'SamplerCustomAdvanced', 'EmptyLatentImage', 'sampler'],
  Decode: ['VAEDecode', 'VAEDecodeTiled'],
  VAEEncode: ['VAEEncode', 'VAEEncodeForInpaint'],
  TextEncode: ['CLIPTextEncode', 'CLIPTextEncodeFlux', 'FluxGuidance', 'prompt'],
  LoadModels: ['CheckpointLoaderSimple', 'UNETLoader', 'DualCLIPLoader', 'VAELoader', 'CLIPVisionLoader', 'checkpoint'],
  LoadCharacter: ['LoadImage', 'IPAdapterLoader', 'reference'],
  LoadImage: ['LoadImage'],
  SigLIPEncode: ['CLIPVisionEncode'],
  DINOv2Encode: ['CLIPVisionEncode'],
  AdapterFuse: ['IPAdapterApply', 'IPAdapterAdvanced', 'ApplyIPAdapter'],
  SaveImage: ['SaveImage'],
  PreviewImage: ['PreviewImage'],
};

const norm = (s: string): string => s.toLowerCase().replace(/[\s_-]+/g, '');

/** How well `query` names a node type: 0 exact, 1 prefix, 2 substring, 3 letters in order; undefined: not at all. */
function rank(query: string, node: CatalogNode): number | undefined {
  const q = norm(query);
  if (!q) return 2;
  let best: number | undefined;
  for (const name of [node.type, node.displayName, ...(COMFY_ALIASES[node.type] ?? [])]) {
    const n = norm(name);
    let r: number | undefined;
    if (n === q) r = 0;
    else if (n.startsWith(q)) r = 1;
    else if (n.includes(q)) r = 2;
    else {
      let i = 0;
      for (const ch of n) if (ch === q[i]) i++;
      if (i === q.length) r = 3;
    }
    if (r !== undefined && (best === undefined || r < best)) best = r;
  }
  return best;
}

/** The node types that match, best first (ties in catalogue order). */
export function searchNodes(query: string, catalog: readonly CatalogNode[]): CatalogNode[] {
  return catalog
    .map((node, i) => ({ node, i, r: rank(query, node) }))
    .filter((x) => x.r !== undefined)
    .sort((a, b) => a.r! - b.r! || a.i - b.i)
    .map((x) => x.node);
}

/** Shows the search box at the pointer; `add` gets the chosen type. Returns the box (litegraph's contract). */
export function showNodeSearch(clientX: number, clientY: number, catalog: readonly CatalogNode[], add: (type: string) => void): HTMLDivElement {
  document.querySelector('.cf-search-box')?.remove();
  const input = el('input', { type: 'search', placeholder: 'Search nodes (ComfyUI names work too)…', className: 'cf-modal-input' });
  const list = el('ul');
  const box = el('div', { className: 'cf-search-box' }, input, list);
  box.style.left = `${Math.min(clientX, window.innerWidth - 340)}px`;
  box.style.top = `${Math.min(clientY, window.innerHeight - 360)}px`;
  let shown: CatalogNode[] = [];
  let active = 0;
  const close = (): void => {
    box.remove();
    document.removeEventListener('pointerdown', outside, true);
  };
  const choose = (type: string | undefined): void => {
    close();
    if (type) add(type);
  };
  const render = (): void => {
    shown = searchNodes(input.value, catalog).slice(0, 30);
    active = Math.min(active, Math.max(0, shown.length - 1));
    list.replaceChildren(...shown.map((n, i) => {
      const alias = (COMFY_ALIASES[n.type] ?? []).find((a) => norm(a).includes(norm(input.value)) && norm(input.value).length > 0);
      const li = el('li', { className: i === active ? 'active' : '' }, el('span', { textContent: n.displayName }),
        el('span', { className: 'cf-detail', textContent: alias && !norm(n.displayName).includes(norm(input.value)) ? `ComfyUI: ${alias}` : n.category }));
      li.dataset.type = n.type;
      li.addEventListener('pointerdown', (e) => {
        e.preventDefault();
        choose(n.type);
      });
      return li;
    }));
  };
  const outside = (e: PointerEvent): void => {
    if (!box.contains(e.target as Node)) close();
  };
  input.addEventListener('input', () => {
    active = 0;
    render();
  });
  input.addEventListener('keydown', (e) => {
    if (e.key === 'ArrowDown') active = Math.min(active + 1, shown.length - 1);
    else if (e.key === 'ArrowUp') active = Math.max(active - 1, 0);
    else if (e.key === 'Enter') return choose(shown[active]?.type);
    else if (e.key === 'Escape') return close();
    else return;
    e.preventDefault();
    render();
  });
  document.addEventListener('pointerdown', outside, true);
  document.body.append(box);
  render();
  input.focus();
  return box;
}
