/** Reporter implementations: a redrawn line on a TTY, plain lines otherwise, or JSON lines. */
import type { ProgressEvent, Reporter } from "../ops/progress.ts";
import { formatBytes, formatDuration } from "./format.ts";

const encoder = new TextEncoder();

function writeErr(text: string): void {
  Deno.stderr.writeSync(encoder.encode(text));
}

export function writeOut(text: string): void {
  const bytes = encoder.encode(text);
  let written = 0;
  while (written < bytes.length) written += Deno.stdout.writeSync(bytes.subarray(written));
}

/** One JSON object per event on stdout. */
export class JsonReporter implements Reporter {
  event(e: ProgressEvent): void {
    writeOut(JSON.stringify({ ...e, time: new Date().toISOString() }) + "\n");
  }
}

/** A line per step on stderr, for logs and pipes; progress events are not printed. */
export class LineReporter implements Reporter {
  constructor(private readonly quiet: boolean) {}
  event(e: ProgressEvent): void {
    if (this.quiet && e.type !== "warning") return;
    switch (e.type) {
      case "start":
        writeErr(`${e.operation}${e.setId ? ` ${e.setId}` : ""}: ${e.parts.length} part(s)\n`);
        break;
      case "step":
        writeErr(`${e.message}\n`);
        break;
      case "part":
        writeErr(
          e.status === "ok"
            ? `ok ${e.part}${e.bytes !== undefined ? ` (${formatBytes(e.bytes)})` : ""} in ${
              formatDuration(e.elapsedMs)
            }\n`
            : `FAILED ${e.part}: ${e.error}\n`,
        );
        break;
      case "warning":
        writeErr(`warning: ${e.message}\n`);
        break;
      case "progress":
        break;
    }
  }
}

/** On a terminal: finished parts as lines, running parts on one redrawn status line. */
export class TtyReporter implements Reporter {
  #active = new Map<string, { bytes: number; expected?: number; elapsedMs: number }>();
  #lines = new LineReporter(false);

  event(e: ProgressEvent): void {
    if (e.type === "progress") {
      this.#active.set(e.part, {
        bytes: e.bytes,
        expected: e.expectedBytes,
        elapsedMs: e.elapsedMs,
      });
      this.#draw();
      return;
    }
    this.#clear();
    if (e.type === "part") this.#active.delete(e.part);
    if (e.type !== "step") this.#lines.event(e);
    this.#draw();
  }

  #clear(): void {
    writeErr("\r\x1b[K");
  }

  #draw(): void {
    if (this.#active.size === 0) return;
    const cols = Deno.consoleSize?.().columns ?? 100;
    const parts = [...this.#active].map(([part, p]) => {
      let eta = "";
      if (p.expected && p.bytes > 0 && p.bytes < p.expected) {
        eta = ` ETA ~${formatDuration(p.elapsedMs * (p.expected - p.bytes) / p.bytes)}`;
      }
      return `${part}: ${formatBytes(p.bytes)} ${formatDuration(p.elapsedMs)}${eta}`;
    });
    const line = parts.join(" | ");
    writeErr(`\r\x1b[K${[...line].slice(0, cols - 1).join("")}`);
  }
}

/** Picks the reporter for the flags and the terminal. */
export function makeReporter(opts: { json: boolean; quiet: boolean; progress: boolean }): Reporter {
  if (opts.json) return new JsonReporter();
  if (opts.progress && !opts.quiet && Deno.stderr.isTerminal()) return new TtyReporter();
  return new LineReporter(opts.quiet);
}
