// The tab's session in localStorage: which workflow was open, and its unsaved state, so a reload
// (or a crash) brings back what was on screen.
import type { Workflow } from '../../engine/workflow/types.ts';

const SESSION_KEY = 'charflow.editor.session';

export interface Session {
  name: string | null;
  etag: string | null;
  workflow: Workflow;
  /** The workflow as last loaded or saved; differs from `workflow` when there were unsaved changes. */
  savedJson: string;
}

export function storeSession(s: Session): void {
  try {
    localStorage.setItem(SESSION_KEY, JSON.stringify(s));
  } catch {
    // Storage full or disabled: the session just is not restored.
  }
}

export function loadSession(): Session | null {
  try {
    const s = JSON.parse(localStorage.getItem(SESSION_KEY) ?? 'null') as Session | null;
    return s && typeof s === 'object' && s.workflow ? s : null;
  } catch {
    return null;
  }
}

/** `#workflow=<name>` in the page address opens that stored workflow. */
export function workflowFromAddress(): string | null {
  return new URLSearchParams(location.hash.slice(1)).get('workflow');
}
