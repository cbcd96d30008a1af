import { strict as assert } from "node:assert";
import { DbBackupError } from "../errors.ts";
import type { Compression } from "../pipeline/compress.ts";
import { LocalStorage } from "../storage/local.ts";
import {
  type FileRecord,
  type Manifest,
  MANIFEST_FILE,
  MANIFEST_FORMAT,
  MANIFEST_VERSION,
} from "./manifest.ts";
import { overallStatus, Repository } from "./repository.ts";

async function withRepo(fn: (root: string, repo: Repository) => Promise<void>) {
  const root = await Deno.makeTempDir({ prefix: "dbbackup-repo-test-" });
  try {
    await fn(root, new Repository(new LocalStorage(root)));
  } finally {
    await Deno.remove(root, { recursive: true });
  }
}

/** Deterministic data, half noise, half text, so every algorithm has something to do. */
function testData(size: number): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(size);
  let x = 0x2545f491;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = (i >> 12) % 2 === 0 ? x & 0xff : 0x41 + (x & 0x0f);
  }
  return out;
}

function chunks(data: Uint8Array, size = 64 * 1024): ReadableStream<Uint8Array> {
  const parts: Uint8Array[] = [];
  for (let i = 0; i < data.length; i += size) parts.push(data.slice(i, i + size));
  return ReadableStream.from(parts);
}

function manifestFor(id: string, file?: FileRecord): Manifest {
  return {
    format: MANIFEST_FORMAT,
    formatVersion: MANIFEST_VERSION,
    id,
    tool: { name: "dbbackup", version: "test" },
    kind: "single",
    dbType: "postgres",
    engine: "pg_dump",
    status: "complete",
    server: { version: "15.8", versionNum: 150008, host: "/tmp", port: 5432 },
    dumpTool: "pg_dump 15.8",
    startedAt: "2026-11-27T03:00:00.000Z",
    finishedAt: "2026-11-27T03:01:00.000Z",
    compression: { algorithm: "zstd", level: 3 },
    restore: { format: "custom", includes: [], excludes: [] },
    databases: [{
      name: "shop",
      status: "ok",
      startedAt: "2026-11-27T03:00:00.000Z",
      finishedAt: "2026-11-27T03:01:00.000Z",
      files: file ? [file] : [],
    }],
  };
}

/** Reads a stream chunk by chunk: what was delivered, and the error that ended it, if any. */
async function consume(stream: ReadableStream<Uint8Array>) {
  const reader = stream.getReader();
  let bytes = 0;
  const parts: Uint8Array[] = [];
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return { bytes, data: concat(parts), error: undefined };
      bytes += value.byteLength;
      parts.push(value);
    }
  } catch (error) {
    return { bytes, data: concat(parts), error };
  }
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

const WHEN = new Date("2026-11-27T03:00:00Z");

Deno.test("createSet never reuses an id", async () => {
  await withRepo(async (root, repo) => {
    const a = await repo.createSet("single", "shop", WHEN);
    const b = await repo.createSet("single", "shop", WHEN);
    const c = await repo.createSet("single", "shop", WHEN);
    assert.equal(a.id, "20261127T030000Z-single-shop");
    assert.equal(b.id, "20261127T030000Z-single-shop-1");
    assert.equal(c.id, "20261127T030000Z-single-shop-2");
    // Something left behind under the next name (a file, an interrupted set) is skipped too.
    await Deno.writeTextFile(`${root}/20261127T030000Z-single-shop-3`, "");
    await Deno.mkdir(`${root}/20261127T030000Z-single-shop-4`);
    await Deno.writeTextFile(`${root}/20261127T030000Z-single-shop-4/keep`, "old");
    const d = await repo.createSet("single", "shop", WHEN);
    assert.equal(d.id, "20261127T030000Z-single-shop-5");
    assert.equal(await Deno.readTextFile(`${root}/20261127T030000Z-single-shop-4/keep`), "old");
    // Each new set folder is empty and private.
    for (const id of [a.id, b.id, c.id, d.id]) {
      const info = await Deno.stat(`${root}/${id}`);
      assert.ok(info.isDirectory);
      assert.equal((info.mode ?? 0) & 0o777, 0o700);
      assert.deepEqual(await Array.fromAsync(Deno.readDir(`${root}/${id}`)), []);
    }
  });
});

Deno.test("createSet: concurrent claims of the same name get distinct ids", async () => {
  await withRepo(async (_root, repo) => {
    const sets = await Promise.all(
      Array.from({ length: 8 }, () => repo.createSet("cluster", "db1", WHEN)),
    );
    const ids = sets.map((s) => s.id);
    assert.equal(new Set(ids).size, 8, ids.join(", "));
  });
});

Deno.test("createSet gives up with an 'exists' error after 100 taken names", async () => {
  await withRepo(async (root, repo) => {
    await Deno.mkdir(`${root}/20261127T030000Z-single-shop`);
    for (let n = 1; n < 100; n++) await Deno.mkdir(`${root}/20261127T030000Z-single-shop-${n}`);
    await assert.rejects(
      repo.createSet("single", "shop", WHEN),
      (err) => err instanceof DbBackupError && err.code === "exists",
    );
  });
});

Deno.test("listSets: a folder without a manifest is incomplete, oldest first", async () => {
  await withRepo(async (root, repo) => {
    const done = await repo.createSet("single", "shop", new Date("2026-11-27T03:00:00Z"));
    await done.writeManifest(manifestFor(done.id));
    const interrupted = await repo.createSet("single", "shop", new Date("2026-11-26T03:00:00Z"));
    await Deno.writeTextFile(`${root}/${interrupted.id}/db-001-shop.pgdump.zst`, "partial");
    const partial = await repo.createSet("single", "crm", new Date("2026-11-28T03:00:00Z"));
    await partial.writeManifest({ ...manifestFor(partial.id), status: "partial" });
    const broken = await repo.createSet("single", "x", new Date("2026-11-29T03:00:00Z"));
    await Deno.writeTextFile(`${root}/${broken.id}/${MANIFEST_FILE}`, "{ not json");
    // Not sets: ignored.
    await Deno.mkdir(`${root}/lost+found`);
    await Deno.mkdir(`${root}/.20261127T030000Z-single-hidden`);
    await Deno.writeTextFile(`${root}/20261130T030000Z-single-a-file`, "");

    const sets = await repo.listSets();
    assert.deepEqual(sets.map((s) => [s.id, s.status]), [
      ["20261126T030000Z-single-shop", "incomplete"],
      ["20261127T030000Z-single-shop", "complete"],
      ["20261128T030000Z-single-crm", "partial"],
      ["20261129T030000Z-single-x", "invalid"],
    ]);
    assert.equal(sets[0].summary, undefined);
    assert.equal(sets[1].summary?.id, done.id);
    assert.match(sets[3].problem ?? "", /is not valid JSON/);

    await assert.rejects(repo.readManifest(interrupted.id), (err) => {
      assert.ok(err instanceof DbBackupError);
      assert.equal(err.code, "incomplete");
      assert.match(err.message, /incomplete: it has no manifest\.json/);
      return true;
    });
    // "latest" means the latest complete set, never an incomplete or partial one.
    assert.equal(await repo.resolveId("latest"), done.id);
    assert.equal(await repo.resolveId("20261126"), interrupted.id);
    await assert.rejects(repo.resolveId("2026112"), /ambiguous/);
    await assert.rejects(repo.resolveId("nope"), /not found/);
  });
});

Deno.test("readManifest refuses a manifest that names another set", async () => {
  await withRepo(async (_root, repo) => {
    const set = await repo.createSet("single", "shop", WHEN);
    await set.writeManifest(manifestFor("20200101T000000Z-single-other"));
    await assert.rejects(
      repo.readManifest(set.id),
      (err) => err instanceof DbBackupError && /names another set/.test(err.message),
    );
    assert.equal((await repo.listSets())[0].status, "invalid");
  });
});

Deno.test("writeManifest never replaces an existing manifest", async () => {
  await withRepo(async (root, repo) => {
    const set = await repo.createSet("single", "shop", WHEN);
    await set.writeManifest(manifestFor(set.id));
    await assert.rejects(
      set.writeManifest({ ...manifestFor(set.id), status: "failed" }),
      (err) => err instanceof DbBackupError && err.code === "exists",
    );
    const text = await Deno.readTextFile(`${root}/${set.id}/${MANIFEST_FILE}`);
    assert.equal(JSON.parse(text).status, "complete");
  });
});

const ALGORITHMS: Compression[] = [
  { algorithm: "zstd", level: 3 },
  { algorithm: "gzip", level: 6 },
  { algorithm: "none", level: 0 },
];

/** Writes `data` as a file of a new set; returns the set id, the record and the stored path. */
async function storedFile(root: string, repo: Repository, data: Uint8Array, c: Compression) {
  const set = await repo.createSet("single", `shop-${c.algorithm}`, WHEN);
  const record = await set.writeFile("db-001-shop.pgdump", chunks(data), {
    compression: c,
    content: "pg_dump-custom",
  });
  await set.writeManifest(manifestFor(set.id, record));
  return { id: set.id, record, path: `${root}/${set.id}/${record.path}` };
}

Deno.test("writeFile records sizes and checksums; openFile returns the original data", async (t) => {
  await withRepo(async (root, repo) => {
    const data = testData(3 * 1024 * 1024 + 17);
    const rawSha = Array.from(
      new Uint8Array(await crypto.subtle.digest("SHA-256", data)),
      (b) => b.toString(16).padStart(2, "0"),
    ).join("");
    for (const c of ALGORITHMS) {
      await t.step(c.algorithm, async () => {
        const { id, record, path } = await storedFile(root, repo, data, c);
        const suffix = { zstd: ".zst", gzip: ".gz", none: "" }[c.algorithm];
        assert.equal(record.path, `db-001-shop.pgdump${suffix}`);
        assert.equal(record.compression, c.algorithm);
        assert.equal(record.rawBytes, data.length);
        assert.equal(record.rawCrc32, referenceCrc32(data));
        assert.equal(record.rawSha256, undefined);
        assert.equal(record.bytes, (await Deno.stat(path)).size);
        if (c.algorithm === "none") assert.equal(record.sha256, rawSha);
        else assert.ok(record.bytes < data.length);
        const got = await consume(await repo.openFile(id, record));
        assert.equal(got.error, undefined);
        assert.equal(got.bytes, data.length);
        assert.ok(got.data.every((b, i) => b === data[i]), "same bytes");
        assert.deepEqual((await repo.readManifest(id)).databases[0].files, [record]);
      });
    }
  });
});

/** Asserts `got` ended with a verification error naming `name` and held back the end. */
function assertRefused(
  got: Awaited<ReturnType<typeof consume>>,
  name: string,
  rawBytes: number,
): void {
  assert.ok(got.error !== undefined, "the stream must error");
  const err = got.error;
  assert.ok(err instanceof DbBackupError, `a DbBackupError, got ${err}`);
  assert.equal(err.code, "verification");
  assert.ok(err.message.includes(name), `names ${name}: ${err.message}`);
  assert.ok(got.bytes < rawBytes, `delivered ${got.bytes} of ${rawBytes} bytes: not all`);
}

Deno.test("openFile errors naming the file when a stored byte is flipped", async (t) => {
  await withRepo(async (root, repo) => {
    const data = testData(2 * 1024 * 1024);
    for (const c of ALGORITHMS) {
      for (const where of ["start", "middle", "end"] as const) {
        await t.step(`${c.algorithm}, byte at the ${where}`, async () => {
          const { id, record, path } = await storedFile(root, repo, data, c);
          const stored = await Deno.readFile(path);
          const pos = where === "start"
            ? 0
            : where === "middle"
            ? Math.floor(stored.length / 2)
            : stored.length - 1;
          stored[pos] ^= 0x01;
          await Deno.writeFile(path, stored);
          const got = await consume(await repo.openFile(id, record));
          assertRefused(got, `${id}/${record.path}`, data.length);
        });
      }
    }
  });
});

Deno.test("openFile errors naming the file when the stored file is truncated or longer", async (t) => {
  await withRepo(async (root, repo) => {
    const data = testData(1024 * 1024);
    for (const c of ALGORITHMS) {
      await t.step(`${c.algorithm}, truncated`, async () => {
        const { id, record, path } = await storedFile(root, repo, data, c);
        await Deno.truncate(path, Math.floor(record.bytes * 0.9));
        assertRefused(await consume(await repo.openFile(id, record)), record.path, data.length);
      });
      await t.step(`${c.algorithm}, extra bytes appended`, async () => {
        const { id, record, path } = await storedFile(root, repo, data, c);
        await Deno.writeFile(path, new Uint8Array(10), { append: true });
        const got = await consume(await repo.openFile(id, record));
        assert.ok(got.error instanceof DbBackupError, `an error, got ${got.error}`);
        assert.ok(got.error.message.includes(record.path), got.error.message);
      });
    }
  });
});

Deno.test("openFile does not deliver the last chunk before the checksums are checked", async (t) => {
  await withRepo(async (root, repo) => {
    await t.step("a file of one chunk delivers nothing when it does not match", async () => {
      const data = new TextEncoder().encode("PGDMP one small archive");
      const { id, record, path } = await storedFile(root, repo, data, ALGORITHMS[2]);
      await Deno.writeTextFile(path, "PGDMP one small archivX");
      const got = await consume(await repo.openFile(id, record));
      assertRefused(got, record.path, data.length);
      assert.equal(got.bytes, 0);
    });
    await t.step("the last chunk is held until the end of the stream", async () => {
      const data = testData(1024 * 1024);
      const { id, record } = await storedFile(root, repo, data, ALGORITHMS[0]);
      // A manifest whose raw checksum is wrong: the stored bytes match, the data does not.
      const wrong = { ...record, rawCrc32: (parseInt(record.rawCrc32!, 16) ^ 1).toString(16) };
      const got = await consume(await repo.openFile(id, wrong));
      assertRefused(got, record.path, data.length);
      assert.ok(got.bytes > 0, "earlier chunks do flow (streaming, not buffering)");
      // What was delivered is a true prefix of the data, never altered bytes.
      assert.ok(got.data.every((b, i) => b === data[i]));
    });
    await t.step("a record of an older set, with the raw sha256, is checked by it", async () => {
      const data = testData(700 * 1024);
      const { id, record } = await storedFile(root, repo, data, ALGORITHMS[0]);
      const rawSha256 = Array.from(
        new Uint8Array(await crypto.subtle.digest("SHA-256", data)),
        (b) => b.toString(16).padStart(2, "0"),
      ).join("");
      const { rawCrc32: _, ...older } = record;
      const good = await consume(await repo.openFile(id, { ...older, rawSha256 }));
      assert.equal(good.error, undefined);
      assert.equal(good.bytes, data.length);
      const bad = await consume(
        await repo.openFile(id, { ...older, rawSha256: "0".repeat(64) }),
      );
      assertRefused(bad, record.path, data.length);
    });
    await t.step("a manifest with a wrong size is refused too", async () => {
      const data = testData(300 * 1024);
      const { id, record } = await storedFile(root, repo, data, ALGORITHMS[2]);
      const got = await consume(await repo.openFile(id, { ...record, bytes: record.bytes + 1 }));
      assertRefused(got, record.path, data.length);
    });
  });
});

Deno.test("openFile of a missing file fails naming it", async () => {
  await withRepo(async (root, repo) => {
    const { id, record, path } = await storedFile(root, repo, testData(1000), ALGORITHMS[0]);
    await Deno.remove(path);
    await assert.rejects(repo.openFile(id, record), (err) => {
      assert.ok(err instanceof DbBackupError);
      assert.equal(err.code, "not_found");
      assert.ok(err.message.includes(`${id}/${record.path}`), err.message);
      return true;
    });
  });
});

Deno.test("discard removes the set folder and everything in it", async () => {
  await withRepo(async (root, repo) => {
    const set = await repo.createSet("single", "shop", WHEN);
    await set.writeFile("f", chunks(testData(1000)), {
      compression: ALGORITHMS[0],
      content: "pg_dump-custom",
    });
    await set.discard();
    assert.deepEqual(await Array.fromAsync(Deno.readDir(root)), []);
    assert.deepEqual(await repo.listSets(), []);
  });
});

Deno.test("overallStatus", () => {
  assert.equal(overallStatus([]), "complete");
  assert.equal(overallStatus(["ok", "ok"]), "complete");
  assert.equal(overallStatus(["ok", "failed"]), "partial");
  assert.equal(overallStatus(["failed", "failed"]), "failed");
});

Deno.test("a resume record cut short is dropped, not trusted and not fatal", async () => {
  await withRepo(async (root, repo) => {
    const set = await repo.createSet("single", "shop");
    await set.writeState("db-001.t00001-c0001", { rows: 1 });
    await set.writeState("db-001.t00001-c0002", { rows: 2 });
    await Deno.writeTextFile(`${root}/${set.id}/state/db-001.t00001-c0002.json`, '{"rows":', {
      mode: 0o600,
    });
    const states = await set.readStates("db-001.");
    assert.deepEqual([...states.keys()], ["db-001.t00001-c0001"]);
    // Gone, so the chunk's record can be written again.
    await set.writeState("db-001.t00001-c0002", { rows: 2 });
    assert.equal((await set.readStates("db-001.")).size, 2);
  });
});

/** CRC-32 (IEEE) bit by bit, independent of the zlib implementation dbbackup uses. */
function referenceCrc32(data: Uint8Array): string {
  let crc = 0xffffffff;
  for (const byte of data) {
    crc ^= byte;
    for (let k = 0; k < 8; k++) crc = crc & 1 ? (crc >>> 1) ^ 0xedb88320 : crc >>> 1;
  }
  return ((crc ^ 0xffffffff) >>> 0).toString(16).padStart(8, "0");
}
