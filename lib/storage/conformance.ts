/**
 * What every Storage driver must do, as one suite of test steps (restic's backend test suite
 * idea). A driver's test file runs it inside a Deno.test:
 *
 *   Deno.test("S3Storage passes the storage conformance suite", async (t) => {
 *     await storageConformance(t, { fresh, multipartSize, leftovers });
 *   });
 *
 * Differences between drivers are read from `storage.features`, never from the driver's name.
 */
import { strict as assert } from "node:assert";
import { createHash } from "node:crypto";
import { DbBackupError } from "../errors.ts";
import type { Storage } from "./storage.ts";

export interface ConformanceTarget {
  /** A new, empty storage (its own folder or key prefix) for one step. */
  fresh(): Promise<Storage>;
  /** A size that makes a write span several upload parts (any size for drivers without). */
  multipartSize: number;
  /** What failed writes left behind (temp files, unfinished uploads); none is expected. */
  leftovers(): Promise<string[]>;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

export async function storageConformance(
  t: Deno.TestContext,
  target: ConformanceTarget,
): Promise<void> {
  const big = Math.floor(target.multipartSize * 2.3);
  const step = (name: string, fn: (storage: Storage) => Promise<void>) =>
    t.step(name, async () => {
      const storage = await target.fresh();
      await fn(storage);
      assert.deepEqual(await target.leftovers(), [], "nothing left behind");
    });

  await step("a written file reads back byte for byte: empty, small, several parts", async (s) => {
    await s.write("empty", ReadableStream.from<Uint8Array>([]));
    await s.write("small", ReadableStream.from([enc.encode("hello, "), enc.encode("world")]));
    const data = pseudoRandom(big, 1);
    await s.write("big", chunked(data, 300_001));
    await s.write("hinted", chunked(data, 1 << 20), { sizeHint: data.byteLength });
    assert.equal((await readAll(s, "empty")).byteLength, 0);
    assert.equal(dec.decode(await readAll(s, "small")), "hello, world");
    assert.equal(sha256(await readAll(s, "big")), sha256(data));
    assert.equal(sha256(await readAll(s, "hinted")), sha256(data));
    assert.equal((await s.stat("empty"))?.size, 0);
    assert.equal((await s.stat("small"))?.size, 12);
    const info = await s.stat("big");
    assert.equal(info?.size, big);
    assert.equal(info?.isDirectory, false);
    assert.ok(info?.mtime instanceof Date);
  });

  await step("an existing file is never replaced", async (s) => {
    await s.write("manifest.json", ReadableStream.from([enc.encode("original")]));
    for (const data of [enc.encode("replacement"), pseudoRandom(big, 2)]) {
      await assert.rejects(s.write("manifest.json", chunked(data, 65536)), (err) => {
        assert.ok(err instanceof DbBackupError, `a DbBackupError, got ${err}`);
        assert.equal(err.code, "exists");
        assert.match(err.message, /refusing to overwrite existing file .*manifest\.json/);
        return true;
      });
    }
    assert.equal(dec.decode(await readAll(s, "manifest.json")), "original");
  });

  await step("a write is published only once ready resolves", async (s) => {
    for (const [name, data] of [["small", enc.encode("x")], ["big", pseudoRandom(big, 3)]]) {
      const ready = deferred<void>();
      let settled = false;
      const writing = s.write(name as string, chunked(data as Uint8Array, 1 << 20), {
        ready: ready.promise,
      });
      writing.finally(() => settled = true).catch(() => {});
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(settled, false, `${name}: write waits for ready`);
      assert.equal(await s.stat(name as string), undefined, `${name}: not published before ready`);
      ready.resolve();
      await writing;
      assert.equal((await s.stat(name as string))?.size, (data as Uint8Array).byteLength);
    }
  });

  await step("a rejected ready promise publishes nothing", async (s) => {
    for (const data of [enc.encode("tiny"), pseudoRandom(big, 4)]) {
      const ready = deferred<void>();
      const writing = s.write("f", chunked(data, 1 << 20), { ready: ready.promise });
      ready.reject(new DbBackupError("process", "pg_dump exited with code 1"));
      await assert.rejects(writing, /pg_dump exited with code 1/);
      assert.equal(await s.stat("f"), undefined);
    }
    const early = Promise.reject(new Error("child failed before any output"));
    early.catch(() => {});
    await assert.rejects(
      s.write("f", ReadableStream.from<Uint8Array>([]), { ready: early }),
      /child failed before any output/,
    );
    assert.deepEqual(await s.list(""), []);
  });

  await step("a stream that errors publishes nothing", async (s) => {
    for (const size of [10, big]) {
      const { stream, controller } = controlledStream();
      const writing = s.write("broken.bin", stream);
      writing.catch(() => {}); // asserted below
      controller.enqueue(pseudoRandom(size, 5));
      await new Promise((r) => setTimeout(r, 100));
      controller.error(new Error("pipe broke"));
      await assert.rejects(writing, /pipe broke/);
      assert.equal(await s.stat("broken.bin"), undefined);
    }
    assert.deepEqual(await s.list(""), []);
  });

  await step("an aborted signal stops the write and publishes nothing", async (s) => {
    for (const size of [1, big]) {
      const abort = new AbortController();
      const { stream, controller } = controlledStream();
      const writing = s.write("big.bin", stream, { signal: abort.signal });
      writing.catch(() => {}); // asserted below
      controller.enqueue(pseudoRandom(size, 6));
      await new Promise((r) => setTimeout(r, 100));
      abort.abort(new Error("interrupted"));
      try {
        controller.enqueue(enc.encode("b"));
      } catch {
        // The driver may have cancelled its input already.
      }
      await assert.rejects(writing, /interrupted/);
      assert.equal(await s.stat("big.bin"), undefined);
    }
  });

  await step("list shows what is directly inside, sorted; a missing folder is empty", async (s) => {
    await s.createDirectory("b");
    await s.createDirectory("a");
    await s.createDirectory("b/c");
    await s.write("f", ReadableStream.from([enc.encode("1")]));
    await s.write("b/x", ReadableStream.from([enc.encode("2")]));
    await s.write("b/c/y", ReadableStream.from([enc.encode("3")]));
    assert.deepEqual(await s.list(""), [
      { name: "a", isDirectory: true },
      { name: "b", isDirectory: true },
      { name: "f", isDirectory: false },
    ]);
    assert.deepEqual(await s.list("b"), [
      { name: "c", isDirectory: true },
      { name: "x", isDirectory: false },
    ]);
    assert.deepEqual(await s.list("a"), []);
    assert.deepEqual(await s.list("nothing"), []);
  });

  await step("list returns every entry of a large folder", async (s) => {
    const files = Array.from({ length: 41 }, (_, i) => `f${String(i).padStart(3, "0")}`);
    const dirs = Array.from({ length: 9 }, (_, i) => `d${String(i).padStart(3, "0")}`);
    for (let i = 0; i < files.length; i += 8) {
      await Promise.all(
        files.slice(i, i + 8).map((f) => s.write(f, ReadableStream.from([enc.encode(f)]))),
      );
    }
    for (const d of dirs) await s.createDirectory(d);
    await s.write(`${dirs[0]}/inside`, ReadableStream.from([enc.encode("x")]));
    assert.deepEqual(await s.list(""), [
      ...dirs.map((name) => ({ name, isDirectory: true })),
      ...files.map((name) => ({ name, isDirectory: false })),
    ]);
  });

  await step("stat tells files from folders and missing paths", async (s) => {
    assert.equal(await s.stat("nothing"), undefined);
    await s.createDirectory("set");
    await s.write("set/file", ReadableStream.from([enc.encode("12345")]));
    assert.deepEqual(
      { ...await s.stat("set/file"), mtime: undefined },
      { path: "set/file", size: 5, isDirectory: false, mtime: undefined },
    );
    assert.equal((await s.stat("set"))?.isDirectory, true);
    assert.equal(await s.stat("set/nothing"), undefined);
    assert.equal(await s.stat("se"), undefined, "a key prefix is not a folder");
  });

  await step("read with a range returns exactly those bytes", async (s) => {
    const data = pseudoRandom(big, 7);
    await s.write("r", chunked(data, 1 << 20));
    const part = target.multipartSize;
    const cases: [number | undefined, number | undefined][] = [
      [0, 5],
      [3, undefined],
      [undefined, 10],
      [part - 7, 20], // across a part boundary
      [data.byteLength - 2, 100], // past the end: only what is there
      [100, 0],
      [data.byteLength, undefined],
      [data.byteLength + 10, 5],
    ];
    for (const [offset, length] of cases) {
      const from = offset ?? 0;
      const to = length === undefined ? data.byteLength : Math.min(data.byteLength, from + length);
      const got = await readAll(s, "r", { offset, length });
      assert.equal(
        sha256(got),
        sha256(data.subarray(Math.min(from, to), to)),
        `offset ${offset} length ${length}`,
      );
    }
    await assert.rejects(
      s.read("nothing", { offset: 1, length: 1 }),
      (err) => err instanceof DbBackupError && err.code === "not_found",
    );
    await assert.rejects(s.read("r", { offset: -1 }), /invalid offset/);
  });

  await step("read of a missing file fails with not_found naming it", async (s) => {
    await assert.rejects(s.read("set/missing.pgdump"), (err) => {
      assert.ok(err instanceof DbBackupError);
      assert.equal(err.code, "not_found");
      assert.ok(err.message.includes("set/missing.pgdump"), err.message);
      return true;
    });
  });

  await step("remove deletes a file, or a folder with all inside, and nothing else", async (s) => {
    await s.createDirectory("set");
    await s.createDirectory("set/state");
    await s.createDirectory("set2");
    await s.write("set/a", ReadableStream.from([enc.encode("a")]));
    await s.write("set/state/b.json", ReadableStream.from([enc.encode("b")]));
    await s.write("set2/c", ReadableStream.from([enc.encode("c")]));
    await s.write("settle", ReadableStream.from([enc.encode("d")]));
    await s.write("set.json", ReadableStream.from([enc.encode("e")]));
    await s.remove("settle");
    assert.equal(await s.stat("settle"), undefined);
    await s.remove("set");
    await s.remove("set"); // removing what is gone is fine
    assert.deepEqual(await s.list(""), [
      { name: "set.json", isDirectory: false },
      { name: "set2", isDirectory: true },
    ]);
    assert.equal(await s.stat("set/state/b.json"), undefined);
    assert.deepEqual(await s.list("set2"), [{ name: "c", isDirectory: false }]);
  });

  await step(
    "createDirectory refuses an existing folder or file and a missing parent",
    async (s) => {
      await s.createDirectory("20261127T030000Z-single-shop");
      await s.write("20261127T030000Z-single-shop/keep", ReadableStream.from([enc.encode("k")]));
      await s.write("plain-file", ReadableStream.from([enc.encode("")]));
      for (const path of ["20261127T030000Z-single-shop", "plain-file"]) {
        await assert.rejects(s.createDirectory(path), (err) => {
          assert.ok(err instanceof DbBackupError);
          assert.equal(err.code, "exists");
          assert.match(err.message, /already exists/);
          return true;
        });
      }
      await assert.rejects(
        s.createDirectory("missing/child"),
        (err) => err instanceof DbBackupError && err.code === "not_found",
      );
      assert.equal(dec.decode(await readAll(s, "20261127T030000Z-single-shop/keep")), "k");
    },
  );

  await step("a write into a missing folder follows features.directories", async (s) => {
    const writing = s.write("no-such-set/file", ReadableStream.from([enc.encode("x")]));
    if (s.features.directories) {
      await assert.rejects(writing, (err) => err instanceof DbBackupError && err.code === "io");
      assert.deepEqual(await s.list(""), []);
    } else {
      await writing; // folders are key prefixes: the file makes its folder
      assert.deepEqual(await s.list(""), [{ name: "no-such-set", isDirectory: true }]);
    }
  });

  await step("names with spaces, quotes, &, +, % and non-ASCII letters work", async (s) => {
    const dir = "shop & co";
    const name = "a b+c=d%20'é\"(ü)<x>.pgdump";
    await s.createDirectory(dir);
    await s.write(`${dir}/${name}`, ReadableStream.from([enc.encode("odd")]));
    assert.deepEqual(await s.list(""), [{ name: dir, isDirectory: true }]);
    assert.deepEqual(await s.list(dir), [{ name, isDirectory: false }]);
    assert.equal((await s.stat(`${dir}/${name}`))?.size, 3);
    assert.equal(dec.decode(await readAll(s, `${dir}/${name}`)), "odd");
    await s.remove(dir);
    assert.deepEqual(await s.list(""), []);
  });

  await step("paths with .. are refused", async (s) => {
    for (const path of ["../x", "set/../../x", ".."]) {
      await assert.rejects(s.write(path, ReadableStream.from([enc.encode("x")])), /invalid path/);
      await assert.rejects(s.createDirectory(path), /invalid path/);
      await assert.rejects(s.remove(path), /invalid path/);
      await assert.rejects(s.read(path), /invalid path/);
      await assert.rejects(s.stat(path), /invalid path/);
      await assert.rejects(s.list(path), /invalid path/);
    }
    assert.deepEqual(await s.list(""), []);
  });
}

// ---------------------------------------------------------------------------------------------

/** Deterministic bytes that do not compress (xorshift32). */
export function pseudoRandom(size: number, seed: number): Uint8Array {
  const words = new Uint32Array(Math.ceil(size / 4));
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x >>> 0;
  }
  return new Uint8Array(words.buffer, 0, size);
}

/** `data` as a stream of `size`-byte chunks (the last one shorter). */
export function chunked(data: Uint8Array, size: number): ReadableStream<Uint8Array> {
  let at = 0;
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      if (at >= data.byteLength) return controller.close();
      controller.enqueue(data.slice(at, at + size));
      at += size;
    },
  });
}

export function sha256(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

async function readAll(
  s: Storage,
  path: string,
  options?: { offset?: number; length?: number },
): Promise<Uint8Array> {
  return new Uint8Array(await new Response(await s.read(path, options)).arrayBuffer());
}

/** A stream whose chunks the test pushes one at a time. */
export function controlledStream() {
  let controller!: ReadableStreamDefaultController<Uint8Array>;
  const stream = new ReadableStream<Uint8Array>({
    start(c) {
      controller = c;
    },
  });
  return { stream, controller };
}

export function deferred<T>() {
  const d = Promise.withResolvers<T>();
  // Like a child's status promise: a rejection is handled by whoever awaits it.
  d.promise.catch(() => {});
  return d;
}
