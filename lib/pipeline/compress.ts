/** Compression and decompression as web TransformStreams (node:zlib underneath). */
import zlib from "node:zlib";
import type { Duplex } from "node:stream";
import { UsageError } from "../errors.ts";

export type CompressionAlgorithm = "zstd" | "gzip" | "none";

export interface Compression {
  algorithm: CompressionAlgorithm;
  /** zstd 1-19, gzip 1-9; ignored for none. */
  level: number;
}

export const DEFAULT_COMPRESSION: Compression = { algorithm: "zstd", level: 3 };

const levels: Record<CompressionAlgorithm, [number, number, number]> = {
  zstd: [1, 19, 3],
  gzip: [1, 9, 6],
  none: [0, 0, 0],
};

/** Parses `zstd`, `zstd:5`, `gzip:9` or `none`. */
export function parseCompression(spec: string): Compression {
  const [name, levelText, ...rest] = spec.trim().toLowerCase().split(":");
  if (rest.length > 0 || !(name in levels)) {
    throw new UsageError(
      `invalid compression "${spec}": expected zstd[:1-19], gzip[:1-9] or none`,
    );
  }
  const algorithm = name as CompressionAlgorithm;
  const [min, max, fallback] = levels[algorithm];
  if (levelText === undefined || levelText === "") return { algorithm, level: fallback };
  // Digits only: Number() would also take "1e1", "0x3" or " 5".
  const level = /^\d+$/.test(levelText) ? Number(levelText) : NaN;
  if (algorithm === "none" || !Number.isInteger(level) || level < min || level > max) {
    throw new UsageError(
      `invalid compression level in "${spec}": ${algorithm} takes ${
        algorithm === "none" ? "no level" : `${min}-${max}`
      }`,
    );
  }
  return { algorithm, level };
}

/** File name suffix for a compression algorithm. */
export function compressionSuffix(algorithm: CompressionAlgorithm): string {
  return algorithm === "zstd" ? ".zst" : algorithm === "gzip" ? ".gz" : "";
}

/**
 * Output piece size of the node:zlib streams. Their default (16 KiB) cut 2.3 GB of restored
 * data into 140,000 pieces, and the per-piece cost downstream (hashing, stream hops, pipe
 * writes) tripled the CPU time of decompression.
 */
const ZLIB_CHUNK_BYTES = 256 * 1024;

export function compressStream(c: Compression): TransformStream<Uint8Array, Uint8Array> {
  switch (c.algorithm) {
    case "zstd":
      return toWeb(zlib.createZstdCompress({
        chunkSize: ZLIB_CHUNK_BYTES,
        params: { [zlib.constants.ZSTD_c_compressionLevel]: c.level },
      }));
    case "gzip":
      return toWeb(zlib.createGzip({ level: c.level, chunkSize: ZLIB_CHUNK_BYTES }));
    case "none":
      return new TransformStream();
  }
}

export function decompressStream(
  algorithm: CompressionAlgorithm,
): TransformStream<Uint8Array, Uint8Array> {
  switch (algorithm) {
    case "zstd":
      return toWeb(zlib.createZstdDecompress({ chunkSize: ZLIB_CHUNK_BYTES }));
    case "gzip":
      return toWeb(zlib.createGunzip({ chunkSize: ZLIB_CHUNK_BYTES }));
    case "none":
      return new TransformStream();
  }
}

/**
 * A node:zlib stream as a web stream pair with backpressure both ways. (Duplex.toWeb does not
 * wait for the compressor: a fast producer made it buffer the whole input in memory.)
 */
function toWeb(z: Duplex): TransformStream<Uint8Array, Uint8Array> {
  let failed: Error | undefined;
  // After the reader cancelled, zlib may still emit what it had: it goes nowhere.
  let cancelled = false;
  const readable = new ReadableStream<Uint8Array>({
    start(controller) {
      z.on("data", (data: Uint8Array) => {
        if (cancelled) return;
        controller.enqueue(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
        if ((controller.desiredSize ?? 1) <= 0) z.pause();
      });
      z.once("end", () => {
        if (!cancelled) controller.close();
      });
      z.once("error", (err: Error) => {
        failed = err;
        if (!cancelled) controller.error(err);
      });
    },
    pull() {
      z.resume();
    },
    cancel(reason) {
      cancelled = true;
      failed = reason instanceof Error ? reason : new Error(String(reason ?? "cancelled"));
      z.destroy();
    },
  }, { highWaterMark: 4 });
  const writable = new WritableStream<Uint8Array>({
    write(chunk) {
      return new Promise<void>((resolve, reject) => {
        if (failed) return reject(failed);
        const onError = (err: Error) => reject(err);
        z.once("error", onError);
        const done = () => {
          z.off("error", onError);
          resolve();
        };
        if (z.write(chunk)) done();
        else z.once("drain", done);
      });
    },
    close() {
      return new Promise<void>((resolve, reject) => {
        if (failed) return reject(failed);
        z.once("error", reject);
        z.end(() => resolve());
      });
    },
    abort(reason) {
      z.destroy(reason instanceof Error ? reason : new Error(String(reason)));
    },
  });
  return { readable, writable } as TransformStream<Uint8Array, Uint8Array>;
}
