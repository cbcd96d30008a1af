/**
 * Throwaway S3 servers for tests, and a fault-injecting proxy to put in front of one.
 *
 * `startS3()` runs s3rver (see s3rver_main.ts) as a child process of the same deno executable,
 * through lib/process/run.ts, listening on a free port of 127.0.0.1, storing into its own temp
 * dir, with one bucket and a random access key (s3rver's default S3RVER key is revoked, so other
 * keys are refused). Use `withS3` so that the server is stopped and its dir removed even when
 * the test body throws.
 *
 * s3rver checks that the access key exists but not SigV4 signatures: a wrong secret for the
 * right key is accepted.
 */
import { type ChildHandle, spawn } from "../../lib/process/run.ts";

export interface S3Server {
  /** "http://127.0.0.1:PORT": the same across `restart()`. */
  readonly endpoint: string;
  readonly bucket: string;
  readonly region: string;
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  /** s3rver's storage folder (inside the temp dir); survives `halt()` and `restart()`. */
  readonly dataDir: string;
  /** Ids of multipart uploads started and neither completed nor aborted. */
  pendingUploads(): Promise<string[]>;
  /** How many parts (complete or arriving) the pending multipart uploads have. */
  pendingParts(): Promise<number>;
  /** Stops the server process, keeping its data: clients get "connection refused". */
  halt(): Promise<void>;
  /** Starts the server again on the same port with the same data (halting it first). */
  restart(): Promise<void>;
  /** Stops the server and removes its temp dir. Safe to call more than once. */
  stop(): Promise<void>;
}

const MAIN = new URL("./s3rver_main.ts", import.meta.url).pathname;
const CONFIG = new URL("../../deno.json", import.meta.url).pathname;
const READY_TIMEOUT_MS = 30_000;

/** Starts s3rver with a bucket; on any failure whatever was started is stopped and removed. */
export async function startS3(): Promise<S3Server> {
  const baseDir = await Deno.makeTempDir({ prefix: "dbbackup-test-s3-" });
  const server = new ThrowawayS3(baseDir);
  try {
    await Deno.mkdir(server.dataDir);
    await server.start(0);
    return server;
  } catch (err) {
    await server.stop().catch(() => {});
    throw err;
  }
}

/** Runs `fn` with a fresh server and always stops/removes it afterwards. */
export async function withS3<T>(fn: (s3: S3Server) => Promise<T>): Promise<T> {
  const s3 = await startS3();
  try {
    return await fn(s3);
  } finally {
    await s3.stop();
  }
}

function randomHex(bytes: number): string {
  return Array.from(
    crypto.getRandomValues(new Uint8Array(bytes)),
    (b) => b.toString(16).padStart(2, "0"),
  ).join("");
}

class ThrowawayS3 implements S3Server {
  readonly bucket = `test-${randomHex(4)}`;
  readonly region = "us-east-1";
  readonly accessKeyId = `AKTEST${randomHex(7).toUpperCase()}`;
  readonly secretAccessKey = randomHex(20);
  readonly dataDir: string;
  port = 0;
  #child: ChildHandle | undefined;
  #drain: Promise<void> = Promise.resolve();
  #stopped = false;

  constructor(readonly baseDir: string) {
    this.dataDir = `${baseDir}/data`;
  }

  get endpoint(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Starts the child and waits for its `{"port": N}` line. */
  async start(port: number): Promise<void> {
    const env: Record<string, string> = {
      PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
      // The secret reaches the child through its environment, never its argv.
      S3RVER_ACCESS_KEY_ID: this.accessKeyId,
      S3RVER_SECRET_ACCESS_KEY: this.secretAccessKey,
      NO_COLOR: "1",
    };
    for (const name of ["HOME", "DENO_DIR", "TMPDIR"]) {
      const value = Deno.env.get(name);
      if (value) env[name] = value;
    }
    const child = spawn(Deno.execPath(), [
      "run",
      "--quiet",
      "--no-prompt",
      "--cached-only",
      `--config=${CONFIG}`,
      "--allow-net=127.0.0.1",
      "--allow-read",
      `--allow-write=${this.baseDir}`,
      "--allow-env",
      "--allow-sys",
      MAIN,
      this.dataDir,
      String(port),
      this.bucket,
    ], { describe: "s3rver test server", env, clearEnv: true, cwd: this.baseDir });
    this.#child = child;
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`s3rver did not start within ${READY_TIMEOUT_MS} ms`)),
        READY_TIMEOUT_MS,
      );
    });
    timeout.catch(() => {});
    const early = exited(child);
    early.catch(() => {});
    try {
      let text = "";
      while (!text.includes("\n")) {
        const { done, value } = await Promise.race([reader.read(), timeout, early]);
        if (done) break;
        text += value;
      }
      const started = JSON.parse(text.split("\n")[0] || "{}") as { port?: number };
      if (!started.port) throw new Error(`s3rver printed no port: ${JSON.stringify(text)}`);
      this.port = started.port;
    } catch (err) {
      child.kill("SIGKILL");
      await child.status.catch(() => {});
      await reader.cancel().catch(() => {});
      this.#child = undefined;
      throw err;
    } finally {
      clearTimeout(timer);
    }
    // Keep reading so that the child never blocks on a full pipe.
    this.#drain = (async () => {
      while (!(await reader.read()).done) { /* discard */ }
    })().catch(() => {});
  }

  async pendingUploads(): Promise<string[]> {
    const ids: string[] = [];
    try {
      for await (const e of Deno.readDir(`${this.dataDir}/${this.bucket}/._S3rver_uploads`)) {
        ids.push(e.name);
      }
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
    return ids.sort();
  }

  async pendingParts(): Promise<number> {
    let parts = 0;
    for (const id of await this.pendingUploads()) {
      for await (const e of Deno.readDir(`${this.dataDir}/${this.bucket}/._S3rver_uploads/${id}`)) {
        if (/^\d+$/.test(e.name)) parts++;
      }
    }
    return parts;
  }

  async halt(): Promise<void> {
    const child = this.#child;
    if (!child) return;
    this.#child = undefined;
    child.kill("SIGTERM");
    await child.status.catch(() => {}); // killed by a signal: not a failure here
    await this.#drain;
  }

  async restart(): Promise<void> {
    if (this.#stopped) throw new Error("the S3 test server was stopped");
    await this.halt();
    await this.start(this.port);
  }

  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    try {
      await this.halt();
    } finally {
      await Deno.remove(this.baseDir, { recursive: true }).catch((err) => {
        if (!(err instanceof Deno.errors.NotFound)) throw err;
      });
    }
  }
}

/** Rejects when the child exits (before it was ready), with its stderr tail. */
async function exited(child: ChildHandle): Promise<never> {
  const result = await child.status;
  throw new Error(`s3rver exited early (code ${result.code}): ${result.stderr}`);
}

// ---------------------------------------------------------------------------------------------

/** One request that went through the proxy. */
export interface ProxiedRequest {
  method: string;
  url: URL;
  /** 1 for the first request through the proxy, and so on. */
  n: number;
  /** The Range header, if any. */
  range: string | null;
}

/**
 * What to do with a request instead of forwarding it plainly: answer it with `respond`;
 * forward it but answer with `lostAnswer` (the server acted, the client never heard); or
 * forward it and break the connection after `cutBodyAfter` bytes of the answer's body; or
 * forward it and go silent after `stallBodyAfter` bytes, keeping the connection open.
 */
export type Fault =
  | { respond: Response }
  | { lostAnswer: Response }
  | { cutBodyAfter: number }
  | { stallBodyAfter: number };

export interface FaultProxy {
  /** "http://127.0.0.1:PORT": use as the S3 endpoint. */
  readonly endpoint: string;
  /** Every request so far, in order. */
  readonly requests: ProxiedRequest[];
  stop(): Promise<void>;
}

/** An S3 error answer, as S3 writes them. */
export function s3ErrorResponse(status: number, code: string, message: string): Response {
  return new Response(
    `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${message}</Message></Error>`,
    { status, headers: { "content-type": "application/xml" } },
  );
}

/** Whether a request is an UploadPart (PUT with partNumber and uploadId). */
export function isUploadPart(req: ProxiedRequest): boolean {
  return req.method === "PUT" && req.url.searchParams.has("partNumber") &&
    req.url.searchParams.has("uploadId");
}

/**
 * An HTTP proxy on 127.0.0.1 that forwards every request to `target` (a real server), except
 * that `fault` may answer or break some of them.
 */
export function startFaultProxy(
  target: string,
  fault: (req: ProxiedRequest) => Fault | undefined,
): Promise<FaultProxy> {
  const requests: ProxiedRequest[] = [];
  // Ends the stalled answers when the proxy stops.
  const stalls = new AbortController();
  const { promise: listening, resolve } = Promise.withResolvers<number>();
  const server = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    onListen: ({ port }) => resolve(port),
  }, async (req) => {
    const url = new URL(req.url);
    const info: ProxiedRequest = {
      method: req.method,
      url,
      n: requests.length + 1,
      range: req.headers.get("range"),
    };
    requests.push(info);
    const action = fault(info);
    if (action && "respond" in action) {
      await req.body?.cancel();
      return action.respond;
    }
    const headers = new Headers(req.headers);
    for (const h of ["host", "content-length", "connection", "transfer-encoding"]) {
      headers.delete(h);
    }
    const body = req.body ? new Uint8Array(await req.arrayBuffer()) : undefined;
    const res = await fetch(`${target}${url.pathname}${url.search}`, {
      method: req.method,
      headers,
      body,
    });
    const out = new Headers(res.headers);
    for (const h of ["connection", "keep-alive", "transfer-encoding"]) out.delete(h);
    if (action && "lostAnswer" in action) {
      await res.body?.cancel();
      return action.lostAnswer;
    }
    if (!action || !res.body) return new Response(res.body, { status: res.status, headers: out });
    if ("stallBodyAfter" in action) {
      return new Response(stallAfter(res.body, action.stallBodyAfter, stalls), {
        status: res.status,
        headers: out,
      });
    }
    return new Response(cutAfter(res.body, action.cutBodyAfter), {
      status: res.status,
      headers: out,
    });
  });
  return listening.then((port) => ({
    endpoint: `http://127.0.0.1:${port}`,
    requests,
    stop: () => {
      stalls.abort();
      return server.shutdown();
    },
  }));
}

/** Passes `limit` bytes, then sends nothing more until the proxy stops. */
function stallAfter(
  body: ReadableStream<Uint8Array>,
  limit: number,
  stalls: AbortController,
): ReadableStream<Uint8Array> {
  const reader = body.getReader();
  let left = limit;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (left <= 0) {
        // Silent, with the connection open, until the proxy is stopped.
        await new Promise((resolve) => stalls.signal.addEventListener("abort", resolve));
        await reader.cancel().catch(() => {});
        return controller.close();
      }
      const { done, value } = await reader.read();
      if (done) return controller.close();
      const part = value.subarray(0, left);
      left -= part.byteLength;
      controller.enqueue(part);
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  });
}

/** Passes `limit` bytes, then ends (short of the Content-Length: a broken connection). */
function cutAfter(body: ReadableStream<Uint8Array>, limit: number): ReadableStream<Uint8Array> {
  const reader = body.getReader();
  let left = limit;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const { done, value } = await reader.read();
      if (done) return controller.close();
      if (value.byteLength < left) {
        left -= value.byteLength;
        return controller.enqueue(value);
      }
      if (left > 0) controller.enqueue(value.subarray(0, left));
      left = 0;
      await reader.cancel();
      // Ending early under the Content-Length passed on: the client sees the connection break.
      controller.close();
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  });
}
