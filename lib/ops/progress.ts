/**
 * The reporter interface operations use to tell what they are doing. Library code never
 * prints: the CLI supplies a TTY, plain-line or JSON implementation.
 */

export type ProgressEvent =
  | { type: "start"; operation: string; setId?: string; parts: string[] }
  | { type: "step"; message: string; part?: string }
  | {
    type: "progress";
    part: string;
    bytes: number;
    /** Expected bytes, when known (a database's size is only a rough guide). */
    expectedBytes?: number;
    elapsedMs: number;
  }
  | {
    type: "part";
    part: string;
    status: "ok" | "failed";
    bytes?: number;
    elapsedMs: number;
    error?: string;
  }
  | { type: "warning"; message: string };

export interface Reporter {
  event(e: ProgressEvent): void;
}

export const silentReporter: Reporter = { event() {} };

/** A pass-through stream that reports bytes at most every `intervalMs`. */
export function progressStream(
  reporter: Reporter,
  part: string,
  expectedBytes: number | undefined,
  intervalMs = 500,
): TransformStream<Uint8Array, Uint8Array> {
  const started = performance.now();
  let bytes = 0;
  let last = 0;
  return new TransformStream({
    transform(chunk, controller) {
      bytes += chunk.byteLength;
      const now = performance.now();
      if (now - last >= intervalMs) {
        last = now;
        reporter.event({
          type: "progress",
          part,
          bytes,
          expectedBytes,
          elapsedMs: Math.round(now - started),
        });
      }
      controller.enqueue(chunk);
    },
  });
}
