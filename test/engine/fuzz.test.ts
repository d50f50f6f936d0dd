// Property-based: random and mutated workflows never crash validation, never hang, and every
// rejection is a one-line message a person can act on.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { validateWorkflow } from '../../engine/workflow/index.ts';
import { nodeRegistry } from '../../nodes/registry.ts';
import { PACKAGE_ROOT } from '../../nodes/services.ts';

const registry = nodeRegistry();
const base = JSON.parse(readFileSync(join(PACKAGE_ROOT, 'workflows/instantcharacter.json'), 'utf8')) as Record<string, unknown>;

function expectClearRejection(raw: unknown): void {
  const r = validateWorkflow(raw, registry);
  if (r.ok) return;
  expect(r.errors.length).toBeGreaterThan(0);
  for (const e of r.errors) {
    expect(typeof e.message).toBe('string');
    expect(e.message.length).toBeGreaterThan(5);
    expect(e.message).not.toMatch(/\n|undefined|\[object Object\]|TypeError|at .*\.ts:\d+/);
  }
}

/** A mutation at a random path of the default workflow: a value replaced, a key dropped or added. */
const mutation = fc.record({
  path: fc.array(fc.oneof(fc.constantFrom('nodes', 'inputs', 'type', 'ui', '7', '6', '2', 'node', 'output', 'width', 'prompt', 'format', 'version'), fc.string({ maxLength: 6 })), { minLength: 1, maxLength: 4 }),
  value: fc.oneof(fc.anything({ maxDepth: 2 }), fc.constant(undefined)),
});

function applyMutation(target: Record<string, unknown>, path: string[], value: unknown): void {
  let obj: Record<string, unknown> = target;
  for (const key of path.slice(0, -1)) {
    const next = obj[key];
    if (typeof next !== 'object' || next === null) return;
    obj = next as Record<string, unknown>;
  }
  const last = path[path.length - 1]!;
  if (value === undefined) delete obj[last];
  else obj[last] = value;
}

describe('validation under hostile input', () => {
  it('accepts the default workflow', () => {
    expect(validateWorkflow(base, registry).ok).toBe(true);
  });

  it('never throws on arbitrary JSON values', () => {
    fc.assert(fc.property(fc.anything({ maxDepth: 4 }), (raw) => expectClearRejection(raw)), { numRuns: 400 });
  });

  it('never throws on mutated versions of the default workflow', () => {
    fc.assert(fc.property(fc.array(mutation, { minLength: 1, maxLength: 5 }), (mutations) => {
      const wf = structuredClone(base);
      for (const m of mutations) applyMutation(wf, m.path, m.value);
      expectClearRejection(wf);
    }), { numRuns: 600 });
  });

  it('names the node and field for every bad constant', () => {
    fc.assert(fc.property(fc.constantFrom('steps', 'width', 'height', 'guidance', 'seed', 'subject_scale'), fc.oneof(fc.double(), fc.string(), fc.boolean(), fc.integer()), (field, value) => {
      const wf = structuredClone(base) as { nodes: Record<string, { inputs: Record<string, unknown> }> };
      wf.nodes['7']!.inputs[field] = value;
      const r = validateWorkflow(wf, registry);
      if (!r.ok) expect(r.errors.some((e) => e.nodeId === '7' && e.field === field && e.message.includes('DiTSample'))).toBe(true);
    }), { numRuns: 300 });
  });
});
