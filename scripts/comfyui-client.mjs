// Drive charflow from a script, as a stock ComfyUI client would: upload your character picture,
// queue the InstantCharacter pipeline, follow its progress and save the image.
//   npm install ws @stable-canvas/comfyui-client
//   node comfyui-client.mjs my-character.png "a character is riding a bike in snow"
// CHARFLOW_HOST (default 127.0.0.1:8188) and CHARFLOW_TOKEN (when the server was started with --token)
// say where the server is; CHARFLOW_SET picks the model set (default tiny: its pictures are noise).
import WebSocket from 'ws';
import { readFileSync, writeFileSync } from 'node:fs';
import { basename } from 'node:path';
import { Client, plugins } from '@stable-canvas/comfyui-client';

const host = process.env.CHARFLOW_HOST ?? '127.0.0.1:8188';
const token = process.env.CHARFLOW_TOKEN;
const set = process.env.CHARFLOW_SET ?? 'tiny';
const [picture = 'workflows/assets/character.png', text = 'a character is riding a bike in snow'] = process.argv.slice(2);

// 1. Upload the picture into the server's inputs folder (multipart field "image", as ComfyUI's /upload/image).
const form = new FormData();
form.append('image', new Blob([readFileSync(picture)]), basename(picture));
form.append('overwrite', 'true');
const headers = token ? { authorization: `Bearer ${token}` } : {};
const upload = await fetch(`http://${host}/upload/image`, { method: 'POST', body: form, headers });
if (!upload.ok) throw new Error(`upload failed: ${upload.status} ${await upload.text()}`);
const { name, subfolder } = await upload.json();

// 2. Connect; with a token, every request and the WebSocket carry it (?token=).
const client = new Client({ api_host: host, WebSocket }); // Node 20 has no global WebSocket
if (token) client.use(new plugins.LoginAuthPlugin({ token }));
await client.connect();

// 3. The pipeline in ComfyUI's API format: {id: {class_type, inputs}}; a link is [source id, output index],
// index i = the i-th output_name of that node type in GET /object_info.
const prompt = {
  1: { class_type: 'LoadModels', inputs: { set } },
  2: { class_type: 'LoadCharacter', inputs: { path: subfolder ? `${subfolder}/${name}` : name } },
  3: { class_type: 'SigLIPEncode', inputs: { models: ['1', 0], image: ['2', 0] } },
  4: { class_type: 'DINOv2Encode', inputs: { models: ['1', 0], image: ['2', 0] } },
  5: { class_type: 'AdapterFuse', inputs: { models: ['1', 0], siglip: ['3', 0], dinov2: ['4', 0] } },
  6: { class_type: 'TextEncode', inputs: { models: ['1', 0], prompt: text } },
  // Real checkpoints: width and height 1024, 28 steps.
  7: { class_type: 'DiTSample', inputs: { models: ['1', 0], conditioning: ['6', 0], character: ['5', 0], seed: 42, steps: 8, width: 512, height: 512 } },
  8: { class_type: 'Decode', inputs: { models: ['1', 0], latent: ['7', 0] } },
  9: { class_type: 'SaveImage', inputs: { image: ['8', 0], filename_prefix: 'from-script' } },
};
const result = await client.enqueue(prompt, {
  progress: ({ node, value, max }) => console.log(`node ${node}: ${value}/${max}`),
});

// 4. Fetch the saved image (GET /view) next to the script.
for (const img of result.images) {
  if (img.type !== 'url') continue;
  const res = await fetch(img.data, { headers });
  writeFileSync('from-script.png', Buffer.from(await res.arrayBuffer()));
  console.log('wrote from-script.png');
}
client.close();
