// The CUDA provider of onnxruntime-node lives outside node_modules, so that it survives `npm ci`.
//
// npm does not ship ORT's CUDA provider libraries (too large for the registry), and ORT looks for
// them in one place only: the folder of its own libonnxruntime.so.1 (it finds that folder with
// dladdr; the Node binding has no option to point it elsewhere). scripts/install-cuda.sh therefore
// keeps the libraries in a folder of their own (cudaProviderDir) and links them into that folder;
// a reinstall of node_modules removes the links, and linkCudaProvider() puts them back before
// charflow's first CUDA session, with no download.
import { existsSync, lstatSync, readFileSync, symlinkSync, unlinkSync } from 'node:fs';
import { createRequire } from 'node:module';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';

/** The provider libraries ORT loads for CUDA, by file name (Linux x86_64: the only platform with them). */
export const CUDA_PROVIDER_FILES = ['libonnxruntime_providers_shared.so', 'libonnxruntime_providers_cuda.so'] as const;

/** onnxruntime-node's package folder. */
function ortPackageDir(): string {
  // The main entry is dist/index.js.
  return join(dirname(createRequire(import.meta.url).resolve('onnxruntime-node')), '..');
}

/** onnxruntime-node's version (the provider must come from the same ORT release). */
export function ortVersion(): string {
  return (JSON.parse(readFileSync(join(ortPackageDir(), 'package.json'), 'utf8')) as { version: string }).version;
}

/** The folder of this platform's native ORT files, where ORT looks for provider libraries. */
export function ortBinaryDir(): string {
  return join(ortPackageDir(), 'bin', 'napi-v6', process.platform, process.arch);
}

/**
 * Where scripts/install-cuda.sh keeps the provider: $CHARFLOW_CUDA_PROVIDER, else
 * $XDG_CACHE_HOME/charflow (default ~/.cache/charflow) /onnxruntime-node-<version>-cuda12.
 * The version is in the name because a provider only works with the ORT build it came with.
 */
export function cudaProviderDir(env: Readonly<Record<string, string | undefined>> = process.env, version = ortVersion()): string {
  if (env.CHARFLOW_CUDA_PROVIDER) return env.CHARFLOW_CUDA_PROVIDER;
  const cache = env.XDG_CACHE_HOME || join(homedir(), '.cache');
  return join(cache, 'charflow', `onnxruntime-node-${version}-cuda12`);
}

export interface LinkResult {
  /** Files linked now. */
  linked: string[];
  /** Why nothing could be linked where something was missing (for the device probe's message). */
  problem?: string;
}

/** True when `path` exists or is a link (a dangling link counts: it must be replaced, not kept). */
function present(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Links the provider libraries from the provider folder into ORT's folder where they are missing
 * there (or are links that point nowhere). Does nothing on other platforms than Linux x86_64, or
 * when the files are in place.
 */
export function linkCudaProvider(
  bin = ortBinaryDir(),
  source = cudaProviderDir(),
  platform = `${process.platform}/${process.arch}`,
): LinkResult {
  if (platform !== 'linux/x64') return { linked: [] };
  const missing = CUDA_PROVIDER_FILES.filter((f) => !existsSync(join(bin, f)));
  if (!missing.length) return { linked: [] };
  const absent = missing.filter((f) => !existsSync(join(source, f)));
  if (absent.length) return { linked: [], problem: `${absent.join(', ')} not in ${source} (scripts/install-cuda.sh installs the provider there)` };
  const linked: string[] = [];
  try {
    for (const f of missing) {
      const target = join(bin, f);
      if (present(target)) unlinkSync(target); // a link into a folder that is gone
      symlinkSync(join(source, f), target);
      linked.push(f);
    }
  } catch (err) {
    return { linked, problem: `cannot link the provider from ${source} into ${bin}: ${(err as Error).message}` };
  }
  return { linked };
}
