// Section 4: the adapter split in two graphs. The static part (the cross-layer / cross-scale
// blocks) depends only on the reference image and runs once; the time part (TimeResampler) runs
// once per denoising step. The official pipeline runs the whole adapter at every step. Mid-size
// adapter: the real depth (4 + 4 blocks, 4 resampler layers) at a tenth of the width, the
// pipeline's real token counts (729 low-res, 3 x 729 shallow, 4 x 729 high-res tokens).
import type { Tensor } from '../models/tensor.ts';
import { f32 } from '../models/tensor.ts';
import { MID_ADAPTER, MID_SET_NAME } from './lib/fixtures.ts';
import type { BenchContext } from './lib/context.ts';
import { type Figure, info } from './lib/report.ts';
import { median } from './lib/stats.ts';
import { noise } from './lib/tensors.ts';

/** The default workflow's step count. */
export const STEPS = 28;
const TOKENS = 729;

export async function benchAdapter(ctx: BenchContext): Promise<Figure[]> {
  const pool = ctx.services.pool;
  const set = ctx.services.modelSet(MID_SET_NAME);
  const c = MID_ADAPTER.innerDim;
  const staticFeeds = {
    low_res_deep: noise([1, TOKENS, c], 1),
    low_res_shallow: noise([1, 3 * TOKENS, c], 2),
    high_res_deep: noise([1, 4 * TOKENS, c], 3),
  };
  const runStatic = async () => {
    const r = await pool.runWithInfo(set.path('adapter_static'), staticFeeds);
    return { ms: r.info.endedAt - r.info.startedAt, out: r.outputs.resampler_input! };
  };
  const runTime = async (resamplerInput: Tensor, t: number) => {
    const r = await pool.runWithInfo(set.path('adapter_time'), { resampler_input: resamplerInput, timestep: f32([1], [t]) }, { outputs: ['ip_hidden_states'] });
    return r.info.endedAt - r.info.startedAt;
  };

  // Load and warm up (the first runs grow ORT's memory arena and are slow).
  const { out } = await runStatic();
  await runStatic();
  await runTime(out, 1000);
  await runTime(out, 1000);
  const staticMs: number[] = [];
  const timeMs: number[] = [];
  const reps = ctx.quick ? 2 : 3;
  for (let i = 0; i < reps || (i < reps + 2 && ctx.mayExtend() && median(staticMs) < 200); i++) {
    staticMs.push((await runStatic()).ms);
    for (const t of [900, 500, 100]) timeMs.push(await runTime(out, t));
  }
  const S = median(staticMs);
  const T = median(timeMs);
  const official = STEPS * (S + T);
  const split = S + STEPS * T;
  ctx.details.adapter = { config: MID_ADAPTER, staticMs, timeMs, steps: STEPS };
  const note = `ORT time inside the worker, medians (${pool.intraOpThreads} intra-op thread(s)); mid-size adapter: inner ${c}, 4+4 blocks, resampler width ${MID_ADAPTER.dim} x ${MID_ADAPTER.depth} layers, ${MID_ADAPTER.numQueries} queries`;
  return [
    info(4, 'adapter static part (once per reference)', S, 'ms', { samples: staticMs, note }),
    info(4, 'adapter time part (once per step)', T, 'ms', { samples: timeMs, note }),
    info(4, `adapter cost of ${STEPS} steps: split / whole adapter every step`, split / official, 'x', {
      note: `S + ${STEPS} T = ${split.toFixed(0)} ms against ${STEPS} (S + T) = ${official.toFixed(0)} ms (official code): saves ${(100 * (1 - split / official)).toFixed(1)} % of the adapter's time`,
    }),
  ];
}
