// The ComfyUI-compatible API end to end: a real server on port 0 with the tiny model set, driven by
// a stock ComfyUI client library from npm (@stable-canvas/comfyui-client) and by hand-written
// requests for the exact shapes (errors, /object_info, binary preview frames, /api/ prefix, uploads).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { WebSocket } from 'ws';
import { Client } from '@stable-canvas/comfyui-client';
import { resolvePaths, type DataPaths } from '../../engine/paths.ts';
import { writeTinyModelSet } from '../../models/tiny.ts';
import { readPngText } from '../../nodes/lib/image.ts';
import { createServices, PACKAGE_ROOT, type OwnedServices } from '../../nodes/services.ts';
import { startServer, type RunningServer, type ServerOptions } from '../../editor/server/index.ts';

type CharflowWorkflow = { format: string; version: number; nodes: Record<string, { type: string; inputs: Record<string, unknown> }> };
type ApiPrompt = Record<string, { class_type: string; inputs: Record<string, unknown> }>;
type NodeDefs = Record<string, { output_name: string[] }>;
type WsFrame = { type: string; data: Record<string, unknown> } | { binary: Buffer };

const DEFAULT = JSON.parse(readFileSync(join(PACKAGE_ROOT, 'workflows/instantcharacter.json'), 'utf8')) as CharflowWorkflow;
const CHARACTER = join(PACKAGE_ROOT, 'workflows/assets/character.png');

let root: string;
let paths: DataPaths;
let services: OwnedServices;
let server: RunningServer;
let base: string;
let defs: NodeDefs;
const extraServers: RunningServer[] = [];
const clients: Client[] = [];

/** The default workflow in ComfyUI's API format at test size: links become [id, output index]. */
function apiPrompt(changes: Record<string, Record<string, unknown>> = {}): ApiPrompt {
  const out: ApiPrompt = {};
  for (const [id, node] of Object.entries(DEFAULT.nodes)) {
    const inputs: Record<string, unknown> = {};
    for (const [name, v] of Object.entries(node.inputs)) {
      if (typeof v === 'object' && v !== null) {
        const link = v as { node: string; output: string };
        inputs[name] = [link.node, defs[DEFAULT.nodes[link.node]!.type]!.output_name.indexOf(link.output)];
      } else inputs[name] = v;
    }
    out[id] = { class_type: node.type, inputs };
  }
  Object.assign(out['7']!.inputs, { width: 96, height: 64, steps: 3 });
  for (const [id, inputs] of Object.entries(changes)) Object.assign(out[id]!.inputs, inputs);
  return out;
}

/** Every event a client received, so a test can wait for one that may already have arrived. */
class EventLog {
  readonly events: [string, Record<string, unknown>][] = [];
  private waiters: { type: string; pred: (d: Record<string, unknown>) => boolean; resolve: (d: Record<string, unknown>) => void }[] = [];

  constructor(client: Client) {
    for (const type of ['status', 'execution_start', 'execution_cached', 'executing', 'progress', 'executed', 'execution_success', 'execution_error', 'execution_interrupted', 'b_preview']) {
      client.on(type as 'status', (d: unknown) => {
        const data = (type === 'b_preview' ? {} : (d ?? {})) as Record<string, unknown>;
        this.events.push([type, data]);
        for (const w of [...this.waiters]) if (w.type === type && w.pred(data)) (this.waiters.splice(this.waiters.indexOf(w), 1), w.resolve(data));
      });
    }
  }

  of(type: string, promptId?: string): Record<string, unknown>[] {
    return this.events.filter(([t, d]) => t === type && (promptId === undefined || d.prompt_id === promptId)).map(([, d]) => d);
  }

  /** The first event of `type` (already received or coming) that matches. */
  wait(type: string, pred: (d: Record<string, unknown>) => boolean = () => true, ms = 120_000): Promise<Record<string, unknown>> {
    const seen = this.events.find(([t, d]) => t === type && pred(d));
    if (seen) return Promise.resolve(seen[1]);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${type}; got ${this.events.map(([t]) => t).join(' ')}`)), ms);
      this.waiters.push({ type, pred, resolve: (d) => (clearTimeout(timer), resolve(d)) });
    });
  }
}

async function comfyClient(): Promise<{ client: Client; log: EventLog }> {
  const client = new Client({ api_host: `127.0.0.1:${server.port}`, WebSocket });
  clients.push(client);
  const log = new EventLog(client);
  await client.connect({ timeout_ms: 10_000 });
  return { client, log };
}

function post(path: string, body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(`${base}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: typeof body === 'string' ? body : JSON.stringify(body) });
}

async function getJson<T = Record<string, unknown>>(path: string): Promise<T> {
  const res = await fetch(`${base}${path}`);
  expect(res.status, path).toBe(200);
  return (await res.json()) as T;
}

/** A raw socket on /ws that records every frame (JSON parsed, binary kept). */
async function rawSocket(query: string, path = '/ws'): Promise<{ ws: WebSocket; frames: WsFrame[]; until(pred: (f: WsFrame) => boolean, ms?: number): Promise<WsFrame> }> {
  const ws = new WebSocket(`ws://127.0.0.1:${server.port}${path}${query}`);
  const frames: WsFrame[] = [];
  const waiters: { pred: (f: WsFrame) => boolean; resolve: (f: WsFrame) => void }[] = [];
  ws.on('message', (data, isBinary) => {
    const f: WsFrame = isBinary ? { binary: Buffer.from(data as Buffer) } : (JSON.parse(data.toString()) as WsFrame);
    frames.push(f);
    for (const w of [...waiters]) if (w.pred(f)) (waiters.splice(waiters.indexOf(w), 1), w.resolve(f));
  });
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  const until = (pred: (f: WsFrame) => boolean, ms = 120_000): Promise<WsFrame> => {
    const seen = frames.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out; got ${frames.length} frames`)), ms);
      waiters.push({ pred, resolve: (f) => (clearTimeout(timer), resolve(f)) });
    });
  };
  return { ws, frames, until };
}

const isMsg = (type: string, promptId?: string) => (f: WsFrame): boolean =>
  'type' in f && f.type === type && (promptId === undefined || f.data.prompt_id === promptId);

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'charflow-comfy-'));
  paths = resolvePaths({ data: join(root, 'data') });
  await writeTinyModelSet(join(paths.models, 'tiny'));
  services = await createServices(paths, { device: 'cpu' });
  server = await startServer({ paths, port: 0, services, staticDir: null, log: () => {} });
  base = `http://127.0.0.1:${server.port}`;
  defs = await getJson<NodeDefs>('/object_info');
}, 300_000);

afterAll(async () => {
  for (const c of clients) c.close();
  for (const s of extraServers) await s.close();
  await server?.close();
  await services?.close();
  if (root) rmSync(root, { recursive: true, force: true });
});

describe('a stock ComfyUI client (@stable-canvas/comfyui-client)', () => {
  it('queues the default workflow in API format, follows progress, gets the image through /view and reads it back from /history', async () => {
    const { client, log } = await comfyClient();
    expect(log.of('status')[0]).toEqual({ exec_info: { queue_remaining: 0 } });
    expect(client.clientId).toMatch(/^[0-9a-f-]{36}$/);
    const stats = await client.getSystemStats();
    expect(stats.devices[0]).toMatchObject({ type: 'cpu', vram_total: expect.any(Number) });
    expect(stats.system.embedded_python).toBe(false);
    expect(await client.getEmbeddings()).toEqual([]);
    expect(await client.getExtensions()).toEqual([]);
    const nodeDefs = await client.getNodeDefs();
    expect(Object.keys(nodeDefs)).toContain('DiTSample');

    const prompt = apiPrompt();
    const progress: { value: number; max: number; node: string }[] = [];
    const result = await client.enqueue(prompt, { progress: (p) => void progress.push({ value: p.value, max: p.max, node: p.node }) });
    const promptId = result.prompt_id;
    expect(log.of('execution_start', promptId)).toHaveLength(1);
    expect(progress.filter((p) => p.node === '7')).toEqual([1, 2, 3].map((value) => ({ value, max: 3, node: '7' })));
    expect(log.of('b_preview')).toHaveLength(3);

    // The image through /view: a PNG at the requested size, with the workflow and the API prompt inside.
    // The library also collects the preview frames it saw while the prompt ran (as 'buff' images).
    expect(result.images.filter((i) => i.type === 'buff')).toHaveLength(3);
    const urls = result.images.filter((i) => i.type === 'url');
    expect(urls).toHaveLength(1);
    const img = urls[0]!;
    expect(img.data).toMatch(/\/view\?filename=instantcharacter_\d+\.png&subfolder=&type=output$/);
    const res = await fetch(img.data as string);
    expect(res.status).toBe(200);
    const png = new Uint8Array(await res.arrayBuffer());
    const meta = await sharp(png).metadata();
    expect([meta.format, meta.width, meta.height]).toEqual(['png', 96, 64]);
    const text = readPngText(png);
    expect(JSON.parse(text.prompt!)).toEqual(prompt);
    expect(JSON.parse(text.workflow!)).toMatchObject({ format: 'charflow.workflow', nodes: { 7: { type: 'DiTSample' } } });

    // executing {node: null} closes the prompt, after the history entry exists.
    await log.wait('executing', (d) => d.node === null && d.prompt_id === promptId);
    expect(log.of('executing', promptId).map((d) => d.node)).toEqual(expect.arrayContaining(['1', '7', '9', null]));
    expect(log.of('execution_success', promptId)).toHaveLength(1);
    const { History } = await client.getHistory();
    const entry = History.find((h) => h.prompt[1] === promptId)!;
    expect(entry.status).toMatchObject({ status_str: 'success', completed: true });
    expect(entry.status!.messages.map((m) => m[0])).toEqual(['execution_start', 'execution_cached', 'execution_success']);
    expect(entry.prompt[2]).toEqual(prompt);
    expect(entry.prompt[4]).toEqual(['9']);
    const outputs = await client.getPromptOutputs(promptId);
    expect(outputs['9'].images[0].filename).toBe(new URL(img.data as string).searchParams.get('filename'));
    const again = await client.getPromptResult(promptId);
    expect(again.images.map((i) => i.data)).toEqual([img.data]);
    expect(await client.getPromptStatus(promptId)).toEqual({ running: false, pending: false, done: true });
  });

  it('runs several prompts in order and interrupts the running one', async () => {
    const { client, log } = await comfyClient();
    const long = await client.queuePrompt(0, { prompt: apiPrompt({ 7: { steps: 200, seed: 11 } }), workflow: {} });
    const next = await client.queuePrompt(0, { prompt: apiPrompt({ 7: { seed: 12 } }), workflow: {} });
    if (!('prompt_id' in long) || !('prompt_id' in next)) throw new Error('not queued');
    expect(Object.keys(long).sort()).toEqual(['node_errors', 'number', 'prompt_id']);

    await log.wait('progress', (p) => p.prompt_id === long.prompt_id && p.node === '7');
    const { Running, Pending } = await client.getQueue();
    expect(Running.map((r) => r[1])).toEqual([long.prompt_id]);
    expect(Pending.map((r) => r[1])).toEqual([next.prompt_id]);
    await client.interrupt(long.prompt_id);
    expect(await log.wait('execution_interrupted', (d) => d.prompt_id === long.prompt_id)).toMatchObject({ node_id: '7', node_type: 'DiTSample' });

    await log.wait('execution_success', (d) => d.prompt_id === next.prompt_id);
    expect(log.of('execution_start').map((d) => d.prompt_id)).toEqual([long.prompt_id, next.prompt_id]);
    expect(log.of('progress', long.prompt_id).length).toBeLessThan(200);
    const history = await getJson<Record<string, { status: { status_str: string; messages: [string, unknown][] } }>>(`/history/${long.prompt_id}`);
    expect(history[long.prompt_id]!.status.status_str).toBe('error');
    expect(history[long.prompt_id]!.status.messages.at(-1)![0]).toBe('execution_interrupted');
    expect(server.queue.get(long.prompt_id)!.status).toBe('interrupted');
  });

  it('sees a validation error for a broken prompt', async () => {
    const { client } = await comfyClient();
    const broken = apiPrompt({ 7: { steps: 0 } });
    const err = (await client.queuePrompt(0, { prompt: broken, workflow: {} }).catch((e: unknown) => e)) as { status: number; json: { error: { type: string }; node_errors: Record<string, { errors: { type: string }[] }> } };
    expect(err.status).toBe(400);
    expect(err.json.error.type).toBe('prompt_outputs_failed_validation');
    expect(err.json.node_errors['7']!.errors[0]!.type).toBe('value_smaller_than_min');
    await expect(client.enqueue(apiPrompt({ 6: { prompt: 42 } }))).rejects.toThrow(/400/);
  });
});

describe('POST /prompt', () => {
  it('answers validation errors in ComfyUI\'s shape, mapping charflow\'s codes', async () => {
    const before = server.queue.counts().pending;
    const refused = async (prompt: unknown): Promise<{ error: Record<string, unknown>; node_errors: Record<string, { errors: Record<string, unknown>[]; dependent_outputs: string[]; class_type: string }> }> => {
      const res = await post('/prompt', { prompt, client_id: 'shape-test' });
      expect(res.status).toBe(400);
      return (await res.json()) as never;
    };

    const r = await refused(apiPrompt({ 7: { steps: 0, width: 5000 }, 2: { square: 'round' } }));
    expect(r.error).toEqual({ type: 'prompt_outputs_failed_validation', message: 'Prompt outputs failed validation', details: expect.stringContaining('node 7 (DiTSample) input "steps"'), extra_info: {} });
    expect(r.node_errors['7']).toEqual({
      errors: [
        { type: 'value_smaller_than_min', message: 'Value smaller than min', details: expect.stringMatching(/steps.*below the minimum 1/), extra_info: { input_name: 'steps', input_config: ['INT', expect.objectContaining({ min: 1, max: 200 })], received_value: 0 } },
        { type: 'value_bigger_than_max', message: 'Value bigger than max', details: expect.any(String), extra_info: expect.objectContaining({ input_name: 'width', received_value: 5000 }) },
      ],
      dependent_outputs: ['9'],
      class_type: 'DiTSample',
    });
    expect(r.node_errors['2']!.errors[0]).toMatchObject({ type: 'value_not_in_list', extra_info: { input_name: 'square', input_config: [['pad', 'stretch'], expect.any(Object)] } });

    const missing = apiPrompt();
    delete missing['7']!.inputs.conditioning;
    expect((await refused(missing)).node_errors['7']!.errors[0]).toMatchObject({ type: 'required_input_missing', extra_info: { input_name: 'conditioning' } });

    const mismatch = apiPrompt({ 7: { conditioning: ['1', 0] } });
    expect((await refused(mismatch)).node_errors['7']!.errors[0]).toMatchObject({ type: 'return_type_mismatch', details: expect.stringMatching(/is MODELS, but this input takes CONDITIONING/) });

    const badIndex = apiPrompt({ 7: { conditioning: ['6', 3] } });
    expect((await refused(badIndex)).node_errors['7']!.errors).toEqual([expect.objectContaining({ type: 'bad_linked_input', extra_info: expect.objectContaining({ input_name: 'conditioning' }) })]);
    const notLink = apiPrompt({ 7: { conditioning: ['6', 0, 1] } });
    expect((await refused(notLink)).node_errors['7']!.errors[0]!.type).toBe('bad_linked_input');
    const wrapped = apiPrompt({ 6: { prompt: { __value__: ['a', 'b'] } } });
    expect((await refused(wrapped)).node_errors['6']!.errors[0]!.type).toBe('invalid_input_type');
    const wrongType = apiPrompt({ 7: { seed: 'abc' } });
    expect((await refused(wrongType)).node_errors['7']!.errors[0]).toMatchObject({ type: 'invalid_input_type', extra_info: { received_value: 'abc' } });

    const unknown = apiPrompt();
    unknown['3']!.class_type = 'SigLIPEncoder';
    const u = await refused(unknown);
    expect(u.error).toMatchObject({ type: 'invalid_prompt', message: 'Cannot execute because node SigLIPEncoder does not exist.', details: expect.stringContaining('did you mean "SigLIPEncode"') });
    const noClass = await refused({ 1: { inputs: {} } });
    expect(noClass.error.type).toBe('invalid_prompt');

    const noOutputs = apiPrompt();
    delete noOutputs['9'];
    expect((await refused(noOutputs)).error).toMatchObject({ type: 'prompt_no_outputs', message: 'Prompt has no outputs', details: expect.any(String), extra_info: {} });

    // A charflow workflow in `prompt` is validated as such, however malformed.
    expect((await refused({ format: 'charflow.workflow', version: 1, nodes: null })).error.type).toBe('invalid_prompt');
    const badNode = await refused({ format: 'charflow.workflow', version: 1, nodes: { a: null, b: { type: 'SaveImage', inputs: { image: { node: 'a', output: 'image' } } } } });
    expect(badNode.error.type).toBe('invalid_prompt');
    const noPrompt = await post('/prompt', { client_id: 'x' });
    expect([noPrompt.status, ((await noPrompt.json()) as { error: { type: string } }).error.type]).toEqual([400, 'no_prompt']);
    const badJson = await post('/prompt', '{"prompt": ');
    expect(badJson.status).toBe(400);
    expect(await badJson.json()).toEqual({ error: { type: 'invalid_prompt', message: 'Invalid prompt', details: expect.stringMatching(/not valid JSON/), extra_info: {} }, node_errors: {} });
    expect(server.queue.counts().pending).toBe(before);
  });

  it('accepts a charflow workflow and a client-chosen prompt_id, keeps extra_data, and shares the queue with the editor', async () => {
    server.runner.pause();
    try {
      const wf = structuredClone(DEFAULT);
      Object.assign(wf.nodes['7']!.inputs, { width: 96, height: 64, steps: 3 });
      const res = await post('/prompt', { prompt: wf, client_id: 'cf-client', prompt_id: 'my-prompt-1', extra_data: { extra_pnginfo: { workflow: { nodes: [] } } } });
      expect(res.status).toBe(200);
      const ok = (await res.json()) as { prompt_id: string; number: number; node_errors: object };
      expect(ok).toEqual({ prompt_id: 'my-prompt-1', number: expect.any(Number), node_errors: {} });
      expect(server.queue.get('my-prompt-1')).toMatchObject({ status: 'pending', source: 'api', clientId: 'cf-client' });
      const dup = await post('/prompt', { prompt: wf, prompt_id: 'my-prompt-1' });
      expect([dup.status, ((await dup.json()) as { error: { type: string } }).error.type]).toEqual([400, 'invalid_prompt_id']);

      // The editor's protocol queues into the same queue; /queue lists both, as API prompts.
      const editor = new WebSocket(`ws://127.0.0.1:${server.port}/ws/editor`);
      await new Promise((r) => editor.once('open', r));
      const reply = new Promise<{ runId: string }>((resolve) => editor.on('message', (d) => {
        const m = JSON.parse(d.toString()) as { id?: string; runId: string };
        if (m.id === 'r1') resolve(m);
      }));
      editor.send(JSON.stringify({ id: 'r1', type: 'run', workflow: wf }));
      const editorRun = (await reply).runId;
      editor.close();

      const q = await getJson<{ queue_running: unknown[]; queue_pending: [number, string, Record<string, { class_type: string; inputs: Record<string, unknown> }>, Record<string, unknown>, string[]][] }>('/queue');
      expect(q.queue_running).toEqual([]);
      expect(q.queue_pending.map((i) => i[1])).toEqual(['my-prompt-1', editorRun]);
      const [number, , prompt, extra, outputs] = q.queue_pending[0]!;
      expect(number).toBe(ok.number);
      expect(prompt['7']).toMatchObject({ class_type: 'DiTSample', inputs: { conditioning: ['6', 0], width: 96 } });
      expect(prompt['2']!.inputs.path).toBe('workflows/assets/character.png');
      expect(extra).toMatchObject({ client_id: 'cf-client', create_time: expect.any(Number), extra_pnginfo: { workflow: { nodes: [] } } });
      expect(outputs).toEqual(['9']);
      expect(q.queue_pending[1]![2]['8']).toMatchObject({ class_type: 'Decode', inputs: { latent: ['7', 0] } });
      expect(await getJson('/prompt')).toEqual({ exec_info: { queue_remaining: 2 } });

      expect(await (await post('/queue', { delete: ['my-prompt-1'] })).json()).toEqual({ deleted: 1 });
      expect(server.queue.get('my-prompt-1')).toBeUndefined();
      expect(await (await post('/queue', { clear: true })).json()).toEqual({ deleted: 1 });
      expect(await getJson('/queue')).toEqual({ queue_running: [], queue_pending: [] });
    } finally {
      server.runner.start();
    }
  });
});

describe('GET /object_info', () => {
  it('describes charflow nodes in ComfyUI\'s shape', async () => {
    const all = await getJson<Record<string, Record<string, unknown>>>('/object_info');
    expect(Object.keys(all)).toEqual([
      'LoadModels', 'LoadCharacter', 'SigLIPEncode', 'DINOv2Encode', 'AdapterFuse', 'RegionalCharacter', 'CombineCharacters', 'TextEncode',
      'DiTSample', 'Decode', 'IdentityScore', 'KeepBest', 'SaveImage', 'PreviewImage', 'LoadImage', 'VAEEncode',
      'LoadMask', 'MaskFromRegion', 'InvertMask', 'PadImage', 'SetLatentNoiseMask',
      'SaveCharacter', 'SavedCharacter',
      'LoraLoader', 'LoraLoaderModelOnly',
    ]);
    const dit = all.DiTSample!;
    expect(dit).toMatchObject({
      name: 'DiTSample',
      display_name: 'DiT Sample',
      description: expect.any(String),
      category: 'sampling',
      output: ['LATENT'],
      output_is_list: [false],
      output_name: ['latent'],
      output_node: false,
      input_order: {
        required: ['models', 'conditioning', 'seed', 'steps', 'width', 'height', 'guidance', 'subject_scale', 'true_cfg', 'batch_size', 'denoise', 'mask_grow', 'mask_feather', 'mask_mode'],
        optional: ['negative', 'character', 'noise', 'init', 'mask', 'sigmas'],
      },
    });
    const input = dit.input as { required: Record<string, unknown>; optional: Record<string, unknown> };
    expect(input.required.models).toEqual(['MODELS']);
    expect(input.required.steps).toEqual(['INT', { default: 28, min: 1, max: 200, step: 1 }]);
    expect(input.required.width).toEqual(['INT', { default: 1024, min: 64, max: 4096, step: 16 }]);
    expect(input.required.seed).toEqual(['INT', expect.objectContaining({ default: 0, min: 0, control_after_generate: true })]);
    expect(input.required.guidance).toEqual(['FLOAT', { default: 3.5, min: 0, max: 30, step: 0.01, tooltip: 'Distilled guidance (FLUX.1-dev)' }]);
    expect(input.optional.character).toEqual(['CHARACTER,CHARACTERS', { tooltip: expect.stringContaining('plain text-to-image') }]);

    const load = all.LoadCharacter!.input as { required: Record<string, [unknown, Record<string, unknown>]> };
    expect(load.required.path).toEqual([expect.arrayContaining(['workflows/assets/character.png']), expect.objectContaining({ image_upload: true, default: 'workflows/assets/character.png' })]);
    expect(load.required.square).toEqual([['pad', 'stretch'], expect.objectContaining({ default: 'pad' })]);
    expect(load.required.background).toEqual(['STRING', expect.objectContaining({ default: '#ffffff', multiline: false })]);
    expect((all.TextEncode!.input as { required: Record<string, [string, Record<string, unknown>]> }).required.prompt![1]).toMatchObject({ multiline: true });
    expect(all.SaveImage).toMatchObject({ output: [], output_name: [], output_node: true, category: 'image' });

    expect(Object.keys(await getJson('/object_info/DiTSample'))).toEqual(['DiTSample']);
    expect(await getJson('/object_info/NoSuchNode')).toEqual({});
  });
});

describe('WebSocket /ws', () => {
  it('sends status with the sid first, then the prompt\'s events in order, with binary JPEG preview frames, only to its client', async () => {
    const mine = await rawSocket('?clientId=ws-client-1');
    const other = await rawSocket('?clientId=someone-else');
    const first = await mine.until(() => true);
    expect(first).toEqual({ type: 'status', data: { status: { exec_info: { queue_remaining: expect.any(Number) } }, sid: 'ws-client-1' } });

    const res = await post('/prompt', { prompt: apiPrompt({ 7: { seed: 77 } }), client_id: 'ws-client-1' });
    const { prompt_id: id } = (await res.json()) as { prompt_id: string };
    await mine.until((f) => isMsg('executing', id)(f) && 'type' in f && f.data.node === null);

    // Status broadcasts interleave freely; the prompt's own frames come in this order.
    const kinds = mine.frames
      .map((f) => ('binary' in f ? 'binary' : f.type === 'executing' || f.type === 'progress' ? `${f.type}:${String(f.data.node)}` : f.type))
      .filter((k) => k !== 'status');
    expect(kinds.slice(0, 2)).toEqual(['execution_start', 'execution_cached']);
    expect(kinds.at(-1)).toBe('executing:null');
    expect(kinds.at(-2)).toBe('execution_success');
    expect(kinds.indexOf('executing:7')).toBeLessThan(kinds.indexOf('progress:7'));
    expect(kinds.indexOf('progress:7')).toBeLessThan(kinds.indexOf('binary'));
    expect(kinds.indexOf('executed')).toBeGreaterThan(kinds.indexOf('executing:9'));
    // Nodes served from the cache are listed once, right after the start (after the earlier runs:
    // the models, the character tokens and the prompt; what feeds a cached node is not needed).
    const cached = mine.frames.find(isMsg('execution_cached', id)) as unknown as { data: { nodes: string[] } };
    const outcomes = server.queue.get(id)!.nodes;
    expect(cached.data.nodes.sort()).toEqual(Object.keys(outcomes).filter((n) => outcomes[n]!.status === 'cached').sort());
    expect(outcomes['7']!.status).toBe('done');

    const previews = mine.frames.filter((f): f is { binary: Buffer } => 'binary' in f);
    expect(previews).toHaveLength(3);
    for (const { binary } of previews) {
      expect(binary.readUInt32BE(0)).toBe(1); // PREVIEW_IMAGE
      expect(binary.readUInt32BE(4)).toBe(1); // JPEG
      expect([binary[8], binary[9]]).toEqual([0xff, 0xd8]);
      expect((await sharp(binary.subarray(8)).metadata()).format).toBe('jpeg');
    }
    const progress = mine.frames.filter(isMsg('progress', id)).map((f) => ('type' in f ? f.data : {})).filter((d) => d.node === '7');
    expect(progress).toEqual([1, 2, 3].map((value) => ({ value, max: 3, node: '7', prompt_id: id })));
    const executed = mine.frames.find(isMsg('executed', id)) as { data: Record<string, unknown> };
    expect(executed.data).toMatchObject({ node: '9', display_node: '9', output: { images: [{ filename: expect.stringMatching(/\.png$/), subfolder: '', type: 'output' }] } });

    // The other client heard the queue change but none of this prompt.
    expect(other.frames.some((f) => 'binary' in f || f.data.prompt_id === id)).toBe(false);
    expect(other.frames.filter(isMsg('status')).length).toBeGreaterThan(1);
    mine.ws.close();
    other.ws.close();
  });

  it('reports a failing node with execution_error', async () => {
    const s = await rawSocket('?clientId=ws-client-2');
    const res = await post('/prompt', { prompt: apiPrompt({ 1: { set: 'nosuchset' } }), client_id: 'ws-client-2' });
    const { prompt_id: id } = (await res.json()) as { prompt_id: string };
    const err = (await s.until(isMsg('execution_error', id))) as { data: Record<string, unknown> };
    expect(err.data).toMatchObject({ prompt_id: id, node_id: '1', node_type: 'LoadModels', exception_type: 'NodeInputError', exception_message: expect.stringContaining('nosuchset'), traceback: [], current_inputs: { set: 'nosuchset' } });
    await s.until((f) => isMsg('executing', id)(f) && 'type' in f && f.data.node === null);
    const h = await getJson<Record<string, { status: { status_str: string; completed: boolean; messages: [string, unknown][] } }>>(`/history/${id}`);
    expect(h[id]!.status).toMatchObject({ status_str: 'error', completed: false });
    expect(h[id]!.status.messages.at(-1)![0]).toBe('execution_error');
    s.ws.close();
  });
});

describe('routes', () => {
  it('serves every route under /api/ too', async () => {
    for (const path of ['/object_info', '/object_info/SaveImage', '/prompt', '/queue', '/history', '/system_stats', '/embeddings', '/extensions']) {
      const [bare, api] = await Promise.all([fetch(`${base}${path}`), fetch(`${base}/api${path}`)]);
      expect([path, bare.status, api.status]).toEqual([path, 200, 200]);
      if (path !== '/system_stats') expect(await api.json()).toEqual(await bare.json());
    }
    const res = await post('/api/prompt', { prompt: apiPrompt({ 7: { steps: 0 } }) });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { node_errors: Record<string, unknown> }).node_errors['7']).toBeDefined();
    const s = await rawSocket('?clientId=api-prefix', '/api/ws');
    expect(await s.until(() => true)).toMatchObject({ type: 'status', data: { sid: 'api-prefix' } });
    s.ws.close();
  });

  it('lists, pages and deletes the history', async () => {
    // A few quick prompts (they fail at once: no such model set) so there is a history to page.
    for (let i = 0; i < 3; i++) {
      const { prompt_id: id } = (await (await post('/prompt', { prompt: apiPrompt({ 1: { set: `missing-${i}` } }) })).json()) as { prompt_id: string };
      for (let t = 0; !Object.keys(await getJson(`/history/${id}`)).length; t++) {
        if (t > 600) throw new Error('the prompt did not finish');
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    const all = await getJson<Record<string, { prompt: [number, string] }>>('/history');
    const ids = Object.keys(all);
    expect(ids.length).toBeGreaterThanOrEqual(3);
    // Oldest first, as ComfyUI lists them; max_items keeps the newest.
    const numbers = Object.values(all).map((e) => e.prompt[0]);
    expect([...numbers].sort((a, b) => a - b)).toEqual(numbers);
    expect(Object.keys(await getJson('/history?max_items=2'))).toEqual(ids.slice(-2));
    expect(Object.keys(await getJson('/history?max_items=2&offset=1'))).toEqual(ids.slice(1, 3));
    expect(await getJson('/history/no-such-prompt')).toEqual({});

    expect(await (await post('/history', { delete: [ids[0]] })).json()).toEqual({ deleted: 1 });
    expect(await getJson(`/history/${ids[0]}`)).toEqual({});
    expect(Object.keys(await getJson('/history'))).toEqual(ids.slice(1));
  });

  it('uploads images into the inputs folder and lists them as LoadCharacter choices', async () => {
    const upload = (fields: Record<string, string>, bytes: Uint8Array, name = 'hero.png', path = '/upload/image'): Promise<Response> => {
      const form = new FormData();
      form.append('image', new Blob([new Uint8Array(bytes)]), name);
      for (const [k, v] of Object.entries(fields)) form.append(k, v);
      return fetch(`${base}${path}`, { method: 'POST', body: form });
    };
    const png = readFileSync(CHARACTER);
    const r1 = await upload({}, png);
    expect([r1.status, await r1.json()]).toEqual([200, { name: 'hero.png', subfolder: '', type: 'input' }]);
    const r2 = await upload({ subfolder: 'chars', type: 'input' }, png, 'hero.png', '/api/upload/image');
    expect(await r2.json()).toEqual({ name: 'hero.png', subfolder: 'chars', type: 'input' });
    const flipped = await sharp(png).flip().png().toBuffer();
    expect(((await (await upload({}, flipped)).json()) as { name: string }).name).toBe('hero_1.png');
    expect(((await (await upload({ overwrite: 'true' }, flipped)).json()) as { name: string }).name).toBe('hero.png');
    expect(readFileSync(join(paths.inputs, 'hero.png')).equals(flipped)).toBe(true);

    expect((await upload({}, Buffer.from('not an image'))).status).toBe(415);
    expect((await upload({ subfolder: '../escape' }, png)).status).toBe(400);
    expect((await upload({ type: 'output' }, png)).status).toBe(400);

    const view = await fetch(`${base}/view?${new URLSearchParams({ filename: 'hero.png', subfolder: 'chars', type: 'input' })}`);
    expect([view.status, view.headers.get('content-type')]).toEqual([200, 'image/png']);
    expect((await fetch(`${base}/view?filename=..%2Fqueue.db&type=input`)).status).toBe(400);
    const info = await getJson<{ LoadCharacter: { input: { required: { path: [string[], object] } } } }>('/object_info/LoadCharacter');
    expect(info.LoadCharacter.input.required.path[0]).toEqual(expect.arrayContaining(['hero.png', 'hero_1.png', 'chars/hero.png']));
  });

  it('frees models and cached outputs on /free', async () => {
    const loaded = services.pool.stats().loaded.length;
    const res = await post('/free', { unload_models: true, free_memory: true });
    expect(await res.json()).toEqual({ unloaded_models: loaded, cache_cleared: true });
    expect(services.pool.stats().loaded).toEqual([]);
    expect(server.runner.executor.cache.keys()).toEqual([]);
  });

  it('keeps the server\'s security: Origin checks and the token', async () => {
    expect((await post('/prompt', { prompt: apiPrompt() }, { origin: 'http://evil.example' })).status).toBe(403);
    expect((await post('/interrupt', {}, { origin: 'null' })).status).toBe(403);
    const refusedUpgrade = await new Promise<number>((resolve) => {
      const ws = new WebSocket(`ws://127.0.0.1:${server.port}/ws?clientId=x`, { origin: 'http://evil.example' });
      ws.once('unexpected-response', (_req, r) => resolve(r.statusCode ?? 0));
      ws.once('open', () => resolve(101));
      ws.once('error', () => {});
    });
    expect(refusedUpgrade).toBe(403);

    const opts: ServerOptions = { paths: resolvePaths({ data: join(root, 'token'), models: paths.models }), port: 0, services, staticDir: null, log: () => {}, token: 'tok-123' };
    const s = await startServer(opts);
    extraServers.push(s);
    expect((await fetch(`${s.url}object_info`)).status).toBe(401);
    expect((await fetch(`${s.url}api/prompt`, { headers: { authorization: 'Bearer tok-123' } })).status).toBe(200);
    const tokenUpgrade = (q: string): Promise<number> => new Promise((resolve) => {
      const ws = new WebSocket(`ws://127.0.0.1:${s.port}/ws${q}`);
      ws.once('unexpected-response', (_req, r) => resolve(r.statusCode ?? 0));
      ws.once('open', () => (ws.close(), resolve(101)));
      ws.once('error', () => {});
    });
    expect(await tokenUpgrade('?clientId=a')).toBe(401);
    expect(await tokenUpgrade('?clientId=a&token=tok-123')).toBe(101);
  });
});
