/** Byte ranges of reads, shared by the drivers. */
import { DbBackupError } from "../errors.ts";
import type { ReadOptions } from "./storage.ts";

export interface ByteRange {
  offset: number;
  /** Undefined: up to the end. */
  length?: number;
}

/** Validates a read range: offset and length are whole numbers >= 0. */
export function checkRange(options: ReadOptions, name: string): ByteRange {
  const offset = options.offset ?? 0;
  const length = options.length;
  for (const [what, value] of [["offset", offset], ["length", length ?? 0]] as const) {
    if (!Number.isSafeInteger(value) || value < 0) {
      throw new DbBackupError("io", `cannot read ${name}: invalid ${what} ${value}`);
    }
  }
  return { offset, length };
}

/** `stream` without its first `skip` bytes and cut after `limit` more (the source is cancelled). */
export function sliceStream(
  stream: ReadableStream<Uint8Array>,
  skip: number,
  limit?: number,
): ReadableStream<Uint8Array> {
  if (skip === 0 && limit === undefined) return stream;
  const reader = stream.getReader();
  let toSkip = skip;
  let left = limit ?? Infinity;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      for (;;) {
        if (left <= 0) {
          controller.close();
          await reader.cancel().catch(() => {});
          return;
        }
        const { done, value } = await reader.read();
        if (done) {
          controller.close();
          return;
        }
        let chunk = value;
        if (toSkip > 0) {
          const dropped = Math.min(toSkip, chunk.byteLength);
          toSkip -= dropped;
          chunk = chunk.subarray(dropped);
        }
        if (chunk.byteLength === 0) continue;
        if (chunk.byteLength > left) chunk = chunk.subarray(0, left);
        left -= chunk.byteLength;
        controller.enqueue(chunk);
        return;
      }
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
}

/** A stream with no bytes. */
export function emptyStream(): ReadableStream<Uint8Array> {
  return ReadableStream.from<Uint8Array>([]);
}
