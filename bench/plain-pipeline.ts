// The default workflow as a plain script: the same ONNX sessions, in the order the executor runs
// them with concurrency 1, through the same SessionPool (same worker threads, thread settings and
// tensor transfers) and the same preprocessing code (nodes/lib, models/sampling), but no engine:
// no validation, planning, cache keys, output cache, events or node contexts. It is the baseline
// of the engine-overhead figure.
// Run alone: `node --import tsx bench/plain-pipeline.ts` (on the bench's tiny set).
import { rmSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { performance } from 'node:perf_hooks';
import type { NodeContext } from '../engine/node.ts';
import type { ModelSet } from '../models/modelset.ts';
import { eulerStep, flowMatchSchedule, packLatents, seededNormal, unpackLatents } from '../models/sampling.ts';
import { fluxRopeFor } from '../models/rope.ts';
import { f32, i64, type Tensor } from '../models/tensor.ts';
import { encodeClip, encodeT5, loadTokenizer } from '../models/tokenizers.ts';
import { decodeImage, encodePng, imageFromTensor, squareImage, type SquareMode } from '../nodes/lib/image.ts';
import { writeNumbered } from '../nodes/lib/output.ts';
import { latentPreview } from '../nodes/lib/preview.ts';
import { concatChannels } from '../nodes/lib/tensors.ts';
import { encodeReference } from '../nodes/lib/vision.ts';
import { PACKAGE_ROOT, type Services } from '../nodes/services.ts';

export interface PlainParams {
  prompt: string;
  imagePath: string;
  square: SquareMode;
  background: string;
  seed: number;
  steps: number;
  width: number;
  height: number;
  guidance: number;
  subjectScale: number;
  filenamePrefix: string;
}

/** The parameters of a default-workflow JSON (nodes 2, 6, 7, 9). */
export function plainParamsFrom(wf: { nodes: Record<string, { inputs: Record<string, unknown> }> }): PlainParams {
  const n = (id: string) => wf.nodes[id]!.inputs;
  return {
    prompt: n('6').prompt as string,
    imagePath: n('2').path as string,
    square: n('2').square as SquareMode,
    background: n('2').background as string,
    seed: n('7').seed as number,
    steps: n('7').steps as number,
    width: n('7').width as number,
    height: n('7').height as number,
    guidance: n('7').guidance as number,
    subjectScale: n('7').subject_scale as number,
    filenamePrefix: n('9').filename_prefix as string,
  };
}

export interface PlainResult {
  ms: number;
  /** The saved image's file name in services.outputDir. */
  filename: string;
}

/** encodeReference wants a node context; this one only carries what it reads. */
function bareContext(services: Services): NodeContext<Services> {
  return {
    nodeId: 'plain',
    signal: new AbortController().signal,
    progress: () => {},
    log: { info: () => {}, warn: () => {} },
    services,
    workflow: undefined,
  };
}

/** Runs the pipeline once. `embedded` is the workflow written into the PNG, as SaveImage does. */
export async function runPlainPipeline(services: Services, models: ModelSet, p: PlainParams, embedded: unknown): Promise<PlainResult> {
  const t0 = performance.now();
  const pool = services.pool;
  const m = models.manifest;

  // TextEncode: T5 and CLIP together.
  const t5Ids = encodeT5(loadTokenizer(models.tokenizerPath('t5')), p.prompt, m.t5.seqLen);
  const clipIds = encodeClip(loadTokenizer(models.tokenizerPath('clip')), p.prompt, m.clip.seqLen, { bos: m.clip.bosId, eos: m.clip.eosId, pad: m.clip.padId });
  const [t5Out, clipOut] = await Promise.all([
    pool.run(models.path('t5'), { input_ids: i64([1, t5Ids.length], t5Ids) }),
    pool.run(models.path('clip'), { input_ids: i64([1, clipIds.length], clipIds) }, { outputs: ['pooler_output'] }),
  ]);
  const promptEmbeds = t5Out.last_hidden_state!;
  const pooled = clipOut.pooler_output!;

  // LoadCharacter.
  const image = await squareImage(await decodeImage(await readFile(join(PACKAGE_ROOT, p.imagePath))), p.square, p.background);

  // SigLIP, DINOv2, adapter static part.
  const ctx = bareContext(services);
  const siglip = await encodeReference(ctx, models, image, 'siglip');
  const dinov2 = await encodeReference(ctx, models, image, 'dinov2');
  const fused = await pool.run(models.path('adapter_static'), {
    low_res_deep: concatChannels(siglip.lowResDeep, dinov2.lowResDeep),
    low_res_shallow: concatChannels(siglip.lowResShallow, dinov2.lowResShallow),
    high_res_deep: concatChannels(siglip.highResDeep, dinov2.highResDeep),
  });
  const resamplerInput = fused.resampler_input!;

  // DiTSample: per step the adapter's time part, then the transformer, Euler step and preview.
  const channels = m.flux.latentChannels;
  const h = p.height / m.vae.downscale;
  const w = p.width / m.vae.downscale;
  const imageTokens = (h / 2) * (w / 2);
  const schedule = flowMatchSchedule(p.steps, imageTokens);
  const latents = packLatents(seededNormal(p.seed, channels * h * w), channels, h, w);
  const rope = fluxRopeFor(promptEmbeds.dims[1]!, h / 2, w / 2, m.flux.axesDims, m.flux.theta);
  for (let i = 0; i < p.steps; i++) {
    const t = schedule.timesteps[i]!;
    const ip = (await pool.run(models.path('adapter_time'), { resampler_input: resamplerInput, timestep: f32([1], [t]) }, { outputs: ['ip_hidden_states'] })).ip_hidden_states!;
    const out = await pool.run(models.path('flux'), {
      hidden_states: f32([1, imageTokens, channels * 4], latents),
      encoder_hidden_states: promptEmbeds,
      pooled_projections: pooled,
      timestep: f32([1], [Math.fround(t / 1000)]),
      guidance: f32([1], [p.guidance]),
      rope_cos: rope.cos,
      rope_sin: rope.sin,
      ip_hidden_states: ip,
      ip_masks: f32([1, imageTokens], new Float32Array(imageTokens).fill(p.subjectScale)), // one whole-picture character
    });
    eulerStep(latents, out.noise_pred!.data as Float32Array, schedule.sigmas[i]!, schedule.sigmas[i + 1]!);
    await latentPreview(unpackLatents(latents, channels, h, w), channels, h, w);
  }
  const samples: Tensor = f32([1, channels, h, w], unpackLatents(latents, channels, h, w));

  // Decode, SaveImage.
  const decoded = await pool.run(models.path('vae'), { latents: samples });
  const png = await encodePng(imageFromTensor(decoded.image!), { workflow: JSON.stringify(embedded) });
  const filename = await writeNumbered(services.outputDir, p.filenamePrefix, 'png', png);
  return { ms: performance.now() - t0, filename };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { ensureTinySet, BENCH_ROOT, MODELS_ROOT, defaultWorkflowJson } = await import('./lib/fixtures.ts');
  const { resolvePaths } = await import('../engine/paths.ts');
  const { createServices } = await import('../nodes/services.ts');
  await ensureTinySet();
  const paths = resolvePaths({ data: join(BENCH_ROOT, 'work'), models: MODELS_ROOT });
  const services = await createServices(paths, { device: 'cpu', log: () => {} });
  try {
    const wf = defaultWorkflowJson();
    Object.assign(wf.nodes['7']!.inputs, { width: 96, height: 64, steps: 3 });
    const set = services.modelSet('tiny');
    for (let i = 0; i < 3; i++) {
      const r = await runPlainPipeline(services, set, plainParamsFrom(wf), wf);
      console.log(`plain pipeline run ${i + 1}: ${r.ms.toFixed(0)} ms -> ${r.filename}`);
    }
  } finally {
    await services.close();
    rmSync(paths.outputs, { recursive: true, force: true });
  }
}
