// Who may talk to the server. On loopback without a token, only pages served by this server (same
// origin) may change state, and the Host header must name this machine (a DNS-rebinding page on
// evil.example resolving to 127.0.0.1 sends Host: evil.example and is refused). Any other address
// requires a token, checked on every HTTP request and WebSocket upgrade.
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { hostname, networkInterfaces } from 'node:os';
import { isIP } from 'node:net';

export interface GuardOptions {
  /** The address the server listens on. */
  host: string;
  /** The actual port (for the cookie name). */
  port: number;
  token?: string;
  /** Workers' own token (scale-out): the only credential for /ws/worker and /api/worker/*. */
  workerToken?: string;
  /** More Host names to accept (e.g. a reverse proxy's name). */
  allowedHosts?: readonly string[];
}

/** A refused request: status and a one-line reason. */
export interface Refusal {
  status: 401 | 403;
  code: 'forbidden_host' | 'forbidden_origin' | 'unauthorized';
  message: string;
}

const WILDCARDS = new Set(['0.0.0.0', '::', '[::]', '']);

function stripBrackets(h: string): string {
  return h.startsWith('[') && h.endsWith(']') ? h.slice(1, -1) : h;
}

/** 127.0.0.0/8, ::1 and localhost. */
export function isLoopbackHost(host: string): boolean {
  const h = stripBrackets(host.trim().toLowerCase());
  if (h === 'localhost' || h.endsWith('.localhost')) return true;
  if (isIP(h) === 4) return h.startsWith('127.');
  if (h === '::1' || h === '0:0:0:0:0:0:0:1') return true;
  if (h.startsWith('::ffff:')) return h.slice(7).startsWith('127.');
  return false;
}

/** The host name of a Host header value (`example:8188`, `[::1]:8188`), lower case, no brackets. */
export function hostnameOf(header: string): string {
  const h = header.trim().toLowerCase();
  if (h.startsWith('[')) {
    const end = h.indexOf(']');
    return end < 0 ? h : h.slice(1, end);
  }
  const colon = h.indexOf(':');
  // More than one colon without brackets: a bare IPv6 address.
  if (colon >= 0 && h.indexOf(':', colon + 1) >= 0) return h;
  return colon < 0 ? h : h.slice(0, colon);
}

function digest(s: string): Buffer {
  return createHash('sha256').update(s, 'utf8').digest();
}

/** Cookie header -> map (first value wins). */
function parseCookies(header: string | undefined): Map<string, string> {
  const out = new Map<string, string>();
  if (!header) return out;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq < 0) continue;
    const k = part.slice(0, eq).trim();
    if (!out.has(k)) {
      try {
        out.set(k, decodeURIComponent(part.slice(eq + 1).trim()));
      } catch {
        /* a malformed cookie is ignored */
      }
    }
  }
  return out;
}

export class Guard {
  readonly token: string | undefined;
  /** Cookies are not port-scoped: the name carries the port so two servers on one host do not clash. */
  cookieName: string;
  private readonly tokenDigest: Buffer | undefined;
  private readonly workerDigest: Buffer | undefined;
  private readonly hosts: Set<string>;

  constructor(opts: GuardOptions) {
    this.token = opts.token === undefined || opts.token === '' ? undefined : opts.token;
    this.tokenDigest = this.token === undefined ? undefined : digest(this.token);
    this.workerDigest = opts.workerToken === undefined || opts.workerToken === '' ? undefined : digest(opts.workerToken);
    this.cookieName = `charflow_token_${opts.port}`;
    this.hosts = new Set(['localhost', '127.0.0.1', '::1']);
    const bound = stripBrackets(opts.host.trim().toLowerCase());
    if (WILDCARDS.has(bound)) {
      // Listening everywhere: any address of this machine, and its name, may be in the Host header.
      for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) this.hosts.add(a.address.toLowerCase());
      const name = hostname().toLowerCase();
      this.hosts.add(name);
      this.hosts.add(`${name}.local`);
    } else {
      this.hosts.add(bound);
    }
    for (const h of opts.allowedHosts ?? []) this.hosts.add(stripBrackets(h.trim().toLowerCase()));
  }

  /** Called once the real port is known (port 0 picks one at listen time). */
  setPort(port: number): void {
    this.cookieName = `charflow_token_${port}`;
  }

  /** The Host header must name this server (DNS-rebinding defence). */
  checkHost(req: IncomingMessage): Refusal | undefined {
    const header = req.headers.host;
    if (!header) return { status: 403, code: 'forbidden_host', message: 'the request has no Host header' };
    const name = hostnameOf(header);
    if (this.hosts.has(name) || isLoopbackHost(name)) return undefined;
    return {
      status: 403,
      code: 'forbidden_host',
      message: `Host "${header}" is not this server's name; requests must address it as localhost or its own address`,
    };
  }

  /**
   * Browsers send Origin on WebSocket upgrades and state-changing requests: it must be this server
   * itself. `Origin: null` (sandboxed frames, file: pages) and other sites are refused. A request
   * without Origin does not come from a web page (curl, scripts) and passes.
   */
  checkOrigin(req: IncomingMessage): Refusal | undefined {
    const origin = req.headers.origin;
    if (origin === undefined) return undefined;
    const refuse = (why: string): Refusal => ({ status: 403, code: 'forbidden_origin', message: why });
    if (origin === 'null') return refuse('requests from pages with Origin "null" are refused');
    let url: URL;
    try {
      url = new URL(origin);
    } catch {
      return refuse(`Origin "${origin}" is not a valid origin`);
    }
    const host = req.headers.host ?? '';
    if ((url.protocol === 'http:' || url.protocol === 'https:') && url.host.toLowerCase() === host.toLowerCase()) return undefined;
    return refuse(`cross-origin request from ${origin} refused; only pages served by this server may use it`);
  }

  /** The token, when one is set: Authorization: Bearer, ?token= or the cookie set by ?token=. */
  checkToken(req: IncomingMessage): Refusal | undefined {
    if (!this.tokenDigest) return undefined;
    const candidates: string[] = [];
    const auth = req.headers.authorization;
    if (auth?.toLowerCase().startsWith('bearer ')) candidates.push(auth.slice(7).trim());
    const q = this.queryToken(req);
    if (q !== undefined) candidates.push(q);
    const c = parseCookies(req.headers.cookie).get(this.cookieName);
    if (c !== undefined) candidates.push(c);
    for (const t of candidates) if (timingSafeEqual(digest(t), this.tokenDigest)) return undefined;
    return {
      status: 401,
      code: 'unauthorized',
      message: candidates.length
        ? 'wrong token'
        : 'this server requires a token: send "Authorization: Bearer <token>" or open the page with ?token=<token>',
    };
  }

  /**
   * Workers are not clients: a worker path takes only the worker token (Authorization: Bearer), and
   * the client token never opens it. Without any token (loopback only) workers need none either.
   */
  checkWorkerToken(req: IncomingMessage): Refusal | undefined {
    if (!this.workerDigest) {
      if (!this.tokenDigest) return undefined;
      return { status: 401, code: 'unauthorized', message: 'this server takes no workers with the client token: start it with --worker-token (or CHARFLOW_WORKER_TOKEN) and give workers that' };
    }
    const auth = req.headers.authorization;
    const t = auth?.toLowerCase().startsWith('bearer ') ? auth.slice(7).trim() : undefined;
    if (t !== undefined && timingSafeEqual(digest(t), this.workerDigest)) return undefined;
    return { status: 401, code: 'unauthorized', message: t === undefined ? 'workers must send "Authorization: Bearer <worker token>"' : 'wrong worker token' };
  }

  /** /ws/worker and /api/worker/...: the paths only workers may use. */
  static isWorkerPath(pathname: string): boolean {
    return pathname === '/ws/worker' || pathname.startsWith('/api/worker/');
  }

  /** ?token= of the request URL, if present. */
  queryToken(req: IncomingMessage): string | undefined {
    const url = req.url ?? '';
    const q = url.indexOf('?');
    if (q < 0) return undefined;
    return new URLSearchParams(url.slice(q + 1)).get('token') ?? undefined;
  }

  /** Set-Cookie value that lets the browser keep the token after opening ?token=... once. */
  tokenCookie(): string | undefined {
    if (this.token === undefined) return undefined;
    return `${this.cookieName}=${encodeURIComponent(this.token)}; Path=/; HttpOnly; SameSite=Strict`;
  }

  /** Every check an upgrade or a state-changing request needs, in order. */
  checkAll(req: IncomingMessage, { origin }: { origin: boolean }): Refusal | undefined {
    const pathname = new URL(req.url ?? '/', 'http://x').pathname;
    const token = Guard.isWorkerPath(pathname) ? this.checkWorkerToken(req) : this.checkToken(req);
    return this.checkHost(req) ?? token ?? (origin ? this.checkOrigin(req) : undefined);
  }
}
