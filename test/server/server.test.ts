// The server end to end: a real server on port 0 in a temp data folder with the tiny model set,
// the editor protocol through the `ws` client, images over HTTP, uploads and the security checks.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { resolvePaths, type DataPaths } from '../../engine/paths.ts';
import { writeTinyModelSet } from '../../models/tiny.ts';
import { createServices, PACKAGE_ROOT, type OwnedServices } from '../../nodes/services.ts';
import { startServer, type RunningServer, type ServerOptions } from '../../editor/server/index.ts';
import type { CatalogNode, QueueItem, ServerMessage } from '../../editor/protocol.ts';
import { TestClient, upgradeStatus, type Reply } from './client.ts';

const DEFAULT = JSON.parse(readFileSync(join(PACKAGE_ROOT, 'workflows/instantcharacter.json'), 'utf8')) as {
  nodes: Record<string, { type: string; inputs: Record<string, unknown> }>;
};
const CHARACTER = join(PACKAGE_ROOT, 'workflows/assets/character.png');

let root: string;
let paths: DataPaths;
let services: OwnedServices;
let server: RunningServer;
let wsUrl: string;
const extraServers: RunningServer[] = [];

/** The default workflow at test size, like `--set 7.width=96 --set 7.height=64 --set 7.steps=3`. */
function workflow(changes: Record<string, Record<string, unknown>> = {}): unknown {
  const wf = structuredClone(DEFAULT);
  Object.assign(wf.nodes['7']!.inputs, { width: 96, height: 64, steps: 3 });
  for (const [id, inputs] of Object.entries(changes)) Object.assign(wf.nodes[id]!.inputs, inputs);
  return wf;
}

function expectOk<T extends Reply['type']>(r: Reply, type: T): Extract<ServerMessage, { ok: true; type: T }> {
  if (!('ok' in r) || !r.ok) throw new Error(`expected ${type}, got ${JSON.stringify(r)}`);
  expect(r.type).toBe(type);
  return r as Extract<ServerMessage, { ok: true; type: T }>;
}

function expectError(r: Reply, code: string): Extract<ServerMessage, { type: 'error' }> {
  expect(r.type, JSON.stringify(r)).toBe('error');
  const e = r as Extract<ServerMessage, { type: 'error' }>;
  expect(e.code, e.message).toBe(code);
  return e;
}

/** GET with a chosen Host header (fetch does not let us set it). */
function getStatus(port: number, path: string, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path, headers: { host } }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
    req.end();
  });
}

/** Another server on its own data folder, sharing the models and the session pool. */
async function extraServer(opts: Partial<ServerOptions>): Promise<RunningServer> {
  const p = resolvePaths({ data: mkdtempSync(join(root, 'extra-')), models: paths.models });
  const s = await startServer({ paths: p, port: 0, services, staticDir: null, log: () => {}, ...opts });
  extraServers.push(s);
  return s;
}

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'charflow-server-'));
  paths = resolvePaths({ data: join(root, 'data') });
  await writeTinyModelSet(join(paths.models, 'tiny'));
  services = await createServices(paths, { device: 'cpu' });
  server = await startServer({ paths, port: 0, services, staticDir: null, log: () => {} });
  wsUrl = `ws://127.0.0.1:${server.port}/ws/editor`;
}, 300_000);

afterAll(async () => {
  for (const s of extraServers) await s.close();
  await server?.close();
  await services?.close();
  if (root) rmSync(root, { recursive: true, force: true });
});

describe('editor protocol', () => {
  it('says hello with a client id and answers the catalogue (also over HTTP)', async () => {
    const c = await TestClient.connect(wsUrl);
    expect(c.clientId).toMatch(/^[0-9a-f-]{36}$/);
    const cat = expectOk(await c.request({ type: 'catalog' }), 'catalog');
    const dit = cat.nodes.find((n) => n.type === 'DiTSample')!;
    expect(dit.params.width).toMatchObject({ type: 'integer', socket: 'INT', minimum: expect.any(Number) });
    expect(dit.inputs.models).toMatchObject({ type: 'MODELS', optional: false });
    expect(cat.nodes.find((n) => n.type === 'SaveImage')!.output).toBe(true);
    const http = (await (await fetch(`${server.url}api/nodes`)).json()) as { nodes: CatalogNode[] };
    expect(http.nodes).toEqual(cat.nodes);
    await c.close();
  });

  it('saves, lists, loads, renames and deletes workflows; a stale etag is a conflict', async () => {
    const c = await TestClient.connect(wsUrl);
    const wf = workflow();
    const saved = expectOk(await c.request({ type: 'workflows.save', name: 'My flow', workflow: wf, etag: null }), 'saved');
    expect(saved.name).toBe('My flow');
    expect(existsSync(join(paths.workflows, 'My flow.json'))).toBe(true);
    expectError(await c.request({ type: 'workflows.save', name: 'My flow', workflow: wf, etag: null }), 'exists');

    const list = expectOk(await c.request({ type: 'workflows.list' }), 'workflows');
    expect(list.items).toEqual([{ name: 'My flow', etag: saved.etag, bytes: expect.any(Number), modified: expect.any(String) }]);
    const loaded = expectOk(await c.request({ type: 'workflows.load', name: 'My flow' }), 'workflow');
    expect(loaded.workflow).toEqual(wf);
    expect(loaded.etag).toBe(saved.etag);

    // Tab 1 saves a change; tab 2 still holds the old etag and is refused.
    const changed = workflow({ 6: { prompt: 'a knight in the rain' } });
    const second = expectOk(await c.request({ type: 'workflows.save', name: 'My flow', workflow: changed, etag: saved.etag }), 'saved');
    expect(second.etag).not.toBe(saved.etag);
    const conflict = expectError(await c.request({ type: 'workflows.save', name: 'My flow', workflow: wf, etag: saved.etag }), 'conflict');
    expect(conflict.message).toMatch(/"My flow" was changed .* since you opened it/);
    expect(expectOk(await c.request({ type: 'workflows.load', name: 'My flow' }), 'workflow').workflow).toEqual(changed);

    const renamed = expectOk(await c.request({ type: 'workflows.rename', from: 'My flow', to: 'renamed' }), 'renamed');
    expect(renamed).toMatchObject({ from: 'My flow', to: 'renamed', etag: second.etag });
    expectError(await c.request({ type: 'workflows.load', name: 'My flow' }), 'not_found');
    expectOk(await c.request({ type: 'workflows.save', name: 'other', workflow: wf, etag: null }), 'saved');
    expectError(await c.request({ type: 'workflows.rename', from: 'renamed', to: 'other' }), 'exists');
    expectOk(await c.request({ type: 'workflows.delete', name: 'renamed' }), 'deleted');
    expectOk(await c.request({ type: 'workflows.delete', name: 'other' }), 'deleted');
    expectError(await c.request({ type: 'workflows.delete', name: 'other' }), 'not_found');

    for (const bad of ['../escape', 'a/b', '.hidden', '..', 'x\\y', '/etc/passwd', 'x'.repeat(200)]) {
      expectError(await c.request({ type: 'workflows.save', name: bad, workflow: wf, etag: null }), 'invalid_name');
    }
    expect(existsSync(join(paths.root, 'escape.json'))).toBe(false);
    expectError(await c.request({ type: 'workflows.save', name: 'broken', workflow: { format: 'nope', nodes: 5 }, etag: null }), 'invalid_workflow');
    expect(expectOk(await c.request({ type: 'workflows.list' }), 'workflows').items).toEqual([]);
    await c.close();
  });

  it('offers the workflows over HTTP too, with ETag / If-Match', async () => {
    const base = `${server.url}api/workflows`;
    const json = { 'content-type': 'application/json' };
    const created = await fetch(`${base}/via%20http`, { method: 'PUT', headers: { ...json, 'if-none-match': '*' }, body: JSON.stringify(workflow()) });
    expect(created.status).toBe(200);
    const etag = created.headers.get('etag')!;
    expect((await fetch(`${base}/via%20http`, { method: 'PUT', headers: { ...json, 'if-none-match': '*' }, body: JSON.stringify(workflow()) })).status).toBe(412);
    const got = await fetch(`${base}/via%20http`);
    expect(got.headers.get('etag')).toBe(etag);
    expect(await got.json()).toEqual(workflow());
    const updated = await fetch(`${base}/via%20http`, { method: 'PUT', headers: { ...json, 'if-match': etag }, body: JSON.stringify(workflow({ 7: { seed: 9 } })) });
    expect(updated.status).toBe(200);
    const stale = await fetch(`${base}/via%20http`, { method: 'PUT', headers: { ...json, 'if-match': etag }, body: JSON.stringify(workflow()) });
    expect([stale.status, ((await stale.json()) as { error: string }).error]).toEqual([412, 'conflict']);
    expect((await fetch(`${base}/via%20http`, { method: 'PUT', headers: json, body: JSON.stringify(workflow()) })).status).toBe(200);
    expect((await fetch(`${base}/..%2F..%2Fescape`, { method: 'PUT', headers: json, body: JSON.stringify(workflow()) })).status).toBe(400);
    expect(((await (await fetch(base)).json()) as { items: { name: string }[] }).items.map((i) => i.name)).toEqual(['via http']);
    expect((await fetch(`${base}/via%20http`, { method: 'DELETE' })).status).toBe(200);
    expect((await fetch(`${base}/via%20http`)).status).toBe(404);
  });

  it('runs the default workflow at small size: queued, started, progress with previews, finished, a PNG served by /api/view', async () => {
    const c = await TestClient.connect(wsUrl);
    const q = expectOk(await c.request({ type: 'run', workflow: workflow() }), 'queued');
    const finished = await c.event(q.runId, 'run_finished');
    expect(finished.event).toMatchObject({ type: 'run_finished', status: 'done' });
    const events = c.events(q.runId);
    expect(events.every((e) => e.mine)).toBe(true);
    const types = events.map((e) => e.event.type);
    expect(types[0]).toBe('run_queued');
    expect(types).toContain('run_started');
    expect(types).toContain('node_started');
    const progress = events.filter((e) => e.event.type === 'node_progress' && e.event.nodeId === '7').map((e) => e.event) as Extract<typeof events[number]['event'], { type: 'node_progress' }>[];
    expect(progress.map((p) => p.step)).toEqual([1, 2, 3]);
    expect(progress[0]!.preview).toMatch(/^data:image\/(jpeg|png);base64,/);
    const saved = events.find((e) => e.event.type === 'node_finished' && e.event.nodeId === '9')!.event as { images?: { url: string; filename: string; type: string }[] };
    expect(saved.images).toHaveLength(1);
    expect(saved.images![0]!.type).toBe('output');
    const res = await fetch(new URL(saved.images![0]!.url, server.url));
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('image/png');
    const meta = await sharp(Buffer.from(await res.arrayBuffer())).metadata();
    expect([meta.format, meta.width, meta.height]).toEqual(['png', 96, 64]);

    // The history keeps the job with its outputs; the executor cache spans jobs (a second run re-uses it).
    const job = server.queue.get(q.runId)!;
    expect(job.status).toBe('done');
    expect(job.outputs['9']!.images![0]!.filename).toBe(saved.images![0]!.filename);
    const overHttp = (await (await fetch(`${server.url}api/jobs/${q.runId}`)).json()) as { status: string; outputs: unknown };
    expect(overHttp).toMatchObject({ status: 'done', outputs: job.outputs });
    const again = expectOk(await c.request({ type: 'run', workflow: workflow({ 6: { prompt: 'in a library' } }) }), 'queued');
    await c.event(again.runId, 'run_finished');
    const ran = Object.entries(server.queue.get(again.runId)!.nodes).filter(([, o]) => o.status === 'done').map(([id]) => id).sort();
    expect(ran).toEqual(['6', '7', '8', '9']);
    await c.close();
  });

  it('answers an invalid message with an error and keeps the connection', async () => {
    const c = await TestClient.connect(wsUrl);
    c.sendRaw('this is not json');
    const e1 = (await c.waitFor((m) => m.type === 'error' && m.id === null)) as Extract<ServerMessage, { type: 'error' }>;
    expect(e1).toMatchObject({ code: 'invalid_message', message: expect.stringMatching(/not valid JSON/) });
    c.sendRaw(JSON.stringify({ id: 'x1', type: 'launch_missiles' }));
    expect(await c.waitFor((m) => 'id' in m && m.id === 'x1')).toMatchObject({ code: 'invalid_message', message: expect.stringMatching(/unknown message type/) });
    c.sendRaw(JSON.stringify({ id: 'x2', type: 'workflows.load' }));
    expect(await c.waitFor((m) => 'id' in m && m.id === 'x2')).toMatchObject({ code: 'invalid_message', message: expect.stringMatching(/lacks "name"/) });
    c.sendRaw(JSON.stringify({ id: 'x3', type: 'run', workflow: 'not an object' }));
    expect(await c.waitFor((m) => 'id' in m && m.id === 'x3')).toMatchObject({ code: 'invalid_message' });
    c.ws.send(Buffer.from([1, 2, 3]), { binary: true });
    await c.waitFor((m) => m.type === 'error' && /binary/.test(m.message));
    expectOk(await c.request({ type: 'catalog' }), 'catalog');
    await c.close();
  });

  it('refuses an invalid workflow with per-node errors, and unknown targets', async () => {
    const c = await TestClient.connect(wsUrl);
    const r = expectError(await c.request({ type: 'run', workflow: workflow({ 7: { steps: 0, width: 100 } }) }), 'invalid_workflow');
    expect(r.errors).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ nodeId: '7', nodeType: 'DiTSample', field: 'steps', message: expect.stringMatching(/node 7 \(DiTSample\) input "steps"/) }),
        expect.objectContaining({ nodeId: '7', field: 'width' }),
      ]),
    );
    const broken = structuredClone(DEFAULT) as { nodes: Record<string, { type: string; inputs: Record<string, unknown> }> };
    broken.nodes['3']!.type = 'SigLIPEncoder';
    const r2 = expectError(await c.request({ type: 'run', workflow: broken }), 'invalid_workflow');
    expect(r2.errors![0]).toMatchObject({ nodeId: '3', message: expect.stringMatching(/unknown node type "SigLIPEncoder" \(did you mean "SigLIPEncode"\?\)/) });
    const r3 = expectError(await c.request({ type: 'run', workflow: workflow(), targets: ['42'] }), 'invalid_workflow');
    expect(r3.errors![0]).toMatchObject({ nodeId: '42' });
    expect(server.queue.counts().pending).toBe(0);
    await c.close();
  });

  it('cancels a pending run and a running one; two tabs see the shared queue and each other\'s events', async () => {
    const a = await TestClient.connect(wsUrl);
    const b = await TestClient.connect(wsUrl);
    server.runner.pause();
    try {
      const q1 = expectOk(await a.request({ type: 'run', workflow: workflow({ 7: { steps: 40, seed: 1 } }) }), 'queued');
      const q2 = expectOk(await a.request({ type: 'run', workflow: workflow({ 7: { seed: 2 } }) }), 'queued');
      expect(q2.position).toBe(1);
      // Both tabs get the listing; only the queuing tab sees its runs as its own.
      const hasBoth = (m: ServerMessage): boolean => m.type === 'queue_changed' && m.items.length === 2;
      const la = (await a.waitFor(hasBoth)) as { items: QueueItem[] };
      const lb = (await b.waitFor(hasBoth)) as { items: QueueItem[] };
      expect(la.items.map((i) => [i.runId, i.status, i.mine])).toEqual([[q1.runId, 'pending', true], [q2.runId, 'pending', true]]);
      expect(lb.items.map((i) => [i.runId, i.mine])).toEqual([[q1.runId, false], [q2.runId, false]]);
      expect(expectOk(await b.request({ type: 'queue' }), 'queue').items).toHaveLength(2);

      // Tab b cancels a's pending run; everyone hears it.
      expectOk(await b.request({ type: 'cancel', runId: q2.runId }), 'cancelling');
      expect((await a.event(q2.runId, 'run_cancelled')).mine).toBe(true);
      expect((await b.event(q2.runId, 'run_cancelled')).mine).toBe(false);
      expect(server.queue.get(q2.runId)!.status).toBe('cancelled');

      // The running one: cancel after the first sampling step.
      server.runner.start();
      await b.event(q1.runId, 'node_progress', (e) => e.event.type === 'node_progress' && e.event.nodeId === '7');
      expectOk(await a.request({ type: 'cancel', runId: q1.runId }), 'cancelling');
      await a.event(q1.runId, 'run_cancelled');
      await b.event(q1.runId, 'run_cancelled');
      await server.runner.whenIdle();
      expect(server.queue.get(q1.runId)!.status).toBe('interrupted');
      expectError(await a.request({ type: 'cancel', runId: q1.runId }), 'finished');
      expectError(await a.request({ type: 'cancel', runId: 'no-such-run' }), 'not_found');
    } finally {
      server.runner.start();
    }
    await a.close();
    await b.close();
  });

  it('limits pending runs per client with a clear error', async () => {
    const s = await extraServer({ startRunner: false, limits: { maxPendingPerClient: 2 } });
    const c = await TestClient.connect(`ws://127.0.0.1:${s.port}/ws/editor`);
    expectOk(await c.request({ type: 'run', workflow: workflow() }), 'queued');
    expectOk(await c.request({ type: 'run', workflow: workflow() }), 'queued');
    const e = expectError(await c.request({ type: 'run', workflow: workflow() }), 'limit');
    expect(e.message).toMatch(/too many queued jobs.*limit 2/);
    await c.close();
  });
});

describe('restarts', () => {
  it('keeps pending jobs in order across a restart, and puts a running job back at the front', async () => {
    const p = resolvePaths({ data: join(root, 'restart'), models: paths.models });
    const opts = { paths: p, port: 0, services, staticDir: null, log: () => {} } as const;
    let s = await startServer({ ...opts, startRunner: false });
    let c = await TestClient.connect(`ws://127.0.0.1:${s.port}/ws/editor`);
    const ids: string[] = [];
    for (const seed of [1, 2, 3]) ids.push(expectOk(await c.request({ type: 'run', workflow: workflow({ 7: { seed, steps: 30 } }) }), 'queued').runId);
    await c.close();
    await s.close();

    s = await startServer({ ...opts, startRunner: false });
    expect(s.queue.pending().map((j) => j.id)).toEqual(ids);
    // Start running; stop while the first job runs: it must go back to pending, first in line.
    c = await TestClient.connect(`ws://127.0.0.1:${s.port}/ws/editor`);
    s.runner.start();
    await c.event(ids[0]!, 'node_progress', (e) => e.event.type === 'node_progress' && e.event.nodeId === '7');
    await c.close();
    await s.close();

    s = await startServer({ ...opts, startRunner: false });
    const pending = s.queue.pending();
    expect(pending.map((j) => j.id)).toEqual(ids);
    expect(pending[0]!.attempts).toBe(1);
    expect(s.queue.history()).toEqual([]);
    s.queue.clearPending();
    await s.close();
  });
});

describe('images', () => {
  const view = (q: Record<string, string>): Promise<Response> => fetch(`${server.url}api/view?${new URLSearchParams(q)}`);

  it('serves only images inside the output, temp and input folders', async () => {
    mkdirSync(join(paths.outputs, 'sub'), { recursive: true });
    copyFileSync(CHARACTER, join(paths.outputs, 'sub', 'pic.png'));
    writeFileSync(join(root, 'secret.png'), 'top secret');
    symlinkSync(join(root, 'secret.png'), join(paths.outputs, 'escape.png'));
    symlinkSync(root, join(paths.outputs, 'outside'));
    writeFileSync(join(paths.outputs, 'notes.txt'), 'text');

    const ok = await view({ filename: 'pic.png', subfolder: 'sub', type: 'output' });
    expect(ok.status).toBe(200);
    expect(ok.headers.get('content-type')).toBe('image/png');
    expect(Buffer.from(await ok.arrayBuffer()).equals(readFileSync(CHARACTER))).toBe(true);

    const refused: [Record<string, string>, number][] = [
      [{ filename: '../secret.png' }, 400],
      [{ filename: 'secret.png', subfolder: '..' }, 400],
      [{ filename: 'secret.png', subfolder: '../..' }, 400],
      [{ filename: 'pic.png', subfolder: 'sub/../../..' }, 400],
      [{ filename: join(root, 'secret.png') }, 400],
      [{ filename: 'secret.png', subfolder: root }, 400],
      [{ filename: 'escape.png' }, 403],
      [{ filename: 'secret.png', subfolder: 'outside' }, 403],
      [{ filename: 'notes.txt' }, 415],
      [{ filename: 'missing.png' }, 404],
      [{ filename: 'pic.png', subfolder: 'sub', type: 'models' }, 400],
      [{ filename: '.hidden.png' }, 403],
    ];
    for (const [q, status] of refused) {
      const res = await view(q);
      expect([JSON.stringify(q), res.status]).toEqual([JSON.stringify(q), status]);
      expect(await res.text()).not.toContain('top secret');
    }
    // A raw `..` in the URL path itself gets nowhere either.
    const raw = await fetch(`${server.url}api/view?filename=..%2F..%2Fsecret.png`);
    expect(raw.status).toBe(400);
  });

  it('takes uploads into the inputs folder: decoded with sharp, name cleaned, size-limited; a run can use them', async () => {
    const upload = async (name: string, bytes: Uint8Array, url = `${server.url}api/upload`): Promise<Response> => {
      const form = new FormData();
      form.append('image', new Blob([new Uint8Array(bytes)]), name);
      return fetch(url, { method: 'POST', body: form });
    };
    const png = readFileSync(CHARACTER);
    const res = await upload('../../my hero?.png', png);
    expect(res.status).toBe(200);
    const body = (await res.json()) as { name: string; subfolder: string; type: string; path: string };
    expect(body).toEqual({ name: 'my hero_.png', subfolder: '', type: 'input', path: 'my hero_.png' });
    expect(readFileSync(join(paths.inputs, body.name)).equals(png)).toBe(true);
    // The same picture again keeps one file; a different one gets a fresh name.
    expect(((await (await upload('my hero?.png', png)).json()) as { name: string }).name).toBe('my hero_.png');
    const jpeg = await sharp(png).jpeg().toBuffer();
    expect(((await (await upload('my hero?.png', jpeg)).json()) as { name: string }).name).toBe('my hero_.jpg');
    expect(((await (await upload('my hero_.jpg', await sharp(png).flip().jpeg().toBuffer())).json()) as { name: string }).name).toBe('my hero__1.jpg');

    const notImage = await upload('evil.png', Buffer.from('<script>alert(1)</script>'));
    expect(notImage.status).toBe(415);
    const truncated = await upload('cut.png', png.subarray(0, Math.floor(png.length / 2)));
    expect(truncated.status).toBe(415);
    expect(existsSync(join(paths.inputs, 'evil.png'))).toBe(false);
    expect(existsSync(join(paths.inputs, 'cut.png'))).toBe(false);

    const small = await extraServer({ limits: { uploadBytes: 1000 } });
    expect((await upload('big.png', png, `${small.url}api/upload`)).status).toBe(413);

    const listed = (await (await fetch(`${server.url}api/inputs`)).json()) as { files: string[] };
    expect(listed.files).toEqual(expect.arrayContaining(['my hero_.png', 'my hero_.jpg']));

    const c = await TestClient.connect(wsUrl);
    const q = expectOk(await c.request({ type: 'run', workflow: workflow({ 2: { path: body.path } }) }), 'queued');
    expect((await c.event(q.runId, 'run_finished')).event).toMatchObject({ status: 'done' });
    await c.close();
  });
});

describe('security', () => {
  it('refuses Origin null and foreign origins on WebSocket upgrades and POSTs, and foreign Host names', async () => {
    const host = `127.0.0.1:${server.port}`;
    expect(await upgradeStatus(wsUrl, { origin: `http://${host}` })).toBe(101);
    expect(await upgradeStatus(wsUrl)).toBe(101); // no Origin: not a browser
    expect(await upgradeStatus(wsUrl, { origin: 'null' })).toBe(403);
    expect(await upgradeStatus(wsUrl, { origin: 'http://evil.example' })).toBe(403);
    expect(await upgradeStatus(wsUrl, { origin: `http://localhost:${server.port + 1}` })).toBe(403);
    expect(await upgradeStatus(wsUrl, { headers: { host: `evil.example:${server.port}` } })).toBe(403);
    expect(await upgradeStatus(`ws://127.0.0.1:${server.port}/ws/nothing`)).toBe(404);

    const post = (headers: Record<string, string>): Promise<Response> =>
      fetch(`${server.url}api/upload`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: '{}' });
    for (const origin of ['null', 'http://evil.example', `https://${host}`.replace('127.0.0.1', 'evil')]) {
      const res = await post({ origin });
      expect(res.status).toBe(403);
      expect(((await res.json()) as { error: string }).error).toBe('forbidden_origin');
    }
    expect((await post({ origin: `http://${host}` })).status).toBe(400); // passes the check; not multipart
    // fetch() will not forge Host; a DNS-rebinding page's requests carry its own name.
    expect(await getStatus(server.port, '/api/nodes', 'attacker.example')).toBe(403);
    expect(await getStatus(server.port, '/api/nodes', `attacker.example:${server.port}`)).toBe(403);
    expect(await getStatus(server.port, '/api/nodes', `localhost:${server.port}`)).toBe(200);
    expect(await getStatus(server.port, '/api/nodes', `[::1]:${server.port}`)).toBe(200);
  });

  it('refuses to listen on a non-loopback address without a token', async () => {
    const p = resolvePaths({ data: join(root, 'exposed'), models: paths.models });
    await expect(startServer({ paths: p, host: '0.0.0.0', port: 0, services, staticDir: null, log: () => {} })).rejects.toThrow(
      /refusing to listen on 0\.0\.0\.0 without a token.*--token/,
    );
    expect(existsSync(p.database)).toBe(false);
  });

  it('requires the token on every request and upgrade when one is set', async () => {
    const s = await extraServer({ token: 's3cret-token' });
    const url = s.url;
    const ws = `ws://127.0.0.1:${s.port}/ws/editor`;
    expect((await fetch(`${url}api/nodes`)).status).toBe(401);
    expect((await fetch(`${url}`)).status).toBe(401);
    expect((await fetch(`${url}api/nodes`, { headers: { authorization: 'Bearer wrong' } })).status).toBe(401);
    expect((await fetch(`${url}api/nodes`, { headers: { authorization: 'Bearer s3cret-token' } })).status).toBe(200);
    const withQuery = await fetch(`${url}?token=s3cret-token`);
    expect(withQuery.status).toBe(200);
    const cookie = withQuery.headers.get('set-cookie')!;
    expect(cookie).toMatch(/HttpOnly; SameSite=Strict/);
    expect((await fetch(`${url}api/nodes`, { headers: { cookie: cookie.split(';')[0]! } })).status).toBe(200);
    expect(await upgradeStatus(ws)).toBe(401);
    expect(await upgradeStatus(`${ws}?token=nope`)).toBe(401);
    expect(await upgradeStatus(`${ws}?token=s3cret-token`)).toBe(101);
    expect(await upgradeStatus(ws, { headers: { authorization: 'Bearer s3cret-token' } })).toBe(101);
    expect(await upgradeStatus(ws, { headers: { cookie: cookie.split(';')[0]! } })).toBe(101);
  });

  it('closes connections whose frames exceed the size limit', async () => {
    const s = await extraServer({ limits: { wsMessageBytes: 4096 } });
    const c = await TestClient.connect(`ws://127.0.0.1:${s.port}/ws/editor`);
    const closed = new Promise<number>((resolve) => c.ws.once('close', (code) => resolve(code)));
    c.sendRaw(JSON.stringify({ id: 'big', type: 'run', workflow: { pad: 'x'.repeat(10_000) } }));
    expect(await closed).toBe(1009);
  });

  it('serves a page at / (placeholder without a bundle) and 404s unknown API paths as JSON', async () => {
    const res = await fetch(server.url);
    expect(res.status).toBe(200);
    expect(await res.text()).toMatch(/charflow/);
    const missing = await fetch(`${server.url}api/nope`);
    expect(missing.status).toBe(404);
    expect(((await missing.json()) as { error: string }).error).toBe('not_found');
    expect(readdirSync(paths.root)).toContain('queue.db');
  });
});
