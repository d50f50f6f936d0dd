// New, open, save, save as: workflows stored on the server (list/load/save with etag), with the
// server's conflict message shown when it refuses a save because the file changed meanwhile.
import type { Workflow } from '../../engine/workflow/types.ts';
import { type Connection, RequestError } from './connection.ts';
import { askText, choose, pickFromList } from './dialogs.ts';

export interface DocState {
  /** Name on the server, or null for a workflow never saved there. */
  name: string | null;
  /** Version of the file we loaded or last saved (null: not on the server). */
  etag: string | null;
  /** The workflow as last loaded or saved, to tell whether there are unsaved changes. */
  savedJson: string;
}

export interface FilesHost {
  conn: Connection;
  /** The editor's current workflow. */
  current(): Workflow;
  /** Replaces the editor's content. */
  open(workflow: unknown, name: string | null, etag: string | null, label?: string): boolean;
  message(text: string, kind?: 'info' | 'error' | 'ok'): void;
  changed(): void;
}

function age(iso: string): string {
  const t = Date.parse(iso);
  return Number.isNaN(t) ? '' : new Date(t).toLocaleString();
}

export class Files {
  doc: DocState = { name: null, etag: null, savedJson: '' };

  constructor(private readonly host: FilesHost) {}

  get modified(): boolean {
    return JSON.stringify(this.host.current()) !== this.doc.savedJson;
  }

  /** Records what is now on screen as the saved state. */
  markSaved(name: string | null, etag: string | null): void {
    this.doc = { name, etag, savedJson: JSON.stringify(this.host.current()) };
    this.host.changed();
  }

  private async confirmDiscard(): Promise<boolean> {
    if (!this.modified) return true;
    const answer = await choose('Unsaved changes', `"${this.doc.name ?? 'untitled'}" has changes that are not saved.`, [
      { key: 'cancel', label: 'Cancel' },
      { key: 'discard', label: 'Discard changes', primary: true },
    ]);
    return answer === 'discard';
  }

  async newWorkflow(example?: unknown): Promise<void> {
    if (!(await this.confirmDiscard())) return;
    const empty = { format: 'charflow.workflow', version: 1, nodes: {}, groups: [] };
    if (this.host.open(example ?? empty, null, null, example ? 'the InstantCharacter example' : 'a new workflow') && !example) this.host.message('new workflow');
  }

  async openDialog(): Promise<void> {
    let items;
    try {
      items = (await this.host.conn.request({ type: 'workflows.list' }, 'workflows')).items;
    } catch (err) {
      this.host.message(`cannot list workflows: ${(err as Error).message}`, 'error');
      return;
    }
    const name = await pickFromList(
      'Open workflow',
      items.map((i) => ({ name: i.name, detail: age(i.modified) })),
      'No saved workflows yet.',
    );
    if (name) await this.load(name);
  }

  /** Opens a stored workflow; `ask` false skips the unsaved-changes question (e.g. on start-up). */
  async load(name: string, ask = true): Promise<boolean> {
    if (ask && !(await this.confirmDiscard())) return false;
    try {
      const reply = await this.host.conn.request({ type: 'workflows.load', name }, 'workflow');
      return this.host.open(reply.workflow, reply.name, reply.etag);
    } catch (err) {
      this.host.message(`cannot open ${name}: ${(err as Error).message}`, 'error');
      return false;
    }
  }

  async save(): Promise<boolean> {
    if (this.doc.name === null) return this.saveAs();
    return this.saveTo(this.doc.name, this.doc.etag);
  }

  async saveAs(): Promise<boolean> {
    const name = await askText('Save workflow as', this.doc.name ?? 'my-workflow', 'Name in the server’s workflows folder.');
    if (!name) return false;
    // A new name must not exist yet (etag null); the same name keeps our etag.
    return this.saveTo(name, name === this.doc.name ? this.doc.etag : null);
  }

  /** The stored version of `name` now (to overwrite it deliberately). */
  private async etagOf(name: string): Promise<string | null> {
    const { items } = await this.host.conn.request({ type: 'workflows.list' }, 'workflows');
    return items.find((i) => i.name === name)?.etag ?? null;
  }

  private async saveTo(name: string, etag: string | null): Promise<boolean> {
    const workflow = this.host.current();
    try {
      const reply = await this.host.conn.request({ type: 'workflows.save', name, workflow, etag }, 'saved');
      this.doc = { name: reply.name, etag: reply.etag, savedJson: JSON.stringify(workflow) };
      this.host.message(`saved ${reply.name}`, 'ok');
      this.host.changed();
      return true;
    } catch (err) {
      if (err instanceof RequestError && (err.code === 'conflict' || err.code === 'exists')) {
        this.host.message(err.message, 'error');
        const title = err.code === 'conflict' ? 'Save conflict' : 'Workflow exists';
        const answer = await choose(title, err.message, [
          // Cancel is the default: Enter must never overwrite someone else's save.
          { key: 'cancel', label: 'Cancel', primary: true },
          { key: 'saveas', label: 'Save as…' },
          { key: 'overwrite', label: 'Overwrite' },
        ]);
        if (answer === 'saveas') return this.saveAs();
        if (answer === 'overwrite') {
          try {
            return await this.saveTo(name, await this.etagOf(name));
          } catch (e) {
            this.host.message((e as Error).message, 'error');
          }
        }
        return false;
      }
      this.host.message(`cannot save: ${(err as Error).message}`, 'error');
      return false;
    }
  }
}
