// The floors of the code base, read from the import statements themselves: models at the bottom,
// then engine, nodes, editor and the command line on top. An import may only go down (or stay on its
// floor), and no module may reach itself through its imports (type-only imports count too).
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = resolve(import.meta.dirname, '../..');
/** Lowest first. */
const FLOORS = ['models', 'engine', 'nodes', 'editor', 'cli'] as const;
type Floor = (typeof FLOORS)[number];

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    if (name === 'node_modules' || name.startsWith('.')) continue;
    const full = join(dir, name);
    if (statSync(full).isDirectory()) out.push(...sourceFiles(full));
    else if (/\.(ts|mts|mjs|js)$/.test(name) && !name.endsWith('.d.ts')) out.push(full);
  }
  return out;
}

/** Every module specifier a file imports or re-exports, statically or with import(). */
export function importSpecifiers(source: string): string[] {
  const code = source.replace(/\/\*[\s\S]*?\*\//g, '').replace(/^\s*\/\/.*$/gm, '');
  const specs: string[] = [];
  const patterns = [
    /\bimport\s+(?:type\s+)?[\w*{}\s,$]*?\s*from\s*['"]([^'"]+)['"]/g,
    /\bexport\s+(?:type\s+)?(?:\*(?:\s+as\s+\w+)?|\{[^}]*\})\s*from\s*['"]([^'"]+)['"]/g,
    /\bimport\s*['"]([^'"]+)['"]/g,
    /\bimport\(\s*['"]([^'"]+)['"]\s*\)/g,
    /\bnew\s+URL\(\s*['"](\.[^'"]+\.(?:ts|mjs|js))['"]\s*,\s*import\.meta\.url/g, // worker entry points
  ];
  for (const re of patterns) for (const m of code.matchAll(re)) specs.push(m[1]!);
  return specs;
}

function floorOf(file: string): Floor | undefined {
  const top = relative(ROOT, file).split(sep)[0];
  return (FLOORS as readonly string[]).includes(top!) ? (top as Floor) : undefined;
}

const files = FLOORS.flatMap((f) => sourceFiles(join(ROOT, f)));
/** file -> the project files it imports (relative specifiers only; packages are not floors). */
const graph = new Map<string, string[]>(
  files.map((f) => [
    f,
    importSpecifiers(readFileSync(f, 'utf8'))
      .filter((s) => s.startsWith('.'))
      .map((s) => resolve(dirname(f), s)),
  ]),
);

describe('import layering', () => {
  it('finds the imports it checks', () => {
    expect(files.length).toBeGreaterThan(50);
    expect(importSpecifiers(`import { a } from './a.ts';\nimport type { B } from "../b.ts";\nexport * from './c.ts';\nconst d = await import('../d.ts');`))
      .toEqual(['./a.ts', '../b.ts', './c.ts', '../d.ts']);
    expect(importSpecifiers(`// import { x } from './commented.ts';\nexport { y, type Z } from './y.ts';`)).toEqual(['./y.ts']);
  });

  it('never imports from a higher floor (models < engine < nodes < editor < cli)', () => {
    const wrong: string[] = [];
    for (const [file, deps] of graph) {
      const from = FLOORS.indexOf(floorOf(file)!);
      for (const dep of deps) {
        const to = floorOf(dep);
        if (to !== undefined && FLOORS.indexOf(to) > from) wrong.push(`${relative(ROOT, file)} -> ${relative(ROOT, dep)}`);
      }
    }
    expect(wrong).toEqual([]);
  });

  it('has no import cycles', () => {
    // Tarjan's strongly connected components; any component of more than one module is a cycle.
    const index = new Map<string, number>();
    const low = new Map<string, number>();
    const stack: string[] = [];
    const onStack = new Set<string>();
    const cycles: string[][] = [];
    let next = 0;
    const visit = (v: string): void => {
      index.set(v, next);
      low.set(v, next++);
      stack.push(v);
      onStack.add(v);
      for (const w of graph.get(v) ?? []) {
        if (!graph.has(w)) continue;
        if (!index.has(w)) {
          visit(w);
          low.set(v, Math.min(low.get(v)!, low.get(w)!));
        } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
      }
      if (low.get(v) === index.get(v)) {
        const comp: string[] = [];
        let w: string;
        do {
          w = stack.pop()!;
          onStack.delete(w);
          comp.push(relative(ROOT, w));
        } while (w !== v);
        if (comp.length > 1 || (graph.get(v) ?? []).includes(v)) cycles.push(comp.sort());
      }
    };
    for (const f of graph.keys()) if (!index.has(f)) visit(f);
    expect(cycles).toEqual([]);
  });
});
