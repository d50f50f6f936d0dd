// charflow's browser editor: litegraph canvas, node palette, toolbar and status line, talking to the
// server over /ws/editor. Exposes window.charflow for tests and the curious.
import { LGraph, LGraphCanvas, LiteGraph, type LGraphNode } from '@comfyorg/litegraph';
import '@comfyorg/litegraph/style.css';
import './style.css';
import exampleWorkflow from '../../workflows/instantcharacter.json';
import type { CatalogNode, ServerMessage } from '../protocol.ts';
import type { Workflow } from '../../engine/workflow/types.ts';
import { Connection, RequestError, defaultSocketUrl } from './connection.ts';
import { fetchCatalog, listInputImages, listLoraFiles, uploadImage, uploadLora } from './api.ts';
import { registerCatalog, isCharflowNode, CharflowNode } from './nodes.ts';
import { asWorkflow, graphToWorkflow, workflowToGraph } from './convert.ts';
import { createPalette, PALETTE_MIME } from './palette.ts';
import { createToolbar, type Action } from './toolbar.ts';
import { createStatusLine } from './status.ts';
import { RunView } from './runview.ts';
import { Files } from './files.ts';
import { installDropHandler, readDroppedFile } from './drop.ts';
import { choose, el } from './dialogs.ts';
import { randomSeed } from './schema.ts';
import { applyTheme } from './theme.ts';
import { fitView, sizeCanvas, toClient, toGraph } from './viewport.ts';
import { loadSession, storeSession, workflowFromAddress } from './session.ts';
import { CharactersPanel } from './characters.ts';
import { fetchModelSets, pickTemplate, showModelsPanel, type ModelSetItem } from './daily.ts';
import { UndoStack } from './undo.ts';
import { QueuePanel } from './queuepanel.ts';
import { openGallery, referenceOf } from './gallery.ts';
import { showNodeSearch } from './search.ts';

class App {
  readonly graph = new LGraph();
  readonly canvas: LGraphCanvas;
  readonly conn: Connection;
  readonly status = createStatusLine();
  readonly toolbar = createToolbar((a) => void this.action(a));
  readonly palette = createPalette((type) => this.addNode(type));
  readonly runs: RunView;
  readonly files: Files;
  readonly characters: CharactersPanel;
  readonly undo: UndoStack;
  readonly queuePanel: QueuePanel;
  catalog: CatalogNode[] = [];
  private inputs: string[] = [];
  modelSets: ModelSetItem[] = [];
  private loras: string[] = [];
  private meta: Workflow['meta'];
  private started = false;
  private lastJson = '';
  private addCount = 0;

  constructor(root: HTMLElement) {
    applyTheme();
    const canvasEl = el('canvas', { className: 'cf-canvas', tabIndex: 0 });
    const wrap = el('div', { className: 'cf-canvas-wrap' }, canvasEl, el('div', { className: 'cf-drop-hint', textContent: 'Drop a workflow (.json) or a charflow PNG to open it' }));
    root.append(this.toolbar.element, el('main', { className: 'cf-main' }, this.palette.element, wrap), this.status.element);

    this.canvas = new LGraphCanvas(canvasEl, this.graph);
    this.canvas.low_quality_zoom_threshold = 0.35;
    this.canvas.allow_searchbox = true;
    // Double-click on the canvas: the app's own search (ComfyUI names find their charflow nodes).
    this.canvas.showSearchBox = (event: MouseEvent) => {
      const pos = this.toGraph(event.clientX, event.clientY);
      return showNodeSearch(event.clientX, event.clientY, this.catalog, (type) => void this.addNode(type, pos));
    };
    this.canvas.render_canvas_border = false;
    this.canvas.show_info = false;
    new ResizeObserver(() => sizeCanvas(this.canvas)).observe(wrap);
    sizeCanvas(this.canvas);

    this.runs = new RunView({
      graph: this.graph,
      redraw: () => this.canvas.setDirty(true, true),
      message: (t, k) => this.status.message(t, k),
      ended: () => this.toolbar.setRunning(this.runs.activeRuns.length > 0),
    });
    this.conn = new Connection({
      url: defaultSocketUrl(),
      onState: (s, retry) => {
        this.status.connection(s, retry);
        for (const a of ['open', 'save', 'saveas', 'run'] as const) this.toolbar.setEnabled(a, s === 'open');
      },
      onOpen: () => void this.connected(),
      onMessage: (m) => this.receive(m),
    });
    this.files = new Files({
      conn: this.conn,
      current: () => this.workflow(),
      open: (wf, name, etag, label) => this.open(wf, name, etag, label),
      message: (t, k) => this.status.message(t, k),
      changed: () => this.refreshDocState(true),
    });

    this.characters = new CharactersPanel({
      graph: this.graph, canvas: this.canvas, addNode: (t, p) => this.addNode(t, p), toGraph: (x, y) => this.toGraph(x, y), notify: (t, k) => this.status.message(t, k),
    });
    this.palette.element.append(this.characters.element);
    this.characters.installCanvasDrop(canvasEl);
    this.characters.installContextMenu();
    this.queuePanel = new QueuePanel({
      conn: this.conn,
      reopen: async (wf, label) => {
        if (await this.confirmReplace()) this.open(wf, null, null, label);
      },
      queueAgain: async (wf) => {
        const reply = await this.conn.request({ type: 'run', workflow: wf }, 'queued');
        this.status.message(`queued again (${reply.position} ahead)`, 'ok');
      },
      message: (t, k) => this.status.message(t, k),
    });
    wrap.append(this.queuePanel.element);

    this.undo = new UndoStack({
      snapshot: () => JSON.stringify(this.workflow()),
      restore: (json) => {
        const wf = JSON.parse(json) as Workflow;
        this.runs.generation++;
        workflowToGraph(wf, this.graph);
        this.meta = wf.meta;
        this.canvas.setDirty(true, true);
        this.refreshDocState(true);
      },
    });

    this.toolbar.setRunning(false);
    this.installCanvasDrop(canvasEl);
    installDropHandler(document.body, (file, x, y) => void this.openFile(file, x, y));
    document.addEventListener('keydown', (e) => this.shortcut(e));
    window.addEventListener('beforeunload', () => this.saveSession());
    setInterval(() => this.refreshDocState(false), 400);
    this.status.document(null, false);
    this.conn.start();
  }

  /** The graph as a charflow workflow. */
  workflow(): Workflow {
    return graphToWorkflow(this.graph, { meta: this.meta });
  }

  private widgetEnv() {
    return {
      inputImages: () => this.inputs,
      modelSets: () => this.modelSets.map((s) => s.name),
      openImages: (refs: { url: string; filename: string }[]) => void openGallery(refs, { reference: referenceOf(this.workflow()) }),
      refreshInputImages: async () => {
        this.inputs = await listInputImages();
      },
      upload: (file: File) => uploadImage(file, file.name),
      loraFiles: () => this.loras,
      refreshLoraFiles: async () => {
        this.loras = await listLoraFiles();
      },
      uploadLora: (file: File) => uploadLora(file, file.name),
      changed: () => {
        this.canvas.setDirty(true, true);
        this.refreshDocState(false);
      },
      notify: (m: string, k?: 'info' | 'error') => this.status.message(m, k),
      savedCharacters: () => this.characters.names(),
    };
  }

  private async connected(): Promise<void> {
    let catalog: CatalogNode[];
    try {
      catalog = (await this.conn.request({ type: 'catalog' }, 'catalog')).nodes;
    } catch (err) {
      console.warn('catalog over the socket failed, trying HTTP', err);
      catalog = await fetchCatalog().catch(() => []);
    }
    this.catalog = catalog;
    registerCatalog(catalog, this.widgetEnv());
    this.palette.setCatalog(catalog);
    this.inputs = await listInputImages();
    await this.characters.refresh();
    this.modelSets = await fetchModelSets();
    this.loras = await listLoraFiles();
    this.conn.request({ type: 'queue' }, 'queue').then((q) => {
      this.status.queue(q.items);
      this.queuePanel.queueChanged(q.items);
    }, () => {});
    this.status.message(`connected — ${catalog.length} node types`);
    if (!this.started) {
      this.started = true;
      await this.restoreSession();
    }
  }

  private receive(msg: ServerMessage): void {
    if (msg.type === 'event') {
      if (msg.mine && !this.runs.activeRuns.includes(msg.runId) && msg.event.type !== 'run_finished' && msg.event.type !== 'run_cancelled') {
        this.runs.started(msg.runId);
        this.toolbar.setRunning(true);
      }
      this.runs.handle(msg.runId, msg.event);
      if (msg.event.type === 'run_finished') void this.characters.refresh(); // a Save Character node may have run
      this.queuePanel.event(msg.runId, msg.event);
    } else if (msg.type === 'queue_changed') {
      this.status.queue(msg.items);
      this.queuePanel.queueChanged(msg.items);
    }
    else if (msg.type === 'workers') this.status.workers(msg.items);
    else if (msg.type === 'error') this.status.message(msg.message, 'error');
  }

  /**
   * Replaces the editor's content with `value` (a workflow); false (and a message) if it is not one.
   * Says what was opened, or what could not be taken over (unknown types, dropped links).
   */
  open(value: unknown, name: string | null, etag: string | null, label = name ?? 'workflow'): boolean {
    const wf = asWorkflow(value);
    if (typeof wf === 'string') {
      this.status.message(wf, 'error');
      return false;
    }
    this.runs.generation++;
    const { warnings } = workflowToGraph(wf, this.graph);
    this.meta = wf.meta;
    this.undo.reset();
    this.fit();
    this.files.markSaved(name, etag);
    if (warnings.length) this.status.message(`opened ${label} with ${warnings.length} problem(s): ${warnings.join('; ')}`, 'error');
    else this.status.message(`opened ${label}`, 'ok');
    return true;
  }

  private refreshDocState(force: boolean): void {
    const json = JSON.stringify(this.workflow());
    if (!force && json === this.lastJson) return;
    this.lastJson = json;
    this.undo.check();
    this.status.document(this.files.doc.name, json !== this.files.doc.savedJson);
    this.saveSession();
  }

  private saveSession(): void {
    if (!this.started) return;
    storeSession({ name: this.files.doc.name, etag: this.files.doc.etag, workflow: this.workflow(), savedJson: this.files.doc.savedJson });
  }

  /** After a reload: the workflow that was open, fresh from the server unless it had unsaved changes. */
  private async restoreSession(): Promise<void> {
    const named = workflowFromAddress();
    if (named) {
      await this.files.load(named, false);
      return;
    }
    const s = loadSession();
    if (!s) {
      this.open(exampleWorkflow, null, null, 'the InstantCharacter example');
      return;
    }
    const unsaved = JSON.stringify(s.workflow) !== s.savedJson;
    if (s.name && !unsaved && (await this.files.load(s.name, false))) return;
    this.open(s.workflow, s.name, s.etag, s.name ?? 'the last session');
    // Keep the unsaved mark: what is on screen differs from what was last saved.
    this.files.doc.savedJson = s.savedJson;
    this.refreshDocState(true);
  }

  addNode(type: string, pos?: [number, number]): LGraphNode | null {
    const node = LiteGraph.createNode(type);
    if (!node) return null;
    if (pos) node.pos = pos;
    else {
      const [x, y, w, h] = this.canvas.visible_area;
      const shift = (this.addCount++ % 6) * 24;
      node.pos = [x + w / 2 - node.size[0] / 2 + shift, y + h / 3 + shift];
    }
    this.graph.add(node);
    this.canvas.selectNode(node);
    this.canvas.setDirty(true, true);
    return node;
  }

  /** Zooms and pans so every node is visible. */
  fit(): void {
    fitView(this.canvas, this.graph);
  }

  private randomizeSeeds(): void {
    for (const node of this.graph._nodes) {
      if (!isCharflowNode(node)) continue;
      for (const b of node.params.values()) {
        if (b.info.format !== 'seed') continue;
        if (node.widgets?.find((w) => w.name === `${b.info.name}_random`)?.value === true) b.set(randomSeed(b.info));
      }
    }
  }

  async run(): Promise<void> {
    this.randomizeSeeds();
    this.runs.reset();
    try {
      // The document's name travels in meta.name: the queue panel lists runs by it.
      const wf = this.workflow();
      const name = this.files.doc.name;
      const reply = await this.conn.request({ type: 'run', workflow: name ? { ...wf, meta: { ...wf.meta, name } } : wf }, 'queued');
      this.runs.started(reply.runId);
      this.toolbar.setRunning(true);
      this.status.message(reply.position > 0 ? `queued (${reply.position} ahead)` : 'started');
    } catch (err) {
      if (err instanceof RequestError && err.errors.length) {
        const placed = this.runs.showProblems(err.errors);
        const first = err.errors[0]!.message;
        this.status.message(`run refused: ${err.errors.length} problem(s)${placed ? ' (shown on the nodes)' : ''} — ${first}`, 'error');
      } else this.status.message(`run refused: ${(err as Error).message}`, 'error');
    }
  }

  async cancel(): Promise<void> {
    let ids = this.runs.activeRuns;
    if (!ids.length) {
      const q = await this.conn.request({ type: 'queue' }, 'queue').catch(() => null);
      ids = q?.items.filter((i) => i.mine).map((i) => i.runId) ?? [];
    }
    for (const runId of ids) {
      await this.conn.request({ type: 'cancel', runId }, 'cancelling').catch((e: Error) => this.status.message(e.message, 'error'));
    }
    if (ids.length) this.status.message('cancelling…');
  }

  private async openFile(file: File, clientX?: number, clientY?: number): Promise<void> {
    const dropped = await readDroppedFile(file);
    if (dropped.kind === 'error') this.status.message(dropped.message, 'error');
    else if (dropped.kind === 'workflow') {
      if (await this.confirmReplace()) this.open(dropped.workflow, null, null, file.name);
    } else {
      // A plain picture: upload it and add a node that loads it as the character.
      const type = this.catalog.find((n) => Object.values(n.params).some((p) => p.format === 'image'));
      if (!type) return;
      try {
        const path = await uploadImage(dropped.file, dropped.file.name);
        this.inputs = await listInputImages();
        const pos = clientX !== undefined && clientY !== undefined ? this.toGraph(clientX, clientY) : undefined;
        const node = this.addNode(type.type, pos);
        if (isCharflowNode(node)) {
          const param = [...node.params.values()].find((b) => b.info.format === 'image');
          param?.set(path);
        }
        this.status.message(`uploaded ${file.name}`, 'ok');
      } catch (err) {
        this.status.message((err as Error).message, 'error');
      }
    }
  }

  private async confirmReplace(): Promise<boolean> {
    if (!this.files.modified) return true;
    return (await choose('Unsaved changes', 'Opening this file replaces the current workflow, which has unsaved changes.', [
      { key: 'cancel', label: 'Cancel' },
      { key: 'open', label: 'Open anyway', primary: true },
    ])) === 'open';
  }

  toGraph(clientX: number, clientY: number): [number, number] {
    return toGraph(this.canvas, clientX, clientY);
  }

  toClient(x: number, y: number): [number, number] {
    return toClient(this.canvas, x, y);
  }

  private installCanvasDrop(canvasEl: HTMLCanvasElement): void {
    canvasEl.addEventListener('dragover', (e) => {
      if (e.dataTransfer?.types.includes(PALETTE_MIME)) e.preventDefault();
    });
    canvasEl.addEventListener('drop', (e) => {
      const type = e.dataTransfer?.getData(PALETTE_MIME);
      if (!type) return;
      e.preventDefault();
      e.stopPropagation();
      this.addNode(type, this.toGraph(e.clientX, e.clientY));
    });
  }

  private pickLocalFile(): void {
    const input = el('input', { type: 'file', accept: '.json,application/json,image/png' });
    input.addEventListener('change', () => {
      const f = input.files?.[0];
      if (f) void this.openFile(f);
    });
    input.click();
  }

  private exportJson(): void {
    const blob = new Blob([`${JSON.stringify(this.workflow(), null, 2)}\n`], { type: 'application/json' });
    const a = el('a', { href: URL.createObjectURL(blob), download: `${this.files.doc.name ?? 'workflow'}.json`.replace(/\.json\.json$/, '.json') });
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  }

  async action(a: Action): Promise<void> {
    switch (a) {
      case 'new':
        return this.files.newWorkflow();
      case 'example':
        return this.files.newWorkflow(exampleWorkflow);
      case 'templates': {
        const t = await pickTemplate((m, k) => this.status.message(m, k));
        if (t && (await this.confirmReplace())) this.open(t.workflow, null, null, `the template ${t.name}`);
        return;
      }
      case 'queue':
        return this.queuePanel.toggle();
      case 'models':
        return showModelsPanel((m, k) => this.status.message(m, k), (sets) => void (this.modelSets = sets));
      case 'open':
        return this.files.openDialog();
      case 'save':
        await this.files.save();
        return;
      case 'saveas':
        await this.files.saveAs();
        return;
      case 'import':
        return this.pickLocalFile();
      case 'export':
        return this.exportJson();
      case 'fit':
        return this.fit();
      case 'run':
        return this.run();
      case 'cancel':
        return this.cancel();
    }
  }

  private shortcut(e: KeyboardEvent): void {
    if (!(e.ctrlKey || e.metaKey)) return;
    const target = e.target as HTMLElement | null;
    if (target && (target.tagName === 'INPUT' || target.tagName === 'TEXTAREA')) return;
    if (e.key.toLowerCase() === 'z' || e.key.toLowerCase() === 'y') {
      e.preventDefault();
      const redo = e.key.toLowerCase() === 'y' || e.shiftKey;
      const done = redo ? this.undo.redo() : this.undo.undo();
      this.status.message(done ? (redo ? 'redone' : 'undone') : redo ? 'nothing to redo' : 'nothing to undo');
      return;
    }
    const map: Record<string, Action> = { s: e.shiftKey ? 'saveas' : 'save', o: 'open', Enter: 'run' };
    const action = map[e.key];
    if (!action) return;
    e.preventDefault();
    void this.action(action);
  }

  // ---- helpers for tests and the console ----

  node(id: string | number): CharflowNode | undefined {
    const n = this.graph.getNodeById(typeof id === 'string' && /^\d+$/.test(id) ? Number(id) : id);
    return isCharflowNode(n) ? n : undefined;
  }

  /** Client coordinates of a socket's centre. */
  socketPos(id: string | number, kind: 'input' | 'output', name: string): [number, number] | null {
    const n = this.graph.getNodeById(typeof id === 'string' && /^\d+$/.test(id) ? Number(id) : id);
    if (!n) return null;
    const i = (kind === 'input' ? n.inputs : n.outputs).findIndex((s) => s.name === name);
    if (i < 0) return null;
    const p = kind === 'input' ? n.getInputPos(i) : n.getOutputPos(i);
    return this.toClient(p[0], p[1]);
  }

  /** Client coordinates of a widget's centre (or of `fraction` across it). */
  widgetPos(id: string | number, name: string, fraction = 0.5): [number, number] | null {
    const n = this.node(id);
    const w = n?.widgets?.find((x) => x.name === name);
    if (!n || !w) return null;
    const h = w.computedHeight ? w.computedHeight - 4 : LiteGraph.NODE_WIDGET_HEIGHT;
    return this.toClient(n.pos[0] + 15 + (n.size[0] - 30) * fraction, n.pos[1] + w.y + h / 2);
  }

  /** Images the server listed in its inputs folder (as the image widgets offer them). */
  inputsList(): string[] {
    return [...this.inputs];
  }

  values(id: string | number): Record<string, unknown> {
    const n = this.node(id);
    return n ? Object.fromEntries([...n.params].map(([k, b]) => [k, b.get()])) : {};
  }
}

declare global {
  interface Window {
    charflow: { app: App; graph: LGraph; canvas: LGraphCanvas; LiteGraph: typeof LiteGraph };
  }
}

const app = new App(document.getElementById('app') ?? document.body);
window.charflow = { app, graph: app.graph, canvas: app.canvas, LiteGraph };
