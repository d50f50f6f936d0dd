// Just enough of the zip format to read torch.save archives: the central directory (with ZIP64, since real
// checkpoints exceed 4 GB) and where each entry's raw bytes start, so data can be read with positioned reads.
// Reads go through a caller-supplied function, so callers decide how (and how much) the file is touched.

/** Reads exactly `length` bytes at `position` (throws if the file ends first). */
export type ReadAt = (position: number, length: number) => Buffer;

export interface ZipEntry {
  name: string;
  /** 0 = stored, 8 = deflate, ... */
  method: number;
  compressedSize: number;
  size: number;
  localHeaderOffset: number;
}

const EOCD_SIG = 0x06054b50;
const ZIP64_LOCATOR_SIG = 0x07064b50;
const ZIP64_EOCD_SIG = 0x06064b50;
const CENTRAL_SIG = 0x02014b50;
const LOCAL_SIG = 0x04034b50;
const EOCD_LEN = 22;
const MAX_COMMENT = 0xffff;

/** Lists the entries of the archive from its central directory. */
export function readZipEntries(readAt: ReadAt, fileSize: number): ZipEntry[] {
  const { pos: eocdPos, record: eocd } = findEndOfCentralDirectory(readAt, fileSize);
  let count = eocd.readUInt16LE(10);
  let cdSize = eocd.readUInt32LE(12);
  let cdOffset = eocd.readUInt32LE(16);
  // Saturated fields mean the real values live in the ZIP64 end-of-central-directory record.
  if (count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
    if (eocdPos < 20) throw new Error('zip: ZIP64 locator missing (truncated file?)');
    const loc = readAt(eocdPos - 20, 20);
    if (loc.readUInt32LE(0) !== ZIP64_LOCATOR_SIG) throw new Error('zip: ZIP64 locator missing (truncated file?)');
    const recPos = u64(loc, 8, 'ZIP64 record offset');
    if (recPos + 56 > eocdPos) throw new Error('zip: ZIP64 record offset out of range');
    const rec = readAt(recPos, 56);
    if (rec.readUInt32LE(0) !== ZIP64_EOCD_SIG) throw new Error('zip: bad ZIP64 end-of-central-directory record');
    count = u64(rec, 32, 'entry count');
    cdSize = u64(rec, 40, 'central directory size');
    cdOffset = u64(rec, 48, 'central directory offset');
  }
  if (cdOffset + cdSize > fileSize) throw new Error('zip: central directory lies past the end of the file (truncated?)');
  const cd = readAt(cdOffset, cdSize);
  const entries: ZipEntry[] = [];
  let p = 0;
  for (let i = 0; i < count; i++) {
    if (p + 46 > cd.length || cd.readUInt32LE(p) !== CENTRAL_SIG) throw new Error(`zip: central directory entry ${i} is corrupt`);
    const nameLen = cd.readUInt16LE(p + 28);
    const extraLen = cd.readUInt16LE(p + 30);
    const commentLen = cd.readUInt16LE(p + 32);
    if (p + 46 + nameLen + extraLen + commentLen > cd.length) throw new Error(`zip: central directory entry ${i} is corrupt`);
    const name = cd.toString('utf8', p + 46, p + 46 + nameLen);
    const entry: ZipEntry = {
      name,
      method: cd.readUInt16LE(p + 10),
      compressedSize: cd.readUInt32LE(p + 20),
      size: cd.readUInt32LE(p + 24),
      localHeaderOffset: cd.readUInt32LE(p + 42),
    };
    applyZip64Extra(entry, cd.subarray(p + 46 + nameLen, p + 46 + nameLen + extraLen));
    if (entry.localHeaderOffset + 30 + entry.compressedSize > fileSize) {
      throw new Error(`zip: entry '${name}' lies past the end of the file (truncated?)`);
    }
    entries.push(entry);
    p += 46 + nameLen + extraLen + commentLen;
  }
  return entries;
}

/** Absolute file offset of an entry's (compressed) bytes: after its local header, name and extra field. */
export function entryDataOffset(readAt: ReadAt, entry: ZipEntry, fileSize: number): number {
  const head = readAt(entry.localHeaderOffset, 30);
  if (head.readUInt32LE(0) !== LOCAL_SIG) throw new Error(`zip: bad local header for '${entry.name}'`);
  // The local extra field may differ from the central one (torch pads it to align the data), so use its own length.
  const start = entry.localHeaderOffset + 30 + head.readUInt16LE(26) + head.readUInt16LE(28);
  if (start + entry.compressedSize > fileSize) throw new Error(`zip: entry '${entry.name}' is truncated`);
  return start;
}

function findEndOfCentralDirectory(readAt: ReadAt, fileSize: number): { pos: number; record: Buffer } {
  if (fileSize < EOCD_LEN) throw new Error('zip: file too short to be an archive (truncated?)');
  // Archives without a comment (torch.save's) end with the record itself: try that before scanning 64 KiB.
  const last = readAt(fileSize - EOCD_LEN, EOCD_LEN);
  if (last.readUInt32LE(0) === EOCD_SIG && last.readUInt16LE(20) === 0) return { pos: fileSize - EOCD_LEN, record: last };
  const tailLen = Math.min(fileSize, EOCD_LEN + MAX_COMMENT);
  const tailStart = fileSize - tailLen;
  const tail = readAt(tailStart, tailLen);
  for (let i = tailLen - EOCD_LEN; i >= 0; i--) {
    // The comment length must reach exactly to the end of the file, which rules out stray signatures.
    if (tail.readUInt32LE(i) === EOCD_SIG && i + EOCD_LEN + tail.readUInt16LE(i + 20) === tailLen) {
      return { pos: tailStart + i, record: tail.subarray(i, i + EOCD_LEN) };
    }
  }
  throw new Error('zip: end of central directory not found (truncated or not a zip file)');
}

/** ZIP64 extended information (id 1): 8-byte values for the fields saturated in the fixed header, in this order. */
function applyZip64Extra(entry: ZipEntry, extra: Buffer): void {
  const needs = entry.size === 0xffffffff || entry.compressedSize === 0xffffffff || entry.localHeaderOffset === 0xffffffff;
  if (!needs) return;
  for (let p = 0; p + 4 <= extra.length;) {
    const id = extra.readUInt16LE(p);
    const len = extra.readUInt16LE(p + 2);
    if (id === 1) {
      let q = p + 4;
      const next = (what: string): number => {
        if (q + 8 > p + 4 + len) throw new Error(`zip: ZIP64 extra field of '${entry.name}' lacks the ${what}`);
        const v = u64(extra, q, what);
        q += 8;
        return v;
      };
      if (entry.size === 0xffffffff) entry.size = next('size');
      if (entry.compressedSize === 0xffffffff) entry.compressedSize = next('compressed size');
      if (entry.localHeaderOffset === 0xffffffff) entry.localHeaderOffset = next('header offset');
      return;
    }
    p += 4 + len;
  }
  throw new Error(`zip: entry '${entry.name}' needs a ZIP64 extra field but has none`);
}

function u64(buf: Buffer, at: number, what: string): number {
  const v = buf.readBigUInt64LE(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error(`zip: ${what} ${v} is out of range`);
  return Number(v);
}
