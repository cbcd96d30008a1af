/**
 * Signed requests to one S3 bucket: URLs (path or virtual-host style), SigV4 signing through
 * aws4fetch, a time limit per attempt, retries with exponential backoff for requests that are
 * safe to send again, and S3 error answers turned into DbBackupErrors.
 *
 * Credentials live only in the signer held here; they never appear in URLs (requests are signed
 * in headers), in messages or in `cause`s.
 */
import { AwsClient } from "aws4fetch";
import { type IncomingMessage, request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import { DbBackupError, errorMessage } from "../errors.ts";
import { xmlValue } from "./_xml.ts";

export interface S3Credentials {
  accessKeyId: string;
  secretAccessKey: string;
  /** For temporary credentials (AWS_SESSION_TOKEN). */
  sessionToken?: string;
}

export interface S3ClientConfig {
  endpoint: URL;
  bucket: string;
  region: string;
  pathStyle: boolean;
  credentials: S3Credentials;
  /** Tries per request, the first included. */
  maxAttempts: number;
  /** Delay before the first retry; it doubles with each further one (with jitter). */
  retryDelayMs: number;
  /** Time one attempt may take to get the answer's headers (sending the body included). */
  requestTimeoutMs: number;
}

export type S3Method = "GET" | "HEAD" | "PUT" | "POST" | "DELETE";

export interface S3Request {
  method: S3Method;
  /** The object key; omitted for requests on the bucket itself (list, multi-delete). */
  key?: string;
  query?: Record<string, string>;
  headers?: Record<string, string>;
  body?: Uint8Array;
  /** Sending it twice is harmless: only then are 5xx answers and network errors retried. */
  idempotent: boolean;
  /** Statuses handed back to the caller instead of becoming errors (e.g. 404 for HEAD). */
  expect?: number[];
  /** S3 may answer 200 and still put an <Error> in the body (CompleteMultipartUpload). */
  errorInBody?: boolean;
  /** What the request does, for messages: `upload part 3 of s3://bucket/set/db.pgdump`. */
  what: string;
  signal?: AbortSignal;
  /** Called before each retry (for callers that must know whether a request was repeated). */
  onRetry?: () => void;
}

/** Error codes that mean the credentials (or the policy) do not allow the request. */
const AUTH_CODES = new Set([
  "AccessDenied",
  "InvalidAccessKeyId",
  "SignatureDoesNotMatch",
  "ExpiredToken",
  "InvalidToken",
  "TokenRefreshRequired",
  "AllAccessDisabled",
]);
/** Error codes worth another try whatever the status (RequestTimeout comes as a 400). */
const TRANSIENT_CODES = new Set([
  "RequestTimeout",
  "SlowDown",
  "InternalError",
  "ServiceUnavailable",
]);

const EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

export class S3Client {
  readonly endpoint: URL;
  readonly bucket: string;
  readonly maxAttempts: number;
  readonly #config: S3ClientConfig;
  readonly #signer: AwsClient;

  constructor(config: S3ClientConfig) {
    this.#config = config;
    this.endpoint = config.endpoint;
    this.bucket = config.bucket;
    this.maxAttempts = config.maxAttempts;
    this.#signer = new AwsClient({
      accessKeyId: config.credentials.accessKeyId,
      secretAccessKey: config.credentials.secretAccessKey,
      sessionToken: config.credentials.sessionToken,
      service: "s3",
      region: config.region,
      retries: 0, // retries are ours: only idempotent requests, with our own limits
    });
  }

  /** The endpoint as shown in messages: scheme, host and port only. */
  get endpointName(): string {
    return this.endpoint.origin;
  }

  url(key?: string, query: Record<string, string> = {}): URL {
    const { endpoint, bucket, pathStyle } = this.#config;
    const base = endpoint.pathname.replace(/\/+$/, "");
    const encodedKey = key === undefined ? "" : `/${encodeKey(key)}`;
    const url = pathStyle
      ? new URL(`${endpoint.origin}${base}/${encodeURIComponent(bucket)}${encodedKey}`)
      : new URL(`${endpoint.protocol}//${bucket}.${endpoint.host}${base}${encodedKey || "/"}`);
    for (const [k, v] of Object.entries(query)) url.searchParams.set(k, v);
    return url;
  }

  /**
   * Sends a request, retrying it when allowed. Resolves with a 2xx answer or one listed in
   * `expect`, whose body the caller must consume or cancel; anything else is thrown.
   */
  async send(req: S3Request): Promise<Response> {
    const max = req.idempotent ? this.maxAttempts : 1;
    for (let attempt = 1;; attempt++) {
      if (req.signal?.aborted) throw req.signal.reason;
      let res: Response;
      try {
        res = await this.#attempt(req);
      } catch (err) {
        if (req.signal?.aborted) throw req.signal.reason;
        if (attempt >= max) throw this.#connectionError(req, err);
        await this.#backoff(req, attempt);
        continue;
      }
      if (req.errorInBody && res.ok) {
        const text = await res.text();
        const code = text.includes("<Error>") ? xmlValue(text, "Code") : undefined;
        if (code === undefined) {
          return new Response(text, { status: res.status, headers: res.headers });
        }
        if (TRANSIENT_CODES.has(code) && attempt < max) {
          await this.#backoff(req, attempt);
          continue;
        }
        throw this.httpError(req, res.status, code, xmlValue(text, "Message"));
      }
      if (res.ok || req.expect?.includes(res.status)) return res;
      const text = await res.text().catch(() => "");
      const code = xmlValue(text, "Code");
      const transient = res.status >= 500 || res.status === 429 ||
        (code !== undefined && TRANSIENT_CODES.has(code));
      if (transient && attempt < max) {
        await this.#backoff(req, attempt);
        continue;
      }
      throw this.httpError(req, res.status, code, xmlValue(text, "Message"));
    }
  }

  /** Reads the error code of an answer the caller accepted through `expect` (consumes it). */
  async errorCode(res: Response): Promise<string | undefined> {
    const text = await res.text().catch(() => "");
    return xmlValue(text, "Code");
  }

  async #attempt(req: S3Request): Promise<Response> {
    const body = req.body ??
      (req.method === "PUT" || req.method === "POST" ? new Uint8Array(0) : undefined);
    const headers: Record<string, string> = {
      ...req.headers,
      // The payload is signed: S3 rejects a body that was changed on the way.
      "x-amz-content-sha256": body && body.byteLength > 0 ? await sha256Hex(body) : EMPTY_SHA256,
    };
    const hasBody = body !== undefined && body.byteLength > 0;
    // A body given to the signer would be copied into its Request (the hash is in a header).
    const signed = await this.#signer.sign(this.url(req.key, req.query).toString(), {
      method: req.method,
      headers,
      body: hasBody ? undefined : body as BodyInit | undefined,
    });
    const timeout = new AbortController();
    const timer = setTimeout(
      () =>
        timeout.abort(
          new Error(`no answer within ${Math.round(this.#config.requestTimeoutMs / 1000)} s`),
        ),
      this.#config.requestTimeoutMs,
    );
    const signal = req.signal ? AbortSignal.any([req.signal, timeout.signal]) : timeout.signal;
    try {
      if (hasBody) return await sendBody(signed, body, signal);
      return await fetch(signed, { signal });
    } catch (err) {
      throw timeout.signal.aborted ? timeout.signal.reason : err;
    } finally {
      // Once the headers are in, the body may take as long as it needs.
      clearTimeout(timer);
    }
  }

  async #backoff(req: S3Request, attempt: number): Promise<void> {
    req.onRetry?.();
    const delay = this.#config.retryDelayMs * 2 ** (attempt - 1) * (0.5 + Math.random() / 2);
    await sleep(delay, req.signal);
  }

  #connectionError(req: S3Request, err: unknown): DbBackupError {
    return new DbBackupError(
      "connection",
      `cannot reach S3 at ${this.endpointName} (bucket "${this.bucket}") to ${req.what}: ${
        networkReason(err)
      }`,
      { cause: err },
    );
  }

  /** The DbBackupError for an S3 error answer. */
  httpError(
    req: Pick<S3Request, "what">,
    status: number,
    code: string | undefined,
    message: string | undefined,
  ): DbBackupError {
    const where = `bucket "${this.bucket}" at ${this.endpointName}`;
    const label = `HTTP ${status}${code ? ` ${code}` : ""}`;
    if (status === 401 || status === 403 || (code !== undefined && AUTH_CODES.has(code))) {
      return new DbBackupError(
        "auth",
        `S3 refused to ${req.what}: access to ${where} denied (${label}); check the credentials ` +
          `taken from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN, and the ` +
          `bucket's policy`,
      );
    }
    if (code === "NoSuchBucket") {
      return new DbBackupError(
        "not_found",
        `cannot ${req.what}: S3 bucket "${this.bucket}" does not exist at ${this.endpointName}`,
      );
    }
    return new DbBackupError(
      "io",
      `cannot ${req.what}: S3 answered ${label}${message ? `: ${message}` : ""}`,
    );
  }
}

/** Slices written at a time by `sendBody`. */
const WRITE_SLICE = 256 * 1024;

/**
 * Sends a signed request whose body is `body` through node:http(s), with a Content-Length and
 * the body written in slices. Deno's fetch copies a whole byte-array body per request and
 * those copies, part after part, pile up until a garbage collection (over 150 MB extra for a
 * 100 MB upload in 8 MiB parts); a stream body would avoid the copy but goes out chunked,
 * which S3 refuses.
 */
function sendBody(signed: Request, body: Uint8Array, signal: AbortSignal): Promise<Response> {
  const url = new URL(signed.url);
  const headers: Record<string, string> = { host: url.host };
  signed.headers.forEach((value, name) => headers[name] = value);
  headers["content-length"] = String(body.byteLength);
  const send = url.protocol === "https:" ? httpsRequest : httpRequest;
  return new Promise<Response>((resolve, reject) => {
    const req = send(url, { method: signed.method, headers }, (res: IncomingMessage) => {
      const chunks: Uint8Array[] = [];
      res.on("data", (chunk: Uint8Array) => chunks.push(chunk));
      res.on("error", reject);
      res.on("end", () => {
        const status = res.statusCode ?? 0;
        const out = new Headers();
        for (const [name, value] of Object.entries(res.headers)) {
          if (value !== undefined) out.set(name, Array.isArray(value) ? value.join(", ") : value);
        }
        const nullBody = status === 204 || status === 205 || status === 304;
        resolve(new Response(nullBody ? null : concat(chunks), { status, headers: out }));
        // An answer before the whole body was sent (an error): stop sending, drop the socket.
        if (!req.writableFinished) req.destroy();
      });
    });
    const onAbort = () => req.destroy(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    req.on("close", () => signal.removeEventListener("abort", onAbort));
    req.on("error", reject);
    let at = 0;
    const writeMore = () => {
      while (at < body.byteLength) {
        const slice = body.subarray(at, at + WRITE_SLICE);
        at += slice.byteLength;
        if (!req.write(slice)) return void req.once("drain", writeMore);
      }
      req.end();
    };
    writeMore();
  });
}

function concat(chunks: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.byteLength, 0));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.byteLength;
  }
  return out;
}

/** A key as a URL path: every "/"-separated segment percent-encoded (RFC 3986). */
function encodeKey(key: string): string {
  return key.split("/").map((segment) =>
    encodeURIComponent(segment).replace(
      /[!'()*]/g,
      (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`,
    )
  ).join("/");
}

async function sha256Hex(data: Uint8Array): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", data as BufferSource));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** What went wrong, from the error and its causes ("fetch failed" says little; URLs go). */
function networkReason(err: unknown): string {
  const texts: string[] = [];
  for (let e = err, depth = 0; e !== undefined && depth < 4; depth++) {
    const text = errorMessage(e).replace(/^error sending request for url \([^)]*\): /, "");
    if (text && text !== "fetch failed") texts.push(text);
    e = e instanceof Error ? e.cause : undefined;
  }
  return texts.join(": ") || "network error";
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
