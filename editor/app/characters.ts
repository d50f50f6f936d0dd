// Saved characters in the editor: a Characters panel with thumbnails below the palette (drag one onto
// the canvas, or click it, for its Saved Character node wired to the graph's Load Models), and "Save
// Character" in the context menu of a Load Character node (a Save Character node wired to the picture, the
// models and, when there is one, the Adapter Fuse that encodes that picture).
import type { LGraph, LGraphCanvas, LGraphNode } from '@comfyorg/litegraph';
import { el } from './dialogs.ts';
import { isCharflowNode, type CharflowNode } from './nodes.ts';
import './characters.css';

export const CHARACTER_MIME = 'application/x-charflow-character';

export interface SavedCharacterItem {
  name: string;
  set: string;
  bytes: number;
  created: string;
}

export function thumbnailUrl(name: string): string {
  return `/api/characters/${encodeURIComponent(name)}/thumbnail`;
}

export interface CharactersHost {
  graph: LGraph;
  canvas: LGraphCanvas;
  addNode(type: string, pos?: [number, number]): LGraphNode | null;
  toGraph(clientX: number, clientY: number): [number, number];
  notify(message: string, kind?: 'info' | 'error' | 'ok'): void;
}

/** A character name from a picture path: its base name with anything but letters, digits, . _ - replaced. */
export function characterNameFor(path: string): string {
  const base = path.split('/').pop()!.replace(/\.[A-Za-z0-9]+$/, '');
  const name = base.replace(/[^A-Za-z0-9._-]+/g, '-').replace(/^[^A-Za-z0-9]+/, '').slice(0, 64);
  return name || 'character';
}

function byType(graph: LGraph, type: string): CharflowNode[] {
  return (graph._nodes as LGraphNode[]).filter((n): n is CharflowNode => isCharflowNode(n) && n.type === type);
}

/** The node linked to `node`'s input `name`, if any. */
function upstream(node: CharflowNode, name: string): CharflowNode | undefined {
  const i = node.inputIndex(name);
  const from = i < 0 ? null : node.getInputNode(i);
  return isCharflowNode(from) ? from : undefined;
}

function link(from: CharflowNode | undefined, output: string, to: CharflowNode, input: string): void {
  if (!from) return;
  const o = from.outputIndex(output);
  const i = to.inputIndex(input);
  if (o >= 0 && i >= 0) from.connect(o, to, i);
}

export class CharactersPanel {
  readonly element: HTMLElement;
  private readonly list: HTMLElement;
  private items: SavedCharacterItem[] = [];

  constructor(private readonly host: CharactersHost) {
    const refresh = el('button', { className: 'cf-btn', textContent: '↻', title: 'Refresh the list of saved characters' });
    refresh.addEventListener('click', () => void this.refresh());
    this.list = el('div', { className: 'cf-characters-list' });
    this.element = el('section', { className: 'cf-characters' }, el('div', { className: 'cf-characters-head' }, el('span', { textContent: 'Characters' }), refresh), this.list);
    this.render();
  }

  /** Names of the saved characters, as the Saved Character node's list offers them. */
  names(): string[] {
    return this.items.map((c) => c.name);
  }

  async refresh(): Promise<void> {
    try {
      const res = await fetch('/api/characters', { headers: { accept: 'application/json' } });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      this.items = ((await res.json()) as { items: SavedCharacterItem[] }).items;
    } catch (err) {
      this.host.notify(`could not list saved characters: ${(err as Error).message}`, 'error');
    }
    this.render();
  }

  private render(): void {
    this.list.replaceChildren();
    if (!this.items.length) {
      this.list.append(el('p', { className: 'cf-empty', textContent: 'No saved characters yet: right-click a Load Character node, Save Character.' }));
      return;
    }
    for (const c of this.items) {
      const item = el('div', { className: 'cf-character', draggable: true, tabIndex: 0, title: `${c.name}: model set ${c.set}, ${(c.bytes / 1024).toFixed(0)} KiB, saved ${c.created}` },
        el('img', { src: `${thumbnailUrl(c.name)}?t=${encodeURIComponent(c.created)}`, alt: c.name, draggable: false }),
        el('span', { className: 'cf-character-name', textContent: c.name }),
        el('span', { className: 'cf-character-set', textContent: c.set }));
      item.dataset.name = c.name;
      item.addEventListener('dragstart', (e) => {
        e.dataTransfer?.setData(CHARACTER_MIME, c.name);
        e.dataTransfer?.setData('text/plain', c.name);
      });
      item.addEventListener('click', () => void this.addCharacterNode(c.name));
      this.list.append(item);
    }
  }

  /** A Saved Character node for `name` (at `pos`), its models input linked to the graph's Load Models. */
  addCharacterNode(name: string, pos?: [number, number]): CharflowNode | undefined {
    const node = this.host.addNode('SavedCharacter', pos);
    if (!isCharflowNode(node)) return undefined;
    node.params.get('name')?.set(name);
    link(byType(this.host.graph, 'LoadModels')[0], 'models', node, 'models');
    this.host.notify(`added saved character "${name}"`, 'ok');
    return node;
  }

  /** Dropping a panel entry on the canvas adds its node there. */
  installCanvasDrop(canvasEl: HTMLCanvasElement): void {
    canvasEl.addEventListener('dragover', (e) => {
      if (e.dataTransfer?.types.includes(CHARACTER_MIME)) e.preventDefault();
    });
    canvasEl.addEventListener('drop', (e) => {
      const name = e.dataTransfer?.getData(CHARACTER_MIME);
      if (!name) return;
      e.preventDefault();
      e.stopPropagation();
      this.addCharacterNode(name, this.host.toGraph(e.clientX, e.clientY));
    });
  }

  /** "Save Character" first in a Load Character node's context menu. */
  installContextMenu(): void {
    const canvas = this.host.canvas;
    const original = canvas.getNodeMenuOptions.bind(canvas);
    canvas.getNodeMenuOptions = ((node: LGraphNode) => {
      const options = original(node);
      if (isCharflowNode(node) && node.type === 'LoadCharacter') {
        options.unshift({ content: 'Save Character', callback: () => void this.saveCharacterFrom(node) }, null);
      }
      return options;
    }) as typeof canvas.getNodeMenuOptions;
  }

  /** Adds a Save Character node for a Load Character node: reference, models and (when found) its Adapter Fuse. */
  saveCharacterFrom(source: CharflowNode): CharflowNode | undefined {
    const node = this.host.addNode('SaveCharacter', [source.pos[0], source.pos[1] + source.size[1] + 60]);
    if (!isCharflowNode(node)) return undefined;
    node.params.get('name')?.set(characterNameFor(String(source.params.get('path')?.get() ?? '')));
    link(source, 'image', node, 'reference');
    const encodes = (f: CharflowNode, input: string): boolean => {
      const encoder = upstream(f, input);
      return encoder !== undefined && upstream(encoder, 'image') === source;
    };
    const fuse = byType(this.host.graph, 'AdapterFuse').find((f) => encodes(f, 'siglip') && encodes(f, 'dinov2'));
    link(fuse, 'character', node, 'character');
    const models = fuse ? upstream(fuse, 'models') : byType(this.host.graph, 'LoadModels')[0];
    link(models, 'models', node, 'models');
    this.host.notify(`added Save Character for ${String(source.params.get('path')?.get() ?? 'the picture')}: run to save it`, 'ok');
    return node;
  }
}
