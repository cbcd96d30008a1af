import { strict as assert } from "node:assert";
import { UsageError } from "../errors.ts";
import {
  type Compression,
  compressionSuffix,
  compressStream,
  decompressStream,
  parseCompression,
} from "./compress.ts";

/** Deterministic, partly compressible test data (xorshift noise mixed with repeated text). */
function testData(size: number): Uint8Array {
  const out = new Uint8Array(size);
  let x = 0x12345678;
  const text = new TextEncoder().encode("INSERT INTO shop.orders VALUES (42, 'widget', 3.14);\n");
  for (let i = 0; i < size; i++) {
    if ((i >> 10) % 3 === 0) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      out[i] = x & 0xff;
    } else {
      out[i] = text[i % text.length];
    }
  }
  return out;
}

/** The data as a stream of chunks of `chunk` bytes. */
function chunked(data: Uint8Array, chunk = 64 * 1024): ReadableStream<Uint8Array> {
  const parts: Uint8Array[] = [];
  for (let i = 0; i < data.length; i += chunk) parts.push(data.slice(i, i + chunk));
  return ReadableStream.from(parts);
}

async function collect(stream: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

Deno.test("parseCompression accepts algorithms with and without levels", async (t) => {
  const cases: [string, Compression][] = [
    ["zstd", { algorithm: "zstd", level: 3 }],
    ["zstd:1", { algorithm: "zstd", level: 1 }],
    ["zstd:19", { algorithm: "zstd", level: 19 }],
    ["zstd:", { algorithm: "zstd", level: 3 }],
    ["gzip", { algorithm: "gzip", level: 6 }],
    ["gzip:1", { algorithm: "gzip", level: 1 }],
    ["gzip:9", { algorithm: "gzip", level: 9 }],
    ["none", { algorithm: "none", level: 0 }],
    ["  ZSTD:7 ", { algorithm: "zstd", level: 7 }],
    ["GZip", { algorithm: "gzip", level: 6 }],
  ];
  for (const [spec, want] of cases) {
    await t.step(JSON.stringify(spec), () => assert.deepEqual(parseCompression(spec), want));
  }
});

Deno.test("parseCompression rejects unknown algorithms and bad levels", async (t) => {
  const cases: [string, RegExp][] = [
    ["lz4", /invalid compression "lz4"/],
    ["", /invalid compression ""/],
    ["zstd:3:1", /invalid compression "zstd:3:1"/],
    ["zstd:0", /invalid compression level in "zstd:0": zstd takes 1-19/],
    ["zstd:20", /zstd takes 1-19/],
    ["zstd:-1", /zstd takes 1-19/],
    ["zstd:3.5", /zstd takes 1-19/],
    ["zstd:abc", /zstd takes 1-19/],
    ["zstd:1e1", /zstd takes 1-19/],
    ["zstd:0x3", /zstd takes 1-19/],
    ["zstd: 5", /zstd takes 1-19/],
    ["gzip:+5", /gzip takes 1-9/],
    ["gzip:0", /gzip takes 1-9/],
    ["gzip:10", /gzip takes 1-9/],
    ["none:1", /none takes no level/],
    ["none:0", /none takes no level/],
  ];
  for (const [spec, message] of cases) {
    await t.step(JSON.stringify(spec), () => {
      assert.throws(() => parseCompression(spec), (err: unknown) => {
        assert.ok(err instanceof UsageError, `a UsageError, got ${err}`);
        assert.equal(err.exitCode, 2);
        assert.match(err.message, message);
        return true;
      });
    });
  }
});

Deno.test("compressionSuffix names the algorithm", () => {
  assert.equal(compressionSuffix("zstd"), ".zst");
  assert.equal(compressionSuffix("gzip"), ".gz");
  assert.equal(compressionSuffix("none"), "");
});

Deno.test("compressStream/decompressStream round-trip a few MB unchanged", async (t) => {
  const data = testData(5 * 1024 * 1024 + 123);
  const cases: Compression[] = [
    { algorithm: "zstd", level: 1 },
    { algorithm: "zstd", level: 3 },
    { algorithm: "zstd", level: 19 },
    { algorithm: "gzip", level: 1 },
    { algorithm: "gzip", level: 9 },
    { algorithm: "none", level: 0 },
  ];
  for (const c of cases) {
    await t.step(`${c.algorithm}:${c.level}`, async () => {
      const compressed = await collect(chunked(data).pipeThrough(compressStream(c)));
      if (c.algorithm === "none") {
        assert.deepEqual(compressed, data);
      } else {
        assert.ok(compressed.length < data.length, `${compressed.length} < ${data.length}`);
        assert.notDeepEqual(compressed.subarray(0, 64), data.subarray(0, 64));
      }
      if (c.algorithm === "zstd") {
        // zstd frame magic number 0xFD2FB528, little-endian.
        assert.deepEqual([...compressed.subarray(0, 4)], [0x28, 0xb5, 0x2f, 0xfd]);
      }
      if (c.algorithm === "gzip") assert.deepEqual([...compressed.subarray(0, 2)], [0x1f, 0x8b]);
      // Decompress from odd-sized chunks so frame boundaries do not line up with chunks.
      const back = await collect(
        chunked(compressed, 7777).pipeThrough(decompressStream(c.algorithm)),
      );
      assert.equal(back.length, data.length);
      assert.ok(back.every((b, i) => b === data[i]), "decompressed bytes equal the input");
    });
  }
});

Deno.test("compressStream handles an empty stream", async () => {
  for (const algorithm of ["zstd", "gzip", "none"] as const) {
    const c = { algorithm, level: algorithm === "none" ? 0 : 3 };
    const compressed = await collect(
      ReadableStream.from<Uint8Array>([]).pipeThrough(
        compressStream(c),
      ),
    );
    const back = await collect(chunked(compressed).pipeThrough(decompressStream(algorithm)));
    assert.equal(back.length, 0, algorithm);
  }
});

Deno.test("decompressStream errors on a corrupted zstd stream", async (t) => {
  const data = testData(2 * 1024 * 1024);
  const compressed = await collect(
    chunked(data).pipeThrough(compressStream({ algorithm: "zstd", level: 3 })),
  );
  // Layout of the frame dbbackup writes: magic (0-3), frame header descriptor (4), window
  // descriptor (5), then the first block header (6-8) and its compressed contents. The frames
  // carry no content checksum, so a flipped byte deep inside the compressed data may decode
  // to wrong bytes without an error: the repository's sha256 checks catch those
  // (lib/repo/repository_test.ts). Corrupted structure must make the decompressor fail.
  const cases: [string, number][] = [
    ["magic number", 0],
    ["frame header descriptor", 4],
    ["first block header", 7],
    ["start of the first block's data", 9],
    ["inside the first block's data", 11],
  ];
  for (const [what, pos] of cases) {
    await t.step(`${what} (byte ${pos})`, async () => {
      const corrupted = compressed.slice();
      corrupted[pos] ^= 0xff;
      await assert.rejects(
        () => collect(chunked(corrupted).pipeThrough(decompressStream("zstd"))),
        (err: unknown) => {
          assert.ok(err instanceof Error, `an Error, got ${err}`);
          assert.match(err.message, /zstd/i);
          return true;
        },
      );
    });
  }
});

Deno.test("decompressStream errors on data that is not zstd at all", async () => {
  const junk = new TextEncoder().encode("this is plain text, not a zstd frame\n".repeat(100));
  await assert.rejects(
    () => collect(chunked(junk).pipeThrough(decompressStream("zstd"))),
    /Unknown frame descriptor/,
  );
});

Deno.test("decompressStream errors on a corrupted gzip stream", async () => {
  const data = testData(1024 * 1024);
  const compressed = await collect(
    chunked(data).pipeThrough(compressStream({ algorithm: "gzip", level: 6 })),
  );
  const corrupted = compressed.slice();
  corrupted[Math.floor(corrupted.length / 2)] ^= 0xff;
  await assert.rejects(() => collect(chunked(corrupted).pipeThrough(decompressStream("gzip"))));
});

Deno.test("a reader may cancel decompression early: nothing is thrown afterwards", async () => {
  // Incompressible enough that zstd emits many output chunks per input piece; the reader stops
  // after three (as the archive TOC reader does), while zlib still has output in flight.
  const raw = new Uint8Array(700 * 1024);
  for (let i = 0; i < raw.length; i++) raw[i] = (i * 7919) % 251;
  const compressed = new Uint8Array(
    await new Response(
      ReadableStream.from([raw]).pipeThrough(compressStream({ algorithm: "zstd", level: 1 })),
    ).arrayBuffer(),
  );
  for (let round = 0; round < 10; round++) {
    for (const size of [1024, 4096, 65536, compressed.length]) {
      const pieces = [];
      for (let i = 0; i < compressed.length; i += size) {
        pieces.push(compressed.subarray(i, i + size));
      }
      const reader = ReadableStream.from(pieces).pipeThrough(decompressStream("zstd")).getReader();
      for (let n = 0; n < 3; n++) assert.ok(!(await reader.read()).done);
      await reader.cancel("enough");
    }
  }
  // An enqueue or close after the cancel used to throw an uncaught TypeError about here.
  await new Promise((r) => setTimeout(r, 300));
});
