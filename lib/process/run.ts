/**
 * The one wrapper around Deno.Command: argv arrays only, never a shell.
 *
 * Secrets reach children only through the environment. The exit status is always awaited
 * together with the end of the output stream, and the tail of stderr is attached to errors.
 */
import { DbBackupError, InterruptedError } from "../errors.ts";
import { enlargeChildPipe } from "./pipes.ts";

export interface SpawnOptions {
  /** Human description used in errors, e.g. `pg_dump of database "shop"`. */
  describe: string;
  /** Environment for the child. With `clearEnv` it replaces the inherited one. */
  env?: Record<string, string>;
  clearEnv?: boolean;
  cwd?: string;
  /** "piped" gives a writable stdin on the handle; default "null". */
  stdin?: "piped" | "null";
  /** "piped" gives a readable stdout on the handle; default "piped". */
  stdout?: "piped" | "null" | "inherit";
  /** Aborting kills the child (SIGTERM) and makes `status` reject with InterruptedError. */
  signal?: AbortSignal;
  /** Exit codes that count as success; default [0]. */
  okCodes?: number[];
  /** Called with every piece of stderr text as it arrives (the tail is kept regardless). */
  onStderr?: (text: string) => void;
  /**
   * The child writes bulk data to stdout with C stdio: run it under coreutils' stdbuf (when
   * `probeLargeWrites` found that it works for `cmd`) so it writes 1 MiB at a time.
   */
  largeWrites?: boolean;
}

export interface ProcessResult {
  code: number;
  /** The last lines of stderr (at most 16 KiB). */
  stderr: string;
}

export interface ChildHandle {
  readonly pid: number;
  readonly stdout: ReadableStream<Uint8Array>;
  readonly stdin: WritableStream<Uint8Array>;
  /** Resolves when the child exited with an ok code; rejects with a DbBackupError otherwise. */
  readonly status: Promise<ProcessResult>;
  kill(signal?: Deno.Signal): void;
}

const STDERR_TAIL_BYTES = 16 * 1024;

/** Children started by this process and still running: only these are ever signalled. */
const running = new Set<Deno.ChildProcess>();

/** Sends a signal to every child this process started that is still running. */
export function killAllChildren(signal: Deno.Signal = "SIGTERM"): void {
  for (const child of running) {
    try {
      child.kill(signal);
    } catch {
      // already gone
    }
  }
}

/**
 * Programs for which `stdbuf -o 1M <program>` was seen to work. A C program writing to a pipe
 * gets a 4 KiB stdio buffer: psql sends a GB of COPY data in 250,000 writes, each waking the
 * reader for a few KiB. With a 1 MiB buffer the pipe is read 64 KiB at a time, which saved
 * about a third of the CPU time of moving COPY data from psql into this process.
 */
const largeWriters = new Set<string>();
let stdbufPath: Promise<string | undefined> | undefined;
let stdbufFound: string | undefined;

/** coreutils' stdbuf: in the usual places first (a systemd unit may have no PATH), then PATH. */
function findStdbuf(): Promise<string | undefined> {
  return stdbufPath ??= (async () => {
    const path = Deno.env.get("PATH") ?? "";
    const dirs = ["/usr/bin", "/bin", "/usr/local/bin", ...path.split(":").filter(Boolean)];
    for (const dir of dirs) {
      try {
        if ((await Deno.stat(`${dir}/stdbuf`)).isFile) return stdbufFound = `${dir}/stdbuf`;
      } catch {
        // not here
      }
    }
    return undefined;
  })();
}

/**
 * Finds out whether `program` (a dynamically linked C program that accepts `--version`) runs
 * under stdbuf here: `stdbuf -o 1M <program> --version` must print `version`, what the
 * program printed alone. spawn's `largeWrites` uses it if so.
 */
export async function probeLargeWrites(program: string, version: string): Promise<boolean> {
  if (largeWriters.has(program)) return true;
  const stdbuf = await findStdbuf();
  if (!stdbuf || version === "") return false;
  try {
    const buffered = await run(stdbuf, ["-o", "1M", program, "--version"], {
      describe: `stdbuf -o 1M ${program} --version`,
    });
    if (buffered.stdout === version) {
      largeWriters.add(program);
      return true;
    }
  } catch {
    // no stdbuf (macOS, minimal images) or it cannot preload here: plain pipes
  }
  return false;
}

/** A child that exited with a status not among its ok codes, or was killed by a signal. */
export class ChildExitError extends DbBackupError {
  /** The child's exit status (128 + the signal's number when killed). */
  readonly status: number;
  readonly signal: Deno.Signal | null;
  constructor(message: string, status: number, signal: Deno.Signal | null) {
    super("process", message);
    this.name = "ChildExitError";
    this.status = status;
    this.signal = signal;
  }
}

/** Starts `cmd` with `args`. The caller must consume `stdout` when it is piped. */
export function spawn(cmd: string, args: readonly string[], options: SpawnOptions): ChildHandle {
  if (options.signal?.aborted) throw new InterruptedError(`interrupted before ${options.describe}`);
  const stdbuf = options.largeWrites === true && largeWriters.has(cmd) ? stdbufFound : undefined;
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(stdbuf ?? cmd, {
      args: stdbuf ? ["-o", "1M", cmd, ...args] : [...args],
      env: options.env,
      clearEnv: options.clearEnv ?? false,
      cwd: options.cwd,
      stdin: options.stdin ?? "null",
      stdout: options.stdout ?? "piped",
      stderr: "piped",
    }).spawn();
  } catch (err) {
    const reason = err instanceof Deno.errors.NotFound ? "program not found" : String(err);
    throw new DbBackupError("process", `cannot start ${options.describe}: ${cmd}: ${reason}`);
  }
  running.add(child);
  // Bulk data moves through these pipes: 1 MiB instead of 64 KiB each (see pipes.ts).
  if (options.stdin === "piped") enlargeChildPipe(child.pid, 0);
  if ((options.stdout ?? "piped") === "piped") enlargeChildPipe(child.pid, 1);
  let killedByAbort = false;
  const onAbort = () => {
    killedByAbort = true;
    try {
      child.kill("SIGTERM");
    } catch {
      // already exited
    }
  };
  options.signal?.addEventListener("abort", onAbort, { once: true });

  const stderrTail = readTail(child.stderr, options.onStderr);
  const okCodes = options.okCodes ?? [0];
  const status = (async () => {
    try {
      const [st, stderr] = await Promise.all([child.status, stderrTail]);
      if (killedByAbort || options.signal?.aborted) {
        throw new InterruptedError(`interrupted during ${options.describe}`);
      }
      if (!st.success && !okCodes.includes(st.code)) {
        const how = st.signal ? `was killed by ${st.signal}` : `exited with code ${st.code}`;
        const tail = stderr.trim();
        throw new ChildExitError(
          `${options.describe} failed: ${cmd} ${how}${tail ? `: ${lastLines(tail, 12)}` : ""}`,
          st.code,
          st.signal,
        );
      }
      return { code: st.code, stderr };
    } finally {
      running.delete(child);
      options.signal?.removeEventListener("abort", onAbort);
    }
  })();
  // Never an unhandled rejection: callers await `status` when they need it.
  status.catch(() => {});

  let stdout: ReadableStream<Uint8Array> | undefined;
  return {
    pid: child.pid,
    get stdout() {
      return stdout ??= largeReads(child.stdout);
    },
    get stdin() {
      return child.stdin;
    },
    status,
    kill(signal: Deno.Signal = "SIGTERM") {
      try {
        child.kill(signal);
      } catch {
        // already exited
      }
    },
  };
}

/**
 * Deno reads a child's stdout 64 KiB at a time. Read into 256 KiB buffers instead, a native
 * backup's 2.2 GB of COPY data arrived in a quarter of the reads, which saved about 10% of its
 * CPU time here (with the 1 MiB pipes of pipes.ts). A read that brings less than a quarter of
 * a buffer is copied out and the buffer reused, so chatty output does not pin 256 KiB a piece.
 */
const STDOUT_READ_BYTES = 256 * 1024;

function largeReads(stream: ReadableStream<Uint8Array>): ReadableStream<Uint8Array> {
  let reader: ReadableStreamBYOBReader;
  try {
    reader = stream.getReader({ mode: "byob" });
  } catch {
    return stream; // not a byte stream: read it as it is
  }
  let buffer = new Uint8Array(STDOUT_READ_BYTES);
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const { done, value } = await reader.read(buffer);
      if (done) return controller.close();
      if (value.byteLength >= STDOUT_READ_BYTES / 4) {
        controller.enqueue(value);
        buffer = new Uint8Array(STDOUT_READ_BYTES);
      } else {
        controller.enqueue(value.slice());
        buffer = new Uint8Array(value.buffer);
      }
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
}

export interface RunOptions extends Omit<SpawnOptions, "stdin" | "stdout"> {
  /** Bytes written to the child's stdin, then closed. */
  input?: Uint8Array | string;
}

export interface RunOutput extends ProcessResult {
  stdout: string;
}

/** Runs a command to completion, collecting stdout as text. */
export async function run(
  cmd: string,
  args: readonly string[],
  options: RunOptions,
): Promise<RunOutput> {
  const child = spawn(cmd, args, {
    ...options,
    stdin: options.input === undefined ? "null" : "piped",
    stdout: "piped",
  });
  const feeding = options.input === undefined ? Promise.resolve() : feed(child, options.input);
  const [stdout, result] = await Promise.all([
    new Response(child.stdout).text(),
    child.status,
    feeding,
  ]);
  return { ...result, stdout };
}

async function feed(child: ChildHandle, input: Uint8Array | string): Promise<void> {
  const writer = child.stdin.getWriter();
  try {
    await writer.write(typeof input === "string" ? new TextEncoder().encode(input) : input);
    await writer.close();
  } catch {
    // The child exited early; its status says why.
  }
}

async function readTail(
  stream: ReadableStream<Uint8Array>,
  onText?: (text: string) => void,
): Promise<string> {
  const chunks: Uint8Array[] = [];
  const decoder = new TextDecoder();
  let size = 0;
  for await (const chunk of stream) {
    onText?.(decoder.decode(chunk, { stream: true }));
    chunks.push(chunk);
    size += chunk.byteLength;
    while (size - chunks[0].byteLength >= STDERR_TAIL_BYTES) {
      size -= chunks.shift()!.byteLength;
    }
  }
  const all = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    all.set(c, at);
    at += c.byteLength;
  }
  return new TextDecoder().decode(all);
}

function lastLines(text: string, n: number): string {
  const lines = text.split("\n");
  return lines.slice(-n).join("\n");
}

/**
 * Writes `input` to the child's stdin while the child reads it; once the child stops reading
 * (it exited, or needed only the start, like `pg_restore --list`), the rest of `input` is
 * still read to its end, so checks that run at the end of `input` (checksums) always run.
 * Rejects with `input`'s own error; a failing input kills the child first, so it cannot
 * finish with what it got.
 */
export async function feedChild(
  child: ChildHandle,
  input: ReadableStream<Uint8Array>,
): Promise<void> {
  const writer = child.stdin.getWriter();
  let open = true;
  try {
    for await (const chunk of input) {
      if (!open) continue;
      try {
        await writer.write(chunk);
      } catch {
        open = false; // the child closed its stdin; its exit status tells why
      }
    }
  } catch (err) {
    child.kill("SIGKILL");
    throw err;
  }
  if (open) await writer.close().catch(() => {});
}
