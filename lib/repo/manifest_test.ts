import { strict as assert } from "node:assert";
import { DbBackupError } from "../errors.ts";
import {
  type FileRecord,
  type Manifest,
  MANIFEST_FORMAT,
  MANIFEST_VERSION,
  manifestFiles,
  parseManifest,
  parseStoredManifest,
  sealedManifestJson,
} from "./manifest.ts";

const WHERE = "/repo/20261127T030000Z-cluster-db1/manifest.json";

function file(path: string): FileRecord {
  return {
    path,
    content: "pg_dump-custom",
    compression: "zstd",
    bytes: 10,
    sha256: "a".repeat(64),
    rawBytes: 20,
    rawSha256: "b".repeat(64),
  };
}

function validManifest(): Manifest {
  return {
    format: MANIFEST_FORMAT,
    formatVersion: MANIFEST_VERSION,
    id: "20261127T030000Z-cluster-db1",
    tool: { name: "dbbackup", version: "0.1.0" },
    kind: "cluster",
    dbType: "postgres",
    engine: "pg_dump",
    status: "complete",
    server: { version: "15.8", versionNum: 150008, host: "/run/postgresql", port: 5432 },
    dumpTool: "pg_dump 15.8",
    startedAt: "2026-11-27T03:00:00.000Z",
    finishedAt: "2026-11-27T03:01:00.000Z",
    compression: { algorithm: "zstd", level: 3 },
    restore: { format: "custom", includes: [], excludes: [] },
    globals: { status: "ok", files: [{ ...file("globals.sql.zst"), content: "pg_dumpall" }] },
    databases: [
      {
        name: "shop",
        status: "ok",
        startedAt: "2026-11-27T03:00:01.000Z",
        finishedAt: "2026-11-27T03:00:30.000Z",
        files: [file("db-001-shop.pgdump.zst")],
      },
      {
        name: "crm",
        status: "failed",
        error: "pg_dump failed",
        startedAt: "2026-11-27T03:00:01.000Z",
        finishedAt: "2026-11-27T03:00:02.000Z",
        files: [],
      },
    ],
  };
}

/** parseManifest of `value` must throw a verification DbBackupError matching `message`. */
function assertRejected(value: unknown, message: RegExp, text = JSON.stringify(value)): void {
  assert.throws(() => parseManifest(text, WHERE), (err: unknown) => {
    assert.ok(err instanceof DbBackupError, `a DbBackupError, got ${err}`);
    assert.equal(err.code, "verification");
    assert.equal(err.exitCode, 4);
    assert.ok(err.message.includes(WHERE), `names the manifest: ${err.message}`);
    assert.match(err.message, message);
    return true;
  });
}

Deno.test("parseManifest accepts a valid manifest and keeps every field", () => {
  const m = validManifest();
  const parsed = parseManifest(JSON.stringify(m, null, 2), WHERE);
  assert.deepEqual(parsed, m);
  assert.deepEqual(manifestFiles(parsed).map((f) => f.path), [
    "globals.sql.zst",
    "db-001-shop.pgdump.zst",
  ]);
});

Deno.test("parseManifest accepts a single-database manifest without globals", () => {
  const { globals: _, ...m } = { ...validManifest(), kind: "single" as const };
  const parsed = parseManifest(JSON.stringify(m), WHERE);
  assert.equal(parsed.globals, undefined);
  assert.deepEqual(manifestFiles(parsed).map((f) => f.path), ["db-001-shop.pgdump.zst"]);
});

Deno.test("parseManifest accepts an older format version", () => {
  const m = { ...validManifest(), formatVersion: MANIFEST_VERSION - 1 };
  assert.equal(parseManifest(JSON.stringify(m), WHERE).formatVersion, MANIFEST_VERSION - 1);
});

Deno.test("parseManifest rejects text that is not JSON", async (t) => {
  const cases = ["", "{", "not json", '{"format": "dbbackup-manifest",}', "{'a': 1}"];
  for (const text of cases) {
    await t.step(JSON.stringify(text), () => assertRejected(undefined, /is not valid JSON/, text));
  }
  await t.step("a truncated manifest", () => {
    const text = JSON.stringify(validManifest());
    assertRejected(undefined, /is not valid JSON/, text.slice(0, text.length / 2));
  });
});

Deno.test("parseManifest rejects JSON that is not a dbbackup manifest", async (t) => {
  const cases: [string, unknown][] = [
    ["null", null],
    ["a number", 42],
    ["a string", "dbbackup-manifest"],
    ["an array", [validManifest()]],
    ["an empty object", {}],
    ["another format", { ...validManifest(), format: "other-tool-manifest" }],
    ["format missing", { ...validManifest(), format: undefined }],
  ];
  for (const [name, value] of cases) {
    await t.step(name, () => assertRejected(value, /format is not "dbbackup-manifest"/));
  }
});

Deno.test("parseManifest rejects a newer or missing format version", async (t) => {
  const cases: [string, unknown][] = [
    ["newer", MANIFEST_VERSION + 1],
    ["much newer", 1000],
    ["a string", "1"],
    ["missing", undefined],
    ["null", null],
  ];
  for (const [name, version] of cases) {
    await t.step(name, () =>
      assertRejected(
        { ...validManifest(), formatVersion: version },
        /format version .* is not supported by this dbbackup/,
      ));
  }
});

Deno.test("parseManifest rejects a missing id, databases list or kind", async (t) => {
  await t.step(
    "id missing",
    () => assertRejected({ ...validManifest(), id: undefined }, /missing id or databases/),
  );
  await t.step(
    "id not a string",
    () => assertRejected({ ...validManifest(), id: 7 }, /missing id or databases/),
  );
  await t.step(
    "databases missing",
    () => assertRejected({ ...validManifest(), databases: undefined }, /missing id or databases/),
  );
  await t.step(
    "databases an object",
    () => assertRejected({ ...validManifest(), databases: {} }, /missing id or databases/),
  );
  await t.step(
    "unknown kind",
    () => assertRejected({ ...validManifest(), kind: "incremental" }, /unknown kind incremental/),
  );
});

Deno.test("parseManifest rejects file paths that leave the set folder", async (t) => {
  const paths = [
    "../other-set/db-001-shop.pgdump.zst",
    "..",
    "sub/../../x",
    "a/..",
    "/etc/passwd",
    "/tmp/db-001-shop.pgdump.zst",
  ];
  for (const path of paths) {
    await t.step(`database file ${JSON.stringify(path)}`, () => {
      const m = validManifest();
      m.databases[0].files = [file(path)];
      assertRejected(m, new RegExp(`file entry ${escape(JSON.stringify(path))} is malformed`));
    });
    await t.step(`globals file ${JSON.stringify(path)}`, () => {
      const m = validManifest();
      m.globals!.files = [file(path)];
      assertRejected(m, /file entry .* is malformed/);
    });
  }
});

Deno.test("parseManifest rejects malformed file entries and parts", async (t) => {
  const withFiles = (files: unknown[]) => {
    const m = validManifest() as unknown as { databases: { files: unknown[] }[] };
    m.databases[0].files = files;
    return m;
  };
  const cases: [string, unknown, RegExp][] = [
    ["path missing", withFiles([{ ...file("x"), path: undefined }]), /file entry .* malformed/],
    ["path a number", withFiles([{ ...file("x"), path: 1 }]), /file entry 1 is malformed/],
    ["sha256 missing", withFiles([{ ...file("x"), sha256: undefined }]), /"x" is malformed/],
    ["bytes a string", withFiles([{ ...file("x"), bytes: "10" }]), /"x" is malformed/],
    [
      "no raw checksum",
      withFiles([{ ...file("x"), rawSha256: undefined }]),
      /"x" lacks its raw size or its raw checksum/,
    ],
    [
      "two raw checksums",
      withFiles([{ ...file("x"), rawCrc32: "0a1b2c3d" }]),
      /"x" lacks its raw size or its raw checksum/,
    ],
    [
      "raw size missing",
      withFiles([{ ...file("x"), rawBytes: undefined }]),
      /"x" lacks its raw size or its raw checksum/,
    ],
    ["file entry null", withFiles([null]), /file entry .* is malformed/],
    ["file entry a string", withFiles(["db.pgdump"]), /file entry .* is malformed/],
    [
      "database entry null",
      { ...validManifest(), databases: [null] },
      /a database or globals entry has no file list/,
    ],
    [
      "database without files",
      { ...validManifest(), databases: [{ name: "shop", status: "ok" }] },
      /a database or globals entry has no file list/,
    ],
    [
      "globals files not a list",
      { ...validManifest(), globals: { status: "ok", files: "globals.sql" } },
      /a database or globals entry has no file list/,
    ],
  ];
  for (const [name, value, message] of cases) {
    await t.step(name, () => assertRejected(value, message));
  }
});

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
}

Deno.test("an encrypted set's public manifest hides error texts, checksums of plaintext and file contents", () => {
  const m = validManifest();
  m.databases[0].status = "failed";
  m.databases[0].error = 'pg_dump: permission denied for table "payroll"';
  m.encryption = { format: "dbbkenc1", cipher: "chacha20-poly1305", slots: [] };
  const text = sealedManifestJson(m, new Uint8Array([1, 2, 3]));
  assert.ok(!text.includes("payroll"), text);
  assert.ok(!/rawCrc32|rawSha256|rawBytes/.test(text), text);
  const stored = parseStoredManifest(text, WHERE);
  assert.equal(stored.sealed, true);
  assert.match(stored.summary.databases[0].error ?? "", /encrypted part/);
  assert.equal(stored.summary.databases[0].status, "failed");
});
