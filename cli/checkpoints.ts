// `charflow models convert` and `charflow models pull`: registered on the CLI's commander program.
import { type Command, InvalidArgumentError, Option } from 'commander';
import cliProgress from 'cli-progress';
import { existsSync } from 'node:fs';
import { CliError, commandAction, EXIT, pathsFor, type CliContext } from './context.ts';
import type { ComponentName } from '../models/modelset.ts';
import { COMPONENTS, type ConvertEvent, type ConvertOptions, DEFAULT_FP32, convertCheckpoints } from '../models/convert/convert.ts';
import type { CheckpointPaths } from '../models/convert/layouts.ts';
import { type LoraSpec, parseLoraArg } from '../models/convert/lora.ts';
import { ADAPTER_FILE, ADAPTER_REPO, DINOV2_REPO, FLUX_REPO, type PullEvent, SIGLIP_REPO, pullRepos } from '../models/convert/pull.ts';
import { join } from 'node:path';
import { type WeightFormat, DEFAULT_BLOCK, parseWeightFormat, resolveFormats } from '../models/quant/formats.ts';
import { checkBlock } from '../models/quant/quantize.ts';
import { resolveComfyui } from '../models/convert/comfyui.ts';

export const DEFAULT_SET_NAME = 'instantcharacter';

interface CommonFlags {
  name: string;
  dtype: 'fp16' | 'fp32';
  fp32: ComponentName[];
  weights?: WeightFormat;
  block?: number;
  symmetric?: boolean;
  fp16?: ComponentName[];
  int8?: ComponentName[];
  int4?: ComponentName[];
  lora: LoraSpec[];
  force?: boolean;
  models?: string;
  data?: string;
  adapterConfig?: string;
}

/** The checkpoint options are exactly the converter's inputs (with --comfyui, flux and siglip may come from there). */
type ConvertFlags = CommonFlags & CheckpointPaths & { comfyui?: string };

/**
 * --comfyui DIR: the parts the flags leave out (and the names they give) resolved in a ComfyUI models folder.
 */
export function comfyuiFlags(flags: ConvertFlags): ConvertFlags {
  if (!flags.comfyui) return flags;
  const given = { flux: flags.flux, clip: flags.clip, t5: flags.t5, vae: flags.vae, loras: flags.lora.map((l) => l.path) };
  let r;
  try {
    r = resolveComfyui(flags.comfyui, given, !flags.siglip);
  } catch (err) {
    throw new CliError((err as Error).message, EXIT.invalid);
  }
  return { ...flags, flux: r.flux, clip: r.clip, t5: r.t5, vae: r.vae, siglip: flags.siglip ?? r.siglip!, lora: flags.lora.map((l, i) => ({ ...l, path: r.loras[i]! })) };
}

interface PullFlags extends CommonFlags {
  token?: string;
  endpoint?: string;
  downloadOnly?: boolean;
}

/** `--fp32` names: the components, with `adapter` for both adapter graphs and `vae` for decoder and encoder. */
const FP32_NAMES = ['siglip', 'dinov2', 'adapter', 'flux', 'vae', 't5', 'clip'];

/** Parses `--fp32 vae,t5` (or `none`) into component names. */
export function parseFp32List(value: string): ComponentName[] {
  const names = value.split(',').map((s) => s.trim().toLowerCase()).filter(Boolean);
  if (names.length === 1 && names[0] === 'none') return [];
  const out = new Set<ComponentName>();
  for (const n of names) {
    if (n === 'adapter') ['adapter_static', 'adapter_time'].forEach((c) => out.add(c as ComponentName));
    else if (n === 'vae') ['vae', 'vae_encoder'].forEach((c) => out.add(c as ComponentName));
    else if ((COMPONENTS as readonly string[]).includes(n)) out.add(n as ComponentName);
    else throw new InvalidArgumentError(`"${n}" is not a component; use a comma list of ${FP32_NAMES.join(', ')}, or none`);
  }
  if (!out.size) throw new InvalidArgumentError(`name components (${FP32_NAMES.join(', ')}) or none`);
  return [...out];
}

/** `--weights int4`: one of the formats, else an argument error. */
function weightsArg(value: string): WeightFormat {
  try {
    return parseWeightFormat(value);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message.replace(/^--weights: /, ''));
  }
}

/** `--block 64`: a power of two MatMulNBits takes. */
function blockArg(value: string): number {
  const n = Number(value);
  try {
    checkBlock(n);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
  return n;
}

/**
 * The converter's weight options from the flags: `--weights` (else `--dtype`) for every component, the
 * component lists `--fp16`, `--int8`, `--int4` on top (`--fp32` keeps its meaning). A component named in
 * two lists, or int8/int4 asked of the VAE, is an argument error.
 */
export function weightOptions(flags: Pick<CommonFlags, 'dtype' | 'fp32' | 'weights' | 'block' | 'symmetric' | 'fp16' | 'int8' | 'int4'>): Pick<ConvertOptions, 'dtype' | 'weights' | 'formats' | 'block' | 'symmetric' | 'fp32'> {
  const base: WeightFormat = flags.weights ?? flags.dtype;
  const formats: Partial<Record<ComponentName, WeightFormat>> = {};
  for (const f of ['fp16', 'int8', 'int4'] as const) {
    for (const c of flags[f] ?? []) {
      if (formats[c] && formats[c] !== f) throw new CliError(`${c} is named by both --${formats[c]} and --${f}`, EXIT.invalid);
      formats[c] = f;
    }
  }
  const quantized = base === 'int8' || base === 'int4' || Object.values(formats).some((f) => f === 'int8' || f === 'int4');
  if (!quantized && (flags.block !== undefined || flags.symmetric)) {
    throw new CliError('--block and --symmetric apply to int8 and int4 weights: add --weights int8|int4 (or --int8/--int4 <components>)', EXIT.invalid);
  }
  // --fp32 names that are also in another list: the explicit list wins only if --fp32 was left at its default.
  const explicitFp32 = flags.fp32.filter((c) => !DEFAULT_FP32.includes(c));
  for (const c of explicitFp32) if (formats[c]) throw new CliError(`${c} is named by both --fp32 and --${formats[c]}`, EXIT.invalid);
  try {
    resolveFormats(COMPONENTS, { base, overrides: formats, fp32: flags.fp32, block: flags.block, symmetric: flags.symmetric });
  } catch (err) {
    throw new CliError((err as Error).message, EXIT.invalid);
  }
  return {
    dtype: base === 'fp16' ? 'float16' : 'float32', fp32: flags.fp32,
    ...(flags.weights || Object.keys(formats).length ? { weights: base, formats, block: flags.block, symmetric: flags.symmetric } : {}),
  };
}

const mb = (n: number): string => `${(n / 1024 ** 2).toFixed(0)} MB`;

/** Progress of a conversion: one bar per component, counted in weights read. */
function convertReporter(): { onEvent: (e: ConvertEvent) => void; stop: () => void; log: (s: string) => void } {
  const tty = Boolean(process.stderr.isTTY);
  const bars = new cliProgress.MultiBar({
    format: ' {component} [{bar}] {percentage}% | {value}/{total} M weights | {duration_formatted}',
    hideCursor: true, clearOnComplete: false, stopOnComplete: false, barsize: 30,
  }, cliProgress.Presets.shades_classic);
  let bar: cliProgress.SingleBar | undefined;
  const log = (s: string) => (tty ? bars.log(`${s}\n`) : console.log(s));
  const onEvent = (e: ConvertEvent) => {
    switch (e.type) {
      case 'verify':
        log(`${e.component}: ${e.ok ? 'already converted (verified)' : 'damaged, converting again'}`);
        break;
      case 'plan':
        if (!e.build.length) log('everything is already converted');
        else log(`converting ${e.build.join(', ')}${e.reuse.length ? `; keeping ${e.reuse.join(', ')}` : ''}`);
        break;
      case 'start':
        if (tty) bar = bars.create(Math.max(1, Math.round(e.parameters / 1e6)), 0, { component: e.component.padEnd(14) });
        else log(`${e.component}: converting ${(e.parameters / 1e6).toFixed(0)} M weights`);
        break;
      case 'weights':
        bar?.update(Math.min(bar.getTotal(), Math.round(e.done / 1e6)));
        break;
      case 'written': {
        bar?.update(bar.getTotal());
        bar = undefined;
        const bytes = e.entry.bytes + (e.entry.data ?? []).reduce((n, d) => n + d.bytes, 0);
        log(`${e.component}: written (${mb(bytes)}${e.entry.dtype ? `, ${e.entry.dtype}` : ''})`);
        break;
      }
    }
  };
  return { onEvent, stop: () => bars.stop(), log };
}

/** Progress of a download: one bar per file, in MB. */
function pullReporter(): { onEvent: (e: PullEvent) => void; stop: () => void } {
  const tty = Boolean(process.stderr.isTTY);
  const bars = new cliProgress.MultiBar({
    format: ' {file} [{bar}] {percentage}% | {value}/{total} MB | {eta_formatted}', hideCursor: true, barsize: 30,
  }, cliProgress.Presets.shades_classic);
  let bar: cliProgress.SingleBar | undefined;
  const log = (s: string) => (tty ? bars.log(`${s}\n`) : console.log(s));
  const onEvent = (e: PullEvent) => {
    switch (e.type) {
      case 'repo': log(`${e.repo}: ${e.files} files, ${mb(e.bytes)}`); break;
      case 'file':
        if (e.action === 'skip') log(`  ${e.path}: already downloaded`);
        else if (tty) bar = bars.create(Math.max(1, Math.round(e.size / 1024 ** 2)), Math.round(e.from / 1024 ** 2), { file: e.path.slice(-40).padEnd(40) });
        else log(`  ${e.path}: ${e.action === 'resume' ? `continuing at ${mb(e.from)} of` : 'downloading'} ${mb(e.size)}`);
        break;
      case 'bytes': bar?.update(Math.round(e.done / 1024 ** 2)); break;
      case 'verified':
        bar?.stop();
        if (bar) bars.remove(bar);
        bar = undefined;
        log(`  ${e.path}: verified`);
        break;
    }
  };
  return { onEvent, stop: () => bars.stop() };
}

async function runConvert(opts: ConvertOptions): Promise<void> {
  const r = convertReporter();
  try {
    const res = await convertCheckpoints({ ...opts, onEvent: r.onEvent, warn: (m) => r.log(`warning: ${m}`) });
    r.stop();
    console.log(`model set "${opts.name}" ready in ${res.dir} (${res.built.length} graphs built, ${res.reused.length} kept)`);
  } finally {
    r.stop();
  }
}

/** The flags that name input files or folders, as the user typed them. */
const PATH_FLAGS = ['flux', 'base', 'vae', 'clip', 't5', 'clipTokenizer', 't5Tokenizer', 'siglip', 'dinov2', 'adapter', 'adapterConfig'] as const;

/** A path flag naming nothing is an argument error (exit 2), reported before any work starts. */
function checkPaths(flags: Partial<ConvertFlags>): void {
  for (const key of PATH_FLAGS) {
    const p = flags[key];
    if (p !== undefined && !existsSync(p)) {
      throw new CliError(`--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} ${p}: no such file or folder`, EXIT.invalid);
    }
  }
  for (const l of flags.lora ?? []) if (!existsSync(l.path)) throw new CliError(`--lora ${l.path}: no such file`, EXIT.invalid);
}

/**
 * Wraps an action: argument errors stay CliErrors (exit 2); a conversion or download that fails
 * becomes one line with exit code 1 (see commandAction).
 */
function action<A extends unknown[]>(ctx: CliContext, fn: (...args: A) => Promise<void>): (...args: A) => Promise<void> {
  return commandAction(ctx, async (...args: A) => {
    try {
      await fn(...args);
    } catch (err) {
      if (err instanceof CliError) throw err;
      throw new CliError((err as Error).message, EXIT.nodeFailed);
    }
  });
}

function addCommon(cmd: Command): Command {
  return cmd
    .option('--name <name>', 'name of the model set', DEFAULT_SET_NAME)
    .addOption(new Option('--dtype <dtype>', 'weight precision of the graphs').choices(['fp16', 'fp32']).default('fp16'))
    .option('--weights <format>', 'weight format of the graphs: fp32, fp16 (= --dtype), int8 or int4 (Linears as ONNX Runtime MatMulNBits, the rest float32)', weightsArg)
    .option('--block <n>', `int8/int4: weights per quantization block along K, a power of two (32, 64 or 128; default ${DEFAULT_BLOCK})`, blockArg)
    .option('--symmetric', 'int8/int4: symmetric blocks without zero points (default: asymmetric, as ONNX Runtime quantizes)')
    .option('--fp16 <components>', 'components written in fp16 whatever --weights says (comma list)', parseFp32List)
    .option('--int8 <components>', 'components written in int8 whatever --weights says, e.g. --weights int4 --int8 t5', parseFp32List)
    .option('--int4 <components>', 'components written in int4 whatever --weights says', parseFp32List)
    .addOption(new Option('--fp32 <components>', `with --dtype fp16, the components kept in float32: a comma list of ${FP32_NAMES.join(', ')}, or none for all fp16 (the VAE decoder overflows fp16 at high resolutions and is small)`)
      .argParser(parseFp32List).default([...DEFAULT_FP32], DEFAULT_FP32.join(',')))
    .option('--lora <file:weight>', 'merge a FLUX style LoRA into the transformer (repeatable)', (v: string, acc: LoraSpec[]) => [...acc, parseLoraArg(v)], [] as LoraSpec[])
    .option('--adapter-config <file>', 'adapter constructor kwargs as JSON (default: the official ones)')
    .option('--force', 'replace an existing set made from other checkpoints')
    .option('--models <dir>', 'models folder (default <data>/models, or CHARFLOW_MODELS)')
    .option('--data <dir>', 'data folder (default ./data, or CHARFLOW_DATA)');
}

const REQUIRED_CONVERT = ['flux', 'siglip', 'dinov2', 'adapter'] as const;
const REQUIRED_WHAT: Record<(typeof REQUIRED_CONVERT)[number], string> = {
  flux: 'the FLUX.1-dev folder or transformer file',
  siglip: 'the SigLIP folder',
  dinov2: 'the DINOv2 folder',
  adapter: 'the InstantCharacter adapter file',
};

/** Adds `models convert` and `models pull` (to an existing `models` command when there is one). */
export function registerModels(program: Command, ctx: CliContext): void {
  const models = program.commands.find((c) => c.name() === 'models') ?? program.command('models').description('manage model sets');

  addCommon(models.command('convert')
    .description('convert FLUX.1-dev, SigLIP, DINOv2 and InstantCharacter checkpoints into a model set')
    .option('--flux <path>', 'required unless --comfyui finds it: FLUX.1-dev Hugging Face folder, or a single-file transformer (flux1-dev.safetensors, or a GGUF such as flux1-dev-Q4_K_S.gguf)')
    .option('--siglip <dir>', 'required unless --comfyui finds it: google/siglip-so400m-patch14-384 folder (or, with --comfyui, clip_vision/sigclip_vision_patch14_384.safetensors)')
    .option('--comfyui <dir>', 'ComfyUI models folder: --flux, --clip, --t5, --vae, --siglip and --lora names are found in unet/ or diffusion_models/, clip/ or text_encoders/, vae/, clip_vision/ and loras/; a part not named is taken when exactly one file fits')
    .option('--dinov2 <dir>', 'required: facebook/dinov2-giant folder')
    .option('--adapter <file>', 'required: instantcharacter_ip-adapter.bin')
    .option('--base <dir>', 'FLUX.1 Hugging Face folder for the parts a single-file --flux lacks')
    .option('--vae <path>', 'VAE folder or file (diffusers, or ae.safetensors)')
    .option('--clip <path>', 'CLIP-L text encoder folder or file')
    .option('--t5 <path>', 'T5-XXL text encoder folder or file (safetensors, or a llama.cpp GGUF such as t5-v1_1-xxl-encoder-Q8_0.gguf)')
    .option('--clip-tokenizer <path>', 'CLIP tokenizer folder (vocab.json + merges.txt, or tokenizer.json)')
    .option('--t5-tokenizer <path>', 'T5 tokenizer.json or its folder'))
    .action(action(ctx, async (raw: ConvertFlags) => {
      // Every missing one at once (commander's requiredOption stops at the first); --comfyui may find --flux and --siglip.
      const missing = REQUIRED_CONVERT.filter((k) => raw[k] === undefined && !(raw.comfyui && (k === 'flux' || k === 'siglip')));
      if (missing.length) {
        throw new CliError(`models convert needs ${missing.map((k) => `--${k}`).join(', ')} (${missing.map((k) => REQUIRED_WHAT[k]).join('; ')}), or use \`charflow models pull\` to download them (or --comfyui DIR for a ComfyUI models folder)`, EXIT.invalid);
      }
      const flags = comfyuiFlags(raw);
      checkPaths(flags);
      const { models: modelsDir } = pathsFor(ctx, flags);
      await runConvert({
        ...flags, modelsDir, name: flags.name, ...weightOptions(flags), loras: flags.lora,
      });
    }));

  addCommon(models.command('pull')
    .description(`download ${FLUX_REPO}, ${SIGLIP_REPO}, ${DINOV2_REPO} and ${ADAPTER_REPO} into <models>/downloads, then convert them`)
    .option('--token <token>', 'Hugging Face access token (FLUX.1-dev is gated; default HF_TOKEN or the huggingface-cli login)')
    .option('--endpoint <url>', 'hub URL (default https://huggingface.co, or HF_ENDPOINT)')
    .option('--download-only', 'stop after downloading'))
    .action(action(ctx, async (flags: PullFlags) => {
      checkPaths(flags);
      const weightOpts = weightOptions(flags); // refused before any download
      const { models: modelsDir } = pathsFor(ctx, flags);
      const r = pullReporter();
      let folders: Record<string, string>;
      try {
        folders = await pullRepos({ modelsDir, token: flags.token, endpoint: flags.endpoint, onEvent: r.onEvent });
      } finally {
        r.stop();
      }
      if (flags.downloadOnly) return;
      await runConvert({
        modelsDir, name: flags.name, ...weightOpts, loras: flags.lora, force: flags.force,
        adapterConfig: flags.adapterConfig,
        flux: folders[FLUX_REPO]!, siglip: folders[SIGLIP_REPO]!, dinov2: folders[DINOV2_REPO]!, adapter: join(folders[ADAPTER_REPO]!, ADAPTER_FILE),
      });
    }));
}
