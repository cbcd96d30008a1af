/**
 * S3-compatible object storage: a repository at `s3://bucket/prefix`.
 *
 * Files are objects under the prefix. S3 has no directories: `createDirectory("a/b")` writes an
 * empty marker object "a/b/" (what the AWS console does), and anything with objects under
 * "a/b/" counts as a directory. Uploads stream in parts (see _s3_upload.ts) and appear only once
 * complete; an existing object is never replaced. Downloads stream, and resume with a range
 * request when the connection breaks.
 *
 * Credentials come in as options (see `s3OptionsFromEnv`), never from argv; they are never
 * shown in `location`, messages or errors.
 */
import { DbBackupError, errorMessage } from "../errors.ts";
import { checkRange, emptyStream, sliceStream } from "./_range.ts";
import { S3Client, type S3Credentials } from "./_s3_client.ts";
import { BufferPool, MAX_PART_SIZE, MiB, MIN_PART_SIZE, uploadObject } from "./_s3_upload.ts";
import { xmlBlocks, xmlEscape, xmlValue } from "./_xml.ts";
import type {
  DirEntry,
  FileInfo,
  ReadOptions,
  Storage,
  StorageFeatures,
  WriteOptions,
} from "./storage.ts";
import { createHash } from "node:crypto";

export type { S3Credentials } from "./_s3_client.ts";

export interface S3Options {
  credentials: S3Credentials;
  /** e.g. "http://127.0.0.1:9000"; default AWS: https://s3.<region>.amazonaws.com */
  endpoint?: string;
  /** Default "us-east-1". */
  region?: string;
  /**
   * Address the bucket as <endpoint>/<bucket>/ rather than <bucket>.<endpoint host>/.
   * Default: true with a custom endpoint (most S3-compatible servers), false for AWS.
   */
  pathStyle?: boolean;
  /** Size of upload parts before they grow; at least 5 MiB; default 8 MiB. */
  partSize?: number;
  /** Parts sent at the same time; default 2 (memory: about (this + 1) x part size). */
  partsInFlight?: number;
  /** Tries per request, the first included (1: no retries); default 4. */
  maxAttempts?: number;
  /** Delay before the first retry, doubling with each further one; default 250 ms. */
  retryDelayMs?: number;
  /** Time one attempt may take until S3 answers (uploading a part included); default 120 s. */
  requestTimeoutMs?: number;
  /** Keys asked for per list request (1-1000); default 1000. */
  listPageSize?: number;
  /**
   * A download that brings no bytes for this long is given up and asked for again from where it
   * stopped (counts as a failed attempt); default 120 s.
   */
  idleTimeoutMs?: number;
}

export const DEFAULT_PART_SIZE = 8 * MiB;

/**
 * Credentials and region from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN and
 * AWS_REGION (else AWS_DEFAULT_REGION). Fails with a "config" error when a key is missing.
 */
export function s3OptionsFromEnv(
  env: Record<string, string | undefined>,
): Pick<S3Options, "credentials" | "region"> {
  const accessKeyId = env.AWS_ACCESS_KEY_ID ?? "";
  const secretAccessKey = env.AWS_SECRET_ACCESS_KEY ?? "";
  const missing = [
    ...(accessKeyId ? [] : ["AWS_ACCESS_KEY_ID"]),
    ...(secretAccessKey ? [] : ["AWS_SECRET_ACCESS_KEY"]),
  ];
  if (missing.length > 0) {
    throw new DbBackupError(
      "config",
      `S3 storage needs credentials: ${missing.join(" and ")} ${
        missing.length > 1 ? "are" : "is"
      } not set (AWS_SESSION_TOKEN too for temporary credentials)`,
    );
  }
  const sessionToken = env.AWS_SESSION_TOKEN || undefined;
  const region = env.AWS_REGION || env.AWS_DEFAULT_REGION || undefined;
  return {
    credentials: { accessKeyId, secretAccessKey, ...(sessionToken ? { sessionToken } : {}) },
    ...(region ? { region } : {}),
  };
}

/** Splits `s3://bucket/some/prefix` into the bucket and the prefix ("some/prefix", or ""). */
export function parseS3Location(location: string): { bucket: string; prefix: string } {
  const m = /^s3:\/\/([^/]+)(?:\/(.*))?$/.exec(location);
  const bucket = m?.[1] ?? "";
  const prefix = (m?.[2] ?? "").replace(/^\/+|\/+$/g, "");
  if (!m || !/^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$/i.test(bucket)) {
    throw new DbBackupError(
      "config",
      `invalid S3 location "${
        location.replace(/^(s3:\/\/)[^/@]*@/, "$1")
      }": expected s3://bucket/prefix`,
    );
  }
  if (prefix !== "" && !validKey(prefix)) {
    throw new DbBackupError("config", `invalid S3 location "${location}": bad prefix`);
  }
  return { bucket, prefix };
}

export class S3Storage implements Storage {
  readonly features: StorageFeatures = { atomicPublish: true, directories: false };
  readonly location: string;
  readonly bucket: string;
  /** "" or the prefix with a trailing "/". */
  readonly #root: string;
  readonly #client: S3Client;
  readonly #partSize: number;
  readonly #partsInFlight: number;
  readonly #pageSize: number;
  readonly #buffers: BufferPool;
  readonly #idleTimeoutMs: number;

  constructor(location: string, options: S3Options) {
    const { bucket, prefix } = parseS3Location(location);
    this.bucket = bucket;
    this.#root = prefix ? `${prefix}/` : "";
    this.location = `s3://${bucket}${prefix ? `/${prefix}` : ""}`;
    const region = options.region || "us-east-1";
    const endpoint = parseEndpoint(options.endpoint ?? `https://s3.${region}.amazonaws.com`);
    this.#partSize = options.partSize ?? DEFAULT_PART_SIZE;
    this.#idleTimeoutMs = options.idleTimeoutMs ?? 120_000;
    if (
      !Number.isSafeInteger(this.#partSize) || this.#partSize < MIN_PART_SIZE ||
      this.#partSize > MAX_PART_SIZE
    ) {
      throw new DbBackupError(
        "config",
        `invalid S3 part size ${this.#partSize}: it must be between 5 MiB and 5 GiB`,
      );
    }
    this.#partsInFlight = intOption("partsInFlight", options.partsInFlight ?? 2, 1, 16);
    this.#pageSize = intOption("listPageSize", options.listPageSize ?? 1000, 1, 1000);
    this.#buffers = new BufferPool(this.#partsInFlight + 1);
    this.#client = new S3Client({
      endpoint,
      bucket,
      region,
      pathStyle: options.pathStyle ?? options.endpoint !== undefined,
      credentials: options.credentials,
      maxAttempts: intOption("maxAttempts", options.maxAttempts ?? 4, 1, 20),
      retryDelayMs: options.retryDelayMs ?? 250,
      requestTimeoutMs: options.requestTimeoutMs ?? 120_000,
    });
  }

  /** The endpoint requests go to (scheme, host, port), for messages. */
  get endpoint(): string {
    return this.#client.endpointName;
  }

  /** The object key of `path`; refuses ".." and empty or "." segments. */
  #key(path: string): string {
    if (path !== "" && !validKey(path)) {
      throw new DbBackupError("io", `invalid path "${path}" in repository ${this.location}`);
    }
    return path === "" ? this.#root.slice(0, -1) : this.#root + path;
  }

  /** The key prefix of everything inside directory `path`. */
  #dirPrefix(path: string): string {
    return path === "" ? this.#root : `${this.#key(path)}/`;
  }

  #name(path: string): string {
    return path === "" ? this.location : `${this.location}/${path}`;
  }

  async stat(path: string): Promise<FileInfo | undefined> {
    const key = this.#key(path);
    if (path !== "") {
      const res = await this.#client.send({
        method: "HEAD",
        key,
        idempotent: true,
        expect: [404],
        what: `look up ${this.#name(path)}`,
      });
      await res.body?.cancel();
      if (res.ok) {
        const modified = res.headers.get("last-modified");
        return {
          path,
          size: Number(res.headers.get("content-length") ?? 0),
          mtime: modified ? new Date(modified) : undefined,
          isDirectory: false,
        };
      }
    }
    // A directory: its marker or any object under it (also tells a missing bucket apart).
    const page = await this.#listPage(this.#dirPrefix(path), { maxKeys: 1 });
    if (path === "" || page.keys.length > 0) return { path, size: 0, isDirectory: true };
    return undefined;
  }

  async list(dir: string): Promise<DirEntry[]> {
    const prefix = this.#dirPrefix(dir);
    const entries = new Map<string, DirEntry>();
    let token: string | undefined;
    do {
      const page = await this.#listPage(prefix, { delimiter: true, token });
      for (const key of page.keys) {
        const name = key.slice(prefix.length);
        // The directory's own marker is not an entry.
        if (name !== "") entries.set(`f:${name}`, { name, isDirectory: false });
      }
      for (const p of page.prefixes) {
        const name = p.slice(prefix.length, -1);
        if (name !== "") entries.set(`d:${name}`, { name, isDirectory: true });
      }
      token = page.next;
    } while (token);
    return [...entries.values()].sort((a, b) =>
      a.name < b.name ? -1 : a.name > b.name ? 1 : Number(a.isDirectory) - Number(b.isDirectory)
    );
  }

  /** One page of ListObjectsV2 under `prefix`. */
  async #listPage(
    prefix: string,
    opts: { delimiter?: boolean; token?: string; maxKeys?: number },
  ): Promise<{ keys: string[]; prefixes: string[]; next?: string }> {
    const query: Record<string, string> = {
      "list-type": "2",
      "max-keys": String(opts.maxKeys ?? this.#pageSize),
    };
    if (prefix) query.prefix = prefix;
    if (opts.delimiter) query.delimiter = "/";
    if (opts.token) query["continuation-token"] = opts.token;
    const res = await this.#client.send({
      method: "GET",
      query,
      idempotent: true,
      what: `list ${this.#name(prefix.slice(this.#root.length, -1))}`,
    });
    const xml = await res.text();
    const keys = xmlBlocks(xml, "Contents").map((c) => xmlValue(c, "Key") ?? "");
    const prefixes = xmlBlocks(xml, "CommonPrefixes").map((c) => xmlValue(c, "Prefix") ?? "");
    const truncated = xmlValue(xml, "IsTruncated") === "true";
    const next = truncated ? xmlValue(xml, "NextContinuationToken") : undefined;
    if (truncated && !next && opts.maxKeys === undefined) {
      throw new DbBackupError(
        "io",
        `cannot list ${this.location}: S3 cut the list short without a continuation token`,
      );
    }
    return { keys, prefixes, next };
  }

  async read(path: string, options: ReadOptions = {}): Promise<ReadableStream<Uint8Array>> {
    const key = this.#key(path);
    const name = this.#name(path);
    const { offset, length } = checkRange(options, name);
    const end = length === undefined ? undefined : offset + length;
    const open = async (from: number, etag?: string) => {
      const headers: Record<string, string> = {};
      if (from > 0 || end !== undefined) {
        headers.range = `bytes=${from}-${end === undefined ? "" : end - 1}`;
      }
      // A resumed read must continue the very same object.
      if (etag) headers["if-match"] = etag;
      const res = await this.#client.send({
        method: "GET",
        key,
        headers,
        idempotent: true,
        expect: [404, 416],
        what: `read ${name}`,
      });
      return res;
    };
    if (length === 0) {
      if (!await this.stat(path)) throw missingError(name);
      return emptyStream();
    }
    const res = await open(offset);
    if (res.status === 404) {
      const code = await this.#client.errorCode(res);
      if (code === "NoSuchBucket") {
        throw this.#client.httpError({ what: `read ${name}` }, 404, code, "");
      }
      throw missingError(name);
    }
    // Starting at or after the end: nothing to read.
    if (res.status === 416) {
      await res.body?.cancel();
      return emptyStream();
    }
    const etag = res.headers.get("etag") ?? undefined;
    return this.#resumable(res, offset, end, name, async (from) => {
      const again = await open(from, etag);
      if (!again.ok) {
        await again.body?.cancel();
        throw new DbBackupError("io", `cannot resume reading ${name}: it changed or vanished`);
      }
      return again;
    });
  }

  /**
   * The bytes [offset, end) of an object from its GET answer; when the connection breaks, the
   * rest is asked for again from where it stopped (up to maxAttempts times in all).
   */
  #resumable(
    first: Response,
    offset: number,
    end: number | undefined,
    name: string,
    reopen: (from: number) => Promise<Response>,
  ): ReadableStream<Uint8Array> {
    /** A range answer starts where asked; a plain 200 starts at 0 (the server ignored Range). */
    const bodyFrom = (res: Response, from: number) =>
      sliceStream(
        res.body ?? emptyStream(),
        res.status === 206 ? 0 : from,
        end === undefined ? undefined : end - from,
      );
    let reader = bodyFrom(first, offset).getReader();
    let position = offset;
    let failures = 0;
    const client = this.#client;
    const idleMs = this.#idleTimeoutMs;
    /** The next piece, or an error when none comes for `idleMs` (the stalled body is dropped). */
    const readOrStall = async () => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      let timedOut = false;
      const stall = () => new Error(`no data for ${Math.round(idleMs / 1000)} s`);
      const stalled = new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          timedOut = true;
          reject(stall());
          // Cancelling ends the pending read as "done": that must not pass for the end.
          reader.cancel().catch(() => {});
        }, idleMs);
      });
      stalled.catch(() => {});
      try {
        const result = await Promise.race([reader.read(), stalled]);
        if (timedOut) throw stall();
        return result;
      } finally {
        clearTimeout(timer);
      }
    };
    return new ReadableStream<Uint8Array>({
      async pull(controller) {
        for (;;) {
          try {
            const { done, value } = await readOrStall();
            if (done) {
              controller.close();
              return;
            }
            position += value.byteLength;
            controller.enqueue(value);
            return;
          } catch (err) {
            if (err instanceof DbBackupError) throw err;
            failures++;
            if (failures >= client.maxAttempts) {
              throw new DbBackupError(
                "connection",
                `reading ${name} from S3 at ${client.endpointName} failed at byte ${position}: ${
                  errorMessage(err)
                }`,
                { cause: err },
              );
            }
            reader = bodyFrom(await reopen(position), position).getReader();
          }
        }
      },
      cancel(reason) {
        return reader.cancel(reason);
      },
    }, { highWaterMark: 0 });
  }

  async write(
    path: string,
    data: ReadableStream<Uint8Array>,
    options: WriteOptions = {},
  ): Promise<void> {
    let key: string;
    try {
      if (path === "") throw new DbBackupError("io", `invalid path "" in ${this.location}`);
      key = this.#key(path);
    } catch (err) {
      await data.cancel().catch(() => {});
      throw err;
    }
    await uploadObject(this.#client, key, this.#name(path), data, options, {
      partSize: this.#partSize,
      partsInFlight: this.#partsInFlight,
      buffers: this.#buffers,
    });
  }

  async createDirectory(path: string): Promise<void> {
    const key = this.#key(path);
    const name = this.#name(path);
    if (path === "" || await this.stat(path)) {
      throw new DbBackupError("exists", `${name} already exists`);
    }
    const slash = path.lastIndexOf("/");
    if (slash > 0) {
      const parent = await this.stat(path.slice(0, slash));
      if (!parent?.isDirectory) {
        throw new DbBackupError(
          "not_found",
          `cannot create ${name}: parent folder is ${parent ? "a file" : "missing"}`,
        );
      }
    }
    const res = await this.#client.send({
      method: "PUT",
      key: `${key}/`,
      headers: { "if-none-match": "*", "content-type": "application/x-directory" },
      idempotent: true,
      expect: [409, 412],
      what: `create ${name}`,
    });
    await res.body?.cancel();
    if (!res.ok) throw new DbBackupError("exists", `${name} already exists`);
  }

  async remove(path: string): Promise<void> {
    const key = this.#key(path);
    const name = this.#name(path);
    if (path !== "") {
      const res = await this.#client.send({
        method: "DELETE",
        key,
        idempotent: true,
        expect: [404],
        what: `remove ${name}`,
      });
      await res.body?.cancel();
    }
    // Then everything under it, as a directory; each page deleted in one request.
    const prefix = this.#dirPrefix(path);
    let token: string | undefined;
    do {
      const page = await this.#listPage(prefix, { token });
      if (page.keys.length > 0) await this.#deleteKeys(page.keys, name);
      token = page.next;
    } while (token);
  }

  async #deleteKeys(keys: string[], name: string): Promise<void> {
    const body = new TextEncoder().encode(
      "<Delete><Quiet>true</Quiet>" +
        keys.map((k) => `<Object><Key>${xmlEscape(k)}</Key></Object>`).join("") + "</Delete>",
    );
    const res = await this.#client.send({
      method: "POST",
      query: { delete: "" },
      body,
      headers: {
        "content-type": "application/xml",
        // S3 requires a checksum of a multi-object delete.
        "content-md5": createHash("md5").update(body).digest("base64"),
      },
      idempotent: true,
      what: `remove ${name}`,
    });
    const errors = xmlBlocks(await res.text(), "Error");
    if (errors.length > 0) {
      const e = errors[0];
      throw new DbBackupError(
        "io",
        `cannot remove ${name}: S3 did not delete ${errors.length} object(s), e.g. ${
          xmlValue(e, "Key")
        }: ${xmlValue(e, "Code")} ${xmlValue(e, "Message") ?? ""}`.trim(),
      );
    }
  }

  freeSpace(): Promise<number | undefined> {
    return Promise.resolve(undefined);
  }
}

/** A key (or prefix) made of non-empty segments, none of them "." or "..". */
function validKey(path: string): boolean {
  return path.split("/").every((s) => s !== "" && s !== "." && s !== "..") &&
    // deno-lint-ignore no-control-regex
    !/[\u0000-\u001f\u007f]/.test(path);
}

function parseEndpoint(text: string): URL {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new DbBackupError(
      "config",
      `invalid S3 endpoint "${text}": expected http(s)://host[:port]`,
    );
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new DbBackupError("config", `invalid S3 endpoint ${url.origin}: expected http or https`);
  }
  if (url.username || url.password) {
    throw new DbBackupError(
      "config",
      `the S3 endpoint ${url.origin} must not contain credentials: use AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY`,
    );
  }
  if (url.search || url.hash) {
    throw new DbBackupError("config", `invalid S3 endpoint ${url.origin}: no query allowed`);
  }
  return url;
}

function intOption(what: string, value: number, min: number, max: number): number {
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new DbBackupError("config", `invalid S3 option ${what} ${value}: expected ${min}-${max}`);
  }
  return value;
}

function missingError(name: string): DbBackupError {
  return new DbBackupError("not_found", `file ${name} is missing`);
}
