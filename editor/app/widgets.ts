// Widgets generated from each parameter's schema: numbers (min/max/step), text, multiline prompts,
// lists (enum), toggles, seeds with randomise, image pickers with upload, colours.
import { BaseWidget, LiteGraph, type LGraphNode } from '@comfyorg/litegraph';
import type { IBaseWidget } from '@comfyorg/litegraph/dist/types/widgets';
import type { ImageRef } from '../protocol.ts';
import type { DrawWidgetOptions, WidgetEventOptions } from '@comfyorg/litegraph/dist/widgets/BaseWidget';
import { editText } from './textedit.ts';
import { type Constant, type ParamInfo, initialValue, numberPrecision, numberStep, randomSeed, snapNumber } from './schema.ts';

export interface WidgetEnv {
  /** Images in the server's inputs folder (cached; refreshed on demand). */
  inputImages(): string[];
  refreshInputImages(): Promise<void>;
  upload(file: File): Promise<string>;
  /** LoRA files in the server's loras folder (cached; refreshed on demand). */
  loraFiles(): string[];
  refreshLoraFiles(): Promise<void>;
  uploadLora(file: File): Promise<string>;
  /** A value changed through the UI. */
  changed(): void;
  /** Shows output pictures full size (the gallery). */
  openImages?(images: ImageRef[]): void;
  /** Names of the installed model sets (for model-set parameters). */
  modelSets?(): string[];
  /** Shows a short message in the status line. */
  notify(message: string, kind?: 'info' | 'error'): void;
  /** Names of the saved characters (editor/app/characters.ts), for 'character' parameters. */
  savedCharacters?(): string[];
}

type Widget = IBaseWidget;

/** A combo's choices: the server's list, keeping the current value visible when it is not (or no longer) in it. */
function withCurrent(list: readonly string[], widget: Widget | undefined): string[] {
  const current = String(widget?.value ?? '');
  return current && !list.includes(current) ? [current, ...list] : list.length ? [...list] : [current];
}

/** One parameter's widget, with its value as the workflow stores it. */
export interface ParamBinding {
  info: ParamInfo;
  widget: Widget;
  get(): Constant;
  set(value: Constant): void;
  /** Extra widgets that belong to this parameter (seed buttons, upload). */
  extras: Widget[];
}

const label = (name: string): string => name.replace(/_/g, ' ');

/** Word-wraps `text` to lines that fit `width` (keeps explicit newlines). */
export function wrapText(ctx: CanvasRenderingContext2D, text: string, width: number, maxLines: number): string[] {
  const out: string[] = [];
  for (const para of text.split('\n')) {
    let line = '';
    for (const word of para.split(/(\s+)/)) {
      const next = line + word;
      if (ctx.measureText(next).width > width && line.trim()) {
        out.push(line.trimEnd());
        line = word.trimStart();
      } else line = next;
    }
    out.push(line);
    if (out.length > maxLines) break;
  }
  if (out.length > maxLines) {
    out.length = maxLines;
    out[maxLines - 1] = `${out[maxLines - 1]!.replace(/.{0,2}$/, '')}…`;
  }
  return out;
}

const PROMPT_LINES = 5;
const LINE_HEIGHT = 15;

/** A multiline prompt: the text wrapped in a box; a click opens an in-place editor. */
class PromptWidget extends BaseWidget {
  constructor(
    node: LGraphNode,
    name: string,
    value: string,
    private readonly info: ParamInfo,
    private readonly env: WidgetEnv,
  ) {
    super({ type: 'prompt', name, value, options: {}, y: 0, label: label(name) }, node);
  }

  override computeSize(width?: number): [number, number] {
    return [width ?? 200, PROMPT_LINES * LINE_HEIGHT + 22];
  }

  private get boxHeight(): number {
    return PROMPT_LINES * LINE_HEIGHT + 22;
  }

  override drawWidget(ctx: CanvasRenderingContext2D, { width, showText }: DrawWidgetOptions): void {
    const { margin } = BaseWidget;
    const x = margin;
    const w = width - margin * 2;
    ctx.save();
    ctx.fillStyle = this.background_color;
    ctx.strokeStyle = this.outline_color;
    ctx.beginPath();
    ctx.roundRect(x, this.y, w, this.boxHeight, 6);
    ctx.fill();
    if (!this.computedDisabled) ctx.stroke();
    if (showText) {
      ctx.font = '11px sans-serif';
      ctx.fillStyle = this.secondary_text_color;
      ctx.fillText(this.displayName, x + 8, this.y + 13);
      ctx.font = '12px sans-serif';
      ctx.fillStyle = this.computedDisabled ? this.disabledTextColor : this.text_color;
      const text = this.computedDisabled ? '(from link)' : String(this.value ?? '');
      const lines = wrapText(ctx, text, w - 16, PROMPT_LINES);
      lines.forEach((line, i) => ctx.fillText(line, x + 8, this.y + 30 + i * LINE_HEIGHT));
    }
    ctx.restore();
  }

  override onClick({ node, canvas }: WidgetEventOptions): void {
    if (this.computedDisabled) return;
    const { margin } = BaseWidget;
    editText({
      canvas,
      node,
      rect: [margin, this.y, node.size[0] - margin * 2, this.boxHeight],
      value: String(this.value ?? ''),
      maxLength: this.info.maxLength,
      onCommit: (v) => {
        this.value = v;
        this.env.changed();
      },
    });
  }
}

/** A #rrggbb colour: swatch and hex; a click opens the browser's colour picker. */
class ColorWidget extends BaseWidget {
  constructor(
    node: LGraphNode,
    name: string,
    value: string,
    private readonly env: WidgetEnv,
  ) {
    super({ type: 'color', name, value, options: {}, y: 0, label: label(name) }, node);
  }

  override drawWidget(ctx: CanvasRenderingContext2D, opts: DrawWidgetOptions): void {
    this.drawWidgetShape(ctx, opts);
    if (!opts.showText) return;
    const { margin } = BaseWidget;
    const h = this.height;
    ctx.fillStyle = this.secondary_text_color;
    ctx.textAlign = 'left';
    ctx.fillText(this.displayName, margin * 2 + 5, this.y + h * 0.7);
    const color = String(this.value ?? '');
    ctx.fillStyle = /^#[0-9a-f]{6}$/i.test(color) ? color : '#000';
    const sw = h - 8;
    const sx = opts.width - margin * 2 - sw - 4;
    ctx.fillRect(sx, this.y + 4, sw, sw);
    ctx.textAlign = 'right';
    ctx.fillStyle = this.text_color;
    ctx.fillText(color, sx - 6, this.y + h * 0.7);
  }

  override onClick(): void {
    if (this.computedDisabled) return;
    // Some browsers open the picker only for an input in the document; keep it invisible.
    for (const old of document.querySelectorAll('.cf-hidden-input')) old.remove();
    const input = document.createElement('input');
    input.type = 'color';
    input.className = 'cf-hidden-input';
    const color = String(this.value ?? '');
    input.value = /^#[0-9a-f]{6}$/i.test(color) ? color : '#000000';
    input.addEventListener('input', () => {
      this.value = input.value;
      this.env.changed();
    });
    input.addEventListener('change', () => input.remove());
    input.addEventListener('blur', () => input.remove());
    document.body.append(input);
    input.click();
  }
}

function pickFile(accept: string): Promise<File | undefined> {
  return new Promise((resolve) => {
    const input = document.createElement('input');
    input.type = 'file';
    input.accept = accept;
    input.addEventListener('change', () => resolve(input.files?.[0]));
    input.addEventListener('cancel', () => resolve(undefined));
    input.click();
  });
}

function numberWidget(node: LGraphNode, info: ParamInfo, env: WidgetEnv, value: number): Widget {
  const w = node.addWidget('number', info.name, value, (v: unknown) => {
    const snapped = snapNumber(info, Number(v));
    if (snapped !== w.value) w.value = snapped;
    env.changed();
  }, { min: info.minimum, max: info.maximum, step2: numberStep(info), precision: numberPrecision(info) });
  return w;
}

/** Adds the widget(s) of one parameter. */
export function addParamWidget(node: LGraphNode, info: ParamInfo, env: WidgetEnv): ParamBinding {
  const init = initialValue(info);
  const extras: Widget[] = [];
  let widget: Widget;
  let get: () => Constant;
  let set: (v: Constant) => void;

  if (info.enum?.length) {
    const values = info.enum.map(String);
    widget = node.addWidget('combo', info.name, String(init), () => env.changed(), { values });
    const numeric = info.enum.every((v) => typeof v === 'number');
    get = () => (numeric ? Number(widget.value) : String(widget.value));
    set = (v) => (widget.value = String(v));
  } else if (info.type === 'boolean') {
    widget = node.addWidget('toggle', info.name, Boolean(init), () => env.changed(), { on: 'on', off: 'off' });
    get = () => Boolean(widget.value);
    set = (v) => (widget.value = Boolean(v));
  } else if (info.type === 'number' || info.type === 'integer') {
    widget = numberWidget(node, info, env, Number(init));
    get = () => snapNumber(info, Number(widget.value));
    set = (v) => (widget.value = Number(v));
    if (info.format === 'seed') {
      const button = node.addWidget('button', `${info.name}_randomize`, undefined, () => {
        widget.value = randomSeed(info);
        env.changed();
      }, {});
      button.label = '↻ randomize seed';
      extras.push(button);
      // "Random each run" lives in the node's ui (see convert.ts), not in the workflow's inputs.
      const toggle = node.addWidget('toggle', `${info.name}_random`, false, () => env.changed(), { on: 'new seed each run', off: 'fixed' });
      toggle.label = 'control';
      extras.push(toggle);
    }
  } else if (info.format === 'prompt') {
    const w = new PromptWidget(node, info.name, String(init), info, env);
    node.addCustomWidget(w);
    widget = w;
    get = () => String(w.value);
    set = (v) => (w.value = String(v));
  } else if (info.format === 'color') {
    const w = new ColorWidget(node, info.name, String(init), env);
    node.addCustomWidget(w);
    widget = w;
    get = () => String(w.value);
    set = (v) => (w.value = String(v));
  } else if (info.format === 'character' || info.format === 'modelset') {
    // A saved character's name or an installed model set: the server's list, keeping a value that is
    // not (or no longer) in it visible.
    const values = (): string[] => withCurrent((info.format === 'character' ? env.savedCharacters?.() : env.modelSets?.()) ?? [], widget);
    widget = node.addWidget('combo', info.name, String(init), () => env.changed(), { values: values as unknown as string[] });
    get = () => String(widget.value);
    set = (v) => (widget.value = String(v));
  } else if (info.format === 'lora' || info.format === 'image') {
    const lora = info.format === 'lora';
    const files = lora
      ? { list: env.loraFiles, refresh: env.refreshLoraFiles, upload: env.uploadLora, accept: '.safetensors', what: 'LoRA' }
      : { list: env.inputImages, refresh: env.refreshInputImages, upload: env.upload, accept: 'image/*', what: 'image' };
    const values = (): string[] => withCurrent(files.list(), widget);
    const first = String(init) || (lora ? files.list()[0] ?? '' : '');
    widget = node.addWidget('combo', info.name, first, () => env.changed(), { values: values as unknown as string[] });
    const upload = node.addWidget('button', `${info.name}_upload`, undefined, () => {
      void pickFile(files.accept).then(async (file) => {
        if (!file) return;
        try {
          env.notify(`uploading ${file.name}…`);
          widget.value = await files.upload(file);
          await files.refresh();
          env.notify(`uploaded ${file.name}`);
          env.changed();
        } catch (err) {
          env.notify((err as Error).message, 'error');
        }
      });
    }, {});
    upload.label = `⬆ upload ${files.what}…`;
    extras.push(upload);
    get = () => String(widget.value);
    set = (v) => (widget.value = String(v));
  } else {
    widget = node.addWidget('text', info.name, String(init), (v: unknown) => {
      if (info.maxLength !== undefined && String(v).length > info.maxLength) widget.value = String(v).slice(0, info.maxLength);
      env.changed();
    }, {});
    get = () => String(widget.value);
    set = (v) => (widget.value = String(v));
  }
  widget.label = label(info.name);
  if (info.description) widget.tooltip = info.description;
  for (const e of extras) (e as { serialize?: boolean }).serialize = false;
  return { info, widget, get, set, extras };
}

/** The default widget height, for layouts that reserve space below widgets. */
export const WIDGET_ROW = (): number => LiteGraph.NODE_WIDGET_HEIGHT + 4;
