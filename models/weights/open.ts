// Opens any supported checkpoint as a WeightSource, choosing the reader by content rather than by file name:
// a safetensors file, a torch.save zip archive (.bin/.pt/.pth), or a sharded Hugging Face checkpoint (its
// `*.index.json`, or the folder that holds it) seen as one merged source, or a GGUF file (ComfyUI-GGUF,
// llama.cpp), its blocks decoded to float32.
import { closeSync, existsSync, openSync, readFileSync, readSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { type WeightSource, mergeSources } from './source.ts';
import { SafetensorsFile } from './safetensors.ts';
import { PytorchCheckpoint } from './pytorch.ts';
import { GGUF_MAGIC, GgufFile } from './gguf.ts';

export type WeightFormat = 'safetensors' | 'pytorch-zip' | 'index' | 'gguf';

/** Opens a checkpoint file, a shard index, or a folder with one checkpoint (sharded or not). */
export function openWeights(path: string): WeightSource {
  if (!existsSync(path)) throw new Error(`${path}: no such file or directory`);
  if (statSync(path).isDirectory()) return openFolder(path);
  switch (detectFormat(path)) {
    case 'safetensors': return openSafetensors(path);
    case 'pytorch-zip': return new PytorchCheckpoint(path);
    case 'index': return openIndex(path);
    case 'gguf': return new GgufFile(path);
  }
}

/** Sniffs the first bytes of a file. */
export function detectFormat(path: string): WeightFormat {
  const head = Buffer.alloc(16);
  const fd = openSync(path, 'r');
  let n: number;
  try {
    n = readSync(fd, head, 0, head.length, 0);
  } finally {
    closeSync(fd);
  }
  if (n === 0) throw new Error(`${path}: the file is empty`);
  if (n >= 4 && head.readUInt32LE(0) === 0x04034b50) return 'pytorch-zip';
  if (n >= 4 && head.readUInt32LE(0) === GGUF_MAGIC) return 'gguf';
  // torch.save before 1.6 wrote a bare pickle stream: PROTO 2 then the magic number as LONG1.
  if (head[0] === 0x80 && head[1]! <= 5 && head[2] === 0x8a) {
    throw new Error(`${path}: legacy (pre-1.6, non-zip) torch.save format is not supported; re-save it with a newer torch`);
  }
  // safetensors: a u64 header length (small, so its high bytes are zero, unlike JSON text), then '{'.
  if (n >= 9 && head[8] === 0x7b && head.readBigUInt64LE(0) < 2n ** 40n) return 'safetensors';
  if (head[0] === 0x7b) return 'index'; // '{': a JSON shard index
  if (n < 9) throw new Error(`${path}: only ${n} bytes (truncated?)`);
  throw new Error(`${path}: unknown weight format (neither safetensors, GGUF nor a torch.save zip archive)`);
}

function openSafetensors(path: string): WeightSource {
  const size = statSync(path).size;
  const fd = openSync(path, 'r');
  const head = Buffer.alloc(8);
  try {
    readSync(fd, head, 0, 8, 0);
  } finally {
    closeSync(fd);
  }
  const headerEnd = 8 + Number(head.readBigUInt64LE(0));
  if (headerEnd > size) throw new Error(`${path}: truncated safetensors file (its header ends at byte ${headerEnd}, the file has ${size})`);
  try {
    return new SafetensorsFile(path);
  } catch (err) {
    throw new Error(`${(err as Error).message} (truncated or corrupt file?)`);
  }
}

/** A folder: its shard index if it has one, else its single checkpoint file. */
function openFolder(dir: string): WeightSource {
  const names = readdirSync(dir).sort();
  const pick = (suffix: string): string[] => names.filter((n) => n.endsWith(suffix));
  const indexes = [...pick('.safetensors.index.json'), ...pick('.bin.index.json')];
  if (indexes.length) return openIndex(join(dir, indexes[0]!));
  for (const suffix of ['.safetensors', '.bin', '.pt', '.pth', '.gguf']) {
    const files = pick(suffix);
    if (files.length === 1) return openWeights(join(dir, files[0]!));
    if (files.length > 1) {
      throw new Error(`${dir}: several ${suffix} files (${files.join(', ')}) and no *.index.json to say how they combine`);
    }
  }
  throw new Error(`${dir}: no checkpoint found (expected *.safetensors, *.bin or a *.index.json)`);
}

/** A Hugging Face shard index: {"weight_map": {key: shard file}}, the shards next to it. */
function openIndex(path: string): WeightSource {
  let weightMap: Record<string, string>;
  try {
    const json = JSON.parse(readFileSync(path, 'utf8')) as { weight_map?: Record<string, string> };
    if (!json.weight_map || typeof json.weight_map !== 'object') throw new Error('it has no "weight_map"');
    weightMap = json.weight_map;
  } catch (err) {
    throw new Error(`${path}: not a valid shard index: ${(err as Error).message}`);
  }
  const dir = dirname(resolve(path));
  const shards = [...new Set(Object.values(weightMap))];
  const sources: WeightSource[] = [];
  try {
    for (const shard of shards) {
      const file = join(dir, shard);
      if (!existsSync(file)) throw new Error(`${path}: shard '${shard}' is missing`);
      const source = openWeights(file);
      sources.push(source);
      const have = new Set(source.keys());
      const absent = Object.keys(weightMap).find((k) => weightMap[k] === shard && !have.has(k));
      if (absent) throw new Error(`${path}: tensor '${absent}' is mapped to '${shard}' but that shard lacks it`);
    }
  } catch (err) {
    sources.forEach((s) => s.close?.());
    throw err;
  }
  return mergeSources(sources);
}
