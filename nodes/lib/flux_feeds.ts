// The transformer's character inputs for one denoising step: every character's adapter tokens for
// this timestep (the adapter's time part, once per character per step) and the weight of each
// character on each image token (subject scale times its mask on the packed latent grid).
import { NodeInputError } from '../../engine/node.ts';
import type { SessionPool } from '../../engine/runtime/pool.ts';
import { f32, type Tensor } from '../../models/tensor.ts';
import { type CharacterSet, type CharacterTokens, type ModelSet, MAX_CHARACTERS } from '../types.ts';
import { rasteriseRegion } from './regions.ts';

/** What DiTSample's `character` input may carry: one character (whole picture) or a regional set. */
export type CharacterInput = CharacterTokens | CharacterSet;

export function isCharacterSet(v: unknown): v is CharacterSet {
  return typeof v === 'object' && v !== null && Array.isArray((v as CharacterSet).characters);
}

export interface FluxIpFeedRequest {
  pool: SessionPool;
  models: ModelSet;
  signal?: AbortSignal;
  /** undefined: no character (plain text-to-image through the IP graph, weights 0). */
  character: CharacterInput | undefined;
  /** Scale of a single (whole-picture) character; a set carries one per character. */
  subjectScale: number;
  /** The packed latent grid: H/16 rows x W/16 columns (one transformer image token per cell). */
  rows: number;
  cols: number;
  /** Images per transformer call; only graphs from before regional support need it (their tokens are per image). */
  batch?: number;
  /** The input name used in errors (default 'character'). */
  field?: string;
}

/** The IP feeds of one denoising step, given its timestep (sigma * 1000, as the adapter's time part takes it). */
export type IpFeedsForStep = (timestep: number) => Promise<Record<string, Tensor>>;

/** Graphs built before regional support take subject_scale [1] and per-image tokens [B, P, D] (the pool caches the scan). */
async function isLegacyGraph(pool: SessionPool, path: string): Promise<boolean> {
  return (await pool.inputNames(path)).includes('subject_scale');
}

/** s_r * m_r over the grid: [R, rows * cols]. */
export function characterMasks(set: CharacterSet, rows: number, cols: number): Tensor {
  const L = rows * cols;
  const data = new Float32Array(set.characters.length * L);
  set.characters.forEach((c, r) => {
    const m = rasteriseRegion(c.region, rows, cols);
    for (let l = 0; l < L; l++) data[r * L + l] = c.scale * m[l]!;
  });
  return f32([set.characters.length, L], data);
}

/** Adapter tokens of one character at `timestep`: [1, P, D]. */
async function timeTokens(req: FluxIpFeedRequest, character: CharacterTokens, timestep: number): Promise<Tensor> {
  const out = await req.pool.run(req.models.path('adapter_time'), {
    resampler_input: character.resamplerInput,
    timestep: f32([1], [timestep]),
  }, { outputs: ['ip_hidden_states'], signal: req.signal });
  return out.ip_hidden_states!;
}

/** Stacks [1, P, D] tensors (or repeats one) along the first axis. */
function stack(parts: Tensor[], times = 1): Tensor {
  const [, P, D] = parts[0]!.dims as [number, number, number];
  const n = P * D;
  const data = new Float32Array(parts.length * times * n);
  for (let k = 0; k < times; k++) parts.forEach((p, i) => data.set(p.data as Float32Array, (k * parts.length + i) * n));
  return f32([parts.length * times, P, D], data);
}

/**
 * The IP feeds of the flux graph, step by step: `ip_hidden_states` [R, P, D] (shared by every image of the
 * batch) and `ip_masks` [R, L] = s_r * m_r. No character: one zero character with weight 0 (adds nothing).
 * One character: R = 1, weight subjectScale everywhere. A set: its characters with their own scales and
 * masks. A model set whose transformer predates regional support gets its old inputs (subject_scale), and
 * refuses a set with an error naming the field. Everything but the adapter's time part is settled here,
 * once per sampling run; each step then only runs the time part for its timestep.
 */
export async function prepareIpFeeds(req: FluxIpFeedRequest): Promise<IpFeedsForStep> {
  const field = req.field ?? 'character';
  const { adapter } = req.models.manifest;
  const L = req.rows * req.cols;
  const set = isCharacterSet(req.character) ? req.character : undefined;
  if (set) {
    if (set.characters.length === 0) throw new NodeInputError(field, 'the character set is empty');
    if (set.characters.length > MAX_CHARACTERS) {
      throw new NodeInputError(field, `has ${set.characters.length} characters; at most ${MAX_CHARACTERS} fit in one picture`);
    }
  }
  const single = set ? undefined : req.character as CharacterTokens | undefined;
  const noTokens = f32([1, adapter.numQueries, adapter.outputDim]); // zeros
  if (await isLegacyGraph(req.pool, req.models.path('flux'))) {
    if (set) {
      throw new NodeInputError(field, `the transformer of model set "${req.models.name}" was built without regional character support; `
        + 'rebuild or re-convert the model set to use a character set');
    }
    const scale = f32([1], [single ? req.subjectScale : 0]);
    const none = { ip_hidden_states: stack([noTokens], req.batch ?? 1), subject_scale: scale };
    return async (t) => (single ? { ip_hidden_states: stack([await timeTokens(req, single, t)], req.batch ?? 1), subject_scale: scale } : none);
  }
  if (set) {
    const masks = characterMasks(set, req.rows, req.cols);
    return async (t) => {
      const tokens: Tensor[] = [];
      for (const c of set.characters) tokens.push(await timeTokens(req, c.character, t));
      return { ip_hidden_states: stack(tokens), ip_masks: masks };
    };
  }
  if (!single) {
    const none = { ip_hidden_states: noTokens, ip_masks: f32([1, L]) };
    return async () => none;
  }
  const masks = f32([1, L], new Float32Array(L).fill(req.subjectScale));
  return async (t) => ({ ip_hidden_states: await timeTokens(req, single, t), ip_masks: masks });
}
