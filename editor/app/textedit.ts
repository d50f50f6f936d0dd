// An in-place text editor over a widget (a DOM textarea placed on the canvas), for multiline prompts.
import type { LGraphCanvas, LGraphNode } from '@comfyorg/litegraph';

export interface TextEditOptions {
  canvas: LGraphCanvas;
  node: LGraphNode;
  /** Widget area in node coordinates. */
  rect: [number, number, number, number];
  value: string;
  maxLength?: number;
  onCommit(value: string): void;
}

let open: { close(commit: boolean): void } | null = null;

/** Ctrl/Cmd+Enter or a click outside commits, Escape cancels. */
export function editText(opts: TextEditOptions): HTMLTextAreaElement {
  open?.close(true);
  const { canvas, node, rect } = opts;
  const el = canvas.canvas;
  const box = el.getBoundingClientRect();
  const { scale, offset } = canvas.ds;
  // Graph -> CSS pixels of the canvas element (litegraph draws in CSS pixels scaled by ds).
  const left = box.left + (node.pos[0] + rect[0] + offset[0]) * scale;
  const top = box.top + (node.pos[1] + rect[1] + offset[1]) * scale;
  const ta = document.createElement('textarea');
  ta.className = 'cf-text-edit';
  ta.value = opts.value;
  if (opts.maxLength) ta.maxLength = opts.maxLength;
  Object.assign(ta.style, {
    left: `${left}px`,
    top: `${top}px`,
    width: `${Math.max(160, rect[2] * scale)}px`,
    height: `${Math.max(80, rect[3] * scale)}px`,
    fontSize: `${Math.max(11, 13 * scale)}px`,
  });
  document.body.append(ta);
  ta.focus();
  ta.setSelectionRange(ta.value.length, ta.value.length);

  let closed = false;
  const close = (commit: boolean): void => {
    // Removing a focused element fires blur, which calls close again: only the first call counts.
    if (closed) return;
    closed = true;
    ta.remove();
    open = null;
    document.removeEventListener('pointerdown', outside, true);
    if (commit && ta.value !== opts.value) opts.onCommit(ta.value);
    canvas.setDirty(true, true);
  };
  const outside = (e: PointerEvent): void => {
    if (e.target !== ta) close(true);
  };
  ta.addEventListener('keydown', (e) => {
    e.stopPropagation(); // keep litegraph shortcuts (Delete, Ctrl+C) away from the text
    if (e.key === 'Escape') close(false);
    else if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      close(true);
    }
  });
  ta.addEventListener('blur', () => close(true));
  document.addEventListener('pointerdown', outside, true);
  open = { close };
  return ta;
}
