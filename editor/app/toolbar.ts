// The toolbar: file actions on the left, run and cancel on the right.
import { el } from './dialogs.ts';

export type Action = 'new' | 'example' | 'templates' | 'models' | 'queue' | 'open' | 'save' | 'saveas' | 'import' | 'export' | 'run' | 'cancel' | 'fit';

export interface Toolbar {
  element: HTMLElement;
  setEnabled(action: Action, enabled: boolean): void;
  setRunning(running: boolean): void;
}

const BUTTONS: { action: Action; label: string; title: string; group: 'file' | 'view' | 'run' }[] = [
  { action: 'new', label: 'New', title: 'Start an empty workflow', group: 'file' },
  { action: 'example', label: 'Example', title: 'Open the InstantCharacter example workflow', group: 'file' },
  { action: 'templates', label: 'Templates…', title: 'Start from one of the bundled workflows', group: 'file' },
  { action: 'open', label: 'Open…', title: 'Open a workflow saved on the server (Ctrl+O)', group: 'file' },
  { action: 'save', label: 'Save', title: 'Save to the server (Ctrl+S)', group: 'file' },
  { action: 'saveas', label: 'Save as…', title: 'Save under another name', group: 'file' },
  { action: 'import', label: 'Import…', title: 'Open a workflow .json, or a PNG that charflow saved (or drop it on the page)', group: 'file' },
  { action: 'export', label: 'Export', title: 'Download the workflow as .json', group: 'file' },
  { action: 'fit', label: 'Fit', title: 'Show the whole graph', group: 'view' },
  { action: 'queue', label: 'Queue', title: 'Queued and running runs, and the history of finished ones', group: 'view' },
  { action: 'models', label: 'Models', title: 'Installed model sets: format, size, loaded; unload one', group: 'view' },
  { action: 'run', label: '▶ Run', title: 'Run the workflow as it is now (Ctrl+Enter)', group: 'run' },
  { action: 'cancel', label: '■ Cancel', title: 'Cancel the running workflow', group: 'run' },
];

export function createToolbar(onAction: (action: Action) => void): Toolbar {
  const buttons = new Map<Action, HTMLButtonElement>();
  const groups = { file: el('div', { className: 'cf-group' }), view: el('div', { className: 'cf-group' }), run: el('div', { className: 'cf-group cf-run' }) };
  for (const b of BUTTONS) {
    const button = el('button', { textContent: b.label, title: b.title, className: `cf-btn cf-${b.action}` });
    button.dataset.action = b.action;
    button.addEventListener('click', () => onAction(b.action));
    buttons.set(b.action, button);
    groups[b.group].append(button);
  }
  const brand = el('div', { className: 'cf-brand' }, el('strong', { textContent: 'charflow' }), el('span', { textContent: 'InstantCharacter' }));
  const element = el('header', { className: 'cf-toolbar' }, brand, groups.file, groups.view, el('div', { className: 'cf-spacer' }), groups.run);
  return {
    element,
    setEnabled(action, enabled) {
      buttons.get(action)!.disabled = !enabled;
    },
    setRunning(running) {
      buttons.get('cancel')!.disabled = !running;
      element.classList.toggle('running', running);
    },
  };
}
