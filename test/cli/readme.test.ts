// Keeps the README honest about the CLI: its workflow examples validate, its option lists match
// what commander accepts (read from the program itself, not a copied list), and it names every
// environment variable the code reads.
//
// How the README's lines are read (the convention the README follows):
// - a line "belongs" to a command when it names it: `charflow <command> ...` (also `npx charflow`,
//   a `\` continuation line, or an indented line that continues a command in a code block), or the
//   command's name in backticks (`run`, `models convert`, `convert`); a line that says "every
//   command" belongs to all of them;
// - every option of a command must appear on a line that belongs to that command;
// - every `--option` on such a line must exist on one of the commands the line names;
// - an `--option` on a line that names no command must exist on some command, unless it is given
//   to another program (npm, npx tsx, node, a script under scripts/ or bench/).
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { describe, expect, it } from 'vitest';
import { buildProgram, EXIT, type CliContext } from '../../cli/main.ts';
import { validateWorkflow } from '../../engine/workflow/validate.ts';
import { nodeRegistry } from '../../nodes/registry.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const README = readFileSync(join(ROOT, 'README.md'), 'utf8');
const DOCS = existsSync(join(ROOT, 'docs'))
  ? readdirSync(join(ROOT, 'docs')).filter((f) => f.endsWith('.md')).sort().map((f) => join(ROOT, 'docs', f))
  : [];

/** Every leaf command of the real program ("run", "models convert", ...) with its long options. */
function commandOptions(): Map<string, string[]> {
  const quiet = { write: () => true };
  const ctx: CliContext = {
    stdout: quiet,
    stderr: quiet,
    env: {},
    cwd: ROOT,
    registry: async () => nodeRegistry(),
    createServices: async () => ({ close: async () => {} }),
    interrupt: () => ({ signal: new AbortController().signal, dispose: () => {} }),
    exitCode: EXIT.ok,
  };
  const out = new Map<string, string[]>();
  const walk = (cmd: Command, prefix: string[]): void => {
    for (const sub of cmd.commands) {
      const path = [...prefix, sub.name()];
      if (sub.commands.length) walk(sub, path);
      else out.set(path.join(' '), sub.options.filter((o) => !o.hidden && o.long).map((o) => o.long!));
    }
  };
  walk(buildProgram(ctx), []);
  return out;
}

const COMMANDS = commandOptions();

/** Names that refer to a command in backticks: its full path and, where unambiguous, its last word. */
function commandAliases(): Map<string, string> {
  const alias = new Map<string, string>();
  const leafCount = new Map<string, number>();
  for (const name of COMMANDS.keys()) {
    const leaf = name.split(' ').pop()!;
    leafCount.set(leaf, (leafCount.get(leaf) ?? 0) + 1);
  }
  for (const name of COMMANDS.keys()) {
    alias.set(name, name);
    const leaf = name.split(' ').pop()!;
    if (leafCount.get(leaf) === 1) alias.set(leaf, name);
  }
  return alias;
}

const ALIASES = commandAliases();
const OPTION = /(?<![\w-])--[a-z][a-z0-9-]*/g;
const OTHER_PROGRAM = /^\s*(?:\$\s*)?(?:redis-server\b|redis-cli\b|npm|npx\s+(?!charflow\b)|node\b|tsx\b|bash\b|sh\b|\.\/|scripts\/|bench\/|apt-get|apt\b|brew\b|sudo\b|git\b|pip\b|python|curl\b)/;
const CHARFLOW_COMMAND = new RegExp(
  `\\b(?:npx\\s+)?charflow\\s+(${[...COMMANDS.keys()].sort((a, b) => b.length - a.length).map((c) => c.replace(' ', '\\s+')).join('|')})\\b`,
  'g',
);

interface ReadmeLine {
  line: number;
  text: string;
  /** The commands the line names. */
  commands: Set<string>;
  /** The options on the line that are given to charflow (not to another program). */
  options: string[];
}

/** The README's lines with the commands they name and their charflow options (see the header). */
function readmeLines(markdown: string): ReadmeLine[] {
  const out: ReadmeLine[] = [];
  let fenced = false;
  let continuing: Set<string> | undefined;
  let backslash = false;
  markdown.split('\n').forEach((text, i) => {
    if (/^\s*```/.test(text)) {
      fenced = !fenced;
      continuing = undefined;
      out.push({ line: i + 1, text, commands: new Set(), options: [] });
      return;
    }
    // "every command takes `--data DIR`" documents an option for all of them.
    const commands = new Set<string>(/\bevery command\b/i.test(text) ? COMMANDS.keys() : []);
    for (const m of text.matchAll(CHARFLOW_COMMAND)) commands.add(m[1]!.replace(/\s+/g, ' '));
    let options: string[];
    if (fenced) {
      // An indented line, or one after a trailing backslash, continues the command above it.
      if (!commands.size && continuing && (/^\s+\S/.test(text) || backslash)) continuing.forEach((c) => commands.add(c));
      options = !commands.size && OTHER_PROGRAM.test(text) ? [] : [...text.matchAll(OPTION)].map((m) => m[0]);
      continuing = commands.size ? commands : undefined;
      backslash = /\\\s*$/.test(text);
    } else {
      // Inline code spans: a span that runs another program keeps its options to itself.
      const spans = [...text.matchAll(/`([^`]+)`/g)].map((m) => m[1]!);
      for (const s of spans) {
        const name = ALIASES.get(s.trim()) ?? ALIASES.get(s.trim().split(/\s+--/)[0]!.trim());
        if (name) commands.add(name);
      }
      const prose = text.replace(/`([^`]+)`/g, (_, s: string) => (OTHER_PROGRAM.test(s) && !CHARFLOW_COMMAND.test(s) ? ' ' : ` ${s} `));
      CHARFLOW_COMMAND.lastIndex = 0;
      options = [...prose.matchAll(OPTION)].map((m) => m[0]);
    }
    out.push({ line: i + 1, text, commands, options });
  });
  return out;
}

/** ```json blocks that hold a charflow workflow, with where they are. */
function workflowBlocks(file: string): { where: string; json: string }[] {
  const text = readFileSync(file, 'utf8');
  const blocks: { where: string; json: string }[] = [];
  const re = /^```json[^\n]*\n([\s\S]*?)^```/gm;
  for (const m of text.matchAll(re)) {
    if (!m[1]!.includes('charflow.workflow')) continue;
    const line = text.slice(0, m.index).split('\n').length;
    blocks.push({ where: `${relative(ROOT, file)}:${line}`, json: m[1]! });
  }
  return blocks;
}

describe('README and docs: workflow examples', () => {
  const blocks = [join(ROOT, 'README.md'), ...DOCS].flatMap(workflowBlocks);

  it('the README has at least one workflow example', () => {
    expect(blocks.filter((b) => b.where.startsWith('README.md')).length).toBeGreaterThan(0);
  });

  it.each(blocks.map((b) => [b.where, b.json] as const))('%s validates', (where, json) => {
    let raw: unknown;
    expect(() => (raw = JSON.parse(json)), `${where}: not valid JSON`).not.toThrow();
    const result = validateWorkflow(raw, nodeRegistry());
    expect(result.errors.map((e) => e.message), where).toEqual([]);
    expect(result.ok).toBe(true);
  });
});

describe('README: command options', () => {
  const lines = readmeLines(README);

  it('reads lines as the header describes', () => {
    const sample = readmeLines([
      '```sh',
      'npx charflow run wf.json --set 7.steps=8 \\',
      '  --bogus-a',
      'npx tsx bench/devices.ts --sets tiny',
      '```',
      '`serve` also takes `--memory-budget`; `npx tsx bench/devices.ts --steps 8`; plain `--bogus-b`.',
      '```',
      'charflow models convert --flux F',
      '             [--t5 P]',
      '```',
    ].join('\n'));
    const at = (n: number) => ({ commands: [...sample[n]!.commands], options: sample[n]!.options });
    expect(at(1)).toEqual({ commands: ['run'], options: ['--set'] });
    expect(at(2)).toEqual({ commands: ['run'], options: ['--bogus-a'] });
    expect(at(3)).toEqual({ commands: [], options: [] });
    expect(at(5)).toEqual({ commands: ['serve'], options: ['--memory-budget', '--bogus-b'] });
    expect(at(7)).toEqual({ commands: ['models convert'], options: ['--flux'] });
    expect(at(8)).toEqual({ commands: ['models convert'], options: ['--t5'] });
    expect(readmeLines('Every command takes `--data DIR`.')[0]!.commands).toEqual(new Set(COMMANDS.keys()));
  });

  it('reads the commands from the program', () => {
    // The commands the README is about; anything added to the program is checked as well.
    for (const c of ['run', 'validate', 'nodes', 'models tiny', 'models convert', 'models pull', 'demo', 'serve']) {
      expect(COMMANDS.has(c), c).toBe(true);
    }
  });

  it('every option of every command appears on a README line about that command', () => {
    const missing: string[] = [];
    for (const [command, options] of COMMANDS) {
      const documented = new Set(lines.filter((l) => l.commands.has(command)).flatMap((l) => l.options));
      for (const o of options) if (!documented.has(o)) missing.push(`${command} ${o}`);
    }
    expect(missing).toEqual([]);
  });

  it('every option the README names exists', () => {
    const all = new Set([...COMMANDS.values()].flat());
    const wrong: string[] = [];
    for (const l of lines) {
      for (const o of l.options) {
        const ok = l.commands.size ? [...l.commands].some((c) => COMMANDS.get(c)!.includes(o)) : all.has(o);
        if (!ok) wrong.push(`README.md:${l.line}: ${o}${l.commands.size ? ` (${[...l.commands].join(', ')})` : ''}`);
      }
    }
    expect(wrong).toEqual([]);
  });
});

describe('README: environment variables', () => {
  /** Variables read by the shipped code (and the goldens helper, which the README documents). */
  function readVariables(): Set<string> {
    const names = new Set<string>();
    const files: string[] = [join(ROOT, 'test', 'helpers', 'goldens.ts')];
    const walk = (dir: string): void => {
      for (const e of readdirSync(dir, { withFileTypes: true })) {
        const p = join(dir, e.name);
        if (e.isDirectory()) {
          if (e.name !== 'node_modules' && !e.name.startsWith('.')) walk(p);
        } else if (/\.(ts|js|sh)$/.test(e.name)) files.push(p);
      }
    };
    for (const d of ['bin', 'cli', 'engine', 'nodes', 'models', 'editor']) if (existsSync(join(ROOT, d))) walk(join(ROOT, d));
    for (const f of files) {
      const src = readFileSync(f, 'utf8');
      // CHARFLOW_* names are environment variables wherever they appear; others only where read.
      for (const m of src.matchAll(/\bCHARFLOW_[A-Z0-9_]+\b/g)) names.add(m[0]);
      for (const m of src.matchAll(/env(?:\.|\[\s*['"])((?:HF|HUGGING_FACE)_[A-Z0-9_]+)/g)) names.add(m[1]!);
    }
    return names;
  }

  it('finds the variables it knows are read', () => {
    const names = readVariables();
    for (const n of ['CHARFLOW_DATA', 'CHARFLOW_MODELS', 'CHARFLOW_TOKEN', 'HF_TOKEN']) expect(names.has(n), n).toBe(true);
  });

  it('the README names every one', () => {
    const missing = [...readVariables()].filter((n) => !new RegExp(`\\b${n}\\b`).test(README)).sort();
    expect(missing).toEqual([]);
  });
});
