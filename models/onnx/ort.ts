// Conversions between host tensors and onnxruntime-node tensors (no copies where dtypes allow).
import * as ort from 'onnxruntime-node';
import type { Tensor, TensorData } from '../tensor.ts';

export function toOrt(t: Tensor): ort.Tensor {
  switch (t.dtype) {
    case 'float32': return new ort.Tensor('float32', t.data as Float32Array, t.dims);
    case 'float16': return new ort.Tensor('float16', t.data as Uint16Array, t.dims);
    case 'int64': return new ort.Tensor('int64', t.data as BigInt64Array, t.dims);
    case 'int32': return new ort.Tensor('int32', t.data as Int32Array, t.dims);
    case 'uint8': return new ort.Tensor('uint8', t.data as Uint8Array, t.dims);
    case 'bool': return new ort.Tensor('bool', t.data as Uint8Array, t.dims);
    case 'float64': return new ort.Tensor('float64', t.data as Float64Array, t.dims);
    case 'bfloat16': throw new Error('onnxruntime-node cannot feed bfloat16 tensors; convert to float16 or float32 first');
  }
}

export function fromOrt(t: ort.Tensor): Tensor {
  const dims = [...t.dims];
  switch (t.type) {
    case 'float32': return { dtype: 'float32', dims, data: t.data as Float32Array };
    case 'float16': return { dtype: 'float16', dims, data: t.data as unknown as Uint16Array };
    case 'int64': return { dtype: 'int64', dims, data: t.data as BigInt64Array };
    case 'int32': return { dtype: 'int32', dims, data: t.data as Int32Array };
    case 'uint8': return { dtype: 'uint8', dims, data: t.data as Uint8Array };
    case 'bool': return { dtype: 'bool', dims, data: t.data as Uint8Array };
    case 'float64': return { dtype: 'float64', dims, data: t.data as Float64Array };
    default: throw new Error(`unsupported output type ${t.type}`);
  }
}

/** Runs a model once on the calling thread (tests and tools; the server uses the worker runtime). */
export async function runOnce(model: Uint8Array | string, feeds: Record<string, Tensor>, opts: ort.InferenceSession.SessionOptions = {}): Promise<Record<string, Tensor>> {
  const session = typeof model === 'string'
    ? await ort.InferenceSession.create(model, opts)
    : await ort.InferenceSession.create(model, opts);
  try {
    const ortFeeds: Record<string, ort.Tensor> = {};
    for (const [k, v] of Object.entries(feeds)) ortFeeds[k] = toOrt(v);
    const out = await session.run(ortFeeds);
    const result: Record<string, Tensor> = {};
    for (const [k, v] of Object.entries(out)) result[k] = fromOrt(v);
    return result;
  } finally {
    await session.release();
  }
}

export type { TensorData };
