// Which execution provider the pool uses. onnxruntime-node 1.30 lists the providers compiled into
// the build (listSupportedBackends: cpu, webgpu, cuda, tensorrt on linux/x64), but a listed provider
// may still be unusable: the CUDA libraries are a separate download (bundled: false) and WebGPU
// needs a GPU adapter (Vulkan on Linux). So a device counts as available only when a trial session
// on a tiny graph runs on it and gives the right values. Probes run in a worker thread, once per
// process and device.
import { execFile } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { totalmem } from 'node:os';
import { WorkerClient } from './client.ts';
import { cudaProviderDir, linkCudaProvider } from './cuda-provider.ts';
import type { Device, DeviceRequest, ProbeOutcome } from './protocol.ts';

export type { Device, DeviceRequest };

export class DeviceUnavailableError extends Error {
  override name = 'DeviceUnavailableError';
}

const AUTO_ORDER: readonly Device[] = ['cuda', 'webgpu', 'cpu'];
const probes = new Map<Device, Promise<ProbeOutcome>>();
let trials = 0;

/** How many device trials this process has started (each device once, unless a probe itself failed). */
export function deviceTrials(): number {
  return trials;
}

function probeWith(worker: () => WorkerClient, device: Device): Promise<ProbeOutcome> {
  let p = probes.get(device);
  if (!p) {
    trials++;
    p = worker().request({ type: 'probe', devices: [device], stopAtFirst: false }).then((r) => r[0]!);
    probes.set(device, p);
    p.catch(() => probes.delete(device)); // a probe that could not run is retried next time
  }
  return p;
}

/**
 * Whether this Linux machine exposes a GPU to user space: a DRM render node (Mesa, AMD, Intel), the
 * NVIDIA driver's device, or WSL2's GPU paravirtualisation device. Without one, any Vulkan adapter is a software rasteriser (lavapipe,
 * SwiftShader) that runs the WebGPU provider far slower than the CPU provider. Other platforms: yes.
 */
export function hasGpuDeviceNode(): boolean {
  if (process.platform !== 'linux') return true;
  if (existsSync('/dev/nvidia0') || existsSync('/dev/dxg')) return true;
  try {
    return readdirSync('/dev/dri').some((n) => n.startsWith('renderD'));
  } catch {
    return false;
  }
}

const SOFTWARE_VULKAN = 'no GPU device node (/dev/dri/renderD*, /dev/nvidia0), so its Vulkan adapter can only be a '
  + 'software one (lavapipe, SwiftShader)';

export function unavailableMessage(o: ProbeOutcome): string {
  const reason = o.reason ?? 'unknown reason';
  switch (o.device) {
    case 'cuda':
      if (o.providerFilesMissing) {
        return `CUDA was requested but onnxruntime-node has no CUDA provider here: run scripts/install-cuda.sh once `
          + `to install the CUDA 12 provider libraries into ${cudaProviderDir()} (kept across npm ci) (${reason})`;
      }
      return `CUDA was requested but a trial session on the CUDA provider failed: ${reason}. `
        + 'Check the NVIDIA driver and the CUDA 12 / cuDNN 9 libraries (scripts/install-cuda.sh installs the provider)';
    case 'webgpu':
      return 'WebGPU was requested but a trial session on the WebGPU provider failed (on Linux it needs a GPU with '
        + `a Vulkan driver: libvulkan.so.1 and the vendor's ICD): ${reason}`;
    case 'cpu':
      return `the CPU provider could not run a trial session: ${reason}`;
  }
}

/**
 * Resolves the device to use. 'auto' tries CUDA, then WebGPU (only where a GPU device node exists),
 * then CPU, and logs what it got and why it skipped the others. An explicit device that cannot run throws DeviceUnavailableError.
 * Probes run on `host` when given (it stays alive), else on a worker started and ended here.
 */
export interface ResolvedDevice {
  device: Device;
  /** Set where the device cannot run float16 graphs: why (a WebGPU adapter without shader-f16). */
  noFloat16?: string;
  /** Set where the device cannot run quantized (MatMulNBits) graphs: why. */
  noMatMulNBits?: string;
}

export async function resolveDevice(requested: DeviceRequest, log: (msg: string) => void, host?: WorkerClient): Promise<ResolvedDevice> {
  const order = requested === 'auto' ? AUTO_ORDER : [requested];
  let worker: WorkerClient | undefined;
  const lazyWorker = () => host ?? (worker ??= new WorkerClient('device probe'));
  try {
    const skipped: string[] = [];
    for (const device of order) {
      if (device === 'webgpu' && !hasGpuDeviceNode()) {
        if (requested === 'auto') {
          skipped.push(`webgpu: ${SOFTWARE_VULKAN}, slower than the CPU provider`);
          continue; // not even probed: a software adapter would pass the trial
        }
        log(`runtime: WebGPU was requested with ${SOFTWARE_VULKAN}; expect it to be slower than --device cpu`);
      }
      if (device === 'cuda') {
        // After a reinstall of node_modules: the provider installed once is linked back, no download.
        const link = linkCudaProvider();
        if (link.linked.length) log(`runtime: linked the CUDA provider from ${cudaProviderDir()} into onnxruntime-node (${link.linked.join(', ')})`);
        else if (link.problem && requested === 'cuda') log(`runtime: ${link.problem}`);
      }
      const outcome = await probeWith(lazyWorker, device);
      if (outcome.ok) {
        const why = skipped.length ? ` (skipped ${skipped.join('; ')})` : '';
        log(`runtime device: ${device}${requested === 'auto' ? ', chosen by auto' : ''}${why}`);
        if (outcome.noFloat16) log(`runtime: ${device} cannot run float16 models here (${outcome.noFloat16}); float32 model sets only`);
        if (outcome.noMatMulNBits) log(`runtime: ${device} cannot run int8/int4 models here (${outcome.noMatMulNBits}); float model sets only`);
        return { device, noFloat16: outcome.noFloat16, noMatMulNBits: outcome.noMatMulNBits };
      }
      if (requested !== 'auto') throw new DeviceUnavailableError(unavailableMessage(outcome));
      skipped.push(`${device}: ${outcome.reason ?? 'unavailable'}`);
    }
    throw new DeviceUnavailableError(`no execution provider could run a trial session: ${skipped.join('; ')}`);
  } finally {
    await (worker as WorkerClient | undefined)?.terminate();
  }
}

/** Total memory of GPU 0 in bytes from nvidia-smi, or undefined when it cannot tell. */
function cudaMemoryBytes(): Promise<number | undefined> {
  return new Promise((resolve) => {
    execFile('nvidia-smi', ['--query-gpu=memory.total', '--format=csv,noheader,nounits', '-i', '0'], { timeout: 5000 }, (err, stdout) => {
      const mib = err ? NaN : Number.parseFloat(stdout.trim());
      resolve(Number.isFinite(mib) && mib > 0 ? mib * 1024 * 1024 : undefined);
    });
  });
}

/**
 * Default memory budget: 75% of RAM for CPU; 80% of GPU 0's memory for CUDA (activations come on
 * top of the weights the estimate counts). WebGPU cannot report its memory, so it gets the RAM rule.
 */
export async function defaultMemoryBudget(device: Device, log: (msg: string) => void): Promise<number> {
  if (device === 'cuda') {
    const gpu = await cudaMemoryBytes();
    if (gpu) return Math.floor(gpu * 0.8);
    log('runtime: nvidia-smi could not report GPU memory; the memory budget falls back to 75% of RAM (set memoryBudgetBytes)');
  }
  return Math.floor(totalmem() * 0.75);
}
