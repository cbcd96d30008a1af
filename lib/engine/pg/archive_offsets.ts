/**
 * Data offsets for a custom-format archive that pg_dump wrote to a pipe.
 *
 * pg_dump can only record where each table's data starts when its output is a seekable file;
 * written to a pipe (as dbbackup's pg_dump engine does), every entry says "offset not set". A
 * parallel pg_restore of such an archive makes each worker read through the file to find its
 * block: on the bench data (2.3 GB) `pg_restore -j2` took 17.5 s of such an archive and 11.3 s
 * of the same archive with offsets. Before a parallel restore, the spooled copy is scanned once,
 * block by block (pg_backup_custom.c's layout: a block type byte and the entry's ID, then
 * length-prefixed chunks up to a zero length; large objects as OID, chunks, ... up to OID 0),
 * and each entry's offset is written into its place in the table of contents.
 */
import { DbBackupError } from "../../errors.ts";
import { readArchiveToc } from "./archive_toc.ts";

/** pg_backup_custom.c's block types. */
const BLK_DATA = 1;
const BLK_BLOBS = 3;
/** pg_backup_archiver.h: K_OFFSET_POS_SET. */
const OFFSET_SET = 2;

const READ_BYTES = 1024 * 1024;

/**
 * Writes the data offsets into the archive at `path` (a private spooled copy) for every entry
 * that has a data block but no offset. Returns how many it wrote. A file whose blocks do not
 * match its table of contents is left unchanged and the reason thrown (verification error).
 */
export async function writeDataOffsets(path: string): Promise<number> {
  const toc = await readArchiveToc((await Deno.open(path)).readable, path);
  const missing = new Map(
    toc.entries.filter((e) => e.dataState === "offset_not_set").map((e) => [e.dumpId, e]),
  );
  if (missing.size === 0) return 0;
  using file = await Deno.open(path, { read: true, write: true });
  const blocks = await scanBlocks(file, toc.tocBytes, toc.intSize, path);
  const known = new Set(toc.entries.filter((e) => e.hadDumper).map((e) => e.dumpId));
  for (const id of blocks.keys()) {
    if (!known.has(id)) {
      throw new DbBackupError(
        "verification",
        `${path}: a data block for entry ${id}, which has no data in the table of contents`,
      );
    }
  }
  let written = 0;
  for (const [id, entry] of missing) {
    const at = blocks.get(id);
    if (at === undefined) continue; // no block (pg_restore finds none either)
    const field = new Uint8Array(1 + toc.offSize);
    field[0] = OFFSET_SET;
    let rest = at;
    for (let i = 1; i <= toc.offSize; i++) {
      field[i] = rest % 256;
      rest = Math.floor(rest / 256);
    }
    await file.seek(entry.offsetPos, Deno.SeekMode.Start);
    await writeAll(file, field);
    written++;
  }
  await file.sync();
  return written;
}

/** Where each entry's data block starts, from `start` (the end of the TOC) to the end. */
async function scanBlocks(
  file: Deno.FsFile,
  start: number,
  intSize: number,
  path: string,
): Promise<Map<number, number>> {
  const corrupt = (why: string) =>
    new DbBackupError("verification", `${path}: ${why} (corrupt archive?)`);
  const blocks = new Map<number, number>();
  const intBytes = 1 + intSize;
  let buf = new Uint8Array(READ_BYTES);
  /** buf[0] is at file offset `base`; `len` bytes are valid; `at` is the parser's index. */
  let base = start;
  let len = 0;
  let at = 0;
  let eof = false;
  await file.seek(start, Deno.SeekMode.Start);
  const readInt = (): number => {
    const sign = buf[at];
    let value = 0;
    for (let i = intSize; i >= 1; i--) value = value * 256 + buf[at + i];
    at += intBytes;
    return sign ? -value : value;
  };
  /** Makes `n` bytes from `at` available; false at the end of the file. */
  const fill = async (n: number): Promise<boolean> => {
    if (len - at >= n) return true;
    if (eof) return false;
    buf.copyWithin(0, at, len);
    base += at;
    len -= at;
    at = 0;
    if (buf.length < n) {
      const grown = new Uint8Array(n);
      grown.set(buf.subarray(0, len));
      buf = grown;
    }
    while (len < n) {
      const got = await file.read(buf.subarray(len));
      if (got === null) {
        eof = true;
        return false;
      }
      len += got;
    }
    return true;
  };
  /** Passes over `n` bytes: within the buffer, or by seeking past it. */
  const skip = async (n: number): Promise<void> => {
    if (len - at >= n) {
      at += n;
      return;
    }
    const target = base + at + n;
    base = target;
    len = 0;
    at = 0;
    await file.seek(target, Deno.SeekMode.Start);
  };
  /** Passes over chunks (a length, that many bytes, ...) up to a zero length. */
  const skipChunks = async (id: number): Promise<void> => {
    for (;;) {
      // Most chunks are short (uncompressed, a COPY row each): no await unless the buffer ends.
      if (len - at < intBytes && !(await fill(intBytes))) {
        throw corrupt(`the data of entry ${id} ends early`);
      }
      const n = readInt();
      if (n < 0) throw corrupt(`a chunk of ${n} bytes in entry ${id}`);
      if (n === 0) return;
      if (len - at >= n) at += n;
      else await skip(n);
    }
  };
  for (;;) {
    if (!(await fill(1))) break; // the end, between blocks
    const blockAt = base + at;
    if (!(await fill(1 + intBytes))) throw corrupt(`a block header at byte ${blockAt} is cut off`);
    const type = buf[at++];
    const id = readInt();
    if (type !== BLK_DATA && type !== BLK_BLOBS) {
      throw corrupt(`unknown block type ${type} at byte ${blockAt}`);
    }
    if (id <= 0 || blocks.has(id)) throw corrupt(`block for entry ${id} at byte ${blockAt}`);
    blocks.set(id, blockAt);
    if (type === BLK_DATA) {
      await skipChunks(id);
      continue;
    }
    // Large objects: each one's OID, then its chunks, up to OID 0.
    for (;;) {
      if (!(await fill(intBytes))) throw corrupt(`the large objects of entry ${id} end early`);
      if (readInt() === 0) break;
      await skipChunks(id);
    }
  }
  return blocks;
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let done = 0;
  while (done < bytes.length) done += await file.write(bytes.subarray(done));
}
