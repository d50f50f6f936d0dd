// Everyday panels (issue 25): the Templates menu (every bundled workflow with its description) and the
// models panel (installed model sets: format, size on disk, loaded or not; unload one).
import { el, modal, pickFromList } from './dialogs.ts';

export interface ModelSetItem {
  name: string;
  format: string;
  formats: string[];
  bytes: number;
  complete: boolean;
  loaded: number;
  problem?: string;
}

async function getJson<T>(url: string, init?: RequestInit): Promise<T> {
  const res = await fetch(url, { ...init, headers: { accept: 'application/json' } });
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
  return (await res.json()) as T;
}

/** The installed model sets (empty when the server does not list them). */
export async function fetchModelSets(): Promise<ModelSetItem[]> {
  try {
    return (await getJson<{ sets: ModelSetItem[] }>('/api/models')).sets;
  } catch {
    return [];
  }
}

/** 1.5 GB style sizes. */
export function sizeText(n: number): string {
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) [v, i] = [v / 1024, i + 1];
  return `${v >= 10 || i === 0 ? v.toFixed(0) : v.toFixed(1)} ${units[i]}`;
}

/** "fp32 · 33 MB · loaded (8 graphs)": how a set is shown in the panel. */
export function setDetail(s: ModelSetItem): string {
  const format = s.formats.length > 1 ? `${s.format} (+${s.formats.filter((f) => f !== s.format).join(', ')})` : s.format;
  const state = s.problem ?? (!s.complete ? 'incomplete' : s.loaded ? `loaded (${s.loaded} graph${s.loaded === 1 ? '' : 's'})` : 'not loaded');
  return `${format} · ${sizeText(s.bytes)} · ${state}`;
}

/** The models panel; `changed` runs after an unload (to refresh Load Models' list). */
export async function showModelsPanel(notify: (m: string, k?: 'info' | 'error' | 'ok') => void, changed: (sets: ModelSetItem[]) => void): Promise<void> {
  const m = modal('Model sets', () => m.close());
  m.box.classList.add('cf-models');
  const list = el('ul', { className: 'cf-list cf-model-list' });
  const render = async (): Promise<void> => {
    const sets = await fetchModelSets();
    changed(sets);
    list.replaceChildren();
    if (!sets.length) list.append(el('li', { className: 'cf-empty', textContent: 'no model sets: run `charflow models tiny` or `charflow models pull`' }));
    for (const s of sets) {
      const unload = el('button', { textContent: 'Unload', disabled: s.loaded === 0, title: 'Free the memory its loaded graphs hold' });
      unload.addEventListener('click', async () => {
        unload.disabled = true;
        try {
          const r = await getJson<{ unloaded: number }>(`/api/models/${encodeURIComponent(s.name)}/unload`, { method: 'POST' });
          notify(`unloaded ${s.name} (${r.unloaded} graph${r.unloaded === 1 ? '' : 's'})`, 'ok');
        } catch (err) {
          notify((err as Error).message, 'error');
        }
        await render();
      });
      const li = el('li', {}, el('span', { className: 'cf-name', textContent: s.name }), el('span', { className: 'cf-detail', textContent: setDetail(s) }), unload);
      li.dataset.name = s.name;
      li.dataset.loaded = String(s.loaded);
      list.append(li);
    }
  };
  const close = el('button', { textContent: 'Close', className: 'primary' });
  close.addEventListener('click', () => m.close());
  m.box.append(list, el('div', { className: 'cf-modal-buttons' }, close));
  await render();
}

/** The Templates menu: resolves with the chosen bundled workflow, or null. */
export async function pickTemplate(notify: (m: string, k?: 'info' | 'error') => void): Promise<{ name: string; workflow: unknown } | null> {
  let templates: { name: string; description: string }[];
  try {
    templates = (await getJson<{ templates: { name: string; description: string }[] }>('/api/templates')).templates;
  } catch (err) {
    notify((err as Error).message, 'error');
    return null;
  }
  const name = await pickFromList('Templates', templates.map((t) => ({ name: t.name, detail: t.description })), 'no templates');
  if (!name) return null;
  try {
    return { name, workflow: await getJson<unknown>(`/api/templates/${encodeURIComponent(name)}`) };
  } catch (err) {
    notify((err as Error).message, 'error');
    return null;
  }
}
