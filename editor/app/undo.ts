// Undo and redo (Ctrl+Z / Ctrl+Shift+Z, Ctrl+Y) over snapshots of the workflow: every change the editor
// makes (adding, deleting, moving, connecting, widget edits) shows up as a different workflow JSON, so one
// rule covers them all. A snapshot is taken once the pointer is up (a drag is one step, not many).

export interface UndoHost {
  /** The workflow now, as JSON. */
  snapshot(): string;
  /** Puts the graph back to a snapshot (keeping the view). */
  restore(json: string): void;
}

const LIMIT = 100;

export class UndoStack {
  private past: string[] = [];
  private future: string[] = [];
  private current: string | undefined;
  private pointerDown = false;

  constructor(private readonly host: UndoHost) {
    document.addEventListener('pointerdown', () => (this.pointerDown = true), true);
    document.addEventListener('pointerup', () => {
      this.pointerDown = false;
      // After litegraph has handled the release (the drop of a node or a link).
      setTimeout(() => this.check(), 0);
    }, true);
  }

  /** Starts over from the workflow now (a workflow was opened: its own history begins). */
  reset(): void {
    this.past = [];
    this.future = [];
    this.current = this.host.snapshot();
  }

  /** Records the workflow if it changed since the last snapshot (called after changes and periodically). */
  check(): void {
    if (this.pointerDown) return;
    const now = this.host.snapshot();
    if (this.current === undefined) {
      this.current = now;
      return;
    }
    if (now === this.current) return;
    this.past.push(this.current);
    if (this.past.length > LIMIT) this.past.shift();
    this.future = [];
    this.current = now;
  }

  get canUndo(): boolean {
    return this.past.length > 0;
  }

  get canRedo(): boolean {
    return this.future.length > 0;
  }

  undo(): boolean {
    this.check(); // a change not recorded yet is the step undone first
    const prev = this.past.pop();
    if (prev === undefined) return false;
    this.future.push(this.current!);
    this.current = prev;
    this.host.restore(prev);
    return true;
  }

  redo(): boolean {
    const next = this.future.pop();
    if (next === undefined) return false;
    this.past.push(this.current!);
    this.current = next;
    this.host.restore(next);
    return true;
  }
}
