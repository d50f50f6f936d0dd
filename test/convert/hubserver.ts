// A local stand-in for the Hugging Face hub, serving the routes @huggingface/hub calls:
//   GET /api/models/<owner>/<name>/tree/<rev>?recursive=true  -> JSON listing (paginated with a Link header)
//   GET /<owner>/<name>/resolve/<rev>/<path>                   -> file bytes, with Range, ETag / X-Linked-ETag
// Gated repositories answer 401 without "Authorization: Bearer <token>". Faults can be injected: cut a
// download after N bytes (once), or serve corrupted bytes.
import { createHash } from 'node:crypto';
import { type IncomingMessage, type Server, type ServerResponse, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface HubFile {
  data: Buffer;
  /** Stored with git LFS (listing gives its sha256; ETag is the sha256). */
  lfs: boolean;
}

export interface HubRepoContent {
  files: Map<string, HubFile>;
  gated?: boolean;
}

export interface HubServer {
  url: string;
  /** Every request: method, path, Range header. */
  log: { method: string; path: string; range?: string }[];
  /** Cut the response of this "<repo>/<path>" after so many bytes of body, once. */
  cutAfter: Map<string, number>;
  /** Serve these "<repo>/<path>" with one flipped byte. */
  corrupt: Set<string>;
  close(): Promise<void>;
}

const PAGE = 4;
const gitSha1 = (b: Buffer) => createHash('sha1').update(`blob ${b.length}\0`).update(b).digest('hex');
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

export async function startHubServer(repos: Map<string, HubRepoContent>, token: string): Promise<HubServer> {
  const log: HubServer['log'] = [];
  const cutAfter = new Map<string, number>();
  const corrupt = new Set<string>();
  let base = '';

  const json = (res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) => {
    res.writeHead(status, { 'Content-Type': 'application/json', ...headers });
    res.end(JSON.stringify(body));
  };

  const handle = (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', base);
    log.push({ method: req.method ?? 'GET', path: url.pathname, range: req.headers.range });
    const tree = /^\/api\/models\/([^/]+\/[^/]+)\/tree\/([^/]+)\/?(.*)$/.exec(url.pathname);
    const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname);
    const repoName = tree?.[1] ?? resolve?.[1];
    const repo = repoName ? repos.get(repoName) : undefined;
    if (!repo) return json(res, 404, { error: 'Repository not found' }, { 'X-Error-Code': 'RepoNotFound' });
    if (repo.gated && req.headers.authorization !== `Bearer ${token}`) {
      return json(res, 401, { error: `Access to model ${repoName} is restricted. You must have access to it and be authenticated to access it.` }, { 'X-Error-Code': 'GatedRepo' });
    }
    if (tree) {
      const entries = [...repo.files].map(([path, f]) => ({
        type: 'file', path, size: f.data.length, oid: gitSha1(f.data),
        ...(f.lfs ? { lfs: { oid: sha256(f.data), size: f.data.length, pointerSize: 130 } } : {}),
      }));
      const dirs = new Set([...repo.files.keys()].filter((p) => p.includes('/')).map((p) => p.slice(0, p.lastIndexOf('/'))));
      const all = [...[...dirs].map((path) => ({ type: 'directory', path, size: 0, oid: '0'.repeat(40) })), ...entries];
      const page = Number(url.searchParams.get('cursor') ?? 0);
      const next = page + PAGE < all.length ? { Link: `<${base}${url.pathname}?recursive=true&expand=false&cursor=${page + PAGE}>; rel="next"` } : undefined;
      return json(res, 200, all.slice(page, page + PAGE), next);
    }
    const path = decodeURIComponent(resolve![3]!);
    const f = repo.files.get(path);
    if (!f) return json(res, 404, { error: 'Entry not found' }, { 'X-Error-Code': 'EntryNotFound' });
    const key = `${repoName}/${path}`;
    let data = f.data;
    if (corrupt.has(key)) {
      data = Buffer.from(data);
      data[data.length >> 1] ^= 0xff;
    }
    const etag = `"${f.lfs ? sha256(f.data) : gitSha1(f.data)}"`;
    const headers: Record<string, string> = { 'Accept-Ranges': 'bytes', ETag: etag, 'Content-Type': 'application/octet-stream' };
    if (f.lfs) headers['X-Linked-ETag'] = etag;
    let start = 0;
    let end = data.length - 1;
    let status = 200;
    const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
    if (m) {
      start = Number(m[1]);
      end = m[2] ? Math.min(Number(m[2]), end) : end;
      status = 206;
      headers['Content-Range'] = `bytes ${start}-${end}/${data.length}`;
    }
    const body = data.subarray(start, end + 1);
    headers['Content-Length'] = String(body.length);
    res.writeHead(status, headers);
    const cut = cutAfter.get(key);
    if (cut !== undefined && body.length > cut) {
      cutAfter.delete(key);
      res.write(body.subarray(0, cut), () => res.destroy());
      return;
    }
    res.end(body);
  };

  const server: Server = createServer(handle);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url: base, log, cutAfter, corrupt,
    close: () => new Promise<void>((r) => {
      server.closeAllConnections();
      server.close(() => r());
    }),
  };
}
