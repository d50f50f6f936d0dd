// The node palette: node types by category with a search box. A click adds the node in the middle
// of the view; dragging an entry onto the canvas drops it there.
import type { CatalogNode } from '../protocol.ts';
import { el } from './dialogs.ts';

export const PALETTE_MIME = 'application/x-charflow-node';

export interface Palette {
  element: HTMLElement;
  setCatalog(nodes: CatalogNode[]): void;
}

/** Every query word is inside a name, or starts a word of the category or description. */
function matches(node: CatalogNode, q: string): boolean {
  if (!q) return true;
  const names = `${node.type} ${node.displayName}`.toLowerCase();
  const words = `${node.category} ${node.description}`.toLowerCase().split(/[^\p{L}\p{N}]+/u);
  return q.split(/\s+/).every((w) => names.includes(w) || words.some((d) => d.startsWith(w)));
}

export function createPalette(onAdd: (type: string) => void): Palette {
  const search = el('input', { type: 'search', placeholder: 'Search nodes…', className: 'cf-search', spellcheck: false });
  const list = el('div', { className: 'cf-palette-list' });
  const element = el('aside', { className: 'cf-palette' }, el('div', { className: 'cf-palette-head' }, search), list);
  const collapsed = new Set<string>();
  let catalog: CatalogNode[] = [];

  const render = (): void => {
    const q = search.value.trim().toLowerCase();
    const byCategory = new Map<string, CatalogNode[]>();
    for (const n of catalog) {
      if (!matches(n, q)) continue;
      const list = byCategory.get(n.category) ?? [];
      list.push(n);
      byCategory.set(n.category, list);
    }
    list.replaceChildren();
    if (!byCategory.size) list.append(el('p', { className: 'cf-empty', textContent: catalog.length ? 'No node matches.' : 'Waiting for the server…' }));
    for (const [category, nodes] of [...byCategory].sort(([a], [b]) => a.localeCompare(b))) {
      const open = q !== '' || !collapsed.has(category);
      const head = el('button', { className: `cf-category${open ? ' open' : ''}`, textContent: category });
      head.addEventListener('click', () => {
        if (collapsed.has(category)) collapsed.delete(category);
        else collapsed.add(category);
        render();
      });
      list.append(head);
      if (!open) continue;
      for (const n of nodes.sort((a, b) => (a.displayName || a.type).localeCompare(b.displayName || b.type))) {
        const item = el(
          'div',
          { className: 'cf-node-item', title: n.description, draggable: true, tabIndex: 0 },
          el('span', { className: 'cf-node-name', textContent: n.displayName || n.type }),
          ...(n.output ? [el('span', { className: 'cf-badge', textContent: 'output' })] : []),
        );
        item.dataset.type = n.type;
        item.addEventListener('click', () => onAdd(n.type));
        item.addEventListener('keydown', (e) => {
          if (e.key === 'Enter') onAdd(n.type);
        });
        item.addEventListener('dragstart', (e) => {
          e.dataTransfer?.setData(PALETTE_MIME, n.type);
          e.dataTransfer?.setData('text/plain', n.type);
        });
        list.append(item);
      }
    }
  };
  search.addEventListener('input', render);
  search.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') {
      const first = list.querySelector<HTMLElement>('.cf-node-item');
      if (first?.dataset.type) onAdd(first.dataset.type);
    }
  });
  render();
  return {
    element,
    setCatalog(nodes) {
      catalog = nodes;
      render();
    },
  };
}
