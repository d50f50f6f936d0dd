// Property-based, against a real server (port 0, temp data folder): random and mutated editor
// WebSocket frames and HTTP requests never crash it, never hang it, and every refusal is a clear
// error: an `error` frame with a code and a one-line message answering the request's id, or a 4xx
// with a JSON message; never a 500, never a stack trace, never a file from outside the data folder.
// Then the refusals the "nothing lost, no one let in" issue lists that the other server tests
// do not cover yet: JSON body size, decompression bombs, node count, step and size maxima,
// upload subfolders and workflow names that try to leave their folder.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { crc32, deflateSync } from 'node:zlib';
import { WebSocket } from 'ws';
import { resolvePaths, type DataPaths } from '../../engine/paths.ts';
import { createServices, PACKAGE_ROOT, type OwnedServices } from '../../nodes/services.ts';
import { startServer, type RunningServer, type ServerOptions } from '../../editor/server/index.ts';
import type { ServerMessage } from '../../editor/protocol.ts';
import { TestClient, type Reply } from './client.ts';

type WorkflowJson = { nodes: Record<string, { type: string; inputs: Record<string, unknown> }> } & Record<string, unknown>;
type ErrorFrame = Extract<ServerMessage, { type: 'error' }>;

const DEFAULT = JSON.parse(readFileSync(join(PACKAGE_ROOT, 'workflows/instantcharacter.json'), 'utf8')) as WorkflowJson;
const CHARACTER = join(PACKAGE_ROOT, 'workflows/assets/character.png');
/** The fuzzed server's frame limit: big strings just under it stay cheap to send. */
const WS_LIMIT = 512 * 1024;
/** Every reply, frame or HTTP, must come within this. */
const REPLY_MS = 5_000;
const SECRET = 'TOP SECRET, outside the data folder';
const json = { 'content-type': 'application/json' };
const TYPES = ['catalog', 'workflows.list', 'workflows.load', 'workflows.save', 'workflows.rename', 'workflows.delete', 'run', 'cancel', 'queue'] as const;
const REPLY_TYPES = new Set(['catalog', 'workflows', 'workflow', 'saved', 'renamed', 'deleted', 'queued', 'cancelling', 'queue']);
/** What a stack trace or an internal detail in a message looks like. */
const LEAK = /\n\s*at |\bat [^\s]+ \(|\.ts:\d+|node_modules|\[object Object\]|TypeError|ReferenceError/;

let root: string;
let paths: DataPaths;
let services: OwnedServices;
let server: RunningServer;
let wsUrl: string;
const logged: string[] = [];
const extraServers: RunningServer[] = [];

/** The default workflow at test size. */
function workflow(changes: Record<string, Record<string, unknown>> = {}): WorkflowJson {
  const wf = structuredClone(DEFAULT);
  Object.assign(wf.nodes['7']!.inputs, { width: 96, height: 64, steps: 3 });
  for (const [id, inputs] of Object.entries(changes)) Object.assign(wf.nodes[id]!.inputs, inputs);
  return wf;
}

/** Another server on its own data folder, sharing the services (whose inputs folder is the main one's). */
async function extraServer(opts: Partial<ServerOptions>): Promise<RunningServer & { paths: DataPaths }> {
  const p = resolvePaths({ data: mkdtempSync(join(root, 'extra-')), models: paths.models });
  const s = await startServer({ paths: p, port: 0, services, staticDir: null, log: () => {}, ...opts });
  extraServers.push(s);
  return Object.assign(s, { paths: p });
}

// ---- checks -----------------------------------------------------------------------------------

/** A refusal a person can act on: a code, one line of text, nothing internal. */
function expectClearMessage(message: unknown, where: string): void {
  expect(typeof message, where).toBe('string');
  const m = message as string;
  expect(m.length, where).toBeGreaterThan(5);
  expect(m.length, `${where}: ${m.slice(0, 200)}...`).toBeLessThanOrEqual(2000);
  expect(m, where).not.toMatch(/[\r\n]/);
  expect(m, where).not.toMatch(LEAK);
}

function expectClearErrorFrame(r: Reply, where: string): asserts r is ErrorFrame {
  expect(r.type, where).toBe('error');
  const e = r as ErrorFrame;
  expect(e.ok, where).toBe(false);
  expect(e.code, where).toMatch(/^[a-z_]{2,40}$/);
  expect(e.code, `${where}: ${e.message}`).not.toBe('internal');
  expectClearMessage(e.message, `${where} (${e.code})`);
  for (const item of e.errors ?? []) expectClearMessage(item.message, `${where} (${e.code}, item)`);
}

/** The id the server must answer with: the request's own when it is a usable one, else null. */
function expectedId(frame: unknown): string | null {
  if (typeof frame !== 'object' || frame === null || Array.isArray(frame)) return null;
  const id = (frame as Record<string, unknown>).id;
  return typeof id === 'string' && id.length > 0 && id.length <= 128 ? id : null;
}

// ---- a raw editor connection: one frame out, the next reply in ---------------------------------

class Wire {
  private replies: Reply[] = [];
  private waiter: ((r: Reply) => void) | undefined;
  closeCode: number | undefined;
  slowest = 0;

  private constructor(readonly ws: WebSocket) {
    ws.on('message', (data) => {
      const m = JSON.parse(String(data)) as ServerMessage;
      if (!('id' in m)) return; // pushes (hello, events, queue listings) carry no id
      if (this.waiter) {
        const w = this.waiter;
        this.waiter = undefined;
        w(m);
      } else this.replies.push(m);
    });
    ws.on('close', (code) => (this.closeCode = code));
  }

  static async open(url: string): Promise<Wire> {
    const ws = new WebSocket(url);
    const wire = new Wire(ws);
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    return wire;
  }

  get open(): boolean {
    return this.ws.readyState === WebSocket.OPEN;
  }

  /** Sends one frame and waits (bounded) for the reply frame it gets. */
  async exchange(data: string | Uint8Array, binary = false): Promise<Reply> {
    if (this.replies.length) throw new Error(`a reply nobody asked for: ${JSON.stringify(this.replies[0]).slice(0, 300)}`);
    const t = performance.now();
    const reply = new Promise<Reply>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        reject(new Error(`no reply within ${REPLY_MS} ms (connection ${this.open ? 'open' : `closed ${this.closeCode}`})`));
      }, REPLY_MS);
      this.waiter = (r) => {
        clearTimeout(timer);
        resolve(r);
      };
    });
    this.ws.send(data, { binary });
    const r = await reply;
    this.slowest = Math.max(this.slowest, performance.now() - t);
    return r;
  }

  close(): void {
    this.ws.close();
  }
}

/** Sends one text frame; checks the reply answers it (by id) and is a valid reply or a clear error. */
async function sendChecked(wire: Wire, frame: string, parsed: unknown): Promise<Reply> {
  const r = await wire.exchange(frame);
  const where = `reply to ${frame.slice(0, 300)}`;
  expect('id' in r ? r.id : undefined, where).toBe(expectedId(parsed));
  if (r.type === 'error') expectClearErrorFrame(r, where);
  else {
    expect(r.ok, where).toBe(true);
    expect(REPLY_TYPES.has(r.type), where).toBe(true);
  }
  expect(wire.open, `${where}: the server closed the connection (${wire.closeCode})`).toBe(true);
  return r;
}

// ---- raw HTTP (fetch would normalise the paths we want to send as they are) --------------------

interface RawResponse {
  status: number;
  type: string;
  text: string;
}

function rawHttp(method: string, path: string, opts: { body?: string | Buffer; headers?: Record<string, string>; port?: number } = {}): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    // An explicit length: Node sends a GET or DELETE body unframed otherwise (a broken request).
    const headers = opts.body === undefined ? opts.headers : { ...opts.headers, 'content-length': String(Buffer.byteLength(opts.body)) };
    const req = httpRequest(
      { host: '127.0.0.1', port: opts.port ?? server.port, method, path, headers, timeout: REPLY_MS },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type'] ?? ''), text: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`${method} ${path}: no answer within ${REPLY_MS} ms`)));
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** Any answer: never 5xx, never a leak; a refusal is JSON {error, message} or one line of text. */
function expectClearHttp(res: RawResponse, where: string): void {
  expect(res.status, `${where}: ${res.text.slice(0, 300)}`).toBeLessThan(500);
  expect(res.text, where).not.toContain(SECRET);
  if (res.status < 400) return;
  expect(res.text, where).not.toMatch(LEAK);
  if (res.type.startsWith('application/json')) {
    const body = JSON.parse(res.text) as { error?: unknown; message?: unknown };
    expect(typeof body.error, `${where}: ${res.text}`).toBe('string');
    expectClearMessage(body.message, `${where}: ${res.text.slice(0, 300)}`);
  } else {
    expectClearMessage(res.text, `${where} (${res.type})`);
  }
}

// ---- generators -------------------------------------------------------------------------------

/** Strings people and attackers send: unicode, control characters, path pieces, long ones. */
const nastyString = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.string({ unit: 'grapheme', maxLength: 20 }),
  fc.string({ unit: 'binary', maxLength: 20 }),
  fc.constantFrom('', ' ', '..', '../x', '../../etc/passwd', '/etc/passwd', 'C:\\x', 'a\nb', 'a\u0000b', '.hidden', 'x.json', '\u202eevil', 'CON', '%2e%2e%2f', 'x'.repeat(300)),
);

/** The valid form of every message type, in this server's state. */
function templates(saved: string, runId: string): Record<(typeof TYPES)[number], Record<string, unknown>> {
  return {
    catalog: { type: 'catalog' },
    'workflows.list': { type: 'workflows.list' },
    'workflows.load': { type: 'workflows.load', name: saved },
    'workflows.save': { type: 'workflows.save', name: 'fuzz saved', workflow: workflow(), etag: null },
    'workflows.rename': { type: 'workflows.rename', from: saved, to: 'fuzz renamed' },
    'workflows.delete': { type: 'workflows.delete', name: 'fuzz gone' },
    run: { type: 'run', workflow: workflow(), targets: ['9'] },
    cancel: { type: 'cancel', runId },
    queue: { type: 'queue' },
  };
}

/** A change at a path of a message: a value replaced (possibly by one of another type), or dropped. */
const mutation = fc.record({
  path: fc.array(
    fc.oneof(
      fc.constantFrom('id', 'type', 'name', 'from', 'to', 'etag', 'workflow', 'targets', 'runId', 'nodes', 'inputs', 'format', 'version', '7', '2', '9', 'steps', 'width', 'path', 'prompt', '0'),
      fc.string({ maxLength: 6 }),
    ),
    { minLength: 1, maxLength: 5 },
  ),
  value: fc.oneof(
    fc.jsonValue({ maxDepth: 2 }),
    nastyString,
    fc.constantFrom<unknown>(...TYPES, undefined, null, [], {}, -1, 1e308, 2 ** 53 + 1, true),
  ),
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

const notJson = (s: string): boolean => {
  try {
    JSON.parse(s);
    return false;
  } catch {
    return true;
  }
};

/** Characters a request line may carry as they are (no space, no #). */
const urlChar = fc.constantFrom(...'abcXYZ019._-~!$&\'()*+,;=:@/?%'.split(''));
/** Pieces of paths and query values, raw: escapes, broken escapes, dot segments. */
const urlPiece = fc.oneof(
  fc.constantFrom('..', '.', '%2e%2e', '%2E%2E%2F', '%2F', '%5C', '%00', '%0A', '%E0%A4%A', '%', '%%', '%zz', '+', 'pic.png', 'sub', 'x.json', 'output', 'input', 'temp', 'models', '.hidden.png', 'escape.png', 'outside', '~'),
  nastyString.map((s) => encodeURIComponent(s)),
  fc.string({ unit: urlChar, maxLength: 12 }),
);
const segment = fc.array(urlPiece, { minLength: 0, maxLength: 4 }).map((parts) => parts.join('').replace(/[/?#]/g, (c) => encodeURIComponent(c)));
const query = fc
  .array(fc.tuple(fc.oneof(fc.constantFrom('filename', 'subfolder', 'type', 'token', 'limit', 'offset', 'filename[]'), urlPiece), urlPiece), { maxLength: 5 })
  .map((pairs) => pairs.map(([k, v]) => `${k}=${v}`).join('&').replace(/#/g, '%23'));

// ---- the server -------------------------------------------------------------------------------

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'charflow-fuzz-'));
  paths = resolvePaths({ data: join(root, 'data') });
  services = await createServices(paths, { device: 'cpu' });
  // The runner stays paused: valid runs among the fuzz only queue (and later get cleared).
  server = await startServer({ paths, port: 0, services, staticDir: null, startRunner: false, log: (m) => logged.push(m), limits: { wsMessageBytes: WS_LIMIT } });
  wsUrl = `ws://127.0.0.1:${server.port}/ws/editor`;
  mkdirSync(join(paths.outputs, 'sub'), { recursive: true });
  copyFileSync(CHARACTER, join(paths.outputs, 'pic.png'));
  copyFileSync(CHARACTER, join(paths.outputs, 'sub', 'pic.png'));
  writeFileSync(join(root, 'secret.png'), SECRET);
  writeFileSync(join(root, 'secret.json'), JSON.stringify({ note: SECRET }));
  symlinkSync(join(root, 'secret.png'), join(paths.outputs, 'escape.png'));
  symlinkSync(root, join(paths.outputs, 'outside'));
}, 120_000);

afterAll(async () => {
  for (const s of extraServers) await s.close();
  await server?.close();
  await services?.close();
  if (root) rmSync(root, { recursive: true, force: true });
});

/** After hostile input: the server still does its job, logged no internal error, wrote nothing outside. */
async function expectHealthy(): Promise<void> {
  const res = await fetch(`${server.url}api/nodes`, { signal: AbortSignal.timeout(REPLY_MS) });
  expect(res.status).toBe(200);
  const c = await TestClient.connect(wsUrl);
  expect((await c.request({ type: 'catalog' })).type).toBe('catalog');
  await c.close();
  expect(logged.filter((l) => /failed|internal|error/i.test(l))).toEqual([]);
  expect(readdirSync(root).sort()).toEqual(['data', 'secret.json', 'secret.png']);
  for (const e of readdirSync(paths.workflows, { withFileTypes: true })) expect([e.name, e.isFile() && e.name.endsWith('.json')]).toEqual([e.name, true]);
}

describe('the editor WebSocket under hostile frames', () => {
  let wire: Wire;
  let tpl: ReturnType<typeof templates>;
  let n = 0;

  beforeAll(async () => {
    const c = await TestClient.connect(wsUrl);
    const saved = await c.request({ type: 'workflows.save', name: 'fuzz base', workflow: workflow(), etag: null });
    const queued = await c.request({ type: 'run', workflow: workflow() });
    if (saved.type !== 'saved' || queued.type !== 'queued') throw new Error(`setup failed: ${JSON.stringify([saved, queued])}`);
    await c.close();
    tpl = templates(saved.name, queued.runId);
    wire = await Wire.open(wsUrl);
  });

  afterAll(() => wire?.close());

  /** A fresh connection when a case closed the last one (none should). */
  async function live(): Promise<Wire> {
    if (!wire.open) wire = await Wire.open(wsUrl);
    return wire;
  }

  it('answers arbitrary JSON with an error naming the problem', async () => {
    await fc.assert(
      fc.asyncProperty(fc.jsonValue({ maxDepth: 4 }), async (v) => {
        const r = await sendChecked(await live(), JSON.stringify(v), v);
        expect(r.type).toBe('error');
      }),
      { numRuns: 80 },
    );
  });

  it('answers objects with wrong or missing fields of every message type', async () => {
    const arb = fc.record({
      id: fc.oneof(fc.constant(undefined), fc.jsonValue({ maxDepth: 1 }), nastyString),
      type: fc.oneof(fc.constantFrom(...TYPES), nastyString, fc.jsonValue({ maxDepth: 1 })),
      extra: fc.dictionary(fc.constantFrom('name', 'from', 'to', 'etag', 'workflow', 'targets', 'runId'), fc.oneof(fc.jsonValue({ maxDepth: 2 }), nastyString), { maxKeys: 4 }),
    });
    await fc.assert(
      fc.asyncProperty(arb, async ({ id, type, extra }) => {
        const msg: Record<string, unknown> = { ...extra, type };
        if (id !== undefined) msg.id = id;
        await sendChecked(await live(), JSON.stringify(msg), msg);
      }),
      { numRuns: 100 },
    );
  });

  it('answers mutated valid messages of every type (valid ones succeed, the rest are clear errors)', async () => {
    let accepted = 0;
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...TYPES), fc.array(mutation, { minLength: 1, maxLength: 3 }), async (type, mutations) => {
        const msg = { id: `m${n++}`, ...structuredClone(tpl[type]) };
        for (const m of mutations) applyMutation(msg, m.path, m.value);
        if ((await sendChecked(await live(), JSON.stringify(msg), msg)).type !== 'error') accepted++;
      }),
      { numRuns: 200 },
    );
    expect(accepted).toBeGreaterThan(10); // the mutations also reach the handlers, not only the validation
  });

  it('answers text that is not JSON, and binary frames, with invalid_message', async () => {
    const truncated = fc.tuple(fc.constantFrom(...TYPES), fc.nat()).map(([t, cut]) => {
      const s = JSON.stringify({ id: 'cut', ...tpl[t] });
      return s.slice(0, cut % s.length);
    });
    const text = fc.oneof(fc.string({ maxLength: 200 }), fc.string({ unit: 'binary', maxLength: 100 }), truncated, fc.constantFrom('', 'null x', '{', '{"id":', 'undefined', 'NaN', '[1,]')).filter(notJson);
    await fc.assert(
      fc.asyncProperty(text, async (s) => {
        const r = await sendChecked(await live(), s, undefined);
        expect(r).toMatchObject({ id: null, code: 'invalid_message' });
      }),
      { numRuns: 60 },
    );
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ maxLength: 4096 }), async (bytes) => {
        const w = await live();
        const r = await w.exchange(bytes, true);
        expectClearErrorFrame(r, 'binary frame');
        expect(r).toMatchObject({ id: null, code: 'invalid_message', message: expect.stringMatching(/binary/) });
        expect(w.open).toBe(true);
      }),
      { numRuns: 30 },
    );
  });

  it('answers huge strings just under the frame limit, in every field, within the time bound', async () => {
    const where = fc.constantFrom('id', 'type', 'name', 'etag', 'runId', 'targets', 'prompt', 'nodeType', 'nodeId', 'key');
    const ch = fc.constantFrom('x', 'é', '"', '\n', '😀', '\\');
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...TYPES), where, ch, fc.integer({ min: 10_000, max: 120_000 }), async (type, field, c, len) => {
        const big = c.repeat(len);
        const msg: Record<string, unknown> = { id: `h${n++}`, ...structuredClone(tpl[type]) };
        const wf = (msg.workflow ??= workflow()) as WorkflowJson;
        if (field === 'targets') msg.targets = [big];
        else if (field === 'prompt') wf.nodes['6']!.inputs.prompt = big;
        else if (field === 'nodeType') wf.nodes['7']!.type = big;
        else if (field === 'nodeId') wf.nodes[big] = wf.nodes['9']!;
        else if (field === 'key') wf.nodes['7']!.inputs[big] = 1;
        else msg[field] = big;
        const frame = JSON.stringify(msg);
        expect(Buffer.byteLength(frame)).toBeLessThan(WS_LIMIT);
        await sendChecked(await live(), frame, msg);
      }),
      { numRuns: 24 },
    );
  });

  it('closes (1007) a text frame that is not UTF-8 and (1009) one over the limit; other tabs are unaffected', async () => {
    const other = await TestClient.connect(wsUrl);
    const bad = await Wire.open(wsUrl);
    const closed = new Promise<number>((resolve) => bad.ws.once('close', (code) => resolve(code)));
    bad.ws.send(Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), { binary: false });
    expect(await closed).toBe(1007);
    const big = await Wire.open(wsUrl);
    const closedBig = new Promise<number>((resolve) => big.ws.once('close', (code) => resolve(code)));
    big.ws.send(JSON.stringify({ id: 'big', type: 'queue', pad: 'x'.repeat(WS_LIMIT) }));
    expect(await closedBig).toBe(1009);
    expect((await other.request({ type: 'queue' })).type).toBe('queue');
    await other.close();
  });

  it('shows text it was sent on one line and shortened, in the message and in each error item', async () => {
    const c = await TestClient.connect(wsUrl);
    const long = 'k'.repeat(5000);
    const cases: [string, Reply][] = [
      ['unknown type with a newline', await (async () => {
        const w = await live();
        return w.exchange(JSON.stringify({ id: 'e1', type: 'a\nb' }));
      })()],
      ['workflow name with a newline', await c.request({ type: 'workflows.load', name: 'a\nb' })],
      ['node type with an escape and a newline', await c.request({ type: 'run', workflow: { ...workflow(), nodes: { ...workflow().nodes, 9: { type: '\u001b[31mred\nline', inputs: {} } } } })],
      ['a 5000-character input name', await c.request({ type: 'run', workflow: workflow({ 7: { [long]: 1 } }) })],
      ['a 5000-character node id', await c.request({ type: 'run', workflow: { ...workflow(), nodes: { ...workflow().nodes, [long]: workflow().nodes['9']! } } })],
    ];
    for (const [what, r] of cases) expectClearErrorFrame(r, what);
    await c.close();
    for (const path of ['/api/workflows/a%0Ab', '/api/jobs/a%0Ab', `/api/workflows/${'n'.repeat(3000)}`]) expectClearHttp(await rawHttp('GET', path), path);
  });

  it('is still healthy afterwards, and answered every frame quickly', async () => {
    expect(wire.slowest).toBeLessThan(REPLY_MS);
    await expectHealthy();
  });
});

describe('the HTTP API under hostile requests', () => {
  it('PUT /api/workflows/:name with random names, bodies and preconditions', async () => {
    const name = fc.oneof(fc.constantFrom('a', 'b%20c', 'fuzz%20base', 'x.json'), segment);
    const body = fc.oneof(
      fc.jsonValue({ maxDepth: 3 }).map((v) => ({ headers: json, body: JSON.stringify(v) })),
      fc.array(mutation, { minLength: 1, maxLength: 3 }).map((ms) => {
        const wf = workflow() as Record<string, unknown>;
        for (const m of ms) applyMutation(wf, m.path, m.value);
        return { headers: json, body: JSON.stringify(wf) };
      }),
      fc.string({ maxLength: 200 }).filter(notJson).map((s) => ({ headers: json, body: s })),
      fc.tuple(fc.constantFrom('text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'application/json; charset=latin1', 'application/octet-stream', 'image/png'), fc.string({ maxLength: 100 })).map(([type, s]) => ({ headers: { 'content-type': type }, body: s })),
      fc.constant({ headers: json, body: '' }),
    );
    const precondition = fc.oneof(
      fc.constant({}),
      fc.constant({ 'if-none-match': '*' }),
      fc.string({ unit: fc.constantFrom(...'abcW/"*, 019'.split('')), maxLength: 30 }).map((v) => ({ 'if-match': v })),
    );
    await fc.assert(
      fc.asyncProperty(name, body, precondition, async (nm, b, pre) => {
        const res = await rawHttp('PUT', `/api/workflows/${nm}`, { body: b.body, headers: { ...b.headers, ...pre } });
        expectClearHttp(res, `PUT /api/workflows/${nm} ${b.body.slice(0, 200)}`);
      }),
      { numRuns: 150 },
    );
  });

  it('GET /api/view with random query strings serves only images inside the allowed folders', async () => {
    await fc.assert(
      fc.asyncProperty(query, async (q) => {
        const res = await rawHttp('GET', `/api/view?${q}`);
        expectClearHttp(res, `GET /api/view?${q}`);
        if (res.status === 200) expect(res.type).toBe('image/png');
      }),
      { numRuns: 200 },
    );
  });

  it('random methods, paths and names on every route', async () => {
    const route = fc.constantFrom(
      '/api/workflows/$',
      '/api/jobs/$',
      '/api/jobs/history?limit=$&offset=$',
      '/api/view?filename=$&subfolder=$',
      '/api/$',
      '/$',
      '/api/upload',
      '/api/inputs?$',
      '/history/$',
      '/object_info/$',
      '/view?filename=$',
    );
    const method = fc.constantFrom('GET', 'GET', 'DELETE', 'PUT', 'POST', 'PATCH', 'OPTIONS', 'HEAD');
    const body = fc.oneof(fc.constant(undefined), fc.string({ maxLength: 100 }), fc.jsonValue({ maxDepth: 2 }).map((v) => JSON.stringify(v)));
    const type = fc.constantFrom('application/json', 'text/plain', 'multipart/form-data; boundary=zz', 'multipart/form-data');
    await fc.assert(
      fc.asyncProperty(method, route, fc.array(segment, { minLength: 3, maxLength: 3 }), body, type, async (m, r, segs, b, t) => {
        let i = 0;
        const path = r.replace(/\$/g, () => segs[i++]!);
        const res = await rawHttp(m, path, b === undefined || m === 'GET' || m === 'HEAD' ? {} : { body: b, headers: { 'content-type': t } });
        if (m === 'HEAD') expect(res.status, `HEAD ${path}`).toBeLessThan(500);
        else expectClearHttp(res, `${m} ${path} ${b?.slice(0, 100) ?? ''}`);
      }),
      { numRuns: 150 },
    );
  });

  it('is still healthy afterwards', async () => {
    await expectHealthy();
    // The fuzz's valid runs only queued (the runner is paused); nothing ran.
    expect(server.queue.counts().running).toBe(0);
    server.queue.clearPending();
  });
});

// ---- refusals the issue lists that no other test covers -----------------------------------------

/** A PNG chunk: length, type, data, CRC. */
function pngChunk(type: string, data: Buffer): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const typed = Buffer.concat([Buffer.from(type, 'latin1'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(typed));
  return Buffer.concat([len, typed, crc]);
}

/** A few hundred bytes declaring a width x height RGB picture (2.7 GB decoded at 30000 x 30000). */
function bombPng(width: number, height: number): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  const rows = deflateSync(Buffer.alloc((1 + width * 3) * 2)); // two blank rows of the promised many
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), pngChunk('IHDR', ihdr), pngChunk('IDAT', rows), pngChunk('IEND', Buffer.alloc(0))]);
}

async function upload(url: string, name: string, bytes: Uint8Array, fields: Record<string, string> = {}): Promise<Response> {
  const form = new FormData();
  form.append('image', new Blob([new Uint8Array(bytes)]), name);
  for (const [k, v] of Object.entries(fields)) form.append(k, v);
  return fetch(`${url}api/upload`, { method: 'POST', body: form });
}

describe('refusals', () => {
  it('refuses a JSON body over the size limit with 413 and a JSON message', async () => {
    const s = await extraServer({ limits: { jsonBodyBytes: 4096 } });
    const big = workflow({ 6: { prompt: 'x'.repeat(8000) } });
    const res = await fetch(`${s.url}api/workflows/big`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify(big) });
    expect(res.status).toBe(413);
    const body = (await res.json()) as { error: string; message: string };
    expect(body).toEqual({ error: 'too_large', message: expect.stringMatching(/larger than the limit/) });
    expect(existsSync(join(s.paths.workflows, 'big.json'))).toBe(false);
    const small = await fetch(`${s.url}api/workflows/small`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify(workflow()) });
    expect(small.status).toBe(200);
  });

  it('refuses a decompression bomb (a tiny PNG declaring 30000 x 30000) on upload and in LoadCharacter', async () => {
    const bomb = bombPng(30_000, 30_000);
    expect(bomb.length).toBeLessThan(2000);
    const res = await upload(server.url, 'bomb.png', bomb);
    expect(res.status).toBeGreaterThanOrEqual(400);
    expect(res.status).toBeLessThan(500);
    const body = (await res.json()) as { error: string; message: string };
    expectClearMessage(body.message, 'bomb upload');
    expect(body.message).toMatch(/pixel/i);
    expect(readdirSync(paths.inputs).filter((f) => f.startsWith('bomb'))).toEqual([]);

    // Put there by other means, a run that reads it fails on that node with a clear message.
    const s = await extraServer({});
    writeFileSync(join(services.paths.inputs, 'bomb.png'), bomb);
    const c = await TestClient.connect(`ws://127.0.0.1:${s.port}/ws/editor`);
    const wf = {
      format: 'charflow.workflow',
      version: 1,
      nodes: {
        1: { type: 'LoadCharacter', inputs: { path: 'bomb.png' } },
        2: { type: 'PreviewImage', inputs: { image: { node: '1', output: 'image' } } },
      },
    };
    const q = await c.request({ type: 'run', workflow: wf });
    if (q.type !== 'queued') throw new Error(JSON.stringify(q));
    const finished = await c.event(q.runId, 'run_finished');
    expect(finished.event).toMatchObject({ status: 'failed' });
    const failed = c.events(q.runId).find((e) => e.event.type === 'node_failed')!.event as Extract<ServerMessage, { type: 'event' }>['event'] & { message: string };
    expect(failed).toMatchObject({ nodeId: '1', nodeType: 'LoadCharacter', field: 'path' });
    expectClearMessage(failed.message, 'LoadCharacter bomb');
    expect(failed.message).toMatch(/bomb\.png.*pixel/i);
    expect(s.queue.get(q.runId)!.error).toMatch(/pixel/i);
    await c.close();
  });

  it('refuses workflows with more nodes than the limit, and steps, width and height above their maxima', async () => {
    const s = await extraServer({ startRunner: false, limits: { maxNodes: 5 } });
    const c = await TestClient.connect(`ws://127.0.0.1:${s.port}/ws/editor`);
    const many = await c.request({ type: 'run', workflow: workflow() });
    expectClearErrorFrame(many, 'too many nodes');
    expect(many).toMatchObject({ code: 'invalid_workflow', message: expect.stringMatching(/9 nodes, more than the limit of 5/) });
    await c.close();

    const t = await TestClient.connect(wsUrl);
    const cases: [string, number, RegExp][] = [
      ['steps', 201, /"steps": 201 is above the maximum 200/],
      ['width', 4112, /"width": 4112 is above the maximum 4096/],
      ['height', 8192, /"height": 8192 is above the maximum 4096/],
      ['steps', 1e9, /"steps".*above the maximum 200/],
    ];
    for (const [field, value, text] of cases) {
      const r = await t.request({ type: 'run', workflow: workflow({ 7: { [field]: value } }) });
      expectClearErrorFrame(r, `${field}=${value}`);
      expect(r.code).toBe('invalid_workflow');
      expect(r.errors).toEqual([expect.objectContaining({ nodeId: '7', nodeType: 'DiTSample', field, message: expect.stringMatching(text) })]);
    }
    expect(s.queue.counts().pending + server.queue.counts().pending).toBe(0);
    await t.close();
  });

  it('keeps uploads inside the inputs folder whatever subfolder is asked for', async () => {
    const png = readFileSync(CHARACTER);
    for (const subfolder of ['..', '../escape', 'a/../../escape', '/tmp/escape', '\\escape', 'C:\\escape', '.hidden', 'ok/.git', 'a\u0000b']) {
      const res = await upload(server.url, 'pic.png', png, { subfolder });
      const text = await res.text();
      expect([subfolder, res.status]).toEqual([subfolder, expect.any(Number)]);
      expect(res.status, `${subfolder}: ${text}`).toBeGreaterThanOrEqual(400);
      expect(res.status, `${subfolder}: ${text}`).toBeLessThan(500);
      expectClearMessage((JSON.parse(text) as { message: string }).message, `subfolder ${JSON.stringify(subfolder)}`);
    }
    expect(readdirSync(root).sort()).toEqual(expect.not.arrayContaining(['escape']));
    expect(existsSync(join(paths.root, 'escape'))).toBe(false);
    expect(existsSync('/tmp/escape/pic.png')).toBe(false);
    const ok = await upload(server.url, 'pic.png', png, { subfolder: 'a/b' });
    expect(((await ok.json()) as { path: string }).path).toBe('a/b/pic.png');
  });

  it('keeps workflow names inside the workflows folder for load, rename and delete, over WebSocket and HTTP', async () => {
    const c = await TestClient.connect(wsUrl);
    const bad = ['../secret', '../../secret', '/etc/passwd', 'a/b', 'x\\..\\secret', '..', '.secret'];
    for (const name of bad) {
      for (const r of [
        await c.request({ type: 'workflows.load', name }),
        await c.request({ type: 'workflows.delete', name }),
        await c.request({ type: 'workflows.rename', from: 'fuzz base', to: name }),
        await c.request({ type: 'workflows.rename', from: name, to: 'stolen' }),
      ]) {
        expectClearErrorFrame(r, name);
        expect(r.code, name).toBe('invalid_name');
      }
      const enc = encodeURIComponent(name);
      for (const m of ['GET', 'DELETE']) {
        const res = await rawHttp(m, `/api/workflows/${enc}`);
        expectClearHttp(res, `${m} ${enc}`);
        expect(res.status, `${m} ${enc}`).toBeGreaterThanOrEqual(400);
      }
    }
    expect(existsSync(join(root, 'secret.json'))).toBe(true);
    expect(existsSync(join(paths.workflows, 'stolen.json'))).toBe(false);
    await c.close();
  });

  it('refuses state changes from foreign pages on PUT and DELETE too', async () => {
    for (const origin of ['null', 'http://evil.example']) {
      for (const m of ['PUT', 'DELETE']) {
        const res = await rawHttp(m, '/api/workflows/fuzz%20base', { headers: { origin, ...json }, body: m === 'PUT' ? JSON.stringify(workflow()) : undefined });
        expect([m, origin, res.status]).toEqual([m, origin, 403]);
        expect(JSON.parse(res.text)).toMatchObject({ error: 'forbidden_origin' });
      }
    }
  });
});
