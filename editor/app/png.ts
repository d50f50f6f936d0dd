// Reads the text chunks of a PNG in the browser: charflow stores the workflow JSON in a tEXt chunk
// named 'workflow' (UTF-8 text despite tEXt's Latin-1, as nodes/lib/image.ts writes it).

const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];

export function isPng(bytes: Uint8Array): boolean {
  return bytes.length >= 8 && SIGNATURE.every((b, i) => bytes[i] === b);
}

async function inflate(data: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([data as Uint8Array<ArrayBuffer>]).stream().pipeThrough(new DecompressionStream('deflate'));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** keyword -> text of the tEXt, zTXt and iTXt chunks before the image data ends. */
export async function readPngText(bytes: Uint8Array): Promise<Record<string, string>> {
  if (!isPng(bytes)) throw new Error('not a PNG file');
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const utf8 = new TextDecoder('utf-8');
  const latin1 = new TextDecoder('latin1');
  const out: Record<string, string> = {};
  let pos = 8;
  while (pos + 12 <= bytes.length) {
    const len = view.getUint32(pos);
    const type = latin1.decode(bytes.subarray(pos + 4, pos + 8));
    const data = bytes.subarray(pos + 8, pos + 8 + len);
    if (pos + 12 + len > bytes.length) break;
    pos += 12 + len;
    if (type === 'IEND') break;
    if (type !== 'tEXt' && type !== 'zTXt' && type !== 'iTXt') continue;
    const zero = data.indexOf(0);
    if (zero <= 0) continue;
    const key = latin1.decode(data.subarray(0, zero));
    if (type === 'tEXt') out[key] = utf8.decode(data.subarray(zero + 1));
    else if (type === 'zTXt') out[key] = latin1.decode(await inflate(data.subarray(zero + 2)));
    else {
      // iTXt: keyword\0 compressed method \0 language\0 translated\0 text
      const compressed = data[zero + 1] === 1;
      let p = zero + 3;
      p = data.indexOf(0, p) + 1;
      p = data.indexOf(0, p) + 1;
      if (p <= 0) continue;
      const text = data.subarray(p);
      out[key] = utf8.decode(compressed ? await inflate(text) : text);
    }
  }
  return out;
}
