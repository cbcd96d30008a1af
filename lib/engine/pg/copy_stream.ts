/**
 * COPY over postgres.js as web streams, with backpressure end to end.
 *
 * postgres.js emits one chunk per row for COPY TO, and reading its Node stream with
 * `for await` (or Readable.toWeb) can leave the connection stuck; `pipeline()` into a Writable
 * does not. So COPY TO is piped into a Writable that coalesces rows into ~1 MiB chunks and
 * hands them to a ReadableStream, waiting whenever the consumer is behind.
 */
import { pipeline } from "node:stream/promises";
import { Readable, Writable } from "node:stream";

const CHUNK = 1024 * 1024;

/** A ReadableStream of ~1 MiB chunks from a postgres.js COPY TO readable. */
export function copyOutStream(source: Readable): ReadableStream<Uint8Array> {
  let controller!: ReadableStreamDefaultController<Uint8Array>;
  let resumeWriter: (() => void) | undefined;
  let buf = new Uint8Array(CHUNK);
  let len = 0;

  const stream = new ReadableStream<Uint8Array>({
    start(c) {
      controller = c;
    },
    pull() {
      const resume = resumeWriter;
      resumeWriter = undefined;
      resume?.();
    },
    cancel(reason) {
      source.destroy(reason instanceof Error ? reason : new Error(String(reason)));
      const resume = resumeWriter;
      resumeWriter = undefined;
      resume?.();
    },
  }, { highWaterMark: 4 });

  const emit = (data: Uint8Array) => controller.enqueue(data);
  const sink = new Writable({
    write(chunk: Uint8Array, _encoding, callback) {
      if (chunk.byteLength >= CHUNK) {
        if (len > 0) {
          emit(buf.slice(0, len));
          len = 0;
        }
        emit(new Uint8Array(chunk));
      } else {
        if (len + chunk.byteLength > CHUNK) {
          emit(buf.subarray(0, len));
          buf = new Uint8Array(CHUNK);
          len = 0;
        }
        buf.set(chunk, len);
        len += chunk.byteLength;
      }
      if ((controller.desiredSize ?? 1) <= 0) resumeWriter = () => callback();
      else callback();
    },
    final(callback) {
      if (len > 0) emit(buf.subarray(0, len));
      controller.close();
      callback();
    },
  });
  pipeline(source, sink).catch((err) => {
    try {
      controller.error(err);
    } catch {
      // already closed or cancelled
    }
  });
  return stream;
}

/** Feeds a web ReadableStream into a postgres.js COPY FROM writable; resolves when done. */
export async function copyInStream(
  data: ReadableStream<Uint8Array>,
  target: Writable,
): Promise<void> {
  await pipeline(Readable.fromWeb(data as import("node:stream/web").ReadableStream), target);
}
