// Where things are on screen: fitting the view to the graph and converting between page (client)
// and graph coordinates (litegraph draws in CSS pixels, offset then scaled by its DragAndScale).
import { LiteGraph, type LGraph, type LGraphCanvas } from '@comfyorg/litegraph';

/**
 * Sizes the canvas to its container in device pixels (CSS size unchanged). litegraph draws with the
 * devicePixelRatio as its base transform, so a canvas only as wide as its CSS size showed the graph and the
 * background grid in the top-left part alone on a HiDPI screen.
 */
export function sizeCanvas(canvas: LGraphCanvas): void {
  const el = canvas.canvas;
  const parent = el.parentElement;
  if (!parent) return;
  const dpr = window.devicePixelRatio || 1;
  const w = parent.clientWidth;
  const h = parent.clientHeight;
  el.style.width = `${w}px`;
  el.style.height = `${h}px`;
  const [dw, dh] = [Math.round(w * dpr), Math.round(h * dpr)];
  if (el.width === dw && el.height === dh) return; // unchanged: the context keeps its scale
  canvas.resize(dw, dh);
  // A new size resets the context: the foreground draws in CSS pixels again (as ComfyUI's frontend does it).
  el.getContext('2d')?.scale(dpr, dpr);
}

/** Zooms (never above 100 %) and pans so every node is visible. */
export function fitView(canvas: LGraphCanvas, graph: LGraph): void {
  const nodes = graph._nodes;
  sizeCanvas(canvas);
  // Graph units are CSS pixels: the canvas holds devicePixelRatio device pixels per CSS pixel.
  const dpr = window.devicePixelRatio || 1;
  const cw = canvas.canvas.width / dpr;
  const ch = canvas.canvas.height / dpr;
  const ds = canvas.ds;
  if (!nodes.length || !cw || !ch) {
    ds.offset[0] = 0;
    ds.offset[1] = 0;
    ds.scale = 1;
  } else {
    let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
    for (const n of nodes) {
      x0 = Math.min(x0, n.pos[0]);
      y0 = Math.min(y0, n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT);
      x1 = Math.max(x1, n.pos[0] + n.size[0]);
      y1 = Math.max(y1, n.pos[1] + n.size[1]);
    }
    const pad = 40;
    const scale = Math.min(1, (cw - pad * 2) / (x1 - x0), (ch - pad * 2) / (y1 - y0));
    ds.scale = scale;
    ds.offset[0] = (cw / scale - (x1 - x0)) / 2 - x0;
    ds.offset[1] = (ch / scale - (y1 - y0)) / 2 - y0;
  }
  canvas.setDirty(true, true);
}

/** Page coordinates to graph coordinates. */
export function toGraph(canvas: LGraphCanvas, clientX: number, clientY: number): [number, number] {
  const r = canvas.canvas.getBoundingClientRect();
  const { scale, offset } = canvas.ds;
  return [(clientX - r.left) / scale - offset[0], (clientY - r.top) / scale - offset[1]];
}

/** Graph coordinates to page coordinates. */
export function toClient(canvas: LGraphCanvas, x: number, y: number): [number, number] {
  const r = canvas.canvas.getBoundingClientRect();
  const { scale, offset } = canvas.ds;
  return [r.left + (x + offset[0]) * scale, r.top + (y + offset[1]) * scale];
}
