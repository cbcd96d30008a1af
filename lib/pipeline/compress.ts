/** Compression and decompression as web TransformStreams (node:zlib underneath). */
import zlib from "node:zlib";
import { Duplex } from "node:stream";
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

export function compressStream(c: Compression): TransformStream<Uint8Array, Uint8Array> {
  switch (c.algorithm) {
    case "zstd":
      return toWeb(zlib.createZstdCompress({
        params: { [zlib.constants.ZSTD_c_compressionLevel]: c.level },
      }));
    case "gzip":
      return toWeb(zlib.createGzip({ level: c.level }));
    case "none":
      return new TransformStream();
  }
}

export function decompressStream(
  algorithm: CompressionAlgorithm,
): TransformStream<Uint8Array, Uint8Array> {
  switch (algorithm) {
    case "zstd":
      return toWeb(zlib.createZstdDecompress());
    case "gzip":
      return toWeb(zlib.createGunzip());
    case "none":
      return new TransformStream();
  }
}

function toWeb(d: Duplex): TransformStream<Uint8Array, Uint8Array> {
  return Duplex.toWeb(d) as unknown as TransformStream<Uint8Array, Uint8Array>;
}
