// The mask editor: on a Load Image or Load Mask node, paint the part of the picture to repaint with a round
// brush (size, hardness), erase, undo, clear, invert, and save. Load Mask saves a black-and-white PNG (white =
// repaint); Load Image saves the picture with alpha = 1 - mask, which its MASK output reads back (as ComfyUI's
// mask editor does). The file goes into the inputs folder and the node's path points at it.
import type { LGraphNode } from '@comfyorg/litegraph';
import type { ParamBinding, WidgetEnv } from './widgets.ts';
import { inputViewUrl } from './api.ts';
import { el } from './dialogs.ts';
import './maskeditor.css';

/** Node types whose picture parameter gets the editor, and what their saved file holds. */
export const MASK_EDITABLE: Record<string, 'alpha' | 'grey'> = { LoadImage: 'alpha', LoadMask: 'grey' };

const UNDO_LIMIT = 30;
const DEFAULT_SIZE = 512;

export interface MaskEditorInput {
  title: string;
  /** The picture painted over (a URL), if any. */
  picture?: HTMLImageElement;
  /** The mask to start from, read from `source`'s grey level or its alpha (1 - alpha). */
  start?: { image: HTMLImageElement; from: 'grey' | 'alpha' };
}

export interface MaskResult {
  width: number;
  height: number;
  /** Values in [0, 1], row-major; 1 = repaint. */
  mask: Float32Array;
}

function loadImageElement(url: string): Promise<HTMLImageElement> {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error(`cannot load ${url}`));
    img.src = url;
  });
}

/** RGBA pixels of an image at width x height. */
function pixelsOf(img: HTMLImageElement, width: number, height: number): Uint8ClampedArray {
  const c = el('canvas', { width, height });
  const ctx = c.getContext('2d', { willReadFrequently: true })!;
  ctx.drawImage(img, 0, 0, width, height);
  return ctx.getImageData(0, 0, width, height).data;
}

/** The brush's coverage at distance d from its centre: 1 inside radius * hardness, falling linearly to 0 at radius. */
export function brushValue(d: number, radius: number, hardness: number): number {
  const inner = radius * hardness;
  if (d <= inner) return 1;
  if (d >= radius) return 0;
  return (radius - d) / (radius - inner);
}

/** A modal painting surface over the picture; resolves with the mask on save, null on cancel. */
export class MaskEditor {
  readonly width: number;
  readonly height: number;
  mask: Float32Array;
  mode: 'paint' | 'erase' = 'paint';
  size = 48;
  hardness = 0.8;
  private readonly undo: Float32Array[] = [];
  private readonly view: HTMLCanvasElement;
  private readonly overlay: HTMLCanvasElement;
  private readonly overlayData: ImageData;
  private last: [number, number] | null = null;
  private readonly backdrop: HTMLDivElement;
  private resolve!: (r: MaskResult | null) => void;
  readonly done: Promise<MaskResult | null>;

  constructor(private readonly input: MaskEditorInput) {
    const ref = input.start?.image ?? input.picture;
    this.width = ref?.naturalWidth || DEFAULT_SIZE;
    this.height = ref?.naturalHeight || DEFAULT_SIZE;
    this.mask = new Float32Array(this.width * this.height);
    if (input.start) {
      const px = pixelsOf(input.start.image, this.width, this.height);
      for (let i = 0; i < this.mask.length; i++) {
        this.mask[i] = input.start.from === 'alpha' ? 1 - px[4 * i + 3]! / 255 : ((px[4 * i]! + px[4 * i + 1]! + px[4 * i + 2]!) / 765) * (px[4 * i + 3]! / 255);
      }
    }
    this.done = new Promise((r) => (this.resolve = r));
    this.view = el('canvas', { width: this.width, height: this.height, className: 'cf-mask-canvas' });
    this.overlay = el('canvas', { width: this.width, height: this.height });
    this.overlayData = new ImageData(this.width, this.height);
    this.backdrop = this.build();
    this.refresh(0, 0, this.width, this.height);
  }

  private button(action: string, label: string, title: string): HTMLButtonElement {
    const b = el('button', { type: 'button', textContent: label, title });
    b.dataset.mask = action;
    b.addEventListener('click', () => this.action(action));
    return b;
  }

  private slider(name: string, label: string, min: number, max: number, value: number, set: (v: number) => void): HTMLLabelElement {
    const input = el('input', { type: 'range', min: String(min), max: String(max), value: String(value) });
    input.dataset.mask = name;
    const shown = el('span', { textContent: String(value) });
    input.addEventListener('input', () => {
      set(Number(input.value));
      shown.textContent = input.value;
    });
    return el('label', { className: 'cf-mask-slider' }, `${label} `, input, shown);
  }

  private build(): HTMLDivElement {
    const backdrop = el('div', { className: 'cf-modal-backdrop cf-mask-backdrop' });
    const box = el('div', { className: 'cf-modal cf-mask-editor', role: 'dialog' } as Partial<HTMLDivElement>);
    const tools = el('div', { className: 'cf-mask-tools' },
      this.button('paint', '● paint', 'Paint the part to repaint (white in the mask)'),
      this.button('erase', '⌫ erase', 'Erase: keep the picture here'),
      this.slider('size', 'size', 1, 256, this.size, (v) => (this.size = v)),
      this.slider('hardness', 'hardness', 0, 100, Math.round(this.hardness * 100), (v) => (this.hardness = v / 100)),
      this.button('undo', '↶ undo', 'Undo the last stroke (Ctrl+Z)'),
      this.button('clear', 'clear', 'Clear the mask'),
      this.button('invert', 'invert', 'Invert the mask'),
    );
    const buttons = el('div', { className: 'cf-modal-buttons' }, this.button('cancel', 'Cancel', 'Close without saving'), this.button('save', 'Save mask', 'Save into the inputs folder'));
    buttons.lastElementChild!.classList.add('primary');
    box.append(el('h2', { textContent: this.input.title }), tools, el('div', { className: 'cf-mask-stage' }, this.view), buttons);
    backdrop.append(box);
    this.view.addEventListener('pointerdown', (e) => this.pointer(e, 'down'));
    this.view.addEventListener('pointermove', (e) => this.pointer(e, 'move'));
    this.view.addEventListener('pointerup', (e) => this.pointer(e, 'up'));
    this.view.addEventListener('pointerleave', () => (this.last = null));
    backdrop.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') this.action('cancel');
      if (e.key === 'z' && (e.ctrlKey || e.metaKey)) this.action('undo');
      e.stopPropagation();
    });
    this.markMode();
    return backdrop;
  }

  open(): Promise<MaskResult | null> {
    document.body.append(this.backdrop);
    this.backdrop.tabIndex = -1;
    this.backdrop.focus();
    return this.done;
  }

  private markMode(): void {
    for (const b of this.backdrop?.querySelectorAll<HTMLButtonElement>('[data-mask="paint"], [data-mask="erase"]') ?? []) {
      b.classList.toggle('active', b.dataset.mask === this.mode);
    }
  }

  private snapshot(): void {
    this.undo.push(this.mask.slice());
    if (this.undo.length > UNDO_LIMIT) this.undo.shift();
  }

  action(name: string): void {
    switch (name) {
      case 'paint':
      case 'erase':
        this.mode = name;
        this.markMode();
        return;
      case 'undo': {
        const prev = this.undo.pop();
        if (prev) this.mask = prev;
        break;
      }
      case 'clear':
        this.snapshot();
        this.mask = new Float32Array(this.mask.length);
        break;
      case 'invert':
        this.snapshot();
        this.mask = this.mask.map((v) => 1 - v);
        break;
      case 'cancel':
      case 'save':
        this.backdrop.remove();
        this.resolve(name === 'save' ? { width: this.width, height: this.height, mask: this.mask } : null);
        return;
      default:
        return;
    }
    this.refresh(0, 0, this.width, this.height);
  }

  /** Picture pixel under a pointer event. */
  private at(e: PointerEvent): [number, number] {
    const r = this.view.getBoundingClientRect();
    return [((e.clientX - r.left) * this.width) / r.width, ((e.clientY - r.top) * this.height) / r.height];
  }

  private pointer(e: PointerEvent, kind: 'down' | 'move' | 'up'): void {
    if (kind === 'up') {
      this.last = null;
      return;
    }
    if (kind === 'down') {
      this.view.setPointerCapture?.(e.pointerId);
      this.snapshot();
      this.last = this.at(e);
      this.stamp(...this.last);
      return;
    }
    if (!this.last || (e.buttons & 1) === 0) return;
    // Stamps along the segment, a quarter of the radius apart, so fast strokes stay continuous.
    const [x, y] = this.at(e);
    const [lx, ly] = this.last;
    const step = Math.max(1, this.size / 8);
    const n = Math.max(1, Math.ceil(Math.hypot(x - lx, y - ly) / step));
    for (let i = 1; i <= n; i++) this.stamp(lx + ((x - lx) * i) / n, ly + ((y - ly) * i) / n);
    this.last = [x, y];
  }

  /** One dab of the round brush centred on (cx, cy). */
  stamp(cx: number, cy: number): void {
    const radius = this.size / 2;
    const x0 = Math.max(0, Math.floor(cx - radius));
    const y0 = Math.max(0, Math.floor(cy - radius));
    const x1 = Math.min(this.width - 1, Math.ceil(cx + radius));
    const y1 = Math.min(this.height - 1, Math.ceil(cy + radius));
    for (let y = y0; y <= y1; y++) {
      for (let x = x0; x <= x1; x++) {
        const v = brushValue(Math.hypot(x + 0.5 - cx, y + 0.5 - cy), radius, this.hardness);
        if (v <= 0) continue;
        const i = y * this.width + x;
        this.mask[i] = this.mode === 'paint' ? Math.max(this.mask[i]!, v) : Math.min(this.mask[i]!, 1 - v);
      }
    }
    if (x1 >= x0 && y1 >= y0) this.refresh(x0, y0, x1 - x0 + 1, y1 - y0 + 1);
  }

  /** Redraws a rectangle: the picture, then the mask as a red veil. */
  private refresh(x: number, y: number, w: number, h: number): void {
    const d = this.overlayData.data;
    for (let yy = y; yy < y + h; yy++) {
      for (let xx = x; xx < x + w; xx++) {
        const i = yy * this.width + xx;
        d[4 * i] = 255;
        d[4 * i + 1] = 48;
        d[4 * i + 2] = 48;
        d[4 * i + 3] = Math.round(this.mask[i]! * 160);
      }
    }
    this.overlay.getContext('2d')!.putImageData(this.overlayData, 0, 0, x, y, w, h);
    const ctx = this.view.getContext('2d')!;
    ctx.clearRect(x, y, w, h);
    if (this.input.picture) ctx.drawImage(this.input.picture, x * this.input.picture.naturalWidth / this.width, y * this.input.picture.naturalHeight / this.height,
      w * this.input.picture.naturalWidth / this.width, h * this.input.picture.naturalHeight / this.height, x, y, w, h);
    else {
      ctx.fillStyle = '#404040';
      ctx.fillRect(x, y, w, h);
    }
    ctx.drawImage(this.overlay, x, y, w, h, x, y, w, h);
  }
}

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function pngChunk(type: string, data: Uint8Array): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(12 + data.length);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  dv.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

/**
 * 8-bit RGBA pixels as a PNG. Written here rather than through a canvas, whose premultiplied alpha would
 * lose the colour of the pixels the mask makes transparent (the picture under the mask must survive).
 */
export async function encodePngRgba(width: number, height: number, rgba: Uint8Array): Promise<Blob> {
  const raw = new Uint8Array(height * (1 + 4 * width)); // filter byte 0 (none) before each row
  for (let y = 0; y < height; y++) raw.set(rgba.subarray(y * 4 * width, (y + 1) * 4 * width), y * (1 + 4 * width) + 1);
  const zlib = new Uint8Array(await new Response(new Blob([raw]).stream().pipeThrough(new CompressionStream('deflate'))).arrayBuffer());
  const ihdr = new Uint8Array(13);
  const dv = new DataView(ihdr.buffer);
  dv.setUint32(0, width);
  dv.setUint32(4, height);
  ihdr.set([8, 6, 0, 0, 0], 8); // 8 bits, RGBA, deflate, no filter method, no interlace
  const signature = new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]);
  return new Blob([signature, pngChunk('IHDR', ihdr), pngChunk('IDAT', zlib), pngChunk('IEND', new Uint8Array())], { type: 'image/png' });
}

/** Encodes the saved file: a grey mask (white = repaint), or the picture with alpha = 1 - mask. */
export function encodeMask(result: MaskResult, kind: 'alpha' | 'grey', picture?: HTMLImageElement): Promise<Blob> {
  const { width, height, mask } = result;
  const out = new Uint8Array(4 * width * height);
  const rgb = kind === 'alpha' && picture ? pixelsOf(picture, width, height) : undefined;
  for (let i = 0; i < mask.length; i++) {
    const v = Math.round(Math.min(1, Math.max(0, mask[i]!)) * 255);
    if (rgb) out.set([rgb[4 * i]!, rgb[4 * i + 1]!, rgb[4 * i + 2]!, 255 - v], 4 * i);
    else out.set([v, v, v, 255], 4 * i);
  }
  return encodePngRgba(width, height, out);
}

/** A picture path as a saved-mask file name: "scene.png" -> "scene_mask.png". */
function maskFileName(path: string, kind: 'alpha' | 'grey'): string {
  const base = (path.split('/').pop() ?? '').replace(/\.[^.]+$/, '').replace(/_(mask|painted)(_\d+)?$/, '') || 'mask';
  return `${base}_${kind === 'grey' ? 'mask' : 'painted'}.png`;
}

type Host = LGraphNode & { params?: Map<string, ParamBinding> };

/** The picture of the first Load Image in the graph: what a Load Mask paints over. */
function scenePicture(node: Host): string | undefined {
  for (const n of (node.graph?._nodes ?? []) as Host[]) {
    if (n.type !== 'LoadImage') continue;
    const v = n.params?.get('path')?.get();
    if (typeof v === 'string' && v) return v;
  }
  return undefined;
}

/** Adds the "edit mask" button under a Load Image / Load Mask picture parameter. */
export function addMaskEditorButton(node: Host, binding: ParamBinding, env: WidgetEnv): void {
  const kind = MASK_EDITABLE[node.type ?? ''];
  if (!kind) return;
  const button = node.addWidget('button', `${binding.info.name}_mask`, undefined, () => void edit(), {});
  button.label = '✎ edit mask…';
  (button as { serialize?: boolean }).serialize = false;
  binding.extras.push(button);

  async function edit(): Promise<void> {
    const path = String(binding.get() ?? '');
    try {
      const current = path ? await loadImageElement(inputViewUrl(path)) : undefined;
      const scene = kind === 'alpha' ? current : await optionalPicture(scenePicture(node));
      const editor = new MaskEditor({
        title: `Mask for ${node.title}${path ? ` (${path})` : ''}`,
        picture: scene,
        start: current ? { image: current, from: kind } : undefined,
      });
      const result = await editor.open();
      if (!result) return;
      env.notify('saving the mask…');
      const blob = await encodeMask(result, kind, scene);
      const value = await env.upload(new File([blob], maskFileName(path, kind), { type: 'image/png' }));
      binding.set(value);
      await env.refreshInputImages();
      env.notify(`saved the mask as ${value}`);
      env.changed();
      node.setDirtyCanvas(true, true);
    } catch (err) {
      env.notify(`mask editor: ${(err as Error).message}`, 'error');
    }
  }
}

async function optionalPicture(path: string | undefined): Promise<HTMLImageElement | undefined> {
  if (!path) return undefined;
  try {
    return await loadImageElement(inputViewUrl(path));
  } catch {
    return undefined;
  }
}
