// The server's HTTP side: node catalogue, the inputs folder listing, image upload and view URLs.
import type { CatalogNode } from '../protocol.ts';

async function getJson(url: string): Promise<unknown> {
  const res = await fetch(url, { headers: { accept: 'application/json' } });
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
  return res.json();
}

function pickArray(body: unknown, ...keys: string[]): unknown[] {
  if (Array.isArray(body)) return body;
  if (body && typeof body === 'object') {
    for (const k of keys) {
      const v = (body as Record<string, unknown>)[k];
      if (Array.isArray(v)) return v;
    }
  }
  return [];
}

/** The catalogue over HTTP (the WebSocket `catalog` request is preferred; this is the fallback). */
export async function fetchCatalog(): Promise<CatalogNode[]> {
  return pickArray(await getJson('/api/nodes'), 'nodes') as CatalogNode[];
}

/** Path of an uploaded or listed file, as an image parameter takes it (relative to the inputs folder). */
function fileValue(item: unknown): string | undefined {
  if (typeof item === 'string') return item;
  if (!item || typeof item !== 'object') return undefined;
  const o = item as Record<string, unknown>;
  if (typeof o.path === 'string') return o.path;
  const name = o.name ?? o.filename;
  if (typeof name !== 'string') return undefined;
  return typeof o.subfolder === 'string' && o.subfolder ? `${o.subfolder}/${name}` : name;
}

const IMAGE_FILE = /\.(png|jpe?g|webp|avif|tiff?|gif)$/i;

/** Images in the server's inputs folder; empty when the server does not list them. */
export async function listInputImages(): Promise<string[]> {
  try {
    const items = pickArray(await getJson('/api/inputs'), 'files', 'items', 'images');
    return items.map(fileValue).filter((v): v is string => !!v && IMAGE_FILE.test(v));
  } catch {
    return [];
  }
}

/** Uploads an image into the inputs folder (multipart field `image`); resolves with its parameter value. */
export async function uploadImage(file: Blob, filename: string): Promise<string> {
  const form = new FormData();
  form.append('image', file, filename);
  const res = await fetch('/api/upload', { method: 'POST', body: form });
  const text = await res.text();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    body = undefined;
  }
  if (!res.ok) {
    const message = body && typeof body === 'object' && typeof (body as { message?: unknown }).message === 'string' ? (body as { message: string }).message : text;
    throw new Error(`upload refused: ${message || `HTTP ${res.status}`}`);
  }
  const value = fileValue(body);
  if (!value) throw new Error('upload: the server did not say where the file went');
  return value;
}

/** LoRA files in the server's loras folder; empty when the server does not list them. */
export async function listLoraFiles(): Promise<string[]> {
  try {
    return pickArray(await getJson('/api/loras'), 'files').filter((v): v is string => typeof v === 'string');
  } catch {
    return [];
  }
}

/** Uploads a LoRA file into the loras folder; resolves with its lora_name value. */
export async function uploadLora(file: Blob, filename: string): Promise<string> {
  const res = await fetch(`/api/loras/${encodeURIComponent(filename)}`, { method: 'PUT', body: file });
  const body = (await res.json().catch(() => ({}))) as { name?: unknown; message?: unknown };
  if (!res.ok || typeof body.name !== 'string') throw new Error(`upload refused: ${typeof body.message === 'string' ? body.message : `HTTP ${res.status}`}`);
  return body.name;
}

/** URL of a file in the inputs folder, for thumbnails. */
export function inputViewUrl(path: string): string {
  const slash = path.lastIndexOf('/');
  const params = new URLSearchParams({ filename: path.slice(slash + 1), subfolder: slash < 0 ? '' : path.slice(0, slash), type: 'input' });
  return `/api/view?${params}`;
}
