import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { CliContext, RunServiceOptions } from '../../cli/context.ts';
import { main } from '../../cli/main.ts';
import { applySets, parseSet } from '../../cli/run.ts';
import { toJsonLine } from '../../cli/format.ts';
import type { DataPaths } from '../../engine/paths.ts';
import { createTestServices, link, testRegistry, wf, type TestServices } from '../helpers/testnodes.ts';

interface Harness {
  dir: string;
  stdout: string[];
  stderr: string[];
  services: (TestServices & { closed: boolean; paths: DataPaths; opts: RunServiceOptions })[];
  run(argv: string[], extra?: Partial<CliContext>): Promise<number>;
  out(): string;
  err(): string;
}

let h: Harness;

beforeEach(async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'charflow-cli-'));
  const stdout: string[] = [];
  const stderr: string[] = [];
  const services: Harness['services'] = [];
  h = {
    dir,
    stdout,
    stderr,
    services,
    run: (argv, extra = {}) =>
      main(argv, {
        stdout: { write: (s: string) => void stdout.push(s) },
        stderr: { write: (s: string) => void stderr.push(s) },
        env: {},
        cwd: dir,
        registry: async () => testRegistry(),
        createServices: async (paths, opts) => {
          const s = { ...createTestServices(), closed: false, paths, opts, close: async () => void (s.closed = true) };
          services.push(s);
          return s;
        },
        interrupt: () => ({ signal: new AbortController().signal, dispose: () => {} }),
        ...extra,
      }),
    out: () => stdout.join(''),
    err: () => stderr.join(''),
  };
});

afterEach(async () => {
  await rm(h.dir, { recursive: true, force: true });
});

async function writeJson(name: string, value: unknown): Promise<string> {
  const file = path.join(h.dir, name);
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(file, typeof value === 'string' ? value : JSON.stringify(value, null, 2));
  return file;
}

const good = wf({
  '1': ['Const', { value: 2 }],
  '2': ['Add', { a: link('1', 'value'), b: 3 }],
  '3': ['Collect', { value: link('2', 'sum') }],
});

describe('charflow validate', () => {
  it('lists every problem of a broken workflow with node ids, one per line, and exits 2', async () => {
    const file = await writeJson(
      'broken.json',
      wf({
        '1': ['MakeImage', { width: 0 }],
        '2': ['ShowImage', { image: link('1', 'imag') }],
        '3': ['Nope'],
        '4': ['Add', { a: link('4', 'sum') }],
      }),
    );
    expect(await h.run(['validate', file, '--data', 'd'])).toBe(2);
    expect(h.out().split('\n').filter(Boolean)).toEqual([
      'node 1 (MakeImage) input "width": 0 is below the minimum 1',
      'node 1 (MakeImage) input "prompt": required value is missing (a string)',
      'node 2 (ShowImage) input "image": node 1 (MakeImage) has no output "imag" (it has image)',
      'node 3 (Nope): unknown node type "Nope"',
      'node 4 (Add) input "a": links form a cycle: node 4 (Add) -> node 4 (Add)',
    ]);
    expect(h.err()).toBe(`${file}: 5 problems\n`);
  });

  it('accepts a valid workflow', async () => {
    const file = await writeJson('good.json', good);
    expect(await h.run(['validate', file])).toBe(0);
    expect(h.out()).toBe(`ok: ${file} (3 nodes)\n`);
  });

  it('--json prints the result as one JSON object', async () => {
    const file = await writeJson('bad.json', wf({ '1': ['Nope'] }));
    expect(await h.run(['validate', file, '--json'])).toBe(2);
    expect(JSON.parse(h.out())).toEqual({
      ok: false,
      errors: [{ nodeId: '1', nodeType: 'Nope', code: 'unknown_type', message: 'node 1 (Nope): unknown node type "Nope"' }],
    });
  });

  it('bad JSON, a missing file, a newer version: one clear line, no stack trace', async () => {
    const bad = await writeJson('bad.json', '{\n  "format": "charflow.workflow",\n  "nodes": {,}\n}');
    expect(await h.run(['validate', bad])).toBe(2);
    // The reason after the position is V8's wording, which varies between Node versions.
    expect(h.out().startsWith(`${bad}: not valid JSON at line 3 column 13: `)).toBe(true);
    expect(h.out().split('\n')).toHaveLength(2);

    h.stdout.length = 0;
    expect(await h.run(['validate', 'missing.json'])).toBe(2);
    expect(h.out()).toBe(`${path.join(h.dir, 'missing.json')}: file not found\n`);

    h.stdout.length = 0;
    const newer = await writeJson('newer.json', { format: 'charflow.workflow', version: 9, nodes: {} });
    expect(await h.run(['validate', newer])).toBe(2);
    expect(h.out()).toBe('workflow version 9 is newer than this charflow supports (version 1); update charflow to open it\n');

    h.stdout.length = 0;
    const empty = await writeJson('empty.json', '');
    expect(await h.run(['validate', empty])).toBe(2);
    expect(h.out()).toBe(`${empty}: not valid JSON: the file is empty\n`);
    expect(h.out() + h.err()).not.toMatch(/\n\s+at /);
  });

  it('finds workflows saved in the data folder by name', async () => {
    await writeJson('data/workflows/saved.json', good);
    expect(await h.run(['validate', 'saved.json'])).toBe(0);
    const other = path.join(h.dir, 'elsewhere');
    await writeJson('elsewhere/workflows/x.json', good);
    expect(await h.run(['validate', 'x.json', '--data', other])).toBe(0);
  });
});

describe('charflow run', () => {
  it('runs a workflow, exits 0 and prints the outputs', async () => {
    const file = await writeJson('good.json', good);
    expect(await h.run(['run', file])).toBe(0);
    expect(h.out()).toBe('node 3 (Collect): {"value":5}\n');
    expect(h.err()).toContain('finished in');
    const s = h.services[0]!;
    expect(s.collected).toEqual([{ nodeId: '3', value: 5 }]);
    expect(s.closed).toBe(true);
    expect(s.paths.root).toBe(path.join(h.dir, 'data'));
    expect(s.opts).toEqual({ device: 'auto' });
    for (const d of ['models', 'outputs', 'inputs', 'workflows', 'temp']) expect(existsSync(path.join(h.dir, 'data', d))).toBe(true);
  });

  it('exits 1 when a node fails, after finishing independent branches', async () => {
    const file = await writeJson(
      'fail.json',
      wf({
        '1': ['Fail', { message: 'no luck' }],
        '2': ['Collect', { value: link('1', 'value') }],
        '3': ['Const', { value: 3 }],
        '4': ['Collect', { value: link('3', 'value') }],
      }),
    );
    expect(await h.run(['run', file])).toBe(1);
    expect(h.err()).toContain('node 1 (Fail) failed: no luck\n');
    expect(h.err()).toContain('node 2 (Collect) skipped: upstream node 1 (Fail) failed\n');
    expect(h.out()).toBe('node 4 (Collect): {"value":3}\n');
  });

  it('exits 2 on an invalid workflow, printing every error', async () => {
    const file = await writeJson('bad.json', wf({ '1': ['Nope'], '2': ['Const', { value: 'x' }] }));
    expect(await h.run(['run', file])).toBe(2);
    expect(h.err()).toBe('node 1 (Nope): unknown node type "Nope"\nnode 2 (Const) input "value": must be a number, got "x"\n');
    expect(h.services).toHaveLength(0);
  });

  it('--json prints one JSON event per line', async () => {
    const file = await writeJson('good.json', good);
    expect(await h.run(['run', file, '--json'])).toBe(0);
    const events = h.out().trim().split('\n').map((l) => JSON.parse(l) as { type: string; nodeId?: string; outputs?: unknown });
    expect(events.map((e) => `${e.type}${e.nodeId ? ` ${e.nodeId}` : ''}`)).toEqual([
      'run_started',
      'node_started 1',
      'node_finished 1',
      'node_started 2',
      'node_finished 2',
      'node_started 3',
      'node_finished 3',
      'run_finished',
    ]);
    expect(events[6]!.outputs).toEqual({ value: 5 });
  });

  it('--json reports validation failures as a JSON line too', async () => {
    const file = await writeJson('bad.json', wf({ '1': ['Nope'] }));
    expect(await h.run(['run', file, '--json'])).toBe(2);
    expect(JSON.parse(h.out())).toEqual({
      type: 'validation_failed',
      errors: [{ nodeId: '1', nodeType: 'Nope', code: 'unknown_type', message: 'node 1 (Nope): unknown node type "Nope"' }],
    });
  });

  it('--set changes constants (JSON when it parses, else a string)', async () => {
    const file = await writeJson('good.json', good);
    expect(await h.run(['run', file, '--set', '2.b=10', '--set', '1.value=0.5'])).toBe(0);
    expect(h.out()).toBe('node 3 (Collect): {"value":10.5}\n');
  });

  it('--set on an unknown node or input is an argument error listing every problem', async () => {
    const file = await writeJson('good.json', good);
    expect(await h.run(['run', file, '--set', '9.b=1', '--set', '2.c=1'])).toBe(2);
    expect(h.err()).toBe('--set 9.b=1: there is no node 9\n--set 2.c=1: node 2 (Add) has no input "c" (it has a, b)\n');
    expect(await h.run(['run', file, '--set', 'nonsense'])).toBe(2);
    expect(h.err()).toContain('charflow: --set "nonsense": expected <node>.<input>=<value>, e.g. --set 7.steps=20\n');
  });

  it('--set values go through validation like any constant', async () => {
    const file = await writeJson('good.json', good);
    expect(await h.run(['run', file, '--set', '2.b=hello'])).toBe(2);
    expect(h.err()).toBe('node 2 (Add) input "b": must be a number, got "hello"\n');
  });

  it('--target runs only what the target needs', async () => {
    const file = await writeJson('good.json', good);
    expect(await h.run(['run', file, '--target', '2'])).toBe(0);
    expect(h.out()).toBe('node 2 (Add): {"sum":5}\n');
    expect(h.services[0]!.collected).toEqual([]);
    expect(await h.run(['run', file, '--target', '99'])).toBe(2);
    expect(h.err()).toContain('charflow: run target node 99 does not exist\n');
  });

  it('--out, --device, --models and --data reach the services', async () => {
    const file = await writeJson('good.json', good);
    const code = await h.run(['run', file, '--out', 'results', '--device', 'cpu', '--models', 'm', '--data', 'store']);
    expect(code).toBe(0);
    const s = h.services[0]!;
    expect(s.opts).toEqual({ device: 'cpu', outputDir: path.join(h.dir, 'results') });
    expect(s.paths.root).toBe(path.join(h.dir, 'store'));
    expect(s.paths.models).toBe(path.join(h.dir, 'm'));
    expect(existsSync(path.join(h.dir, 'results'))).toBe(true);
  });

  it('rejects a bad --device or --concurrency with exit 2', async () => {
    const file = await writeJson('good.json', good);
    expect(await h.run(['run', file, '--device', 'tpu'])).toBe(2);
    expect(h.err()).toContain("error: option '--device <device>' argument 'tpu' is invalid. Allowed choices are auto, cpu, cuda, webgpu.");
    expect(await h.run(['run', file, '--concurrency', '0'])).toBe(2);
    expect(h.err()).toContain('charflow: --concurrency 0: expected a whole number from 1 to 64\n');
  });

  it('exits 130 when interrupted', async () => {
    const file = await writeJson(
      'slow.json',
      wf({ '1': ['Delay', { ms: 600_000, steps: 100_000 }], '2': ['Collect', { value: link('1', 'value') }] }),
    );
    const ac = new AbortController();
    const code = await h.run(['run', file, '--json'], {
      interrupt: () => ({ signal: ac.signal, dispose: () => {} }),
      stdout: {
        write: (s: string) => {
          h.stdout.push(s);
          if (s.includes('"node_progress"')) ac.abort();
        },
      },
    });
    expect(code).toBe(130);
    expect(h.out().trim().split('\n').at(-1)).toContain('"type":"run_cancelled"');
    expect(h.services[0]!.closed).toBe(true);
  });

  it('a services factory that fails is reported in one line', async () => {
    const file = await writeJson('good.json', good);
    const code = await h.run(['run', file], {
      createServices: async () => {
        throw new Error('no models in /x');
      },
    });
    expect(code).toBe(1);
    expect(h.err()).toBe('charflow: cannot start: no models in /x\n');
  });
});

describe('charflow nodes', () => {
  it('--json lists every node type with its declaration', async () => {
    expect(await h.run(['nodes', '--json'])).toBe(0);
    const list = JSON.parse(h.out()) as { type: string; output: boolean; cacheable: boolean; params: unknown }[];
    expect(list.map((d) => d.type)).toEqual([...testRegistry().keys()]);
    const collect = list.find((d) => d.type === 'Collect')!;
    expect(collect).toMatchObject({ output: true, cacheable: true, category: 'test', inputs: { value: { type: '*' } } });
    expect(list.find((d) => d.type === 'Random')!.cacheable).toBe(false);
  });

  it('prints a readable list by category', async () => {
    expect(await h.run(['nodes', '--data', 'x'])).toBe(0);
    expect(h.out().split('\n')[0]).toBe('test');
    expect(h.out()).toContain('  Collect    Collects a value. [output]\n');
  });
});

describe('main', () => {
  it('help and version exit 0; unknown commands and options exit 2', async () => {
    expect(await h.run(['--help'])).toBe(0);
    expect(h.out()).toContain('Usage: charflow');
    expect(await h.run(['--version'])).toBe(0);
    expect(await h.run(['valdate', 'x'])).toBe(2);
    expect(h.err()).toContain("error: unknown command 'valdate'");
    expect(await h.run(['run'])).toBe(2);
    expect(await h.run(['nodes', '--bogus'])).toBe(2);
    expect(await h.run([])).toBe(2);
  });

  it('internal errors print one line without a stack unless CHARFLOW_DEBUG is set', async () => {
    const boom = async (): Promise<never> => {
      throw new Error('registry exploded');
    };
    expect(await h.run(['nodes'], { registry: boom })).toBe(1);
    expect(h.err()).toBe('charflow: internal error: registry exploded\n(set CHARFLOW_DEBUG=1 to see the stack trace)\n');
  });
});

describe('helpers', () => {
  it('parseSet', () => {
    expect(parseSet('7.steps=20')).toMatchObject({ node: '7', input: 'steps', value: 20 });
    expect(parseSet('3.prompt=a cat=cute')).toMatchObject({ node: '3', input: 'prompt', value: 'a cat=cute' });
    expect(parseSet('3.flag=true')).toMatchObject({ value: true });
    expect(parseSet('3.prompt="true"')).toMatchObject({ value: 'true' });
    expect(parseSet('2.image={"node":"1","output":"image"}')).toMatchObject({ value: { node: '1', output: 'image' } });
    expect(parseSet('3.empty=')).toMatchObject({ value: '' });
  });

  it('applySets sets constants in place', () => {
    const raw = JSON.parse(JSON.stringify(good)) as { nodes: Record<string, { inputs: Record<string, unknown> }> };
    expect(applySets(raw, [parseSet('2.b=7')], testRegistry())).toEqual([]);
    expect(raw.nodes['2']!.inputs).toEqual({ a: { node: '1', output: 'value' }, b: 7 });
  });

  it('toJsonLine summarises binary data and cuts cycles', () => {
    const cyc: Record<string, unknown> = { a: 1 };
    cyc.self = cyc;
    expect(
      toJsonLine({ f: new Float32Array(3), b: Buffer.from('hi'), n: 10n, cyc, list: [{ x: 1 }, { x: 1 }] }),
    ).toBe('{"f":{"$type":"Float32Array","length":3},"b":{"$type":"Buffer","length":2},"n":"10","cyc":{"a":1,"self":"[circular]"},"list":[{"x":1},{"x":1}]}');
  });
});
