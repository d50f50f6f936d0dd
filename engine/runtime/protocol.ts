// Messages between the session pool (main thread) and its worker threads. Each request carries an
// id; the worker answers every request exactly once with the same id.
import type { Tensor } from '../../models/tensor.ts';

export type Device = 'cpu' | 'cuda' | 'webgpu';
export type DeviceRequest = Device | 'auto';

export interface ProbeOutcome {
  device: Device;
  ok: boolean;
  /** Why the device cannot run (ORT's message or a missing file). */
  reason?: string;
  /** CUDA only: the provider libraries that the package downloads separately are absent. */
  providerFilesMissing?: boolean;
  /**
   * WebGPU only, when ok: why float16 graphs cannot run (the adapter lacks the shader-f16 feature).
   * Absent where they can; the CPU and CUDA providers always run them.
   */
  noFloat16?: string;
  /**
   * WebGPU only, when ok: why quantized graphs (com.microsoft MatMulNBits, int8/int4 sets) cannot run
   * (a trial MatMulNBits failed or gave wrong values). Absent where they can.
   */
  noMatMulNBits?: string;
}

export interface SessionConfig {
  device: Device;
  intraOpThreads: number;
}

export interface CacheRequest {
  /** Final folder of this model's optimised copy (model.onnx [+ model.onnx.data]). */
  dir: string;
  /** Write initializers to an external-data file (needed when the source has external data). */
  externalData: boolean;
}

export interface LoadResult {
  inputNames: string[];
  outputNames: string[];
  /** 'hit': loaded the optimised copy; 'written': optimised copy saved; 'off': no cache; 'failed': cache unusable. */
  cache: 'hit' | 'written' | 'off' | 'failed';
  cacheNote?: string;
  loadMs: number;
}

export interface RunResult {
  outputs: Record<string, Tensor>;
  threadId: number;
  /** Wall-clock (epoch ms, sub-ms precision) around session.run inside the worker. */
  startedAt: number;
  endedAt: number;
}

export type Request =
  | { type: 'probe'; devices: Device[]; stopAtFirst: boolean }
  | { type: 'load'; modelPath: string; config: SessionConfig; cache?: CacheRequest }
  | { type: 'run'; feeds: Record<string, Tensor>; outputs?: string[]; bound?: string }
  /** Keeps feeds in the worker under `key` (run-time LoRA factors): runs naming the key get them without a copy. */
  | { type: 'bind'; key: string; feeds: Record<string, Tensor> }
  | { type: 'unbind'; key: string }
  | { type: 'release' }
  /** Test hook: throws an uncaught error in the worker, as a native or JS crash would end it. */
  | { type: 'crash' };

export interface Replies {
  probe: ProbeOutcome[];
  load: LoadResult;
  run: RunResult;
  bind: null;
  unbind: null;
  release: null;
  crash: null;
}

export type RequestOf<K extends Request['type']> = Extract<Request, { type: K }>;

export interface Envelope {
  id: number;
  req: Request;
}

export interface WireError {
  name: string;
  message: string;
}

export type Reply =
  | { id: number; ok: true; value: Replies[keyof Replies] }
  | { id: number; ok: false; error: WireError };

/**
 * The buffers to transfer for these tensors (each once: a transfer list may not repeat a buffer).
 * SharedArrayBuffers are shared by postMessage anyway and cannot be transferred.
 */
export function transferList(tensors: Iterable<Tensor>): ArrayBuffer[] {
  const list = new Set<ArrayBuffer>();
  for (const t of tensors) {
    if (t.data.buffer instanceof ArrayBuffer) list.add(t.data.buffer);
  }
  return [...list];
}
