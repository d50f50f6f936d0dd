// The status line: connection, queue, and the latest message.
import type { QueueItem, WorkerItem } from '../protocol.ts';
import { el } from './dialogs.ts';

export interface StatusLine {
  element: HTMLElement;
  connection(state: 'connecting' | 'open' | 'closed', retryInMs?: number): void;
  queue(items: QueueItem[]): void;
  /** Scale-out only: the connected workers (device, loaded sets, current job); the full list on hover. */
  workers(items: WorkerItem[]): void;
  message(text: string, kind?: 'info' | 'error' | 'ok'): void;
  document(name: string | null, modified: boolean): void;
}

export function createStatusLine(): StatusLine {
  const dot = el('span', { className: 'cf-dot' });
  const conn = el('span', { className: 'cf-conn' });
  const queue = el('span', { className: 'cf-queue', textContent: 'queue: —' });
  const workers = el('span', { className: 'cf-workers' });
  const doc = el('span', { className: 'cf-doc' });
  const msg = el('span', { className: 'cf-msg' });
  const element = el('footer', { className: 'cf-status' }, el('span', { className: 'cf-conn-wrap' }, dot, conn), queue, workers, doc, msg);
  let countdown: ReturnType<typeof setInterval> | null = null;
  return {
    element,
    connection(state, retryInMs) {
      if (countdown) clearInterval(countdown);
      countdown = null;
      element.dataset.connection = state;
      if (state === 'open') conn.textContent = 'connected';
      else if (state === 'connecting') conn.textContent = 'connecting…';
      else if (retryInMs !== undefined) {
        const until = Date.now() + retryInMs;
        const tick = (): void => {
          conn.textContent = `offline — retrying in ${Math.max(0, (until - Date.now()) / 1000).toFixed(1)} s`;
        };
        tick();
        countdown = setInterval(tick, 200);
      } else conn.textContent = 'offline';
    },
    queue(items) {
      const running = items.filter((i) => i.status === 'running').length;
      const pending = items.length - running;
      const mine = items.filter((i) => i.mine).length;
      queue.textContent = items.length ? `queue: ${running} running · ${pending} pending${mine ? ` (${mine} mine)` : ''}` : 'queue: idle';
      element.dataset.queue = String(items.length);
    },
    workers(items) {
      const busy = items.filter((w) => w.current).length;
      workers.textContent = `workers: ${items.length}${items.length ? ` (${busy} busy)` : ''}`;
      workers.title = items
        .map((w) => `${w.name} · ${w.device} · sets ${w.sets.join(', ') || 'any'} · loaded ${w.loaded.join(', ') || 'none'} · ${w.current ? `job #${w.current.number}` : 'idle'}`)
        .join('\n');
      element.dataset.workers = String(items.length);
    },
    message(text, kind = 'info') {
      msg.textContent = text;
      msg.dataset.kind = kind;
    },
    document(name, modified) {
      doc.textContent = `${name ?? 'unsaved workflow'}${modified ? ' •' : ''}`;
      doc.title = modified ? 'changed since last saved' : '';
      document.title = `${modified ? '• ' : ''}${name ?? 'untitled'} — charflow`;
    },
  };
}
