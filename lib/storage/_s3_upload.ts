/**
 * Streaming uploads to S3 with bounded memory.
 *
 * Data is cut into parts held in memory (S3 needs each part's length up front): at most
 * `partsInFlight` parts are being sent while the next one fills, so memory stays around
 * (partsInFlight + 1) x part size. Data shorter than one part goes in a single PUT. A failed
 * part is sent again (the client's retries); any failure aborts the multipart upload so no
 * parts are left behind. Nothing is published before `ready` resolves.
 */
import { createHash } from "node:crypto";
import { DbBackupError } from "../errors.ts";
import type { S3Client } from "./_s3_client.ts";
import { xmlEscape, xmlValue } from "./_xml.ts";
import type { WriteOptions } from "./storage.ts";

export const MiB = 1024 * 1024;
/** S3's smallest part (except the last one). */
export const MIN_PART_SIZE = 5 * MiB;
export const MAX_PART_SIZE = 5 * 1024 * MiB;
export const MAX_PARTS = 10_000;

/**
 * The size of each part, by part number (from 1). Without a size hint parts start at `base`
 * and double every 1000 parts, so 10,000 parts hold 1023 x 1000 x base (about 8 TB for 8 MiB)
 * while small uploads keep small parts. With a hint the first 9000 parts share one size that
 * fits the hinted total, and the last 1000 double every 50 parts (up to 5 GiB) in case the
 * hint was low: room for 20 times the hint, and for at least 2.5 TB whatever the hint.
 */
export function partSizer(base: number, sizeHint?: number): (partNumber: number) => number {
  let start = base;
  let flat = 1000;
  let every = 1000;
  if (sizeHint !== undefined && sizeHint > 0) {
    start = Math.max(base, Math.ceil(sizeHint / 9000 / MiB) * MiB);
    flat = 9000;
    every = 50;
  }
  start = Math.min(start, MAX_PART_SIZE);
  return (n) => {
    if (n <= flat) return start;
    return Math.min(MAX_PART_SIZE, start * 2 ** (Math.floor((n - flat - 1) / every) + 1));
  };
}

export interface UploadPolicy {
  partSize: number;
  partsInFlight: number;
  /** Part buffers, shared by the uploads of one storage. */
  buffers: BufferPool;
}

/**
 * Part buffers for reuse. Deno keeps a request body referenced for a while after the answer
 * (its node:http sockets hold on to the last slices written); with a fresh buffer per part
 * those add up to far more than the parts in flight, while reused buffers cost nothing extra.
 * Keeps at most `keep` free buffers, all of the latest size (parts only grow).
 */
export class BufferPool {
  #free: Uint8Array[] = [];
  constructor(private readonly keep: number) {}

  take(size: number): Uint8Array {
    if (this.#free.length > 0 && this.#free[0].byteLength !== size) {
      this.#free = this.#free.filter((b) => b.byteLength === size);
    }
    return this.#free.pop() ?? new Uint8Array(size);
  }

  give(buffer: Uint8Array): void {
    if (this.#free.length < this.keep) this.#free.push(buffer);
  }
}

interface Part {
  bytes: Uint8Array;
  /** The stream ended with this part. */
  done: boolean;
  /** Hands the part's buffer back for reuse. */
  release(): void;
}

interface UploadedPart {
  number: number;
  etag: string;
  size: number;
}

/**
 * Uploads `data` to `key` unless the key exists. `name` is the object as shown in messages.
 * The input is cancelled when the upload fails.
 */
export async function uploadObject(
  client: S3Client,
  key: string,
  name: string,
  data: ReadableStream<Uint8Array>,
  options: WriteOptions,
  policy: UploadPolicy,
): Promise<void> {
  const signal = options.signal;
  const reader = data.getReader();
  const parts = new PartReader(reader, policy.buffers, signal);
  try {
    const head = await client.send({
      method: "HEAD",
      key,
      idempotent: true,
      expect: [404],
      what: `check whether ${name} exists`,
      signal,
    });
    await head.body?.cancel();
    if (head.status !== 404) throw existsError(name);
    const sizeOf = partSizer(policy.partSize, options.sizeHint);
    const first = await parts.next(sizeOf(1));
    if (first.done) {
      try {
        await options.ready;
        await putSingle(client, key, name, first.bytes, signal);
      } finally {
        first.release();
      }
    } else {
      await putMultipart(client, key, name, first, parts, sizeOf, options, policy);
    }
  } catch (err) {
    await reader.cancel(err).catch(() => {});
    throw err;
  } finally {
    parts.close();
    reader.releaseLock();
  }
}

async function putSingle(
  client: S3Client,
  key: string,
  name: string,
  body: Uint8Array,
  signal: AbortSignal | undefined,
): Promise<void> {
  let retried = false;
  const res = await client.send({
    method: "PUT",
    key,
    body,
    // Real S3 refuses to replace an existing object with this (412); s3rver ignores it.
    headers: { "if-none-match": "*", "content-type": "application/octet-stream" },
    idempotent: true,
    expect: [409, 412],
    what: `upload ${name}`,
    signal,
    onRetry: () => retried = true,
  });
  await res.body?.cancel();
  if (res.ok) return;
  // A retry after an attempt whose answer was lost meets the object that attempt wrote.
  const ours = { etag: md5Hex(body), size: body.byteLength };
  if (retried && await isOurs(client, key, name, ours, signal)) return;
  throw existsError(name);
}

async function putMultipart(
  client: S3Client,
  key: string,
  name: string,
  first: Part,
  parts: PartReader,
  sizeOf: (n: number) => number,
  options: WriteOptions,
  policy: UploadPolicy,
): Promise<void> {
  const signal = options.signal;
  const created = await client.send({
    method: "POST",
    key,
    query: { uploads: "" },
    headers: { "content-type": "application/octet-stream" },
    // A repeated request leaves an unused upload id at worst.
    idempotent: true,
    what: `start the upload of ${name}`,
    signal,
  });
  const uploadId = xmlValue(await created.text(), "UploadId");
  if (!uploadId) {
    throw new DbBackupError("io", `cannot upload ${name}: S3 returned no upload id`);
  }
  const done: UploadedPart[] = [];
  const inFlight = new Set<Promise<void>>();
  const state: { failure?: { error: unknown } } = {};
  const throwIfFailed = () => {
    if (state.failure) throw state.failure.error;
  };
  const send = (number: number, part: Part) => {
    const sending = uploadPart(client, key, name, uploadId, number, part.bytes, signal)
      .then((etag) => void done.push({ number, etag, size: part.bytes.byteLength }))
      .catch((error) => {
        state.failure ??= { error };
        parts.interrupt(error); // no use waiting for more data
      })
      .finally(() => {
        part.release();
        inFlight.delete(sending);
      });
    inFlight.add(sending);
  };
  try {
    let part = first;
    for (let number = 1;; number++) {
      while (inFlight.size >= policy.partsInFlight) await Promise.race(inFlight);
      if (state.failure) part.release();
      throwIfFailed();
      send(number, part);
      if (part.done) break;
      if (number >= MAX_PARTS) {
        throw new DbBackupError("io", `cannot upload ${name}: more than ${MAX_PARTS} parts`);
      }
      part = await parts.next(sizeOf(number + 1));
      // A stream that ends exactly on a part boundary leaves an empty last read.
      if (part.done && part.bytes.byteLength === 0) {
        part.release();
        break;
      }
    }
    await Promise.all(inFlight);
    throwIfFailed();
    await options.ready;
    await completeUpload(client, key, name, uploadId, done, signal);
  } catch (err) {
    await Promise.allSettled(inFlight);
    await abortUpload(client, key, name, uploadId);
    throw err;
  }
}

async function uploadPart(
  client: S3Client,
  key: string,
  name: string,
  uploadId: string,
  number: number,
  body: Uint8Array,
  signal: AbortSignal | undefined,
): Promise<string> {
  const res = await client.send({
    method: "PUT",
    key,
    query: { partNumber: String(number), uploadId },
    body,
    idempotent: true, // the same part number again replaces the part
    what: `upload part ${number} of ${name}`,
    signal,
  });
  await res.body?.cancel();
  const etag = res.headers.get("etag");
  if (!etag) {
    throw new DbBackupError("io", `cannot upload part ${number} of ${name}: S3 returned no ETag`);
  }
  return etag;
}

async function completeUpload(
  client: S3Client,
  key: string,
  name: string,
  uploadId: string,
  done: UploadedPart[],
  signal: AbortSignal | undefined,
): Promise<void> {
  done.sort((a, b) => a.number - b.number);
  const body = "<CompleteMultipartUpload>" +
    done.map((p) =>
      `<Part><PartNumber>${p.number}</PartNumber><ETag>${xmlEscape(p.etag)}</ETag></Part>`
    ).join("") + "</CompleteMultipartUpload>";
  let retried = false;
  const res = await client.send({
    method: "POST",
    key,
    query: { uploadId },
    body: new TextEncoder().encode(body),
    headers: { "if-none-match": "*", "content-type": "application/xml" },
    idempotent: true,
    expect: [404, 409, 412],
    errorInBody: true,
    what: `complete the upload of ${name}`,
    signal,
    onRetry: () => retried = true,
  });
  if (res.ok) {
    await res.body?.cancel();
    return;
  }
  const code = await client.errorCode(res);
  // After a retry, "no such upload" or "exists" may mean the lost first attempt completed it.
  const ours = { etag: multipartEtag(done), size: done.reduce((n, p) => n + p.size, 0) };
  if (retried && await isOurs(client, key, name, ours, signal)) return;
  if (res.status === 404) throw client.httpError({ what: `complete ${name}` }, 404, code, "");
  throw existsError(name);
}

/** Best effort: an upload left behind only costs storage until the bucket's lifecycle rule. */
async function abortUpload(client: S3Client, key: string, name: string, uploadId: string) {
  try {
    const res = await client.send({
      method: "DELETE",
      key,
      query: { uploadId },
      idempotent: true,
      expect: [404],
      what: `abort the upload of ${name}`,
    });
    await res.body?.cancel();
  } catch {
    // The original error matters more.
  }
}

/**
 * After a retried request, whether `key` now holds what this upload sent: the ETag S3 computes
 * for it, or else (ETags differ with SSE-KMS and on some servers) at least the same size.
 */
async function isOurs(
  client: S3Client,
  key: string,
  name: string,
  expected: { etag?: string; size: number },
  signal: AbortSignal | undefined,
): Promise<boolean> {
  const res = await client.send({
    method: "HEAD",
    key,
    idempotent: true,
    expect: [404],
    what: `check the upload of ${name}`,
    signal,
  });
  await res.body?.cancel();
  if (res.status === 404) return false;
  const etag = res.headers.get("etag")?.replaceAll('"', "");
  return (expected.etag !== undefined && etag === expected.etag) ||
    Number(res.headers.get("content-length")) === expected.size;
}

function md5Hex(data: Uint8Array): string {
  return createHash("md5").update(data).digest("hex");
}

/** The ETag S3 gives a multipart object: md5 of the parts' md5s, "-", the part count. */
function multipartEtag(parts: UploadedPart[]): string | undefined {
  const hash = createHash("md5");
  for (const p of parts) {
    const hex = p.etag.replaceAll('"', "");
    if (!/^[0-9a-f]{32}$/.test(hex)) return undefined;
    hash.update(Uint8Array.from(hex.match(/../g)!, (b) => parseInt(b, 16)));
  }
  return `${hash.digest("hex")}-${parts.length}`;
}

function existsError(name: string): DbBackupError {
  return new DbBackupError("exists", `refusing to overwrite existing file ${name}`);
}

/** Cuts a byte stream into parts of the requested sizes. */
class PartReader {
  #held: Uint8Array[] = [];
  #heldBytes = 0;
  #failure: { error: unknown } | undefined;
  readonly #onAbort = () => this.interrupt(this.signal?.reason);

  constructor(
    private readonly reader: ReadableStreamDefaultReader<Uint8Array>,
    private readonly buffers: BufferPool,
    private readonly signal: AbortSignal | undefined,
  ) {
    signal?.addEventListener("abort", this.#onAbort, { once: true });
  }

  /**
   * Stops reading (a part failed or the signal fired): a pending read ends and `next` throws
   * `error`. Cancelling the input, rather than racing reads against a failure promise, keeps
   * no chunk referenced once it was handed on.
   */
  interrupt(error: unknown): void {
    if (this.#failure) return;
    this.#failure = { error };
    this.reader.cancel(error).catch(() => {});
  }

  /** Stops listening to the signal. */
  close(): void {
    this.signal?.removeEventListener("abort", this.#onAbort);
  }

  #check(): void {
    if (this.#failure) throw this.#failure.error;
    if (this.signal?.aborted) throw this.signal.reason;
  }

  /**
   * Up to `size` bytes in a pooled buffer; `done` when the stream ended within them. The
   * caller hands the buffer back with `release()` once no request uses it any more.
   */
  async next(size: number): Promise<Part> {
    let done = false;
    while (this.#heldBytes < size) {
      this.#check();
      const r = await this.reader.read();
      this.#check();
      if (r.done) {
        done = true;
        break;
      }
      if (r.value.byteLength === 0) continue;
      this.#held.push(r.value);
      this.#heldBytes += r.value.byteLength;
    }
    const buffer = this.buffers.take(size);
    const length = Math.min(size, this.#heldBytes);
    let at = 0;
    while (at < length) {
      const chunk = this.#held[0];
      const take = Math.min(chunk.byteLength, length - at);
      buffer.set(chunk.subarray(0, take), at);
      at += take;
      if (take === chunk.byteLength) this.#held.shift();
      else this.#held[0] = chunk.subarray(take);
    }
    this.#heldBytes -= length;
    return {
      bytes: buffer.subarray(0, length),
      done: done && this.#heldBytes === 0,
      release: () => this.buffers.give(buffer),
    };
  }
}
