// workflows/style_lora.json on the tiny set with a generated kohya LoRA: headless through the executor, and
// from a stock ComfyUI client (LoraLoader in /object_info with the loras folder as its COMBO, queued by name).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WebSocket } from 'ws';
import { Client } from '@stable-canvas/comfyui-client';
import { resolvePaths, type DataPaths } from '../../engine/paths.ts';
import { Executor, type RunResult } from '../../engine/executor/index.ts';
import { validateWorkflow } from '../../engine/workflow/index.ts';
import { createServices, PACKAGE_ROOT, type OwnedServices } from '../../nodes/services.ts';
import { nodeRegistry } from '../../nodes/registry.ts';
import { TINY_CLIP, TINY_FLUX, writeTinyModelSet } from '../../models/tiny.ts';
import { syntheticKohyaLora } from '../../models/lora/synthetic.ts';
import { writeSafetensors } from '../../models/weights/safetensors.ts';
import { decodeImage } from '../../nodes/lib/image.ts';
import { startServer, type RunningServer } from '../../editor/server/index.ts';
import { workflowToApi } from '../../editor/server/comfy/convert.ts';
import type { Workflow } from '../../engine/workflow/types.ts';

const registry = nodeRegistry();
type Wf = { nodes: Record<string, { type: string; inputs: Record<string, unknown> }> };
const EXAMPLE = JSON.parse(readFileSync(join(PACKAGE_ROOT, 'workflows', 'style_lora.json'), 'utf8')) as Wf;
const SMALL = { width: 96, height: 64, steps: 3 };
const LORA_NODE = Object.entries(EXAMPLE.nodes).find(([, n]) => n.type === 'LoraLoader')![0];
const LORA_FILE = EXAMPLE.nodes[LORA_NODE]!.inputs.lora_name as string;

let dir: string;
let paths: DataPaths;
let services: OwnedServices;
const warnings: string[] = [];

function prepare(changes: Record<string, Record<string, unknown>> = {}): Wf {
  const w = structuredClone(EXAMPLE);
  for (const n of Object.values(w.nodes)) if (n.type === 'DiTSample') Object.assign(n.inputs, SMALL);
  for (const [id, inputs] of Object.entries(changes)) Object.assign(w.nodes[id]!.inputs, inputs);
  return w;
}

async function run(w: Wf): Promise<RunResult> {
  const v = validateWorkflow(w, registry);
  if (!v.ok) throw new Error(v.errors.map((e) => e.message).join('\n'));
  return new Executor({ registry, services, logger: { info: () => {}, warn: (m) => void warnings.push(m) } }).run(v.workflow!, {});
}

async function savedImage(result: RunResult): Promise<Uint8Array> {
  const saver = Object.entries(EXAMPLE.nodes).find(([, n]) => n.type === 'SaveImage')![0];
  const [img] = (result.outputs[saver] as { images: { filename: string }[] }).images;
  return (await decodeImage(join(paths.outputs, img!.filename))).data;
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'charflow-style-wf-'));
  paths = resolvePaths({ data: dir });
  await writeTinyModelSet(join(paths.models, 'tiny'));
  mkdirSync(join(dir, 'loras'), { recursive: true });
  writeSafetensors(join(dir, 'loras', LORA_FILE), syntheticKohyaLora(TINY_FLUX, TINY_CLIP, 4, 7));
  services = await createServices(paths, { device: 'cpu' });
}, 300_000);

afterAll(async () => {
  await services?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('workflows/style_lora.json', () => {
  it('runs headless; the LoRA changes the picture, strength 0 gives the plain one', async () => {
    const styled = await run(prepare());
    expect(Object.values(styled.nodes).every((n) => (n as { status: string }).status !== 'failed'), JSON.stringify(styled.nodes)).toBe(true);
    expect(warnings).toEqual([]);
    const off = await run(prepare({ [LORA_NODE]: { strength_model: 0, strength_clip: 0 } }));
    const plainWf = prepare();
    for (const n of Object.values(plainWf.nodes)) {
      for (const [k, v] of Object.entries(n.inputs)) if (typeof v === 'object' && (v as { node: string }).node === LORA_NODE) n.inputs[k] = { node: '1', output: 'models' };
    }
    delete plainWf.nodes[LORA_NODE];
    const plain = await run(plainWf);
    const [a, b, c] = await Promise.all([savedImage(styled), savedImage(off), savedImage(plain)]);
    expect(Buffer.from(b).equals(Buffer.from(c))).toBe(true);
    let diff = 0;
    for (let i = 0; i < a.length; i++) diff = Math.max(diff, Math.abs(a[i]! - c[i]!));
    expect(diff).toBeGreaterThan(8);
  });

  it('names the field when the LoRA file is missing', async () => {
    const r = await run(prepare({ [LORA_NODE]: { lora_name: 'nope.safetensors' } }));
    expect(r.nodes[LORA_NODE]).toMatchObject({ status: 'failed', field: 'lora_name', message: expect.stringMatching(/nope\.safetensors/) });
  });

  describe('from a stock ComfyUI client', () => {
    let server: RunningServer;
    let client: Client;
    beforeAll(async () => {
      server = await startServer({ paths, port: 0, services, staticDir: null, log: () => {} });
      client = new Client({ api_host: `127.0.0.1:${server.port}`, WebSocket });
      await client.connect({ timeout_ms: 10_000 });
    });
    afterAll(async () => {
      client?.close();
      await server?.close();
    });

    it('lists and stores LoRA files for the editor (/api/loras), refusing what is not a safetensors file', async () => {
      const base = `http://127.0.0.1:${server.port}`;
      expect(await (await fetch(`${base}/api/loras`)).json()).toEqual({ files: [LORA_FILE] });
      const bytes = readFileSync(join(dir, 'loras', LORA_FILE));
      const put = await fetch(`${base}/api/loras/${encodeURIComponent('../My Style!.safetensors')}`, { method: 'PUT', body: bytes });
      expect(put.status).toBe(200);
      const stored = await put.json() as { name: string; bytes: number };
      expect(stored).toMatchObject({ name: 'My Style_.safetensors', bytes: bytes.length });
      expect(readFileSync(join(dir, 'loras', stored.name)).equals(bytes)).toBe(true);
      const bad = await fetch(`${base}/api/loras/bad.safetensors`, { method: 'PUT', body: 'not a safetensors file' });
      expect(bad.status).toBe(415);
      expect(((await (await fetch(`${base}/api/loras`)).json()) as { files: string[] }).files).toEqual(['My Style_.safetensors', LORA_FILE].sort());
      rmSync(join(dir, 'loras', stored.name));
    });

    it('lists the loras folder in /object_info and queues LoraLoader / LoraLoaderModelOnly by name', async () => {
      const defs = await client.getNodeDefs();
      for (const type of ['LoraLoader', 'LoraLoaderModelOnly']) {
        const def = defs[type] as unknown as { input: { required: Record<string, [unknown, Record<string, unknown>?]> }; output: string[] };
        expect(def.input.required.lora_name![0]).toEqual([LORA_FILE]);
        expect(def.output).toEqual(['MODELS']);
      }
      const prompt = workflowToApi(prepare() as unknown as Workflow, registry);
      const result = await client.enqueue(prompt as never);
      expect(result.images.filter((i) => i.type === 'url')).toHaveLength(1);
      const only = structuredClone(prompt);
      only[LORA_NODE] = { class_type: 'LoraLoaderModelOnly', inputs: { models: ['1', 0], lora_name: LORA_FILE, strength_model: 0.5 } };
      const second = await client.enqueue(only as never);
      expect(second.images.filter((i) => i.type === 'url')).toHaveLength(1);
    });
  });
});
