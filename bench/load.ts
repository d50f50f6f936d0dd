// Many editor tabs at once against a real server on loopback: N WebSocket clients on /ws/editor
// each queue a few runs of the default workflow at test size (distinct seeds, so the executor
// cache cannot answer them), while a probe times GET /api/nodes and the server's event loop delay
// is sampled. It checks the bookkeeping as well: every run finishes exactly once, for its tab and
// in the queue's history. The clients run on a worker thread (--inline: on the server's thread),
// so the event loop delay is the server's own.
// Run: npx tsx bench/load.ts [--clients 50] [--runs 3] [--steps 2] [--inline]
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve as resolvePath } from 'node:path';
import { fileURLToPath } from 'node:url';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { WebSocket } from 'ws';
import type { ServerMessage } from '../editor/protocol.ts';
import type { Services } from '../nodes/services.ts';

export interface LoadOptions {
  /** WebSocket clients connected at once (default 50). */
  clients: number;
  /** Runs each client queues (default 3). */
  runsPerClient: number;
  /** Sampling steps of each run (default 2); the picture is width x height (default 96 x 64). */
  steps: number;
  width: number;
  height: number;
  /** Pause between two probes (default 50 ms); one probe at a time. */
  probeEveryMs: number;
  /** Bound on the whole measured phase (default 180 s); what is unfinished then counts as lost. */
  timeoutMs: number;
  /** 'worker' (default): clients and probe on a worker thread; 'inline': on this thread (vitest). */
  clientsIn: 'worker' | 'inline';
  /** Host services to run on (not closed); default made here, on the CPU. */
  services?: Services;
  /** Models folder holding the 'tiny' set; default services' folder, else the bench's (generated once). */
  modelsDir?: string;
  log: (message: string) => void;
}

export interface Quantiles {
  count: number;
  p50: number;
  p99: number;
  max: number;
}

export interface LoadCheck {
  /** One line per thing that went wrong; empty when every job finished exactly once everywhere. */
  problems: string[];
  /** Runs the server accepted (queued replies). */
  queued: number;
  /** Own runs whose tab got exactly one run_finished with mine: true. */
  finishedOnceForOwner: number;
  /** Accepted runs listed exactly once in the queue's history. */
  inHistoryOnce: number;
  /** Their statuses in the history. */
  statuses: Record<string, number>;
}

export interface LoadResult {
  clients: number;
  runsPerClient: number;
  jobs: number;
  size: string;
  clientsIn: 'worker' | 'inline';
  /** One run before the measured phase (loads the sessions), ms. */
  warmupMs: number;
  /** All clients connected and greeted, ms. */
  connectMs: number;
  /** First run sent -> every client saw every run finish, ms. */
  totalMs: number;
  jobsPerSecond: number;
  /** GET /api/nodes round trips during the measured phase, ms (maxGapMs: longest time without an answer). */
  probe: Quantiles & { failures: number; maxGapMs: number };
  /** The server thread's event loop delay during the measured phase, ms. */
  lag: Quantiles & { mean: number };
  check: LoadCheck;
}

const DEFAULTS: Omit<LoadOptions, 'services' | 'modelsDir'> = {
  clients: 50,
  runsPerClient: 3,
  steps: 2,
  width: 96,
  height: 64,
  probeEveryMs: 50,
  timeoutMs: 180_000,
  clientsIn: 'worker',
  log: () => {},
};

const WORKER_ROLE = 'charflow-load-clients';
/** No probe waits longer than this; more counts as a failure. */
const PROBE_TIMEOUT_MS = 10_000;
const MAX_PROBES = 20_000;

// ---- the clients (worker thread or inline) ------------------------------------------------------

interface ClientPlan {
  wsUrl: string;
  httpUrl: string;
  clients: number;
  runsPerClient: number;
  /** The workflow at test size; each run gets its own seed. */
  workflow: WorkflowJson;
  seedBase: number;
  probeEveryMs: number;
  timeoutMs: number;
}

interface TabRecord {
  clientId: string;
  /** Run ids its `queued` replies named. */
  own: string[];
  /** Error replies to its run requests, one line each. */
  refused: string[];
  /** run_finished frames per run id (every tab sees every run). */
  finished: Record<string, number>;
  /** run_finished frames with mine: true, per run id. */
  mineFinished: Record<string, number>;
  cancelled: number;
  /** The connection closed before the end. */
  closedEarly: boolean;
}

interface ClientsReport {
  tabs: TabRecord[];
  /** [start offset, round trip] of each probe, ms. */
  probes: [number, number][];
  probeFailures: string[];
  connectMs: number;
  totalMs: number;
  timedOut: boolean;
}

type WorkflowJson = { nodes: Record<string, { type: string; inputs: Record<string, unknown> }> } & Record<string, unknown>;

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function withSeed(wf: WorkflowJson, seed: number): WorkflowJson {
  const copy = structuredClone(wf);
  copy.nodes['7']!.inputs.seed = seed;
  return copy;
}

/** One editor tab: connects, waits for hello, records what it is told. */
async function openTab(url: string): Promise<{ ws: WebSocket; rec: TabRecord }> {
  const ws = new WebSocket(url);
  const rec: TabRecord = { clientId: '', own: [], refused: [], finished: {}, mineFinished: {}, cancelled: 0, closedEarly: false };
  const hello = new Promise<void>((resolve, reject) => {
    ws.once('error', reject);
    ws.once('unexpected-response', (_req, res) => reject(new Error(`upgrade refused: HTTP ${res.statusCode}`)));
    ws.on('message', (data) => {
      const m = JSON.parse(String(data)) as ServerMessage;
      if (m.type === 'hello') {
        rec.clientId = m.clientId;
        resolve();
      } else if (m.type === 'queued') rec.own.push(m.runId);
      else if (m.type === 'error') rec.refused.push(`${m.code}: ${m.message}`);
      else if (m.type === 'event') {
        if (m.event.type === 'run_finished') {
          rec.finished[m.runId] = (rec.finished[m.runId] ?? 0) + 1;
          if (m.mine) rec.mineFinished[m.runId] = (rec.mineFinished[m.runId] ?? 0) + 1;
        } else if (m.event.type === 'run_cancelled') rec.cancelled++;
      }
    });
  });
  ws.once('close', () => (rec.closedEarly = true));
  await hello;
  return { ws, rec };
}

/** Every tab has its replies, and has seen every accepted run finish. */
function allSeen(tabs: TabRecord[], runsPerClient: number): boolean {
  if (tabs.some((t) => t.own.length + t.refused.length < runsPerClient)) return false;
  const ids = tabs.flatMap((t) => t.own);
  return tabs.every((t) => ids.every((id) => (t.finished[id] ?? 0) > 0) || t.closedEarly);
}

/** GET /api/nodes one at a time until `stop()` says so; bounded in count and by the deadline. */
async function probeLoop(url: string, everyMs: number, t0: number, deadline: number, stop: () => boolean, out: ClientsReport): Promise<void> {
  for (let i = 0; i < MAX_PROBES && !stop() && performance.now() < deadline; i++) {
    const start = performance.now();
    try {
      const res = await fetch(`${url}api/nodes`, { signal: AbortSignal.timeout(PROBE_TIMEOUT_MS) });
      await res.arrayBuffer();
      if (res.status !== 200) out.probeFailures.push(`HTTP ${res.status}`);
      else out.probes.push([start - t0, performance.now() - start]);
    } catch (err) {
      out.probeFailures.push((err as Error).message.split('\n')[0]!);
    }
    await sleep(everyMs);
  }
}

async function driveClients(plan: ClientPlan): Promise<ClientsReport> {
  const out: ClientsReport = { tabs: [], probes: [], probeFailures: [], connectMs: 0, totalMs: 0, timedOut: false };
  const tConnect = performance.now();
  const tabs: { ws: WebSocket; rec: TabRecord }[] = [];
  try {
    // In batches: a burst of 50 handshakes is part of the load, but not the point of it.
    for (let i = 0; i < plan.clients; i += 10) {
      tabs.push(...(await Promise.all(Array.from({ length: Math.min(10, plan.clients - i) }, () => openTab(plan.wsUrl)))));
    }
    out.tabs = tabs.map((t) => t.rec);
    out.connectMs = performance.now() - tConnect;

    const t0 = performance.now();
    const deadline = t0 + plan.timeoutMs;
    let done = false;
    const probing = probeLoop(plan.httpUrl, plan.probeEveryMs, t0, deadline, () => done, out);
    tabs.forEach(({ ws }, c) => {
      for (let r = 0; r < plan.runsPerClient; r++) {
        const seed = plan.seedBase + c * plan.runsPerClient + r;
        ws.send(JSON.stringify({ id: `run-${c}-${r}`, type: 'run', workflow: withSeed(plan.workflow, seed) }));
      }
    });
    while (!allSeen(out.tabs, plan.runsPerClient)) {
      if (performance.now() > deadline) {
        out.timedOut = true;
        break;
      }
      await sleep(20);
    }
    out.totalMs = performance.now() - t0;
    done = true;
    await probing;
    await sleep(300); // a duplicate run_finished would arrive now
  } finally {
    for (const { ws, rec } of tabs) {
      ws.removeAllListeners('close');
      if (!rec.closedEarly) ws.close();
    }
  }
  return out;
}

if (!isMainThread && (workerData as { role?: string } | null)?.role === WORKER_ROLE) {
  const plan = (workerData as { plan: ClientPlan }).plan;
  driveClients(plan).then(
    (report) => parentPort!.postMessage({ report }),
    (err: unknown) => parentPort!.postMessage({ error: (err as Error).stack ?? String(err) }),
  );
}

function clientsOnWorker(plan: ClientPlan): Promise<ClientsReport> {
  return new Promise((resolve, reject) => {
    // The worker loads this .ts file too: Node 20 does not pass tsx's loader hooks on to workers,
    // so a small bootstrap registers them first.
    const boot = `import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))}).then((tsx) => { tsx.register(); return import(${JSON.stringify(import.meta.url)}); })`;
    const worker = new Worker(boot, { eval: true, workerData: { role: WORKER_ROLE, plan } });
    worker.once('message', (m: { report?: ClientsReport; error?: string }) => {
      if (m.report) resolve(m.report);
      else reject(new Error(`load clients failed: ${m.error}`));
      void worker.terminate();
    });
    worker.once('error', reject);
    worker.once('exit', (code) => reject(new Error(`load client worker exited with ${code}`)));
  });
}

// ---- the server side --------------------------------------------------------------------------

function quantiles(xs: readonly number[]): Quantiles {
  if (xs.length === 0) return { count: 0, p50: NaN, p99: NaN, max: NaN };
  const s = [...xs].sort((a, b) => a - b);
  const at = (q: number): number => s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)]!;
  return { count: s.length, p50: at(0.5), p99: at(0.99), max: s[s.length - 1]! };
}

/** The longest stretch without a probe answer: from the start, between answers, to the end. */
function maxGap(probes: [number, number][], totalMs: number): number {
  let last = 0;
  let gap = 0;
  for (const [start, rtt] of [...probes].sort((a, b) => a[0] - b[0])) {
    gap = Math.max(gap, start + rtt - last);
    last = start + rtt;
  }
  return Math.max(gap, totalMs - last);
}

interface QueueView {
  history(opts: { limit: number; order: 'oldest' }): { id: string; status: string }[];
  counts(): { pending: number; running: number; history: number };
}

function checkRuns(report: ClientsReport, queue: QueueView, runsPerClient: number): LoadCheck {
  const problems: string[] = [];
  const owner = new Map<string, number>();
  report.tabs.forEach((t, i) => {
    for (const id of t.own) {
      if (owner.has(id)) problems.push(`run ${id} was queued for tabs ${owner.get(id)} and ${i}`);
      owner.set(id, i);
    }
    if (t.refused.length) problems.push(`tab ${i}: ${t.refused.length} run(s) refused, first: ${t.refused[0]}`);
    if (t.own.length + t.refused.length !== runsPerClient) problems.push(`tab ${i}: ${t.own.length + t.refused.length} replies to ${runsPerClient} run requests`);
    if (t.closedEarly) problems.push(`tab ${i}: the connection closed during the test`);
    if (t.cancelled) problems.push(`tab ${i}: ${t.cancelled} run_cancelled event(s)`);
  });
  if (report.timedOut) problems.push('timed out before every tab saw every run finish');

  let finishedOnceForOwner = 0;
  report.tabs.forEach((t, i) => {
    for (const id of t.own) {
      const n = t.mineFinished[id] ?? 0;
      if (n === 1) finishedOnceForOwner++;
      else problems.push(`tab ${i}: its run ${id} finished ${n} times`);
    }
    for (const id of Object.keys(t.mineFinished)) {
      if (owner.get(id) !== i) problems.push(`tab ${i}: run ${id} of tab ${owner.get(id) ?? 'nobody'} was marked as its own`);
    }
    const wrong = [...owner.keys()].filter((id) => t.finished[id] !== 1);
    if (wrong.length) problems.push(`tab ${i}: saw ${wrong.length} run(s) not finish exactly once, e.g. ${wrong[0]} x${t.finished[wrong[0]!] ?? 0}`);
  });

  const history = queue.history({ limit: 10_000, order: 'oldest' });
  const times = new Map<string, number>();
  for (const j of history) times.set(j.id, (times.get(j.id) ?? 0) + 1);
  const statuses: Record<string, number> = {};
  let inHistoryOnce = 0;
  for (const id of owner.keys()) {
    const n = times.get(id) ?? 0;
    if (n === 1) inHistoryOnce++;
    else problems.push(`run ${id} is in the history ${n} times`);
  }
  for (const j of history) {
    if (!owner.has(j.id)) continue;
    statuses[j.status] = (statuses[j.status] ?? 0) + 1;
    if (j.status !== 'done') problems.push(`run ${j.id} ended ${j.status}`);
  }
  const counts = queue.counts();
  if (counts.pending || counts.running) problems.push(`the queue still holds ${counts.pending} pending and ${counts.running} running job(s)`);
  return { problems, queued: owner.size, finishedOnceForOwner, inHistoryOnce, statuses };
}

function testWorkflow(o: LoadOptions): WorkflowJson {
  const file = fileURLToPath(new URL('../workflows/instantcharacter.json', import.meta.url));
  const wf = JSON.parse(readFileSync(file, 'utf8')) as WorkflowJson;
  Object.assign(wf.nodes['7']!.inputs, { width: o.width, height: o.height, steps: o.steps });
  return wf;
}

/** One run through one tab (loads the sessions and fills the encoder caches); its time, ms. */
async function warmUp(wsUrl: string, wf: WorkflowJson, timeoutMs: number): Promise<number> {
  const t = performance.now();
  const { ws, rec } = await openTab(wsUrl);
  try {
    ws.send(JSON.stringify({ id: 'warmup', type: 'run', workflow: withSeed(wf, 1) }));
    while (!(rec.own.length && rec.finished[rec.own[0]!])) {
      if (rec.refused.length) throw new Error(`the warm-up run was refused: ${rec.refused[0]}`);
      if (performance.now() - t > timeoutMs) throw new Error('the warm-up run did not finish in time');
      await sleep(20);
    }
  } finally {
    ws.close();
  }
  return performance.now() - t;
}

export async function benchLoad(opts: Partial<LoadOptions> = {}): Promise<LoadResult> {
  const o: LoadOptions = { ...DEFAULTS, ...opts };
  const { startServer } = await import('../editor/server/index.ts');
  const { resolvePaths } = await import('../engine/paths.ts');
  let modelsDir = o.modelsDir ?? o.services?.paths.models;
  if (!modelsDir) {
    const fixtures = await import('./lib/fixtures.ts');
    await fixtures.ensureTinySet();
    modelsDir = fixtures.MODELS_ROOT;
  }
  const dataDir = mkdtempSync(join(tmpdir(), 'charflow-load-'));
  const paths = resolvePaths({ data: dataDir, models: modelsDir });
  let owned: (Services & { close(): Promise<void> }) | undefined;
  try {
    let services = o.services;
    if (!services) {
      const { createServices } = await import('../nodes/services.ts');
      services = owned = await createServices(paths, { device: 'cpu', log: () => {} });
    }
    const server = await startServer({
      paths,
      host: '127.0.0.1',
      port: 0,
      services,
      staticDir: null,
      log: () => {},
      limits: { maxConnections: Math.max(64, o.clients + 8), maxConnectionsPerClient: o.clients + 8 }, // every tab is on loopback
    });
    try {
      const wsUrl = `ws://127.0.0.1:${server.port}/ws/editor`;
      const wf = testWorkflow(o);
      o.log(`warm-up run (${o.width}x${o.height}, ${o.steps} steps)`);
      const warmupMs = await warmUp(wsUrl, wf, o.timeoutMs);
      const plan: ClientPlan = {
        wsUrl,
        httpUrl: server.url,
        clients: o.clients,
        runsPerClient: o.runsPerClient,
        workflow: wf,
        seedBase: 1000,
        probeEveryMs: o.probeEveryMs,
        timeoutMs: o.timeoutMs,
      };
      o.log(`${o.clients} clients x ${o.runsPerClient} runs, clients ${o.clientsIn === 'worker' ? 'on a worker thread' : 'inline'}`);
      const lag = monitorEventLoopDelay({ resolution: 1 });
      lag.enable();
      let report: ClientsReport;
      try {
        report = o.clientsIn === 'worker' ? await clientsOnWorker(plan) : await driveClients(plan);
      } finally {
        lag.disable();
      }
      await server.runner.whenIdle();
      const check = checkRuns(report, server.queue, o.runsPerClient);
      const rtts = report.probes.map(([, rtt]) => rtt);
      return {
        clients: o.clients,
        runsPerClient: o.runsPerClient,
        jobs: check.queued,
        size: `${o.width}x${o.height}, ${o.steps} step${o.steps === 1 ? '' : 's'}`,
        clientsIn: o.clientsIn,
        warmupMs,
        connectMs: report.connectMs,
        totalMs: report.totalMs,
        jobsPerSecond: check.queued / (report.totalMs / 1000),
        probe: { ...quantiles(rtts), failures: report.probeFailures.length, maxGapMs: maxGap(report.probes, report.totalMs) },
        lag: {
          count: lag.count,
          p50: lag.percentile(50) / 1e6,
          p99: lag.percentile(99) / 1e6,
          max: lag.max / 1e6,
          mean: lag.mean / 1e6,
        },
        check,
      };
    } finally {
      await server.close();
    }
  } finally {
    await owned?.close();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

// ---- command line -----------------------------------------------------------------------------

function numberOption(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0) return fallback;
  const v = Number(process.argv[i + 1]);
  if (!Number.isInteger(v) || v < 1) throw new Error(`--${name} takes a positive integer, got ${process.argv[i + 1]}`);
  return v;
}

const f = (x: number): string => (Number.isFinite(x) ? x.toFixed(x < 10 ? 2 : 1) : '-');

export function formatLoad(r: LoadResult): string {
  return [
    `load: ${r.clients} clients x ${r.runsPerClient} runs = ${r.jobs} jobs (${r.size}), clients ${r.clientsIn === 'worker' ? 'on a worker thread' : 'on the server thread'}`,
    `  warm-up run ${f(r.warmupMs)} ms, connect ${f(r.connectMs)} ms`,
    `  total ${f(r.totalMs / 1000)} s, ${f(r.jobsPerSecond)} jobs/s`,
    `  probe GET /api/nodes: ${r.probe.count} answered, ${r.probe.failures} failed; p50 ${f(r.probe.p50)} ms, p99 ${f(r.probe.p99)} ms, max ${f(r.probe.max)} ms; longest gap ${f(r.probe.maxGapMs)} ms`,
    `  event loop lag (server thread): p50 ${f(r.lag.p50)} ms, p99 ${f(r.lag.p99)} ms, max ${f(r.lag.max)} ms, mean ${f(r.lag.mean)} ms`,
    `  check: ${r.check.finishedOnceForOwner}/${r.check.queued} finished exactly once for their tab, ${r.check.inHistoryOnce} in the history once, statuses ${JSON.stringify(r.check.statuses)}`,
    ...(r.check.problems.length ? [`  PROBLEMS (${r.check.problems.length}):`, ...r.check.problems.slice(0, 20).map((p) => `    ${p}`)] : ['  no job lost, none twice']),
  ].join('\n');
}

if (isMainThread && process.argv[1] && fileURLToPath(import.meta.url) === resolvePath(process.argv[1])) {
  const r = await benchLoad({
    clients: numberOption('clients', DEFAULTS.clients),
    runsPerClient: numberOption('runs', DEFAULTS.runsPerClient),
    steps: numberOption('steps', DEFAULTS.steps),
    clientsIn: process.argv.includes('--inline') ? 'inline' : 'worker',
    log: (m) => console.log(`[load] ${m}`),
  });
  console.log(formatLoad(r));
  process.exitCode = r.check.problems.length ? 1 : 0;
}
