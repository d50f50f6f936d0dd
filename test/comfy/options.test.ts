// The new nodes and sampler options through the ComfyUI-compatible API: /object_info describes them (from the
// registry), and a stock ComfyUI client (@stable-canvas/comfyui-client) queues a prompt that uses all of them:
// an uploaded picture through Load Image and VAE Encode into image-to-image, a negative prompt with true CFG,
// a CLIP prompt and a batch of 2, which comes back as two images.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { WebSocket } from 'ws';
import { Client } from '@stable-canvas/comfyui-client';
import { resolvePaths } from '../../engine/paths.ts';
import { writeTinyModelSet } from '../../models/tiny.ts';
import { readPngText } from '../../nodes/lib/image.ts';
import { createServices, PACKAGE_ROOT, type OwnedServices } from '../../nodes/services.ts';
import { startServer, type RunningServer } from '../../editor/server/index.ts';

type InputSpec = [unknown, Record<string, unknown>?];
type NodeInfo = { input: { required: Record<string, InputSpec>; optional?: Record<string, InputSpec> }; output: string[]; output_name: string[] };

let root: string;
let services: OwnedServices;
let server: RunningServer;
let base: string;
let client: Client | undefined;

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'charflow-comfy-options-'));
  const paths = resolvePaths({ data: join(root, 'data') });
  await writeTinyModelSet(join(paths.models, 'tiny'));
  services = await createServices(paths, { device: 'cpu' });
  server = await startServer({ paths, port: 0, services, staticDir: null, log: () => {} });
  base = `http://127.0.0.1:${server.port}`;
}, 300_000);

afterAll(async () => {
  client?.close();
  await server?.close();
  await services?.close();
  if (root) rmSync(root, { recursive: true, force: true });
});

describe('the new nodes over the ComfyUI API', () => {
  it('describes Load Image, VAE Encode and the sampler options in /object_info', async () => {
    const info = await (await fetch(`${base}/object_info`)).json() as Record<string, NodeInfo>;
    expect(info.LoadImage!.input.required.path![1]).toMatchObject({ image_upload: true });
    expect(info.LoadImage!.output).toEqual(['IMAGE', 'MASK']);
    expect(info.VAEEncode!.input.required.sample![0]).toBe('BOOLEAN');
    expect(info.VAEEncode!.output).toEqual(['LATENT']);
    const sampler = info.DiTSample!.input;
    expect(sampler.optional!.negative![0]).toBe('CONDITIONING');
    expect(sampler.optional!.init![0]).toBe('LATENT');
    expect(sampler.required.true_cfg![0]).toBe('FLOAT');
    expect(sampler.required.batch_size).toEqual(['INT', expect.objectContaining({ min: 1, max: 16 })]);
    expect(sampler.required.denoise![0]).toBe('FLOAT');
    expect(sampler.optional!.sigmas![0]).toBe('STRING');
    expect(info.TextEncode!.input.optional!.clip_prompt![0]).toBe('STRING');
  });

  it('queues image-to-image with true CFG, a CLIP prompt and a batch of 2 from a stock client', async () => {
    // Upload the picture as a ComfyUI client does.
    const form = new FormData();
    form.append('image', new Blob([new Uint8Array(readFileSync(join(PACKAGE_ROOT, 'workflows/assets/character.png')))]), 'start.png');
    const up = await (await fetch(`${base}/upload/image`, { method: 'POST', body: form })).json() as { name: string };

    client = new Client({ api_host: `127.0.0.1:${server.port}`, WebSocket });
    await client.connect({ timeout_ms: 10_000 });
    const defs = await client.getNodeDefs() as unknown as Record<string, NodeInfo>;
    const out = (type: string, name: string): number => defs[type]!.output_name.indexOf(name);
    const size = { width: 96, height: 64 };
    const prompt = {
      1: { class_type: 'LoadModels', inputs: { set: 'tiny' } },
      2: { class_type: 'TextEncode', inputs: { models: ['1', out('LoadModels', 'models')], prompt: 'a character in the snow', clip_prompt: 'snow, winter' } },
      3: { class_type: 'TextEncode', inputs: { models: ['1', 0], prompt: 'blurry' } },
      4: { class_type: 'LoadImage', inputs: { path: up.name, ...size } },
      5: { class_type: 'VAEEncode', inputs: { models: ['1', 0], image: ['4', out('LoadImage', 'image')], sample: true, seed: 3 } },
      6: {
        class_type: 'DiTSample',
        inputs: {
          models: ['1', 0], conditioning: ['2', 0], negative: ['3', 0], init: ['5', out('VAEEncode', 'latent')],
          seed: 10, steps: 4, ...size, true_cfg: 2.5, batch_size: 2, denoise: 0.5,
        },
      },
      7: { class_type: 'Decode', inputs: { models: ['1', 0], latent: ['6', out('DiTSample', 'latent')] } },
      8: { class_type: 'SaveImage', inputs: { image: ['7', out('Decode', 'image')], filename_prefix: 'comfy_options' } },
    };
    const result = await client.enqueue(prompt);
    const urls = result.images.filter((i) => i.type === 'url');
    expect(urls).toHaveLength(2);
    const seeds: number[] = [];
    for (const img of urls) {
      const png = new Uint8Array(await (await fetch(img.data as string)).arrayBuffer());
      const meta = await sharp(png).metadata();
      expect([meta.width, meta.height]).toEqual([size.width, size.height]);
      const wf = JSON.parse(readPngText(png).workflow!) as { nodes: Record<string, { inputs: Record<string, unknown> }> };
      expect(wf.nodes['6']!.inputs.batch_size).toBe(1);
      seeds.push(wf.nodes['6']!.inputs.seed as number);
    }
    expect(seeds).toEqual([10, 11]);
  });
});
