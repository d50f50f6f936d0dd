// Reading and writing workflow files. Reading never throws for a user's mistake (missing file, too
// large, bad JSON): it returns errors in the same shape as validation, one line each.
import type { NodeDef } from '../node.ts';
import { FileError, readTextLimited, writeFileAtomic } from '../fsutil.ts';
import { validateWorkflow, type ValidateOptions } from './validate.ts';
import { DEFAULT_MAX_WORKFLOW_BYTES, type ValidationError, type ValidationResult, type Workflow } from './types.ts';

export interface ReadOptions {
  /** Refuse files larger than this (default 16 MiB). */
  maxBytes?: number;
}

export type ParseResult = { ok: true; value: unknown } | { ok: false; error: ValidationError };

/** JSON.parse with a message that gives line and column instead of a character offset. */
export function parseWorkflowJson(text: string, source = 'workflow'): ParseResult {
  try {
    return { ok: true, value: JSON.parse(text) as unknown };
  } catch (err) {
    const msg = (err as Error).message;
    const m = /at position (\d+)/.exec(msg);
    let where = '';
    let reason = msg.replace(/\s*in JSON at position \d+.*$/, '').replace(/^JSON\.parse: /, '');
    if (m) {
      const pos = Number(m[1]);
      const before = text.slice(0, pos);
      const line = before.split('\n').length;
      const col = pos - before.lastIndexOf('\n');
      where = ` at line ${line} column ${col}`;
    } else if (/end of JSON input/.test(msg)) {
      reason = text.trim() === '' ? 'the file is empty' : 'unexpected end of the file';
    }
    return { ok: false, error: { code: 'invalid_json', message: `${source}: not valid JSON${where}: ${reason}` } };
  }
}

/** Reads and parses a workflow file (size-limited). */
export async function readWorkflowFile(file: string, opts: ReadOptions = {}): Promise<ParseResult> {
  let text: string;
  try {
    text = await readTextLimited(file, opts.maxBytes ?? DEFAULT_MAX_WORKFLOW_BYTES);
  } catch (err) {
    if (err instanceof FileError) return { ok: false, error: { code: 'file', message: err.message } };
    throw err;
  }
  return parseWorkflowJson(text, file);
}

/** Reads, migrates and validates a workflow file: everything `charflow validate` does. */
export async function loadWorkflow<S>(
  file: string,
  registry: ReadonlyMap<string, NodeDef<S>>,
  opts: ReadOptions & ValidateOptions = {},
): Promise<ValidationResult> {
  const parsed = await readWorkflowFile(file, opts);
  if (!parsed.ok) return { ok: false, errors: [parsed.error] };
  return validateWorkflow(parsed.value, registry, opts);
}

/** Writes a workflow as pretty JSON, atomically. */
export async function saveWorkflow(file: string, workflow: Workflow): Promise<void> {
  await writeFileAtomic(file, `${JSON.stringify(workflow, null, 2)}\n`);
}
