// charflow node types on litegraph: one class per catalogue entry, with typed sockets, schema widgets
// (each parameter can also take a link of its socket type) and the run state drawn on the node.
import { LGraphCanvas, LGraphNode, LiteGraph, type IContextMenuValue, type INodeOutputSlot } from '@comfyorg/litegraph';
import type { CatalogNode, ImageRef } from '../protocol.ts';
import { type ParamBinding, type WidgetEnv, addParamWidget, wrapText } from './widgets.ts';
import { paramInfo } from './schema.ts';
import { inputViewUrl } from './api.ts';
import { socketsMatch } from '../../engine/workflow/types.ts';
import { addMaskEditorButton } from './maskeditor.ts';

const SOCKET_COLORS: Record<string, string> = {
  MODELS: '#b39ddb',
  IMAGE: '#64b5f6',
  VISION_FEATURES: '#4dd0e1',
  CHARACTER: '#f48fb1',
  CHARACTERS: '#f06292',
  'CHARACTER,CHARACTERS': '#f48fb1',
  CONDITIONING: '#ffb74d',
  LATENT: '#ef9a9a',
  MASK: '#e0e0e0',
  INT: '#81c784',
  FLOAT: '#aed581',
  STRING: '#e0e0e0',
  BOOLEAN: '#90a4ae',
};

/** A stable colour per socket type, so unknown types still get distinct colours. */
export function socketColor(type: string): string {
  if (SOCKET_COLORS[type]) return SOCKET_COLORS[type];
  let h = 0;
  for (const c of type) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return `hsl(${h % 360}, 55%, 65%)`;
}

const CATEGORY_COLORS: Record<string, [string, string]> = {
  loaders: ['#3d3356', '#2b2733'],
  character: ['#5a2f45', '#30272c'],
  conditioning: ['#5b4423', '#302b25'],
  sampling: ['#2f4a5e', '#262d33'],
  latent: ['#5a3131', '#302727'],
  image: ['#2d4d3a', '#262f2a'],
  mask: ['#4a4a4a', '#2c2c2c'],
};

export interface RunView {
  state?: 'queued' | 'running' | 'done' | 'cached' | 'failed' | 'skipped';
  step?: number;
  total?: number;
  ms?: number;
  preview?: HTMLImageElement;
  images: { ref: ImageRef; img: HTMLImageElement }[];
  error?: string;
  /** The node's summary of its outputs (e.g. identity scores), one line per entry. */
  summary?: string[];
}

const imageCache = new Map<string, HTMLImageElement>();

/** Loads an image once per URL and redraws the canvas when it arrives. */
export function loadImage(url: string, onLoad: () => void): HTMLImageElement {
  let img = imageCache.get(url);
  if (!img) {
    img = new Image();
    img.addEventListener('load', onLoad);
    img.src = url;
    if (!url.startsWith('data:')) imageCache.set(url, img);
  }
  return img;
}

let environment: WidgetEnv | null = null;

export class CharflowNode extends LGraphNode {
  readonly def: CatalogNode;
  readonly params = new Map<string, ParamBinding>();
  run: RunView = { images: [] };
  /** Keys of the workflow node's `ui` that the editor does not use, kept for saving. */
  extraUi: Record<string, unknown> = {};

  constructor(title: string | undefined, def: CatalogNode) {
    super(title ?? def.displayName, def.type);
    this.def = def;
    const env = environment!;
    const [color, bgcolor] = CATEGORY_COLORS[def.category] ?? ['#3a3a3a', '#2a2a2a'];
    this.color = color;
    this.bgcolor = bgcolor;
    for (const [name, decl] of Object.entries(def.inputs)) {
      const c = socketColor(decl.type);
      this.addInput(name, decl.type, { color_on: c, color_off: c, ...(decl.optional ? { label: `${name}?` } : {}) });
    }
    for (const [name, raw] of Object.entries(def.params)) {
      const binding = addParamWidget(this, paramInfo(name, raw), env);
      this.params.set(name, binding);
      // The parameter's socket: hidden until a link is dragged near or connected, then it replaces the widget.
      const c = socketColor(raw.socket);
      this.addInput(name, raw.socket, { widget: { name }, color_on: c, color_off: c });
    }
    for (const b of this.params.values()) if (b.info.format === 'image') addMaskEditorButton(this, b, env); // Load Image, Load Mask
    for (const [name, decl] of Object.entries(def.outputs)) {
      const c = socketColor(decl.type);
      this.addOutput(name, decl.type, { color_on: c, color_off: c });
    }
    this.strokeStyles.running = function (this: LGraphNode) {
      return (this as CharflowNode).run.state === 'running' ? { color: '#4fb3ff', lineWidth: 3, padding: 7 } : undefined;
    };
    this.size = this.computeSize();
    this.size[0] = Math.max(this.size[0], 240);
    // Room for the thumbnail of the chosen picture (workflows may save another size).
    if ([...this.params.values()].some((b) => b.info.format === 'image')) this.size[1] += 160;
  }

  /** Output nodes: "Open image" shows what the last run wrote, full size (editor/app/gallery.ts). */
  override getExtraMenuOptions = (): IContextMenuValue<unknown>[] => {
    if (!this.def.output) return [];
    const refs = this.run.images.map((i) => i.ref);
    return [{ content: 'Open image', disabled: refs.length === 0, callback: () => environment?.openImages?.(refs) }];
  };

  override onConnectInput = (targetSlot: number, type: unknown, output: INodeOutputSlot | unknown): boolean => {
    const want = String(this.inputs[targetSlot]?.type ?? '');
    const have = String((output as INodeOutputSlot | undefined)?.type ?? type);
    return socketsMatch(have, want);
  };

  /** Input slot index by name. */
  inputIndex(name: string): number {
    return this.inputs.findIndex((s) => s.name === name);
  }

  outputIndex(name: string): number {
    return this.outputs.findIndex((s) => s.name === name);
  }

  clearRun(): void {
    this.run = { images: [] };
    this.has_errors = false;
  }

  /** Top of the free area below the widgets (node coordinates). */
  contentTop(): number {
    let top = Math.max(this.inputs.filter((s) => !s.widget).length, this.outputs.length) * LiteGraph.NODE_SLOT_HEIGHT + 6;
    for (const w of this.widgets ?? []) {
      if (w.hidden) continue;
      top = Math.max(top, (w.y ?? 0) + (w.computedHeight ?? LiteGraph.NODE_WIDGET_HEIGHT + 4));
    }
    return top + 4;
  }

  /** The picture to show inside the node: finished images, else the live preview, else the chosen input image. */
  private shownImage(): HTMLImageElement | undefined {
    const redraw = (): void => this.graph?.setDirtyCanvas(true, false);
    if (this.run.images.length) return this.run.images[this.run.images.length - 1]!.img;
    if (this.run.preview) return this.run.preview;
    for (const b of this.params.values()) {
      const v = b.get();
      if (b.info.format === 'image' && typeof v === 'string' && v && !this.inputs.find((s) => s.name === b.info.name)?.link) {
        return loadImage(inputViewUrl(v), redraw);
      }
    }
    return undefined;
  }

  override onDrawForeground = (ctx: CanvasRenderingContext2D): void => {
    if (this.flags.collapsed) return;
    // litegraph lays the widgets out after this hook: on the first frame of a freshly opened workflow they
    // have no place yet, and the picture would go under them (drawn over in stripes). Lay them out first.
    this._setConcreteSlots();
    this.arrange();
    let below = this.size[1] + 8;
    const img = this.shownImage();
    if (img?.complete && img.naturalWidth) below = this.drawImage(ctx, img, below);
    this.drawRunBadge(ctx);
    if (this.run.state === 'running' && this.run.total) this.drawProgress(ctx);
    if (this.run.summary?.length && !this.run.error) this.drawSummary(ctx, below);
    if (this.run.error) this.drawError(ctx, below);
  };

  /**
   * Draws the picture in the free space under the widgets; run results that do not fit there go in a
   * panel under the node (so a run never resizes the node, which would change the workflow).
   * Returns where the next thing under the node goes.
   */
  private drawImage(ctx: CanvasRenderingContext2D, img: HTMLImageElement, below: number): number {
    const [w, h] = this.size;
    const top = this.contentTop();
    const reserve = this.run.state === 'running' ? 14 : 8;
    let areaX = 10;
    let areaY = top;
    let areaW = w - 20;
    let areaH = h - top - reserve;
    if (areaH < 64) {
      // No room inside (a workflow saved a small node): results and the chosen picture alike go in a
      // Panel under the node, as wide as the node, at most 240 tall.
      areaX = 0;
      areaY = below;
      areaW = w;
      areaH = Math.min(240, (w * img.naturalHeight) / img.naturalWidth);
      ctx.fillStyle = 'rgba(20, 20, 20, 0.9)';
      ctx.strokeStyle = '#444';
      ctx.beginPath();
      ctx.roundRect(areaX, areaY, areaW, areaH + 12, 6);
      ctx.fill();
      ctx.stroke();
      areaX += 6;
      areaY += 6;
      areaW -= 12;
      below += areaH + 20;
    }
    const s = Math.min(areaW / img.naturalWidth, areaH / img.naturalHeight);
    const dw = img.naturalWidth * s;
    const dh = img.naturalHeight * s;
    // Small images (tiny model outputs, previews) stay crisp when enlarged.
    ctx.imageSmoothingEnabled = s < 1;
    ctx.drawImage(img, areaX + (areaW - dw) / 2, areaY + (areaH - dh) / 2, dw, dh);
    ctx.imageSmoothingEnabled = true;
    if (this.run.images.length > 1) {
      ctx.fillStyle = '#ccc';
      ctx.font = '11px sans-serif';
      ctx.textAlign = 'right';
      ctx.fillText(`${this.run.images.length} images`, w - 10, h - 4);
      ctx.textAlign = 'left';
    }
    return below;
  }

  /** State and timing above the node's title bar (never over the title itself). */
  private drawRunBadge(ctx: CanvasRenderingContext2D): void {
    const { state, ms } = this.run;
    let text = '';
    let color = '#aaa';
    if (state === 'running') {
      text = this.run.total ? `running ${this.run.step ?? 0}/${this.run.total}` : 'running…';
      color = '#4fb3ff';
    } else if (state === 'done') {
      text = ms === undefined ? '✓ done' : `✓ ${ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`}`;
      color = '#7bd88f';
    } else if (state === 'cached') {
      text = '✓ cached';
      color = '#8fb3a0';
    } else if (state === 'failed') {
      text = '✗ failed';
      color = '#ff6b6b';
    } else if (state === 'skipped') text = 'skipped';
    else if (state === 'queued') text = 'waiting';
    if (!text) return;
    ctx.font = '11px sans-serif';
    ctx.textAlign = 'right';
    ctx.fillStyle = color;
    ctx.fillText(text, this.size[0] - 4, -LiteGraph.NODE_TITLE_HEIGHT - 6);
    ctx.textAlign = 'left';
  }

  private drawProgress(ctx: CanvasRenderingContext2D): void {
    const [w, h] = this.size;
    const frac = Math.min(1, (this.run.step ?? 0) / (this.run.total ?? 1));
    const x = 8;
    const y = h - 9;
    const bw = w - 16;
    ctx.fillStyle = '#1b1b1b';
    ctx.beginPath();
    ctx.roundRect(x, y, bw, 5, 2.5);
    ctx.fill();
    ctx.fillStyle = '#4fb3ff';
    ctx.beginPath();
    ctx.roundRect(x, y, Math.max(5, bw * frac), 5, 2.5);
    ctx.fill();
  }

  private drawSummary(ctx: CanvasRenderingContext2D, y: number): void {
    const w = Math.max(this.size[0], 220);
    const lines = this.run.summary!.slice(0, 12);
    ctx.font = '12px monospace';
    ctx.fillStyle = 'rgba(20, 20, 20, 0.9)';
    ctx.strokeStyle = '#444';
    ctx.beginPath();
    ctx.roundRect(0, y, w, lines.length * 15 + 10, 6);
    ctx.fill();
    ctx.stroke();
    ctx.fillStyle = '#ddd';
    lines.forEach((line, i) => ctx.fillText(line, 8, y + 17 + i * 15));
  }

  private drawError(ctx: CanvasRenderingContext2D, y: number): void {
    const w = Math.max(this.size[0], 220);
    ctx.font = '12px sans-serif';
    const lines = wrapText(ctx, this.run.error!, w - 16, 6);
    const boxH = lines.length * 15 + 10;
    ctx.fillStyle = 'rgba(120, 20, 20, 0.92)';
    ctx.strokeStyle = '#ff6b6b';
    ctx.beginPath();
    ctx.roundRect(0, y, w, boxH, 6);
    ctx.fill();
    ctx.stroke();
    ctx.fillStyle = '#fff';
    lines.forEach((line, i) => ctx.fillText(line, 8, y + 17 + i * 15));
  }
}

/** Registers one litegraph node type per catalogue entry (replacing earlier registrations). */
export function registerCatalog(catalog: CatalogNode[], env: WidgetEnv): void {
  environment = env;
  for (const def of catalog) {
    const NodeType = class extends CharflowNode {
      static override title = def.displayName || def.type;
      constructor(title?: string) {
        super(title, def);
      }
    };
    LiteGraph.registerNodeType(def.type, NodeType);
    (NodeType as unknown as { category: string }).category = def.category;
    const c = socketColor;
    for (const t of [...Object.values(def.inputs), ...Object.values(def.outputs)].map((s) => s.type)) {
      LGraphCanvas.link_type_colors[t] = c(t);
    }
  }
}

/** Whether a litegraph node is one of ours (and not a placeholder for an unknown type). */
export function isCharflowNode(node: LGraphNode | null | undefined): node is CharflowNode {
  return node instanceof CharflowNode;
}
