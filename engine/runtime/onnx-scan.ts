// Reads what the pool needs to know about a model without loading it: graph input/output names
// and the external-data files its initializers point to (to size it against the memory budget).
// The scan walks the protobuf with positioned reads and skips weight bytes, so a multi-GB model
// with inline weights costs a few small reads, not a full read on the main thread.
import { open, stat, type FileHandle } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';

export interface ModelScan {
  /** Absolute path of the .onnx file. */
  path: string;
  /** Graph inputs that are not initializers (what a run must feed). */
  inputNames: string[];
  outputNames: string[];
  /** Absolute paths of the external-data files, each listed once. */
  externalFiles: string[];
  /** .onnx size plus the size of every external-data file. */
  bytes: number;
  /** Bytes of the float16 initializers (the CPU provider widens most of them to float32). */
  halfBytes: number;
  /**
   * Bytes of the uint8 initializers: MatMulNBits' packed 4/8-bit weights and zero points. They are
   * counted as they are on disk (included in `bytes`): ORT keeps them packed, never widened to float32.
   */
  packedBytes: number;
  /** Imports ONNX Runtime's com.microsoft domain (MatMulNBits): devices without those kernels refuse it. */
  contribOps: boolean;
  /** Identity of the files on disk (path, sizes, mtimes): changes when the model is rebuilt. */
  fingerprint: string;
}

export class ModelFileError extends Error {
  override name = 'ModelFileError';
}

const WINDOW = 64 * 1024;
const WIRE_VARINT = 0;
const WIRE_FIXED64 = 1;
const WIRE_BYTES = 2;
const WIRE_FIXED32 = 5;
const decoder = new TextDecoder();

/** A forward-mostly reader over a file, with a window cache so small fields cost no syscall. */
class FileReader {
  private buf = new Uint8Array(WINDOW);
  private bufStart = 0;
  private bufLen = 0;

  constructor(private fh: FileHandle, readonly size: number) {}

  /** Makes bytes [pos, pos+n) available in the window (n <= WINDOW); returns their offset in buf. */
  private async window(pos: number, n: number): Promise<number> {
    if (pos >= this.bufStart && pos + n <= this.bufStart + this.bufLen) return pos - this.bufStart;
    const { bytesRead } = await this.fh.read(this.buf, 0, WINDOW, pos);
    this.bufStart = pos;
    this.bufLen = bytesRead;
    if (bytesRead < n) throw new ModelFileError(`truncated protobuf at byte ${pos}`);
    return 0;
  }

  /** Reads a varint at pos; returns [value, next position]. */
  async varint(pos: number, end: number): Promise<[number, number]> {
    const off = await this.window(pos, Math.min(10, end - pos));
    let value = 0;
    let scale = 1;
    for (let i = 0; i < 10 && pos + i < end; i++) {
      const b = this.buf[off + i]!;
      value += (b & 0x7f) * scale;
      scale *= 128;
      if (!(b & 0x80)) return [value, pos + i + 1];
    }
    throw new ModelFileError(`malformed varint at byte ${pos}`);
  }

  async string(pos: number, len: number): Promise<string> {
    if (len > WINDOW) throw new ModelFileError(`string of ${len} bytes at byte ${pos}`);
    const off = await this.window(pos, len);
    return decoder.decode(this.buf.subarray(off, off + len));
  }
}

interface Field {
  field: number;
  wire: number;
  /** Varint value, or the byte length of a length-delimited field. */
  value: number;
  /** Start of a length-delimited field's payload. */
  start: number;
}

/** Iterates the fields of the message stored in [start, end). */
async function* fields(r: FileReader, start: number, end: number): AsyncGenerator<Field> {
  let pos = start;
  while (pos < end) {
    const [tag, p1] = await r.varint(pos, end);
    const field = Math.floor(tag / 8);
    const wire = tag % 8;
    if (field === 0) throw new ModelFileError(`invalid field number at byte ${pos}`);
    switch (wire) {
      case WIRE_VARINT: {
        const [value, p2] = await r.varint(p1, end);
        yield { field, wire, value, start: p1 };
        pos = p2;
        break;
      }
      case WIRE_BYTES: {
        const [len, p2] = await r.varint(p1, end);
        if (p2 + len > end) throw new ModelFileError(`field ${field} at byte ${pos} runs past its message`);
        yield { field, wire, value: len, start: p2 };
        pos = p2 + len;
        break;
      }
      case WIRE_FIXED64: pos = p1 + 8; break;
      case WIRE_FIXED32: pos = p1 + 4; break;
      default: throw new ModelFileError(`invalid wire type ${wire} at byte ${pos}`);
    }
    if (pos > end) throw new ModelFileError(`message overruns its end at byte ${pos}`);
  }
}

/** ValueInfoProto.name (field 1). */
async function valueInfoName(r: FileReader, f: Field): Promise<string> {
  for await (const g of fields(r, f.start, f.start + f.value)) {
    if (g.field === 1 && g.wire === WIRE_BYTES) return r.string(g.start, g.value);
  }
  return '';
}

const TENSOR_FLOAT16 = 10;
const TENSOR_UINT8 = 2;

/** TensorProto: name (8), dims (1), data_type (2) and the 'location' entry of external_data (13: key 1, value 2). */
async function initializerInfo(r: FileReader, f: Field): Promise<{ name: string; location?: string; halfBytes: number; packedBytes: number }> {
  let name = '';
  let location: string | undefined;
  let dataType = 0;
  let elements = 1;
  for await (const g of fields(r, f.start, f.start + f.value)) {
    if (g.field === 2 && g.wire === WIRE_VARINT) dataType = g.value;
    if (g.field === 1 && g.wire === WIRE_VARINT) elements *= g.value;
    if (g.field === 1 && g.wire === WIRE_BYTES) { // packed dims
      for (let pos = g.start; pos < g.start + g.value;) {
        const [dim, next] = await r.varint(pos, g.start + g.value);
        elements *= dim;
        pos = next;
      }
    }
    if (g.wire !== WIRE_BYTES) continue;
    if (g.field === 8) name = await r.string(g.start, g.value);
    if (g.field === 13) {
      let key = '';
      let value = '';
      for await (const e of fields(r, g.start, g.start + g.value)) {
        if (e.wire !== WIRE_BYTES) continue;
        if (e.field === 1) key = await r.string(e.start, e.value);
        if (e.field === 2) value = await r.string(e.start, e.value);
      }
      if (key === 'location') location = value;
    }
  }
  return { name, location, halfBytes: dataType === TENSOR_FLOAT16 ? elements * 2 : 0, packedBytes: dataType === TENSOR_UINT8 ? elements : 0 };
}

/** Scans a model file. Throws ModelFileError (naming the path) for missing or malformed files. */
export async function scanModel(modelPath: string): Promise<ModelScan> {
  const path = resolve(modelPath);
  let fh: FileHandle;
  try {
    fh = await open(path, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new ModelFileError(`model file not found: ${path}`);
    throw new ModelFileError(`cannot open model file ${path}: ${(e as Error).message}`);
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new ModelFileError(`model path is not a file: ${path}`);
    const r = new FileReader(fh, st.size);
    const inputs: string[] = [];
    const outputNames: string[] = [];
    const initializers = new Set<string>();
    const locations = new Set<string>();
    let halfBytes = 0;
    let packedBytes = 0;
    let contribOps = false;
    let sawGraph = false;
    try {
      for await (const f of fields(r, 0, st.size)) {
        if (f.field === 8 && f.wire === WIRE_BYTES) { // ModelProto.opset_import: OperatorSetIdProto.domain (1)
          for await (const o of fields(r, f.start, f.start + f.value)) {
            if (o.field === 1 && o.wire === WIRE_BYTES && (await r.string(o.start, o.value)) === 'com.microsoft') contribOps = true;
          }
          continue;
        }
        if (f.field !== 7 || f.wire !== WIRE_BYTES) continue; // ModelProto.graph
        sawGraph = true;
        for await (const g of fields(r, f.start, f.start + f.value)) {
          if (g.wire !== WIRE_BYTES) continue;
          if (g.field === 5) { // initializer
            const info = await initializerInfo(r, g);
            initializers.add(info.name);
            halfBytes += info.halfBytes;
            packedBytes += info.packedBytes;
            if (info.location) locations.add(info.location);
          } else if (g.field === 11) inputs.push(await valueInfoName(r, g));
          else if (g.field === 12) outputNames.push(await valueInfoName(r, g));
        }
      }
    } catch (e) {
      if (e instanceof ModelFileError) throw new ModelFileError(`${path} is not a valid ONNX model (${e.message})`);
      throw e;
    }
    if (!sawGraph || outputNames.length === 0) throw new ModelFileError(`${path} is not a valid ONNX model (no graph with outputs)`);

    const dir = dirname(path);
    const externalFiles = [...locations].map((loc) => resolve(dir, loc));
    let bytes = st.size;
    const ids = [`${path}:${st.size}:${st.mtimeMs}`];
    for (const file of externalFiles) {
      const es = await stat(file).catch(() => undefined);
      if (!es) throw new ModelFileError(`model ${path} references external data ${file}, which is missing`);
      bytes += es.size;
      ids.push(`${file}:${es.size}:${es.mtimeMs}`);
    }
    return {
      path,
      inputNames: inputs.filter((n) => !initializers.has(n)),
      outputNames,
      externalFiles,
      bytes,
      halfBytes,
      packedBytes,
      contribOps,
      fingerprint: ids.join('|'),
    };
  } finally {
    await fh.close();
  }
}
