import { strict as assert } from "node:assert";
import { DbBackupError } from "../errors.ts";
import { storageConformance } from "./conformance.ts";
import { LocalStorage } from "./local.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

async function withRoot(fn: (root: string, storage: LocalStorage) => Promise<void>) {
  const root = await Deno.makeTempDir({ prefix: "dbbackup-local-test-" });
  try {
    await fn(root, new LocalStorage(root));
  } finally {
    await Deno.remove(root, { recursive: true });
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}

/** Every name in `dir` (recursively), relative, sorted. */
async function tree(dir: string, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    out.push(prefix + e.name);
    if (e.isDirectory) out.push(...await tree(`${dir}/${e.name}`, `${prefix}${e.name}/`));
  }
  return out.sort();
}

function mode(info: Deno.FileInfo): number {
  return (info.mode ?? 0) & 0o777;
}

/** A stream whose chunks the test pushes one at a time. */
function controlledStream() {
  let controller!: ReadableStreamDefaultController<Uint8Array>;
  const stream = new ReadableStream<Uint8Array>({
    start(c) {
      controller = c;
    },
  });
  return { stream, controller };
}

function deferred<T>() {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // Like a child's status promise: a rejection is handled by whoever awaits it.
  promise.catch(() => {});
  return { promise, resolve, reject };
}

/** Polls until `check` is true (the writer runs concurrently with the test). */
async function until(check: () => Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 5));
  }
  throw new Error(`timed out waiting for ${what}`);
}

const tempFiles = async (dir: string) =>
  (await tree(dir)).filter((n) => n.split("/").at(-1)!.includes(".tmp-"));

Deno.test("write: the file appears, 0600, only once the data is complete and ready", async () => {
  await withRoot(async (root, storage) => {
    await storage.createDirectory("set");
    const { stream, controller } = controlledStream();
    const ready = deferred<void>();
    const writing = storage.write("set/db.pgdump", stream, { ready: ready.promise });
    let settled = false;
    writing.finally(() => settled = true).catch(() => {});

    controller.enqueue(enc.encode("first part, "));
    await until(async () => (await tempFiles(root)).length === 1, "the temp file");
    const [tmp] = await tempFiles(root);
    assert.match(tmp, /^set\/\.db\.pgdump\.tmp-[0-9a-f]{8}$/);
    assert.equal(mode(await Deno.stat(`${root}/${tmp}`)), 0o600, "temp file is 0600 too");
    assert.equal(await exists(`${root}/set/db.pgdump`), false, "not published mid-stream");

    controller.enqueue(enc.encode("second part"));
    controller.close();
    // All data written and synced, but the producer has not reported success yet.
    await until(
      async () => (await Deno.stat(`${root}/${tmp}`)).size === 23,
      "all bytes in the temp file",
    );
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(settled, false, "write waits for ready");
    assert.equal(await exists(`${root}/set/db.pgdump`), false, "not published before ready");

    ready.resolve();
    await writing;
    const info = await Deno.stat(`${root}/set/db.pgdump`);
    assert.ok(info.isFile);
    assert.equal(mode(info), 0o600);
    assert.equal(await Deno.readTextFile(`${root}/set/db.pgdump`), "first part, second part");
    assert.deepEqual(await tree(root), ["set", "set/db.pgdump"], "no temp file left");
  });
});

Deno.test("write: a failing ready promise leaves neither the file nor a temp file", async () => {
  await withRoot(async (root, storage) => {
    await storage.createDirectory("set");
    const ready = deferred<void>();
    const data = ReadableStream.from([enc.encode("x".repeat(100_000)), enc.encode("tail")]);
    const writing = storage.write("set/db.pgdump", data, { ready: ready.promise });
    ready.reject(new DbBackupError("process", "pg_dump exited with code 1"));
    await assert.rejects(writing, /pg_dump exited with code 1/);
    assert.deepEqual(await tree(root), ["set"]);
  });
});

Deno.test("write: an already rejected ready promise is not published either", async () => {
  await withRoot(async (root, storage) => {
    const ready = Promise.reject(new Error("child failed before any output"));
    ready.catch(() => {});
    await assert.rejects(
      storage.write("f", ReadableStream.from<Uint8Array>([]), { ready }),
      /child failed before any output/,
    );
    assert.deepEqual(await tree(root), []);
  });
});

Deno.test("write: a stream that errors leaves neither the file nor a temp file", async () => {
  await withRoot(async (root, storage) => {
    const { stream, controller } = controlledStream();
    const writing = storage.write("broken.bin", stream);
    controller.enqueue(enc.encode("some bytes"));
    await until(async () => (await tempFiles(root)).length === 1, "the temp file");
    controller.error(new Error("pipe broke"));
    await assert.rejects(writing, /pipe broke/);
    assert.deepEqual(await tree(root), []);
  });
});

Deno.test("write: an aborted signal stops the write and removes the temp file", async () => {
  await withRoot(async (root, storage) => {
    const abort = new AbortController();
    const { stream, controller } = controlledStream();
    const writing = storage.write("big.bin", stream, { signal: abort.signal });
    controller.enqueue(enc.encode("a"));
    await until(async () => (await tempFiles(root)).length === 1, "the temp file");
    abort.abort(new Error("interrupted"));
    controller.enqueue(enc.encode("b"));
    await assert.rejects(writing, /interrupted/);
    assert.deepEqual(await tree(root), []);
  });
});

Deno.test("write: an existing file is never replaced", async () => {
  await withRoot(async (root, storage) => {
    await storage.write("manifest.json", ReadableStream.from([enc.encode("original")]));
    await assert.rejects(
      storage.write("manifest.json", ReadableStream.from([enc.encode("replacement")])),
      (err: unknown) => {
        assert.ok(err instanceof DbBackupError, `a DbBackupError, got ${err}`);
        assert.equal(err.code, "exists");
        assert.match(err.message, /refusing to overwrite existing file/);
        assert.ok(err.message.includes(`${root}/manifest.json`), err.message);
        return true;
      },
    );
    assert.equal(await Deno.readTextFile(`${root}/manifest.json`), "original");
    assert.equal(mode(await Deno.stat(`${root}/manifest.json`)), 0o600);
    assert.deepEqual(await tree(root), ["manifest.json"], "no temp file left");
  });
});

Deno.test("write: of two concurrent writes to one path exactly one wins", async () => {
  await withRoot(async (root, storage) => {
    const results = await Promise.allSettled(
      ["one", "two", "three"].map((text) =>
        storage.write("race.txt", ReadableStream.from([enc.encode(text)]))
      ),
    );
    const ok = results.filter((r) => r.status === "fulfilled");
    const failed = results.filter((r) => r.status === "rejected") as PromiseRejectedResult[];
    assert.equal(ok.length, 1);
    for (const f of failed) assert.equal((f.reason as DbBackupError).code, "exists");
    assert.ok(["one", "two", "three"].includes(await Deno.readTextFile(`${root}/race.txt`)));
    assert.deepEqual(await tree(root), ["race.txt"]);
  });
});

Deno.test("write: a missing parent folder fails without creating anything", async () => {
  await withRoot(async (root, storage) => {
    await assert.rejects(
      storage.write("no-such-set/file", ReadableStream.from([enc.encode("x")])),
      (err: unknown) => err instanceof DbBackupError && err.code === "io",
    );
    assert.deepEqual(await tree(root), []);
  });
});

Deno.test("paths with .. are refused", async () => {
  await withRoot(async (root, storage) => {
    const outside = `${root}-outside`;
    for (const path of ["../x", "set/../../x", ".."]) {
      await assert.rejects(
        storage.write(path, ReadableStream.from([enc.encode("x")])),
        /invalid path/,
      );
      await assert.rejects(storage.createDirectory(path), /invalid path/);
      await assert.rejects(storage.remove(path), /invalid path/);
    }
    assert.equal(await exists(outside), false);
    assert.deepEqual(await tree(root), []);
  });
});

Deno.test("createDirectory makes a 0700 folder and refuses an existing one", async () => {
  await withRoot(async (root, storage) => {
    await storage.createDirectory("20261127T030000Z-single-shop");
    const info = await Deno.stat(`${root}/20261127T030000Z-single-shop`);
    assert.ok(info.isDirectory);
    assert.equal(mode(info), 0o700);
    await Deno.writeTextFile(`${root}/20261127T030000Z-single-shop/keep`, "data");

    await assert.rejects(storage.createDirectory("20261127T030000Z-single-shop"), (err) => {
      assert.ok(err instanceof DbBackupError);
      assert.equal(err.code, "exists");
      assert.match(err.message, /already exists/);
      return true;
    });
    // The existing folder and its contents are untouched.
    assert.equal(await Deno.readTextFile(`${root}/20261127T030000Z-single-shop/keep`), "data");
    assert.equal(mode(await Deno.stat(`${root}/20261127T030000Z-single-shop`)), 0o700);

    // A file of that name counts as existing too.
    await Deno.writeTextFile(`${root}/plain-file`, "");
    await assert.rejects(
      storage.createDirectory("plain-file"),
      (err) => err instanceof DbBackupError && err.code === "exists",
    );
    await assert.rejects(
      storage.createDirectory("missing/child"),
      (err) => err instanceof DbBackupError && err.code === "not_found",
    );
  });
});

Deno.test("createDirectory is 0700 whatever the umask", {
  ignore: Deno.build.os === "windows",
}, async () => {
  await withRoot(async (root, storage) => {
    // With umask 0777 mkdir alone would create a folder with mode 0000.
    const old = Deno.umask(0o777);
    try {
      await storage.createDirectory("d");
    } finally {
      Deno.umask(old);
    }
    assert.equal(mode(await Deno.stat(`${root}/d`)), 0o700);
  });
});

Deno.test("stat, list, read and remove", async () => {
  await withRoot(async (root, storage) => {
    assert.equal(await storage.stat("nothing"), undefined);
    assert.deepEqual(await storage.list("nothing"), []);
    await assert.rejects(
      storage.read("nothing"),
      (err) => err instanceof DbBackupError && err.code === "not_found",
    );
    await storage.createDirectory("b");
    await storage.createDirectory("a");
    await storage.write("b/f", ReadableStream.from([enc.encode("hello")]));
    assert.deepEqual(await storage.list(""), [
      { name: "a", isDirectory: true },
      { name: "b", isDirectory: true },
    ]);
    assert.equal((await storage.stat("b/f"))?.size, 5);
    assert.equal(dec.decode(await new Response(await storage.read("b/f")).arrayBuffer()), "hello");
    await storage.remove("b");
    await storage.remove("b"); // removing what is gone is fine
    assert.deepEqual(await tree(root), ["a"]);
    assert.equal(storage.location, root);
    assert.equal(new LocalStorage(`${root}///`).location, root);
  });
});

Deno.test("LocalStorage passes the storage conformance suite", async (t) => {
  const root = await Deno.makeTempDir({ prefix: "dbbackup-local-conformance-" });
  let n = 0;
  try {
    await storageConformance(t, {
      async fresh() {
        const dir = `${root}/${++n}`;
        await Deno.mkdir(dir);
        return new LocalStorage(dir);
      },
      multipartSize: 1024 * 1024,
      leftovers: () => tempFiles(root),
    });
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
