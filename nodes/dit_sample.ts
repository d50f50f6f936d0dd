import type { NodeDef } from '../engine/node.ts';
import { NodeInputError } from '../engine/node.ts';
import type { Services } from './services.ts';
import { SOCKET, type CharacterTokens, type Conditioning, type Latent, type ModelSet } from './types.ts';
import { tensorBytes } from './lib/tensors.ts';
import { latentPreview } from './lib/preview.ts';
import { eulerStep, flowMatchSchedule, packLatents, seededNormal, unpackLatents } from '../models/sampling.ts';
import { fluxRopeFor } from '../models/rope.ts';
import { f32 } from '../models/tensor.ts';

/** Sizes are multiples of this: 8x VAE downsampling, then 2x2 packing. */
const SIZE_STEP = 16;

/**
 * The denoising loop: seeded noise, the flow-matching Euler schedule shifted for the resolution,
 * and per step the adapter's time part (character tokens for this t) then the transformer.
 */
export const DiTSample: NodeDef<Services> = {
  type: 'DiTSample',
  version: 1,
  category: 'sampling',
  displayName: 'DiT Sample',
  description: 'Samples FLUX latents from noise, conditioned on the prompt and, when connected, the character.',
  inputs: {
    models: { type: SOCKET.MODELS },
    conditioning: { type: SOCKET.CONDITIONING },
    character: { type: SOCKET.CHARACTER, optional: true, description: 'Without it, plain text-to-image' },
    noise: { type: SOCKET.LATENT, optional: true, description: 'Start from this noise instead of the seed (e.g. to reproduce another tool)' },
  },
  params: {
    seed: { type: 'integer', format: 'seed', default: 0, minimum: 0, maximum: Number.MAX_SAFE_INTEGER },
    steps: { type: 'integer', default: 28, minimum: 1, maximum: 200 },
    width: { type: 'integer', default: 1024, minimum: 64, maximum: 4096, multipleOf: SIZE_STEP },
    height: { type: 'integer', default: 1024, minimum: 64, maximum: 4096, multipleOf: SIZE_STEP },
    guidance: { type: 'number', default: 3.5, minimum: 0, maximum: 30, description: 'Distilled guidance (FLUX.1-dev)' },
    subject_scale: { type: 'number', default: 0.9, minimum: 0, maximum: 2, description: 'Strength of the character' },
  },
  outputs: { latent: { type: SOCKET.LATENT } },
  sizeOf: tensorBytes,
  async run(ctx, inputs) {
    const models = inputs.models as ModelSet;
    const cond = inputs.conditioning as Conditioning;
    const character = inputs.character as CharacterTokens | undefined;
    const steps = inputs.steps as number;
    const width = inputs.width as number;
    const height = inputs.height as number;
    for (const [field, v] of [['width', width], ['height', height]] as const) {
      if (v % SIZE_STEP !== 0) throw new NodeInputError(field, `${v} is not a multiple of ${SIZE_STEP}`);
    }
    const { flux, adapter, vae } = models.manifest;
    if (cond.promptEmbeds.dims[2] !== flux.jointDim) {
      throw new NodeInputError('conditioning', `has width ${cond.promptEmbeds.dims[2]}, the transformer of model set "${models.name}" expects ${flux.jointDim}`);
    }

    const channels = flux.latentChannels;
    const h = height / vae.downscale;
    const w = width / vae.downscale;
    const imageTokens = (h / 2) * (w / 2);
    const schedule = flowMatchSchedule(steps, imageTokens);
    const noise = inputs.noise as Latent | undefined;
    if (noise && (noise.samples.dims.join() !== [1, channels, h, w].join())) {
      throw new NodeInputError('noise', `has shape [${noise.samples.dims}], ${width}x${height} needs [1,${channels},${h},${w}]`);
    }
    const initial = noise ? Float32Array.from(noise.samples.data as Float32Array) : seededNormal(inputs.seed as number, channels * h * w);
    const latents = packLatents(initial, channels, h, w); // [1, L, 4C]
    const textTokens = cond.promptEmbeds.dims[1]!;
    const rope = fluxRopeFor(textTokens, h / 2, w / 2, flux.axesDims, flux.theta); // [T+L, 128]
    const subjectScale = character ? (inputs.subject_scale as number) : 0;
    const noTokens = f32([1, adapter.numQueries, adapter.outputDim]); // zeros: IP attention adds nothing at scale 0

    for (let i = 0; i < steps; i++) {
      if (ctx.signal.aborted) throw ctx.signal.reason ?? new Error('cancelled');
      const t = schedule.timesteps[i]!; // sigma * 1000
      const ip = character
        ? (await ctx.services.pool.run(models.path('adapter_time'), {
          resampler_input: character.resamplerInput,
          timestep: f32([1], [t]),
        }, { outputs: ['ip_hidden_states'], signal: ctx.signal })).ip_hidden_states!
        : noTokens;
      const out = await ctx.services.pool.run(models.path('flux'), {
        hidden_states: f32([1, imageTokens, channels * 4], latents),
        encoder_hidden_states: cond.promptEmbeds,
        pooled_projections: cond.pooled,
        timestep: f32([1], [Math.fround(t / 1000)]),
        guidance: f32([1], [inputs.guidance as number]),
        rope_cos: rope.cos,
        rope_sin: rope.sin,
        ip_hidden_states: ip,
        subject_scale: f32([1], [subjectScale]),
      }, { signal: ctx.signal });
      eulerStep(latents, out.noise_pred!.data as Float32Array, schedule.sigmas[i]!, schedule.sigmas[i + 1]!);
      const unpacked = unpackLatents(latents, channels, h, w);
      ctx.progress(i + 1, steps, await latentPreview(unpacked, channels, h, w));
    }
    return { latent: { samples: f32([1, channels, h, w], unpackLatents(latents, channels, h, w)) } };
  },
};
