// Inpainting and outpainting from a stock ComfyUI client (@stable-canvas/comfyui-client): /object_info shows
// the MASK socket, LoadImage's second output MASK and SetLatentNoiseMask by ComfyUI's names; a prompt built the
// ComfyUI way (an uploaded picture with a transparent hole -> LoadImage's MASK -> SetLatentNoiseMask) runs, and
// so do the two example workflows sent as API prompts.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { WebSocket } from 'ws';
import { Client } from '@stable-canvas/comfyui-client';
import { resolvePaths } from '../../engine/paths.ts';
import type { Workflow } from '../../engine/workflow/types.ts';
import { writeTinyModelSet } from '../../models/tiny.ts';
import { readPngText } from '../../nodes/lib/image.ts';
import { nodeRegistry } from '../../nodes/registry.ts';
import { createServices, PACKAGE_ROOT, type OwnedServices } from '../../nodes/services.ts';
import { startServer, type RunningServer } from '../../editor/server/index.ts';
import { workflowToApi } from '../../editor/server/comfy/convert.ts';

type InputSpec = [unknown, Record<string, unknown>?];
type NodeInfo = { input: { required: Record<string, InputSpec>; optional?: Record<string, InputSpec> }; output: string[]; output_name: string[] };
const SIZE = { width: 96, height: 64 };

let root: string;
let services: OwnedServices;
let server: RunningServer;
let base: string;
let client: Client | undefined;

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'charflow-comfy-inpaint-'));
  const paths = resolvePaths({ data: join(root, 'data') });
  await writeTinyModelSet(join(paths.models, 'tiny'));
  services = await createServices(paths, { device: 'cpu' });
  server = await startServer({ paths, port: 0, services, staticDir: null, log: () => {} });
  base = `http://127.0.0.1:${server.port}`;
  client = new Client({ api_host: `127.0.0.1:${server.port}`, WebSocket });
  await client.connect({ timeout_ms: 10_000 });
}, 300_000);

afterAll(async () => {
  client?.close();
  await server?.close();
  await services?.close();
  if (root) rmSync(root, { recursive: true, force: true });
});

/** Enqueues a prompt and returns the saved PNGs (their bytes). */
async function enqueue(prompt: Record<string, unknown>): Promise<Uint8Array[]> {
  const result = await client!.enqueue(prompt);
  const urls = result.images.filter((i) => i.type === 'url');
  return Promise.all(urls.map(async (img) => new Uint8Array(await (await fetch(img.data as string)).arrayBuffer())));
}

describe('inpainting over the ComfyUI API', () => {
  it('describes MASK sockets by ComfyUI\'s names', async () => {
    const info = await (await fetch(`${base}/object_info`)).json() as Record<string, NodeInfo>;
    expect(info.LoadImage!.output).toEqual(['IMAGE', 'MASK']);
    expect(info.SetLatentNoiseMask!.input.required).toMatchObject({ samples: ['LATENT'], mask: ['MASK'] });
    expect(info.SetLatentNoiseMask!.output).toEqual(['LATENT']);
    expect(info.DiTSample!.input.optional!.mask![0]).toBe('MASK');
    expect(info.DiTSample!.input.required.mask_mode![0]).toEqual(['binary', 'soft']);
    for (const t of ['LoadMask', 'MaskFromRegion', 'InvertMask']) expect(info[t]!.output).toEqual(['MASK']);
    expect(info.PadImage!.output).toEqual(['IMAGE', 'MASK']);
  });

  it('runs the ComfyUI way: a picture with a transparent hole, LoadImage\'s MASK, SetLatentNoiseMask', async () => {
    // The scene with a transparent rectangle: LoadImage's MASK (1 - alpha) is where the sampler repaints.
    const { data, info } = await sharp(readFileSync(join(PACKAGE_ROOT, 'workflows/assets/scene.png'))).ensureAlpha().raw().toBuffer({ resolveWithObject: true });
    for (let y = 80; y < 200; y++) for (let x = 90; x < 170; x++) data[(y * info.width + x) * 4 + 3] = 0;
    const png = await sharp(data, { raw: { width: info.width, height: info.height, channels: 4 } }).png().toBuffer();
    const form = new FormData();
    form.append('image', new Blob([new Uint8Array(png)]), 'scene_hole.png');
    const up = await (await fetch(`${base}/upload/image`, { method: 'POST', body: form })).json() as { name: string };

    const defs = await client!.getNodeDefs() as unknown as Record<string, NodeInfo>;
    const out = (type: string, socket: string): number => defs[type]!.output.indexOf(socket);
    expect(out('LoadImage', 'MASK')).toBe(1);
    const prompt = {
      1: { class_type: 'LoadModels', inputs: { set: 'tiny' } },
      2: { class_type: 'TextEncode', inputs: { models: ['1', 0], prompt: 'a character in a meadow' } },
      3: { class_type: 'LoadImage', inputs: { path: up.name, ...SIZE } },
      4: { class_type: 'VAEEncode', inputs: { models: ['1', 0], image: ['3', out('LoadImage', 'IMAGE')] } },
      5: { class_type: 'SetLatentNoiseMask', inputs: { samples: ['4', out('VAEEncode', 'LATENT')], mask: ['3', out('LoadImage', 'MASK')] } },
      6: { class_type: 'DiTSample', inputs: { models: ['1', 0], conditioning: ['2', 0], init: ['5', out('SetLatentNoiseMask', 'LATENT')], seed: 5, steps: 3, ...SIZE, denoise: 1 } },
      7: { class_type: 'Decode', inputs: { models: ['1', 0], latent: ['6', 0] } },
      8: { class_type: 'SaveImage', inputs: { image: ['7', 0], filename_prefix: 'comfy_inpaint' } },
    };
    const [image] = await enqueue(prompt);
    const meta = await sharp(image!).metadata();
    expect([meta.width, meta.height]).toEqual([SIZE.width, SIZE.height]);
    const wf = JSON.parse(readPngText(image!).workflow!) as Workflow;
    expect(wf.nodes['5']!.type).toBe('SetLatentNoiseMask');
    expect(wf.nodes['5']!.inputs!.mask).toEqual({ node: '3', output: 'mask' });
  });

  for (const name of ['insert_character', 'outpaint']) {
    it(`runs workflows/${name}.json sent as an API prompt`, async () => {
      const wf = JSON.parse(readFileSync(join(PACKAGE_ROOT, 'workflows', `${name}.json`), 'utf8')) as Workflow;
      for (const node of Object.values(wf.nodes)) {
        const inputs = node.inputs!;
        if (node.type === 'DiTSample') Object.assign(inputs, SIZE, { steps: 2 });
        if (node.type === 'LoadImage') Object.assign(inputs, name === 'outpaint' ? { width: 64, height: 64 } : SIZE);
        if (node.type === 'PadImage') Object.assign(inputs, { left: 16, right: 16, top: 0, bottom: 0, feather: 8 });
      }
      const images = await enqueue(workflowToApi(wf, nodeRegistry()));
      expect(images).toHaveLength(1);
      const meta = await sharp(images[0]!).metadata();
      expect([meta.width, meta.height]).toEqual([SIZE.width, SIZE.height]);
    });
  }
});
