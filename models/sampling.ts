// The flow-matching Euler sampler of FLUX.1-dev and the latent layout around it: the resolution-
// shifted sigma schedule, 2x2 packing of latents into tokens, their position ids, and seeded noise.
// Arithmetic follows the reference in float32 where it rounds (Math.fround), so steps match it.

export interface ScheduleConfig {
  baseImageSeqLen: number;
  maxImageSeqLen: number;
  baseShift: number;
  maxShift: number;
  numTrainTimesteps: number;
}

/** FLUX.1-dev's FlowMatchEulerDiscreteScheduler settings. */
export const FLUX_SCHEDULE: ScheduleConfig = {
  baseImageSeqLen: 256,
  maxImageSeqLen: 4096,
  baseShift: 0.5,
  maxShift: 1.15,
  numTrainTimesteps: 1000,
};

export interface Schedule {
  mu: number;
  /** steps + 1 values, the last one 0 (float32-rounded). */
  sigmas: Float32Array;
  /** sigma * 1000 for each step (what the adapter's time part receives). */
  timesteps: Float32Array;
}

/** mu grows linearly with the number of image tokens. */
export function resolutionShift(imageSeqLen: number, cfg: ScheduleConfig = FLUX_SCHEDULE): number {
  const slope = (cfg.maxShift - cfg.baseShift) / (cfg.maxImageSeqLen - cfg.baseImageSeqLen);
  return imageSeqLen * slope + (cfg.baseShift - slope * cfg.baseImageSeqLen);
}

/** sigmas = linspace(1, 1/N, N) shifted by mu, then 0 appended. */
export function flowMatchSchedule(steps: number, imageSeqLen: number, cfg: ScheduleConfig = FLUX_SCHEDULE): Schedule {
  if (!Number.isInteger(steps) || steps < 1) throw new Error(`steps must be a positive integer, got ${steps}`);
  const first = 1;
  const last = 1 / steps;
  const delta = steps === 1 ? 0 : (last - first) / (steps - 1);
  // linspace in float64 (the scheduler then takes it as float32)
  return shiftedSchedule(Array.from({ length: steps }, (_, i) => first + i * delta), imageSeqLen, cfg);
}

/** Why a custom sigma list cannot be a schedule, or undefined when it can: decreasing, every value in (0, 1]. */
export function sigmasProblem(sigmas: readonly number[]): string | undefined {
  if (sigmas.length === 0) return 'is empty';
  for (const [i, v] of sigmas.entries()) {
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0 || v > 1) return `value ${i} (${v}) is not in (0, 1]`;
    if (i > 0 && !(v < sigmas[i - 1]!)) return `is not decreasing at value ${i} (${sigmas[i - 1]} then ${v})`;
  }
  return undefined;
}

/**
 * The schedule for given unshifted sigmas (the official pipelines' `sigmas` argument, one per step): the
 * resolution shift applies to them as to the default list, in float32 as the scheduler does, then 0 is appended.
 */
export function shiftedSchedule(unshifted: readonly number[], imageSeqLen: number, cfg: ScheduleConfig = FLUX_SCHEDULE): Schedule {
  const problem = sigmasProblem(unshifted);
  if (problem) throw new Error(`sigmas ${problem}`);
  const steps = unshifted.length;
  const mu = resolutionShift(imageSeqLen, cfg);
  const sigmas = new Float32Array(steps + 1);
  const timesteps = new Float32Array(steps);
  const fr = Math.fround;
  const e = fr(Math.exp(mu));
  for (let i = 0; i < steps; i++) {
    const s = fr(unshifted[i]!);
    sigmas[i] = fr(e / fr(e + fr(fr(1 / s) - 1)));
    timesteps[i] = fr(sigmas[i]! * cfg.numTrainTimesteps);
  }
  sigmas[steps] = 0;
  return { mu, sigmas, timesteps };
}

/**
 * Image-to-image (diffusers' `strength`, ComfyUI-style `denoise` in (0, 1]): of the N-step schedule keep the
 * steps from t_start = int(N - N * denoise) on, as the diffusers img2img pipelines' get_timesteps does. That is
 * the last int(N * denoise) steps whenever N * denoise is whole (otherwise diffusers rounds the kept count up).
 */
export function truncateSchedule(schedule: Schedule, denoise: number): Schedule {
  if (!(denoise > 0 && denoise <= 1)) throw new Error(`denoise must be in (0, 1], got ${denoise}`);
  const n = schedule.timesteps.length;
  const start = Math.trunc(Math.max(n - Math.min(n * denoise, n), 0));
  return { mu: schedule.mu, sigmas: schedule.sigmas.slice(start), timesteps: schedule.timesteps.slice(start) };
}

/** FlowMatch scale_noise: the first latent of image-to-image, sigma * noise + (1 - sigma) * init, in float32. */
export function scaleNoise(init: Float32Array, noise: Float32Array, sigma: number): Float32Array {
  if (init.length !== noise.length) throw new Error(`scaleNoise: init has ${init.length} values, noise ${noise.length}`);
  const fr = Math.fround;
  const s = fr(sigma);
  const keep = fr(1 - s);
  const out = new Float32Array(init.length);
  for (let i = 0; i < init.length; i++) out[i] = fr(fr(s * noise[i]!) + fr(keep * init[i]!));
  return out;
}

/** One Euler step in place: x += (sigma_next - sigma) * v. */
export function eulerStep(latents: Float32Array, velocity: Float32Array, sigma: number, sigmaNext: number): void {
  const dt = Math.fround(sigmaNext - sigma);
  for (let i = 0; i < latents.length; i++) latents[i] = Math.fround(latents[i]! + Math.fround(dt * velocity[i]!));
}

/** Inpainting's blend in place: latents = (1 - mask) * keep + mask * latents, in float32 as torch computes it. */
export function inpaintBlend(latents: Float32Array, mask: Float32Array, keep: Float32Array): void {
  if (latents.length !== mask.length || keep.length !== mask.length) throw new Error(`inpaintBlend: ${latents.length} latents, ${mask.length} mask and ${keep.length} kept values`);
  const fr = Math.fround;
  for (let i = 0; i < latents.length; i++) {
    const m = mask[i]!;
    latents[i] = fr(fr(fr(1 - m) * keep[i]!) + fr(m * latents[i]!));
  }
}

/** [1, C, h, w] -> [1, (h/2)(w/2), 4C]: each 2x2 patch becomes one token (channel-major inside). */
export function packLatents(latent: Float32Array, channels: number, h: number, w: number): Float32Array {
  const out = new Float32Array(latent.length);
  const gw = w / 2;
  let o = 0;
  for (let gy = 0; gy < h / 2; gy++) {
    for (let gx = 0; gx < gw; gx++) {
      for (let c = 0; c < channels; c++) {
        for (let dy = 0; dy < 2; dy++) {
          for (let dx = 0; dx < 2; dx++) out[o++] = latent[(c * h + gy * 2 + dy) * w + gx * 2 + dx]!;
        }
      }
    }
  }
  return out;
}

/** Inverse of packLatents. */
export function unpackLatents(tokens: Float32Array, channels: number, h: number, w: number): Float32Array {
  const out = new Float32Array(tokens.length);
  const gw = w / 2;
  let o = 0;
  for (let gy = 0; gy < h / 2; gy++) {
    for (let gx = 0; gx < gw; gx++) {
      for (let c = 0; c < channels; c++) {
        for (let dy = 0; dy < 2; dy++) {
          for (let dx = 0; dx < 2; dx++) out[(c * h + gy * 2 + dy) * w + gx * 2 + dx] = tokens[o++]!;
        }
      }
    }
  }
  return out;
}

/**
 * Deterministic standard-normal noise from a seed: splitmix64 for uniforms, Box-Muller for normals.
 * Independent of platform and device, so a seed always gives the same image on the same device.
 */
export function seededNormal(seed: number, count: number): Float32Array {
  let state = BigInt.asUintN(64, BigInt(Math.trunc(seed)));
  const next = (): number => {
    state = BigInt.asUintN(64, state + 0x9e3779b97f4a7c15n);
    let z = state;
    z = BigInt.asUintN(64, (z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n);
    z = BigInt.asUintN(64, (z ^ (z >> 27n)) * 0x94d049bb133111ebn);
    z ^= z >> 31n;
    return (Number(z >> 11n) + 0.5) / 2 ** 53; // (0, 1)
  };
  const out = new Float32Array(count);
  for (let i = 0; i < count; i += 2) {
    const r = Math.sqrt(-2 * Math.log(next()));
    const theta = 2 * Math.PI * next();
    out[i] = r * Math.cos(theta);
    if (i + 1 < count) out[i + 1] = r * Math.sin(theta);
  }
  return out;
}
