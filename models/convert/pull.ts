// `charflow models pull`: downloads the official checkpoints from the Hugging Face hub (or a mirror:
// --endpoint / HF_ENDPOINT) into <models>/downloads/<owner>--<name>/, then converts them.
// Only the files the converter reads are fetched (e.g. FLUX.1-dev's diffusers folders, not the 24 GB
// flux1-dev.safetensors beside them; safetensors rather than .bin when a repo has both).
// Resumable: a finished file whose size and etag match the hub is skipped; an unfinished one (*.partial,
// with the etag it was started from) is continued with a Range request, or restarted if the file changed.
// Verified: LFS files against the sha256 the hub lists for them, small files against their git blob id.
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { type ListFileEntry, downloadFile, fileDownloadInfo, listFiles } from '@huggingface/hub';

export interface HubRepo {
  repo: string;
  /** Needs an access token (licence accepted on the hub page). */
  gated: boolean;
  /** Which listed files to fetch. */
  select: (files: readonly ListFileEntry[]) => ListFileEntry[];
}

/** Keeps a folder's config/tokenizer files and its weights, preferring safetensors over .bin. */
function pickFolder(files: readonly ListFileEntry[]): ListFileEntry[] {
  const hasSafetensors = files.some((f) => f.path.endsWith('.safetensors'));
  return files.filter((f) => {
    const name = f.path.split('/').pop()!;
    if (/\.(safetensors|safetensors\.index\.json)$/.test(name)) return true;
    if (/\.(bin|bin\.index\.json)$/.test(name)) return !hasSafetensors;
    return /^(config|preprocessor_config|tokenizer|tokenizer_config|special_tokens_map|vocab)\.json$|^merges\.txt$|^spiece\.model$/.test(name);
  });
}

/** Files of `folder` (no deeper), '' for the top level. */
function inFolder(files: readonly ListFileEntry[], folder: string): ListFileEntry[] {
  return files.filter((f) => f.type === 'file' && (folder ? f.path.startsWith(`${folder}/`) && !f.path.slice(folder.length + 1).includes('/') : !f.path.includes('/')));
}

export const FLUX_REPO = 'black-forest-labs/FLUX.1-dev';
export const SIGLIP_REPO = 'google/siglip-so400m-patch14-384';
export const DINOV2_REPO = 'facebook/dinov2-giant';
export const ADAPTER_REPO = 'tencent/InstantCharacter';
export const ADAPTER_FILE = 'instantcharacter_ip-adapter.bin';

export const OFFICIAL_REPOS: readonly HubRepo[] = [
  {
    repo: FLUX_REPO, gated: true,
    select: (files) => [
      ...files.filter((f) => f.path === 'model_index.json'),
      ...['transformer', 'vae', 'text_encoder', 'text_encoder_2', 'tokenizer', 'tokenizer_2'].flatMap((d) => pickFolder(inFolder(files, d))),
    ],
  },
  { repo: SIGLIP_REPO, gated: false, select: (files) => pickFolder(inFolder(files, '')) },
  { repo: DINOV2_REPO, gated: false, select: (files) => pickFolder(inFolder(files, '')) },
  { repo: ADAPTER_REPO, gated: false, select: (files) => files.filter((f) => f.path === ADAPTER_FILE) },
];

export interface PullOptions {
  /** <models>/downloads is where files go. */
  modelsDir: string;
  token?: string;
  /** Hub URL (default https://huggingface.co, or HF_ENDPOINT). */
  endpoint?: string;
  repos?: readonly HubRepo[];
  onEvent?: (e: PullEvent) => void;
}

export type PullEvent =
  | { type: 'repo'; repo: string; files: number; bytes: number }
  | { type: 'file'; repo: string; path: string; size: number; action: 'skip' | 'download' | 'resume'; from: number }
  | { type: 'bytes'; repo: string; path: string; done: number; size: number }
  | { type: 'verified'; repo: string; path: string };

export const repoFolder = (modelsDir: string, repo: string): string => join(modelsDir, 'downloads', repo.replace('/', '--'));

/** The token from the option, HF_TOKEN / HUGGING_FACE_HUB_TOKEN, or the huggingface-cli login file. */
export function resolveToken(token?: string, env: Readonly<Record<string, string | undefined>> = process.env): string | undefined {
  const t = token ?? env['HF_TOKEN'] ?? env['HUGGING_FACE_HUB_TOKEN'];
  if (t) return t.trim();
  const file = join(env['HF_HOME'] ?? join(homedir(), '.cache', 'huggingface'), 'token');
  return existsSync(file) ? readFileSync(file, 'utf8').trim() || undefined : undefined;
}

interface Record_ {
  size: number;
  etag: string;
}
type DownloadRecords = Record<string, Record_>;
const RECORDS = '.charflow-downloads.json';

function readRecords(dir: string): DownloadRecords {
  try {
    return JSON.parse(readFileSync(join(dir, RECORDS), 'utf8')) as DownloadRecords;
  } catch {
    return {};
  }
}

function writeRecords(dir: string, records: DownloadRecords): void {
  writeFileSync(join(dir, `${RECORDS}.partial`), JSON.stringify(records, null, 2));
  renameSync(join(dir, `${RECORDS}.partial`), join(dir, RECORDS));
}

/** sha256 of a file (LFS oid) or sha1 of its git blob ("blob <size>\0" + content), streamed. */
async function digestFile(path: string, kind: 'sha256' | 'gitsha1'): Promise<string> {
  const hash = createHash(kind === 'sha256' ? 'sha256' : 'sha1');
  if (kind === 'gitsha1') hash.update(`blob ${statSync(path).size}\0`);
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

async function verify(path: string, entry: ListFileEntry): Promise<string | undefined> {
  if (entry.lfs?.oid) {
    const got = await digestFile(path, 'sha256');
    return got === entry.lfs.oid ? undefined : `sha256 ${got} != ${entry.lfs.oid}`;
  }
  if (entry.oid && !entry.xetHash) {
    const got = await digestFile(path, 'gitsha1');
    return got === entry.oid ? undefined : `git blob id ${got} != ${entry.oid}`;
  }
  return undefined;
}

/** The host of the hub URL (for messages). */
function hubHost(hubUrl: string | undefined): string {
  try {
    return new URL(hubUrl ?? 'https://huggingface.co').host;
  } catch {
    return hubUrl ?? 'huggingface.co';
  }
}

function hubError(err: unknown, repo: string, gated: boolean, token: string | undefined, hubUrl?: string): Error {
  const status = (err as { statusCode?: number }).statusCode;
  if (status === undefined) {
    // No HTTP answer at all: the network (DNS, refused, offline, proxy), not the hub.
    const cause = (err as { cause?: { code?: string; message?: string } }).cause;
    const why = cause?.code ?? cause?.message ?? (err as Error).message;
    return new Error(`${repo}: cannot reach ${hubHost(hubUrl)} (${why}); check the network, or point --endpoint (or HF_ENDPOINT) at a reachable hub or mirror`);
  }
  if ((status === 401 || status === 403) && gated) {
    return new Error(`${repo} is gated: accept its licence on its hub page, then pass --token hf_... (or set HF_TOKEN)${token ? '; the token given was refused' : ''}`);
  }
  if (status === 401 || status === 403) return new Error(`${repo}: access refused (${status}); check --token`);
  if (status === 404) return new Error(`${repo}: not found on the hub`);
  return new Error(`${repo}: ${(err as Error).message}`);
}

/** Streams `body` to `path`, appending or truncating, reporting bytes; resolves with the bytes written. */
async function writeStream(body: ReadableStream<Uint8Array>, path: string, append: boolean, onChunk: (n: number) => void): Promise<void> {
  const out = createWriteStream(path, { flags: append ? 'a' : 'w' });
  const done = new Promise<void>((res, rej) => {
    out.on('finish', res);
    out.on('error', rej);
  });
  try {
    const reader = body.getReader();
    for (;;) {
      const { value, done: end } = await reader.read();
      if (end) break;
      if (!out.write(value)) await new Promise<void>((r) => out.once('drain', () => r()));
      onChunk(value.byteLength);
    }
  } finally {
    out.end();
    await done;
  }
}

interface FileContext {
  repo: string;
  dir: string;
  hubUrl?: string;
  token?: string;
  records: DownloadRecords;
  emit: (e: PullEvent) => void;
}

async function pullFile(ctx: FileContext, entry: ListFileEntry): Promise<void> {
  const dest = join(ctx.dir, entry.path);
  const partial = `${dest}.partial`;
  const partialInfo = `${partial}.json`;
  mkdirSync(dirname(dest), { recursive: true });
  const info = await fileDownloadInfo({ repo: ctx.repo, path: entry.path, hubUrl: ctx.hubUrl, accessToken: ctx.token });
  if (!info) throw new Error(`${ctx.repo}: ${entry.path} is listed but cannot be downloaded`);

  const rec = ctx.records[entry.path];
  if (existsSync(dest) && statSync(dest).size === info.size) {
    // Finished before: trust our record of the etag, else check the content once.
    if ((rec && rec.etag === info.etag) || (!rec && !(await verify(dest, entry)))) {
      ctx.records[entry.path] = { size: info.size, etag: info.etag };
      ctx.emit({ type: 'file', repo: ctx.repo, path: entry.path, size: info.size, action: 'skip', from: info.size });
      return;
    }
  }
  let offset = 0;
  if (existsSync(partial) && existsSync(partialInfo)) {
    const started = JSON.parse(readFileSync(partialInfo, 'utf8')) as { etag?: string };
    const have = statSync(partial).size;
    if (started.etag === info.etag && have < info.size && entry.lfs) offset = have;
  }
  writeFileSync(partialInfo, JSON.stringify({ etag: info.etag }));
  ctx.emit({ type: 'file', repo: ctx.repo, path: entry.path, size: info.size, action: offset ? 'resume' : 'download', from: offset });

  let body: ReadableStream<Uint8Array>;
  if (info.xet) {
    // Xet-backed files: the hub library reconstructs the byte range.
    const blob = await downloadFile({ repo: ctx.repo, path: entry.path, hubUrl: ctx.hubUrl, accessToken: ctx.token, downloadInfo: info });
    if (!blob) throw new Error(`${ctx.repo}: ${entry.path} disappeared`);
    body = blob.slice(offset).stream() as ReadableStream<Uint8Array>;
  } else {
    const res = await fetch(info.url, {
      headers: { ...(offset ? { Range: `bytes=${offset}-` } : {}), ...(ctx.token ? { Authorization: `Bearer ${ctx.token}` } : {}) },
    });
    if (!res.ok || !res.body) throw new Error(`${ctx.repo}: downloading ${entry.path} failed with HTTP ${res.status}`);
    if (offset && res.status !== 206) offset = 0; // the server ignored the range: start over
    body = res.body;
  }
  let done = offset;
  try {
    await writeStream(body, partial, offset > 0, (n) => {
      done += n;
      ctx.emit({ type: 'bytes', repo: ctx.repo, path: entry.path, done, size: info.size });
    });
  } catch (err) {
    throw new Error(`${ctx.repo}: download of ${entry.path} interrupted after ${done} of ${info.size} bytes (${(err as Error).message}); run the command again to continue`);
  }
  const size = statSync(partial).size;
  if (size !== info.size) throw new Error(`${ctx.repo}: ${entry.path} ended after ${size} of ${info.size} bytes; run again to continue`);
  const bad = await verify(partial, entry);
  if (bad) {
    rmSync(partial, { force: true });
    rmSync(partialInfo, { force: true });
    throw new Error(`${ctx.repo}: ${entry.path} is corrupt (${bad}); it was deleted, run again to download it anew`);
  }
  renameSync(partial, dest);
  rmSync(partialInfo, { force: true });
  ctx.records[entry.path] = { size: info.size, etag: info.etag };
  writeRecords(ctx.dir, ctx.records);
  ctx.emit({ type: 'verified', repo: ctx.repo, path: entry.path });
}

/** Downloads the repositories' selected files; returns each repo's local folder. */
export async function pullRepos(opts: PullOptions): Promise<Record<string, string>> {
  const hubUrl = opts.endpoint ?? process.env['HF_ENDPOINT'] ?? undefined;
  const token = resolveToken(opts.token);
  if (token && !token.startsWith('hf_')) throw new Error('the access token must start with "hf_" (create one in your hub account settings)');
  const emit = opts.onEvent ?? (() => {});
  const folders: Record<string, string> = {};
  for (const r of opts.repos ?? OFFICIAL_REPOS) {
    let listing: ListFileEntry[] = [];
    try {
      for await (const f of listFiles({ repo: r.repo, recursive: true, hubUrl, accessToken: token })) listing.push(f);
    } catch (err) {
      throw hubError(err, r.repo, r.gated, token, hubUrl);
    }
    listing = r.select(listing);
    if (!listing.length) throw new Error(`${r.repo}: none of the expected files are in the repository`);
    const dir = repoFolder(opts.modelsDir, r.repo);
    mkdirSync(dir, { recursive: true });
    emit({ type: 'repo', repo: r.repo, files: listing.length, bytes: listing.reduce((n, f) => n + f.size, 0) });
    const ctx: FileContext = { repo: r.repo, dir, hubUrl, token, records: readRecords(dir), emit };
    for (const entry of listing) {
      try {
        await pullFile(ctx, entry);
      } catch (err) {
        if ((err as { statusCode?: number }).statusCode) throw hubError(err, r.repo, r.gated, token, hubUrl);
        throw err;
      }
    }
    writeRecords(dir, ctx.records);
    folders[r.repo] = dir;
  }
  return folders;
}
