// Small modal dialogs: ask for a name, choose among buttons, pick a workflow from a list.

function el<K extends keyof HTMLElementTagNameMap>(tag: K, props: Partial<HTMLElementTagNameMap[K]> = {}, ...children: (Node | string)[]): HTMLElementTagNameMap[K] {
  const e = Object.assign(document.createElement(tag), props);
  e.append(...children);
  return e;
}
export { el, modal };

interface Modal {
  box: HTMLDivElement;
  close(): void;
}

function modal(title: string, onEscape: () => void): Modal {
  const backdrop = el('div', { className: 'cf-modal-backdrop' });
  const box = el('div', { className: 'cf-modal', role: 'dialog' } as Partial<HTMLDivElement>);
  box.append(el('h2', { textContent: title }));
  backdrop.append(box);
  document.body.append(backdrop);
  const key = (e: KeyboardEvent): void => {
    if (e.key === 'Escape') {
      e.stopPropagation();
      onEscape();
    }
  };
  document.addEventListener('keydown', key, true);
  backdrop.addEventListener('pointerdown', (e) => {
    if (e.target === backdrop) onEscape();
  });
  return {
    box,
    close() {
      document.removeEventListener('keydown', key, true);
      backdrop.remove();
    },
  };
}

/** Asks for a line of text; resolves null when cancelled. */
export function askText(title: string, initial: string, hint = ''): Promise<string | null> {
  return new Promise((resolve) => {
    const done = (v: string | null): void => {
      m.close();
      resolve(v);
    };
    const m = modal(title, () => done(null));
    const input = el('input', { type: 'text', value: initial, className: 'cf-modal-input', spellcheck: false });
    const ok = el('button', { textContent: 'OK', className: 'primary' });
    const cancel = el('button', { textContent: 'Cancel' });
    if (hint) m.box.append(el('p', { textContent: hint, className: 'cf-hint' }));
    m.box.append(input, el('div', { className: 'cf-modal-buttons' }, cancel, ok));
    ok.addEventListener('click', () => done(input.value.trim() || null));
    cancel.addEventListener('click', () => done(null));
    input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') done(input.value.trim() || null);
    });
    input.focus();
    input.select();
  });
}

/** Shows a message with buttons; resolves with the chosen button's key, or null when dismissed. */
export function choose<K extends string>(title: string, message: string, buttons: { key: K; label: string; primary?: boolean }[]): Promise<K | null> {
  return new Promise((resolve) => {
    const done = (v: K | null): void => {
      m.close();
      resolve(v);
    };
    const m = modal(title, () => done(null));
    m.box.classList.add('cf-choose');
    m.box.append(el('p', { textContent: message, className: 'cf-message' }));
    const row = el('div', { className: 'cf-modal-buttons' });
    for (const b of buttons) {
      const btn = el('button', { textContent: b.label, className: b.primary ? 'primary' : '' });
      btn.dataset.key = b.key;
      btn.addEventListener('click', () => done(b.key));
      row.append(btn);
    }
    m.box.append(row);
    (row.querySelector('button.primary') as HTMLButtonElement | null)?.focus();
  });
}

export interface ListItem {
  name: string;
  detail: string;
}

/** Lets the user pick one item (e.g. a saved workflow); resolves null when cancelled. */
export function pickFromList(title: string, items: ListItem[], empty: string): Promise<string | null> {
  return new Promise((resolve) => {
    const done = (v: string | null): void => {
      m.close();
      resolve(v);
    };
    const m = modal(title, () => done(null));
    const filter = el('input', { type: 'search', placeholder: 'filter…', className: 'cf-modal-input' });
    const list = el('ul', { className: 'cf-list' });
    const render = (): void => {
      const q = filter.value.toLowerCase();
      list.replaceChildren();
      const shown = items.filter((i) => i.name.toLowerCase().includes(q));
      if (!shown.length) list.append(el('li', { className: 'cf-empty', textContent: items.length ? 'no match' : empty }));
      for (const item of shown) {
        const li = el('li', {}, el('span', { className: 'cf-name', textContent: item.name }), el('span', { className: 'cf-detail', textContent: item.detail }));
        li.dataset.name = item.name;
        li.tabIndex = 0;
        li.addEventListener('click', () => done(item.name));
        li.addEventListener('keydown', (e) => {
          if (e.key === 'Enter') done(item.name);
        });
        list.append(li);
      }
    };
    filter.addEventListener('input', render);
    filter.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') {
        const first = list.querySelector<HTMLLIElement>('li[data-name]');
        if (first) done(first.dataset.name!);
      }
    });
    const cancel = el('button', { textContent: 'Cancel' });
    cancel.addEventListener('click', () => done(null));
    m.box.append(filter, list, el('div', { className: 'cf-modal-buttons' }, cancel));
    render();
    filter.focus();
  });
}
