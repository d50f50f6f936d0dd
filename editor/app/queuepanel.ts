// The queue and history panel: queued and running runs (name, who queued them, progress) with Cancel and
// Remove; finished runs with a thumbnail, status and duration, which open in the gallery, reopen their
// workflow on the canvas, or queue again. Live over the WebSocket: queue_changed and run events push, the
// history is asked for again whenever the queue changes (the same jobs as /queue and /history).
import type { HistoryItem, QueueItem, RunEventMessage } from '../protocol.ts';
import type { Connection } from './connection.ts';
import { el } from './dialogs.ts';
import { openGallery, referenceOf } from './gallery.ts';

export interface QueuePanelHost {
  conn: Connection;
  /** Opens a workflow on the canvas (asking first when there are unsaved changes). */
  reopen(workflow: unknown, label: string): Promise<void>;
  /** Queues a workflow as it is. */
  queueAgain(workflow: unknown): Promise<void>;
  message(text: string, kind?: 'info' | 'error' | 'ok'): void;
}

const WHO: Record<string, string> = { editor: 'another tab', api: 'the API' };

function duration(ms: number | null): string {
  if (ms === null) return '';
  return ms < 1000 ? `${ms} ms` : ms < 60_000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s`;
}

export class QueuePanel {
  readonly element = el('aside', { className: 'cf-queue-panel', hidden: true });
  private active: QueueItem[] = [];
  history: HistoryItem[] = [];
  private progress = new Map<string, { step: number; total: number; node: string }>();
  private refreshing = false;

  constructor(private readonly host: QueuePanelHost) {}

  get open(): boolean {
    return !this.element.hidden;
  }

  toggle(): void {
    this.element.hidden = !this.element.hidden;
    if (this.open) void this.refresh();
  }

  /** A queue_changed push (or the reply to `queue`). */
  queueChanged(items: QueueItem[]): void {
    this.active = items;
    for (const id of [...this.progress.keys()]) if (!items.some((i) => i.runId === id)) this.progress.delete(id);
    if (this.open) void this.refresh();
  }

  /** Run events of any run: the running one's progress. */
  event(runId: string, e: RunEventMessage): void {
    if (e.type === 'node_progress') this.progress.set(runId, { step: e.step, total: e.total, node: e.nodeId });
    else if (e.type === 'node_started') this.progress.set(runId, { step: 0, total: 0, node: e.nodeId });
    else return;
    if (this.open) this.render();
  }

  async refresh(): Promise<void> {
    if (this.refreshing) return;
    this.refreshing = true;
    try {
      this.history = (await this.host.conn.request({ type: 'history', limit: 50 }, 'history')).items;
    } catch (err) {
      this.host.message(`history: ${(err as Error).message}`, 'error');
    } finally {
      this.refreshing = false;
    }
    this.render();
  }

  private button(label: string, title: string, action: () => Promise<void>): HTMLButtonElement {
    const b = el('button', { textContent: label, title, className: 'cf-btn' });
    b.dataset.action = label.toLowerCase();
    b.addEventListener('click', (e) => {
      e.stopPropagation();
      b.disabled = true;
      void action().catch((err: Error) => this.host.message(err.message, 'error')).finally(() => (b.disabled = false));
    });
    return b;
  }

  private render(): void {
    const rows: HTMLElement[] = [el('h3', { textContent: `Queue (${this.active.length})` })];
    if (!this.active.length) rows.push(el('div', { className: 'cf-job cf-empty', textContent: 'nothing queued' }));
    for (const q of this.active) {
      const p = this.progress.get(q.runId);
      const who = q.mine ? 'you' : WHO[q.source ?? ''] ?? 'someone else';
      const text = el('div', { className: 'cf-job-text' },
        el('span', { className: 'cf-job-name', textContent: q.name ?? `run ${q.number ?? ''}` }),
        el('span', { className: 'cf-job-detail', textContent: `#${q.number ?? '?'} · ${q.status} · queued by ${who}${p?.total ? ` · node ${p.node} ${p.step}/${p.total}` : ''}` }));
      if (q.status === 'running') text.append(el('progress', { max: p?.total || 1, value: p?.total ? p.step : 0 }));
      const actions = el('div', { className: 'cf-job-actions' },
        this.button('Cancel', 'Stop it (it goes to the history as cancelled)', async () => {
          await this.host.conn.request({ type: 'cancel', runId: q.runId }, 'cancelling');
        }));
      if (q.status === 'pending') {
        actions.append(this.button('Remove', 'Take it off the queue without a trace', async () => {
          await this.host.conn.request({ type: 'jobs.delete', runIds: [q.runId] }, 'jobs_deleted');
        }));
      }
      const row = el('div', { className: 'cf-job' }, text, actions);
      row.dataset.runId = q.runId;
      row.dataset.status = q.status;
      rows.push(row);
    }
    rows.push(el('h3', { textContent: 'History' }));
    if (!this.history.length) rows.push(el('div', { className: 'cf-job cf-empty', textContent: 'no finished runs yet' }));
    for (const h of this.history) {
      const thumb = el('img', { alt: '', loading: 'lazy' });
      if (h.images[0]) thumb.src = h.images[0].url;
      const text = el('div', { className: 'cf-job-text' },
        el('span', { className: 'cf-job-name', textContent: h.name }),
        el('span', { className: 'cf-job-detail', textContent: `#${h.number} · ${h.status}${h.ms !== null ? ` · ${duration(h.ms)}` : ''}${h.images.length ? ` · ${h.images.length} picture${h.images.length === 1 ? '' : 's'}` : ''}${h.error ? ` · ${h.error}` : ''}` }));
      const workflow = async (): Promise<unknown> => (await this.host.conn.request({ type: 'history.load', runId: h.runId }, 'history_item')).workflow;
      const actions = el('div', { className: 'cf-job-actions' },
        this.button('Open', 'Reopen its workflow on the canvas', async () => this.host.reopen(await workflow(), `run #${h.number}`)),
        this.button('Again', 'Queue its workflow again', async () => this.host.queueAgain(await workflow())),
        this.button('Remove', 'Delete it from the history', async () => {
          await this.host.conn.request({ type: 'jobs.delete', runIds: [h.runId] }, 'jobs_deleted');
          await this.refresh();
        }));
      const row = el('div', { className: 'cf-job' }, thumb, text, actions);
      row.dataset.runId = h.runId;
      row.dataset.status = h.status;
      row.title = 'Show its pictures';
      row.addEventListener('click', () => {
        if (!h.images.length) return void this.host.message(`run #${h.number} wrote no pictures`);
        void workflow().then((wf) => openGallery(h.images, { reference: referenceOf(wf) }));
      });
      rows.push(row);
    }
    this.element.replaceChildren(...rows);
  }
}
