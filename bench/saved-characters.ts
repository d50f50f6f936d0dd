// Section 13 (issue 24): saved characters. Time from queueing a run to the first denoising step with a
// Saved Character against the same character from its picture (SigLIP, DINOv2, Adapter Fuse), on the tiny
// and the mid-size set, side by side in alternating pairs, each run cold: fresh services (an empty session
// pool: no model loaded) and a fresh executor (empty output cache), queued after the runtime has been idle
// for IDLE_MS (its spare worker thread up), as a server's first job after it starts would be. Peak memory of each run from the pool's own record
// (peakResidentBytes: the most bytes its loaded models held at once), and which models it loaded.
// Alone: npx tsx bench/saved-characters.ts [--quick]
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { Executor } from '../engine/executor/index.ts';
import type { NodeContext } from '../engine/node.ts';
import type { ValidWorkflow } from '../engine/workflow/types.ts';
import { validateWorkflow } from '../engine/workflow/index.ts';
import { createServices, PACKAGE_ROOT, type OwnedServices, type Services } from '../nodes/services.ts';
import { decodeImage, squareImage } from '../nodes/lib/image.ts';
import { charactersDir, encodeCharacter, newCharacter, writeCharacter } from '../nodes/lib/saved_characters.ts';
import type { BenchContext } from './lib/context.ts';
import { silentLogger } from './lib/context.ts';
import { MID_SET_NAME, PIPE, defaultWorkflowJson } from './lib/fixtures.ts';
import { type Figure, info, judged } from './lib/report.ts';
import { median } from './lib/stats.ts';
import { cpuMeter } from './lib/cpuload.ts';

const SECTION = 14;
const ENCODERS = ['siglip', 'dinov2'];
/** How long a fresh runtime idles before the job is queued: long enough for its spare worker to boot here. */
const IDLE_MS = 3000;

interface Sample {
  /** ms from executor.run to DiTSample's first step. */
  firstStepMs: number;
  peakBytes: number;
  /** Model file names (without .onnx) loaded, in order. */
  loads: string[];
}

/** The default workflow at the bench size on `set`, its character from the picture or saved as `saved`. */
function pipeline(b: Pick<BenchContext, 'registry'>, set: string, saved?: string): ValidWorkflow {
  const wf = defaultWorkflowJson();
  wf.nodes['1']!.inputs.set = set;
  Object.assign(wf.nodes['7']!.inputs, PIPE);
  if (saved) {
    for (const id of ['2', '3', '4']) delete wf.nodes[id];
    wf.nodes['5'] = { type: 'SavedCharacter', inputs: { models: { node: '1', output: 'models' }, name: saved } };
  }
  const v = validateWorkflow(wf, b.registry);
  if (!v.ok) throw new Error(v.errors.map((e) => e.message).join('\n'));
  return v.workflow!;
}

/** Saves the example character for `set` (not timed). */
async function saveFor(b: BenchContext, set: string): Promise<string> {
  const name = `bench-${set}`;
  const s = b.services;
  const models = s.modelSet(set);
  const image = await squareImage(await decodeImage(join(PACKAGE_ROOT, 'workflows/assets/character.png')), 'pad');
  const ctx: NodeContext<Services> = { nodeId: 'bench', signal: new AbortController().signal, progress: () => {}, services: s, workflow: {}, log: silentLogger };
  const { tokens, reference } = await encodeCharacter(ctx, models, image);
  writeCharacter(charactersDir(b.paths.root), newCharacter(name, models, tokens, reference, image), { force: true });
  return name;
}

/** One cold run up to the first denoising step (then cancelled). */
async function coldRun(b: BenchContext, wf: ValidWorkflow): Promise<Sample> {
  const services: OwnedServices = await createServices(b.paths, { device: 'cpu', log: () => {} });
  try {
    await new Promise((r) => setTimeout(r, IDLE_MS));
    const ac = new AbortController();
    const executor = new Executor({ registry: b.registry, services, logger: silentLogger });
    let first = 0;
    const t0 = performance.now();
    const result = await executor.run(wf, {
      signal: ac.signal,
      targets: ['8'],
      onEvent: (e) => {
        if (!first && e.type === 'node_progress' && e.nodeId === '7') {
          first = performance.now();
          ac.abort(new Error('first step reached'));
        }
      },
    });
    if (!first) throw new Error(`the run ended (${result.status}) before its first step: ${JSON.stringify(result.nodes)}`);
    const stats = services.pool.stats();
    return { firstStepMs: first - t0, peakBytes: stats.peakResidentBytes, loads: stats.loadHistory.map((p) => p.split('/').pop()!.replace(/\.onnx$/, '')) };
  } finally {
    await services.close();
  }
}

export async function benchSavedCharacters(b: BenchContext): Promise<Figure[]> {
  const figures: Figure[] = [];
  const pairs = b.quick ? 2 : 4;
  const details: Record<string, unknown> = {};
  for (const [label, set] of [['tiny', 'tiny'], ['mid-size', MID_SET_NAME]] as const) {
    const name = await saveFor(b, set);
    const fromPicture = pipeline(b, set);
    const fromSaved = pipeline(b, set, name);
    await coldRun(b, fromPicture); // first touch of the files and the optimised-session cache: not counted
    const picture: Sample[] = [];
    const saved: Sample[] = [];
    const meter = cpuMeter();
    for (let i = 0; i < pairs; i++) {
      // Alternate which goes first, so drift in the machine's load falls on both.
      if (i % 2 === 0) {
        picture.push(await coldRun(b, fromPicture));
        saved.push(await coldRun(b, fromSaved));
      } else {
        saved.push(await coldRun(b, fromSaved));
        picture.push(await coldRun(b, fromPicture));
      }
    }
    const otherCores = meter().otherCores;
    const mp = median(picture.map((s) => s.firstStepMs));
    const ms = median(saved.map((s) => s.firstStepMs));
    figures.push(judged(SECTION, `queue to first step, saved / picture (${label} set, cold)`, ms / mp, 'x', '<=', 0.5, {
      otherCores, samples: saved.map((s, i) => s.firstStepMs / picture[i]!.firstStepMs),
      note: `medians ${ms.toFixed(0)} ms saved vs ${mp.toFixed(0)} ms from the picture, ${pairs} alternating pairs, each queued on a fresh session pool (idle ${IDLE_MS} ms) and executor`,
    }));
    const encoderLoads = saved.flatMap((s) => s.loads.filter((l) => ENCODERS.includes(l))).length;
    const peakSaved = Math.max(...saved.map((s) => s.peakBytes));
    const peakPicture = Math.max(...picture.map((s) => s.peakBytes));
    const models = b.services.modelSet(set);
    const encoderBytes = models.manifest.files.siglip.bytes + models.manifest.files.dinov2.bytes;
    figures.push(judged(SECTION, `vision encoders loaded with a saved character (${label} set)`, encoderLoads, '', '<=', 0, {
      note: `models loaded: ${saved[0]!.loads.join(', ')} (the pool's record)`,
    }));
    figures.push(info(SECTION, `peak model memory, saved (${label} set)`, peakSaved / 1024 ** 2, 'MiB', {
      note: `the pool's peak of resident model bytes; from the picture ${(peakPicture / 1024 ** 2).toFixed(1)} MiB; SigLIP + DINOv2 files ${(encoderBytes / 1024 ** 2).toFixed(1)} MiB`,
    }));
    details[label] = { picture, saved, encoderBytes };
  }
  b.details.savedCharacters = details;
  return figures;
}

// Alone: the bench's model sets and data folder, this section only.
if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const { resolvePaths } = await import('../engine/paths.ts');
  const { nodeRegistry } = await import('../nodes/registry.ts');
  const { BENCH_ROOT, MODELS_ROOT, ensureMidSet, ensureTinySet } = await import('./lib/fixtures.ts');
  const { terminalTable } = await import('./lib/report.ts');
  await ensureTinySet();
  await ensureMidSet();
  const paths = resolvePaths({ data: join(BENCH_ROOT, 'work'), models: MODELS_ROOT });
  const services = await createServices(paths, { device: 'cpu', log: () => {} });
  try {
    const figures = await benchSavedCharacters({
      services, registry: nodeRegistry(), paths, quick: process.argv.includes('--quick'), details: {}, log: console.log, mayExtend: () => true,
    });
    console.log(terminalTable(figures));
    for (const f of figures) if (f.note) console.log(`${f.name}: ${f.note}`);
  } finally {
    await services.close();
  }
}
