/**
 * readArchiveToc against archives pg_dump writes (checked entry by entry against
 * `pg_restore --list --verbose`) and against hand-built archives of every supported version;
 * selectForTables on the awkward dataset and on a small shop schema, then `pg_restore -L` with
 * the chosen list into an empty database.
 */
import { strict as assert } from "node:assert";
import { DbBackupError, UsageError } from "../../errors.ts";
import { run, spawn } from "../../process/run.ts";
import { snapshotDatabase } from "../../../tests/helpers/compare.ts";
import { loadAwkward } from "../../../tests/helpers/cli.ts";
import {
  cleanEnv,
  conninfoDbname,
  type PgServer,
  quoteIdent,
  withPg,
} from "../../../tests/helpers/pg_server.ts";
import {
  archiveTables,
  type ArchiveToc,
  postDataByTable,
  preDataFor,
  readArchiveToc,
  schemasNeeded,
  selectForTables,
  tableKey,
  type TocEntry,
  tocListFile,
  type TocSection,
} from "./archive_toc.ts";

// ---------------------------------------------------------------------------------------------
// Hand-built archives: the layout of pg_backup_archiver.c WriteHead/WriteToc, custom format
// ---------------------------------------------------------------------------------------------

interface FakeEntry {
  dumpId: number;
  desc: string;
  namespace: string | null;
  tag: string;
  deps?: number[];
  defn?: string;
  /** fakeToc only; default pre-data. */
  section?: TocSection;
}

class ArchiveWriter {
  readonly out: number[] = [];
  constructor(readonly intSize = 4, readonly offSize = 8) {}
  byte(b: number): void {
    this.out.push(b & 0xff);
  }
  int(n: number): void {
    this.byte(n < 0 ? 1 : 0);
    let v = Math.abs(n);
    for (let i = 0; i < this.intSize; i++) {
      this.byte(v & 0xff);
      v = Math.floor(v / 256);
    }
  }
  str(s: string | null): void {
    if (s === null) return this.int(-1);
    const bytes = new TextEncoder().encode(s);
    this.int(bytes.length);
    for (const b of bytes) this.byte(b);
  }
}

function buildArchive(
  entries: FakeEntry[],
  opts: { minor?: number; intSize?: number; format?: number; compression?: number } = {},
): Uint8Array {
  const minor = opts.minor ?? 14;
  const w = new ArchiveWriter(opts.intSize ?? 4);
  for (const ch of "PGDMP") w.byte(ch.charCodeAt(0));
  [1, minor, 0, w.intSize, w.offSize, opts.format ?? 1].forEach((b) => w.byte(b));
  if (minor >= 15) w.byte(opts.compression ?? 3);
  else w.int(opts.compression ?? -1);
  [7, 6, 5, 27, 10, 126, 0].forEach((n) => w.int(n)); // 2026-11-27 05:06:07
  w.str("shop");
  w.str("15.20");
  w.str("15.20");
  w.int(entries.length);
  for (const e of entries) {
    w.int(e.dumpId);
    w.int(e.desc === "TABLE DATA" ? 1 : 0);
    w.str("1259");
    w.str(String(16000 + e.dumpId));
    w.str(e.tag);
    w.str(e.desc);
    w.int(e.desc === "TABLE DATA" ? 3 : e.desc === "INDEX" ? 4 : 2);
    w.str(e.defn ?? `-- ${e.desc} ${e.tag}\n`);
    w.str(""); // dropStmt
    w.str(""); // copyStmt
    w.str(e.namespace);
    w.str(""); // tablespace
    if (minor >= 14) w.str("heap");
    if (minor >= 16) w.int(114); // 'r'
    w.str("postgres");
    w.str("false");
    for (const d of e.deps ?? []) w.str(String(d));
    w.str(null);
    w.byte(e.desc === "TABLE DATA" ? 2 : 3);
    for (let i = 0; i < w.offSize; i++) w.byte(e.desc === "TABLE DATA" && i === 0 ? 200 : 0);
  }
  return new Uint8Array(w.out);
}

/** An ArchiveToc made directly from entries, for selection cases no real dump needs. */
function fakeToc(entries: FakeEntry[]): ArchiveToc {
  return {
    source: "fake.dump",
    version: "1.14.0",
    intSize: 4,
    offSize: 8,
    compression: "none",
    createdAt: "2026-11-27 05:06:07",
    database: "shop",
    serverVersion: "15.20",
    pgDumpVersion: "15.20",
    tocBytes: 0,
    entries: entries.map((e): TocEntry => ({
      dumpId: e.dumpId,
      hadDumper: e.desc === "TABLE DATA",
      tableoid: 0,
      oid: 0,
      tag: e.tag,
      desc: e.desc,
      section: e.section ?? "pre-data",
      defn: e.defn ?? null,
      namespace: e.namespace,
      owner: "postgres",
      deps: e.deps ?? [],
      dataState: "no_data",
      dataOffset: 0,
      offsetPos: 0,
    })),
  };
}

const SMALL: FakeEntry[] = [
  { dumpId: 1, desc: "SCHEMA", namespace: null, tag: "shop" },
  { dumpId: 2, desc: "TABLE", namespace: "shop", tag: "orders", deps: [1] },
  { dumpId: 3, desc: "TABLE DATA", namespace: "shop", tag: "orders", deps: [2] },
  { dumpId: 4, desc: "INDEX", namespace: "shop", tag: "orders_idx", deps: [2] },
];

function streamOf(bytes: Uint8Array, chunkSize = bytes.length || 1): ReadableStream<Uint8Array> {
  const chunks: Uint8Array[] = [];
  for (let i = 0; i < bytes.length; i += chunkSize) chunks.push(bytes.slice(i, i + chunkSize));
  return ReadableStream.from(chunks);
}

async function rejectsWith(promise: Promise<unknown>, pattern: RegExp): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof DbBackupError, `not a DbBackupError: ${err}`);
    assert.equal(err.code, "verification");
    assert.match(err.message, pattern);
    return true;
  });
}

Deno.test("readArchiveToc reads archive versions 1.12 to 1.16 with their version-specific fields", async () => {
  for (const minor of [12, 13, 14, 15, 16]) {
    for (const intSize of [4, 8]) {
      const bytes = buildArchive(SMALL, { minor, intSize, compression: minor >= 15 ? 2 : 0 });
      const toc = await readArchiveToc(streamOf(bytes, 3), `v1.${minor}.dump`);
      assert.equal(toc.version, `1.${minor}.0`);
      assert.equal(toc.intSize, intSize);
      assert.equal(toc.compression, minor >= 15 ? "lz4" : "none");
      assert.equal(toc.createdAt, "2026-11-27 05:06:07");
      assert.equal(toc.database, "shop");
      assert.equal(toc.tocBytes, bytes.length);
      assert.deepEqual(
        toc.entries.map((e) => [e.dumpId, e.desc, e.namespace, e.tag, e.deps, e.section]),
        [
          [1, "SCHEMA", null, "shop", [], "pre-data"],
          [2, "TABLE", "shop", "orders", [1], "pre-data"],
          [3, "TABLE DATA", "shop", "orders", [2], "data"],
          [4, "INDEX", "shop", "orders_idx", [2], "post-data"],
        ],
      );
      assert.deepEqual(
        toc.entries.map((e) => [e.dataState, e.dataOffset]),
        [["no_data", 0], ["no_data", 0], ["offset_set", 200], ["no_data", 0]],
      );
    }
  }
  const gzip = await readArchiveToc(streamOf(buildArchive(SMALL, { compression: -1 })), "z");
  assert.equal(gzip.compression, "gzip", "level -1 (Z_DEFAULT_COMPRESSION) means gzip");
});

Deno.test("readArchiveToc refuses other versions, formats and non-archives, naming the source", async () => {
  const read = (bytes: Uint8Array) => readArchiveToc(streamOf(bytes), "nightly/shop.dump");
  for (const minor of [11, 17]) {
    await rejectsWith(
      read(buildArchive(SMALL, { minor })),
      new RegExp(`nightly/shop\\.dump: archive version 1\\.${minor}\\.0 is not supported`),
    );
  }
  await rejectsWith(read(buildArchive(SMALL, { format: 5 })), /format 5 is not the custom format/);
  await rejectsWith(read(new Uint8Array()), /nightly\/shop\.dump: it is empty/);
  await rejectsWith(read(new Uint8Array([0x1f, 0x8b, 8, 0])), /gzip-compressed/);
  await rejectsWith(read(new Uint8Array([0x28, 0xb5, 0x2f, 0xfd, 0])), /zstd-compressed/);
  await rejectsWith(
    read(new TextEncoder().encode("--\n-- PostgreSQL database dump\n")),
    /plain SQL script/,
  );
  await rejectsWith(read(new TextEncoder().encode("GARBAGE".repeat(100))), /no "PGDMP"/);
  await rejectsWith(read(new TextEncoder().encode("PG")), /ends after 2 bytes/);
  const zeroId = buildArchive([{ dumpId: 0, desc: "TABLE", namespace: "s", tag: "t" }]);
  await rejectsWith(read(zeroId), /entry ID 0 out of range .*corrupt archive/);
});

Deno.test("readArchiveToc reports every truncation of an archive as a truncated archive", async () => {
  const bytes = buildArchive(SMALL, { minor: 16 });
  for (let cut = 1; cut < bytes.length; cut++) {
    await rejectsWith(
      readArchiveToc(streamOf(bytes.slice(0, cut), 5), "cut.dump"),
      new RegExp(`cut\\.dump: it ends after ${cut} bytes, inside its header or table of contents`),
    );
  }
});

Deno.test("readArchiveToc answers damaged archives with a result or a verification error only", async () => {
  const good = buildArchive(SMALL);
  let seed = 42;
  const random = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  for (let i = 0; i < 300; i++) {
    const bytes = good.slice();
    for (let flips = 1 + Math.floor(random() * 3); flips > 0; flips--) {
      bytes[5 + Math.floor(random() * (bytes.length - 5))] = Math.floor(random() * 256);
    }
    try {
      await readArchiveToc(streamOf(bytes, 16), "damaged.dump");
    } catch (err) {
      assert.ok(err instanceof DbBackupError && err.code === "verification", String(err));
      assert.match(err.message, /damaged\.dump/);
    }
  }
});

Deno.test("readArchiveToc reads only up to the end of the TOC, then cancels the stream", async () => {
  const toc = buildArchive(SMALL);
  let pulled = 0;
  let cancelled = false;
  const endless = new ReadableStream<Uint8Array>({
    pull(controller) {
      // The TOC, then table data that never ends.
      controller.enqueue(pulled === 0 ? toc : new Uint8Array(64 * 1024));
      pulled++;
    },
    cancel() {
      cancelled = true;
    },
  });
  const read = await readArchiveToc(endless, "endless.dump");
  assert.equal(read.entries.length, SMALL.length);
  assert.ok(cancelled, "the stream was cancelled");
  assert.ok(pulled <= 2, `read ${pulled} chunks`);
});

// ---------------------------------------------------------------------------------------------
// Selection rules that need no server
// ---------------------------------------------------------------------------------------------

Deno.test("selectForTables refuses unknown and ambiguous names with the candidates", () => {
  const toc = fakeToc([
    { dumpId: 1, desc: "TABLE", namespace: "shop", tag: "orders" },
    { dumpId: 2, desc: "TABLE", namespace: "archive", tag: "orders" },
    { dumpId: 3, desc: "TABLE", namespace: "shop", tag: "Order Lines" },
    { dumpId: 4, desc: "VIEW", namespace: "shop", tag: "order_view" },
    { dumpId: 5, desc: "SCHEMA", namespace: null, tag: "empty" },
  ]);
  const choose = (tables: string[], schemas: string[] = []) =>
    selectForTables(toc, { tables, schemas });
  assert.throws(
    () => choose(["orders"]),
    (err: unknown) =>
      err instanceof UsageError &&
      err.message ===
        'table "orders" is ambiguous in fake.dump: it could be shop.orders, archive.orders; ' +
          "give it as schema.table",
  );
  assert.deepEqual(choose(["archive.orders"]).tables, [{ schema: "archive", name: "orders" }]);
  assert.deepEqual(choose(['"shop"."Order Lines"']).tables, [{
    schema: "shop",
    name: "Order Lines",
  }]);
  assert.deepEqual(choose(["shop.Order Lines"]).tables, [{ schema: "shop", name: "Order Lines" }]);
  assert.deepEqual(choose(["SHOP.ORDERS"]).tables, [{ schema: "shop", name: "orders" }]);
  assert.throws(
    () => choose(["shop.ordrs"]),
    /no table "shop\.ordrs" in fake\.dump: did you mean shop\.orders/,
  );
  assert.throws(
    () => choose(["order_view"]),
    /no table "order_view" in fake\.dump: shop\.order_view is a view, not a table/,
  );
  assert.throws(() => choose([], ["shpo"]), /no schema "shpo" in fake\.dump: did you mean shop\?/);
  assert.throws(() => choose([]), /choose at least one table/);
  const empty = choose(["shop.orders"], ["empty"]);
  assert.deepEqual(empty.notes, [
    "schema empty has no tables",
    "shop.orders has no data in this backup: only its definition is restored",
  ]);
});

Deno.test("selectForTables refuses a child table without its inheritance parent", () => {
  const toc = fakeToc([
    { dumpId: 1, desc: "TABLE", namespace: "shop", tag: "base" },
    { dumpId: 2, desc: "TABLE", namespace: "shop", tag: "child", deps: [1] },
  ]);
  assert.throws(
    () => selectForTables(toc, { tables: ["shop.child"], schemas: [] }),
    /cannot restore shop\.child without shop\.base: .*add --table shop\.base/,
  );
  assert.deepEqual(
    [...selectForTables(toc, { tables: [], schemas: ["shop"] }).dumpIds].sort(),
    [1, 2],
  );
});

Deno.test("postDataByTable gives each table the post-data entries that need that table alone", () => {
  const post = "post-data" as const;
  const toc = fakeToc([
    { dumpId: 1, desc: "SCHEMA", namespace: null, tag: "s" },
    { dumpId: 2, desc: "TABLE", namespace: "s", tag: "a", deps: [1] },
    { dumpId: 3, desc: "TABLE", namespace: "s", tag: "b", deps: [1] },
    { dumpId: 4, desc: "VIEW", namespace: "s", tag: "v", deps: [2] },
    { dumpId: 5, desc: "TABLE DATA", namespace: "s", tag: "a", deps: [2], section: "data" },
    { dumpId: 6, desc: "INDEX", namespace: "s", tag: "a_idx", deps: [2], section: post },
    { dumpId: 7, desc: "CONSTRAINT", namespace: "s", tag: "a a_pkey", deps: [2], section: post },
    // Not own: a foreign key (two tables), a rule on two tables, an entry that needs another
    // post-data entry, a kind that is never built early, a comment (no section).
    {
      dumpId: 8,
      desc: "FK CONSTRAINT",
      namespace: "s",
      tag: "b b_fk",
      deps: [3, 7],
      section: post,
    },
    { dumpId: 9, desc: "RULE", namespace: "s", tag: "b r", deps: [2, 3], section: post },
    { dumpId: 10, desc: "INDEX", namespace: "s", tag: "b_idx", deps: [3, 6], section: post },
    { dumpId: 11, desc: "EVENT TRIGGER", namespace: null, tag: "e", section: post },
    { dumpId: 12, desc: "COMMENT", namespace: "s", tag: "INDEX a_idx", deps: [6], section: "none" },
    { dumpId: 13, desc: "TRIGGER", namespace: "s", tag: "b t", deps: [3], section: post },
    // A view's own rule counts for the one table it names.
    { dumpId: 14, desc: "RULE", namespace: "s", tag: "v _RETURN", deps: [4, 2], section: post },
  ]);
  assert.deepEqual(archiveTables(toc), [{ schema: "s", name: "a" }, { schema: "s", name: "b" }]);
  const own = postDataByTable(toc, [
    { schema: "s", name: "b" },
    { schema: "s", name: "a" },
    { schema: "s", name: "missing" },
  ]);
  assert.deepEqual([...own.entries()], [
    [tableKey({ schema: "s", name: "b" }), [13]],
    [tableKey({ schema: "s", name: "a" }), [6, 7, 14]],
  ]);
  assert.deepEqual(postDataByTable(toc, [{ schema: "s", name: "v" }]), new Map());
});

Deno.test("preDataFor gives the pre-data that a table needs and that uses it, and no more", () => {
  const toc = fakeToc([
    // The database's own entries go first whatever the tables.
    { dumpId: 20, desc: "DATABASE", namespace: null, tag: "d" },
    { dumpId: 21, desc: "DATABASE PROPERTIES", namespace: null, tag: "d", deps: [20] },
    { dumpId: 22, desc: "COMMENT", namespace: null, tag: "DATABASE d", deps: [20] },
    { dumpId: 1, desc: "SCHEMA", namespace: null, tag: "s" },
    { dumpId: 2, desc: "TYPE", namespace: "s", tag: "mood", deps: [1] },
    { dumpId: 3, desc: "FUNCTION", namespace: "s", tag: "f()", deps: [1] },
    { dumpId: 4, desc: "TABLE", namespace: "s", tag: "big", deps: [1, 2] },
    { dumpId: 5, desc: "SEQUENCE", namespace: "s", tag: "big_id_seq", deps: [1] },
    { dumpId: 6, desc: "SEQUENCE OWNED BY", namespace: "s", tag: "big_id_seq", deps: [5, 4] },
    // A default of big that calls f: f comes along although big itself does not need it.
    { dumpId: 7, desc: "DEFAULT", namespace: "s", tag: "big id", deps: [4, 5, 3] },
    { dumpId: 8, desc: "COMMENT", namespace: "s", tag: "TABLE big", deps: [4], section: "none" },
    { dumpId: 9, desc: "TABLE", namespace: "s", tag: "small", deps: [1] },
    // A view of big and small, and a view of that view: small comes along for the first.
    { dumpId: 10, desc: "VIEW", namespace: "s", tag: "v", deps: [4, 9] },
    { dumpId: 11, desc: "VIEW", namespace: "s", tag: "v2", deps: [10] },
    // Pre-data that has nothing to do with big.
    { dumpId: 12, desc: "TABLE", namespace: "s", tag: "other", deps: [1] },
    { dumpId: 13, desc: "FUNCTION", namespace: "s", tag: "g()", deps: [1] },
    { dumpId: 14, desc: "TABLE DATA", namespace: "s", tag: "big", deps: [4], section: "data" },
    {
      dumpId: 15,
      desc: "INDEX",
      namespace: "s",
      tag: "big_idx",
      deps: [4, 13],
      section: "post-data",
    },
    // An ACL after post-data is restored with post-data.
    { dumpId: 16, desc: "ACL", namespace: "s", tag: "TABLE big", deps: [4], section: "none" },
  ]);
  const ids = (tables: { schema: string; name: string }[]) =>
    [...preDataFor(toc, tables)].sort((a, b) => a - b);
  const db = [20, 21, 22];
  assert.deepEqual(ids([{ schema: "s", name: "big" }]), [
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    10,
    11,
    ...db,
  ]);
  assert.deepEqual(ids([{ schema: "s", name: "other" }]), [1, 12, ...db]);
  assert.deepEqual(ids([{ schema: "s", name: "missing" }]), db);
  assert.deepEqual(ids([]), db);
});

Deno.test("selectForTables leaves out a default that needs another table's identity sequence", () => {
  const toc = fakeToc([
    { dumpId: 1, desc: "TABLE", namespace: "s", tag: "a" },
    {
      dumpId: 2,
      desc: "SEQUENCE",
      namespace: "s",
      tag: "a_id_seq",
      deps: [1],
      defn:
        "ALTER TABLE s.a ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (SEQUENCE NAME s.a_id_seq);",
    },
    { dumpId: 3, desc: "TABLE", namespace: "s", tag: "b" },
    { dumpId: 4, desc: "DEFAULT", namespace: "s", tag: "b id", deps: [2, 3] },
    { dumpId: 5, desc: "TABLE", namespace: "s", tag: "c" },
    {
      dumpId: 6,
      desc: "SEQUENCE",
      namespace: "s",
      tag: "c_id_seq",
      deps: [5],
      defn: "CREATE SEQUENCE s.c_id_seq;",
    },
    { dumpId: 7, desc: "SEQUENCE OWNED BY", namespace: "s", tag: "c_id_seq", deps: [6] },
    { dumpId: 8, desc: "SEQUENCE SET", namespace: "s", tag: "c_id_seq", deps: [6] },
    { dumpId: 9, desc: "DEFAULT", namespace: "s", tag: "b ref", deps: [6, 3] },
  ]);
  const sel = selectForTables(toc, { tables: ["s.b"], schemas: [] });
  assert.deepEqual([...sel.dumpIds].sort((x, y) => x - y), [3, 6, 8, 9]);
  assert.deepEqual(sel.notes, [
    "s.b has no data in this backup: only its definition is restored",
    'skipped default "id" of s.b: it uses s.a_id_seq, the identity sequence of s.a, which is ' +
    "not being restored",
    'restoring sequence s.c_id_seq for default "ref" of s.b without OWNED BY: its owner s.c is ' +
    "not being restored",
  ]);
});

// ---------------------------------------------------------------------------------------------
// Real archives
// ---------------------------------------------------------------------------------------------

/** Two schemas, a foreign key, serial and identity, a trigger function in the other schema. */
const SHOP_SQL = `
SET client_min_messages = warning;
CREATE ROLE shop_reader NOLOGIN;
BEGIN;
CREATE SCHEMA shop;
CREATE SCHEMA audit;
CREATE TABLE shop.customers (id serial PRIMARY KEY, name text NOT NULL, email text UNIQUE);
COMMENT ON TABLE shop.customers IS 'People who buy';
CREATE TABLE shop.orders (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  customer_id int NOT NULL CONSTRAINT orders_customer_fk REFERENCES shop.customers (id),
  total numeric(10, 2) NOT NULL DEFAULT 0,
  note text,
  touched text
);
CREATE INDEX orders_customer_idx ON shop.orders (customer_id);
COMMENT ON INDEX shop.orders_customer_idx IS 'Orders by customer';
COMMENT ON COLUMN shop.orders.note IS 'Free text';
CREATE STATISTICS shop.orders_stats (dependencies) ON customer_id, total FROM shop.orders;
ALTER TABLE shop.orders ENABLE ROW LEVEL SECURITY;
CREATE POLICY orders_visible ON shop.orders USING (total >= 0);
CREATE RULE orders_keep AS ON DELETE TO shop.orders WHERE OLD.total > 1000 DO INSTEAD NOTHING;
GRANT SELECT ON shop.orders TO shop_reader;
CREATE FUNCTION audit.touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.touched := 'yes'; RETURN NEW; END $$;
COMMENT ON FUNCTION audit.touch() IS 'Marks rows as touched';
CREATE TRIGGER orders_touch BEFORE INSERT OR UPDATE ON shop.orders
  FOR EACH ROW EXECUTE FUNCTION audit.touch();
COMMENT ON TRIGGER orders_touch ON shop.orders IS 'Keeps touched set';
CREATE TABLE shop.order_notes (
  id serial PRIMARY KEY,
  order_id bigint NOT NULL REFERENCES shop.orders (id),
  body text
);
CREATE TABLE audit.log (id serial PRIMARY KEY, msg text);
CREATE SEQUENCE shop.invoice_seq;
CREATE TABLE shop.invoices (no int PRIMARY KEY DEFAULT nextval('shop.invoice_seq'), amount int);
CREATE TABLE shop.events (id int NOT NULL, at date NOT NULL, kind text, PRIMARY KEY (id, at))
  PARTITION BY RANGE (at);
CREATE TABLE shop.events_2024 PARTITION OF shop.events
  FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE shop.events_2025 PARTITION OF shop.events
  FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE INDEX events_kind ON shop.events (kind);
CREATE TABLE shop.base (id int);
CREATE TABLE shop.child (extra text) INHERITS (shop.base);
CREATE VIEW shop.order_totals AS
  SELECT customer_id, sum(total) AS total FROM shop.orders GROUP BY customer_id;
INSERT INTO shop.customers (name, email)
  SELECT 'customer ' || i, 'c' || i || '@example.com' FROM generate_series(1, 30) AS i;
INSERT INTO shop.orders (customer_id, total, note)
  SELECT 1 + i % 30, i * 1.5, CASE WHEN i % 3 = 0 THEN 'note ' || i END
  FROM generate_series(1, 50) AS i;
INSERT INTO shop.order_notes (order_id, body) SELECT i, 'body ' || i FROM generate_series(1, 10) AS i;
INSERT INTO audit.log (msg) SELECT 'message ' || i FROM generate_series(1, 5) AS i;
INSERT INTO shop.invoices (amount) SELECT i FROM generate_series(1, 7) AS i;
INSERT INTO shop.events SELECT i, date '2024-06-01' + i * 2, 'kind ' || i % 3
  FROM generate_series(1, 200) AS i;
INSERT INTO shop.child VALUES (1, 'x');
SELECT setval('shop.customers_id_seq', 40);
COMMIT;
`;

/** `pg_dump --format=custom` to stdout, as dbbackup runs it. */
async function pgDump(pg: PgServer, db: string, args: string[] = []): Promise<Uint8Array> {
  const child = spawn(
    `${pg.binDir}/pg_dump`,
    ["--format=custom", "--no-password", ...args, "--dbname", conninfoDbname(db)],
    { describe: `pg_dump of ${db}`, env: cleanEnv(pg.env()), clearEnv: true },
  );
  const [bytes] = await Promise.all([new Response(child.stdout).arrayBuffer(), child.status]);
  return new Uint8Array(bytes);
}

async function pgRestore(pg: PgServer, args: string[], input?: Uint8Array): Promise<string> {
  const out = await run(`${pg.binDir}/pg_restore`, args, {
    describe: `pg_restore ${args.join(" ")}`,
    env: cleanEnv(pg.env()),
    clearEnv: true,
    input,
  });
  return out.stdout;
}

/** pg_restore --list --verbose: every entry line and its "depends on" line. */
function expectedListing(list: string): { lines: string[]; deps: Map<number, number[]> } {
  const lines: string[] = [];
  const deps = new Map<number, number[]>();
  let last = 0;
  for (const line of list.split("\n")) {
    const entry = /^(\d+); /.exec(line);
    if (entry) {
      lines.push(line);
      last = Number(entry[1]);
      deps.set(last, []);
    }
    const dep = /^;\tdepends on: (.*)$/.exec(line);
    if (dep) deps.set(last, dep[1].trim().split(" ").map(Number));
  }
  return { lines, deps };
}

/** "DESC namespace tag" of the chosen entries, sorted. */
function chosenEntries(sel: { entries: TocEntry[] }): string[] {
  return sel.entries.map((e) => `${e.desc} ${e.namespace ?? "-"} ${e.tag}`).sort();
}

Deno.test("table-by-table restore from real pg_dump 15 archives", async (t) => {
  await withPg(async (pg) => {
    const dir = await Deno.makeTempDir({ prefix: "dbbackup-test-toc-" });
    try {
      await loadAwkward(pg, "awkward");
      await pg.createDatabase("shop");
      await pg.psql(SHOP_SQL, { db: "shop" });
      const archives: Record<string, Uint8Array> = {
        awkward: await pgDump(pg, "awkward"),
        "awkward, uncompressed": await pgDump(pg, "awkward", ["--compress=0"]),
        "awkward, pre-data only without orders data": await pgDump(pg, "awkward", [
          "--section=pre-data",
          "--exclude-table-data=app.orders",
        ]),
        "awkward, without orders data": await pgDump(pg, "awkward", [
          "--exclude-table-data=app.orders",
        ]),
        shop: await pgDump(pg, "shop"),
      };
      const paths: Record<string, string> = {};
      for (const [name, bytes] of Object.entries(archives)) {
        paths[name] = `${dir}/${name.replace(/\W+/g, "_")}.dump`;
        await Deno.writeFile(paths[name], bytes);
      }
      // pg_dump -f seeks back and records the data offsets.
      paths["awkward, to a file"] = `${dir}/awkward_file.dump`;
      await run(`${pg.binDir}/pg_dump`, [
        "--format=custom",
        "--file",
        paths["awkward, to a file"],
        "--dbname",
        conninfoDbname("awkward"),
      ], { describe: "pg_dump -f", env: cleanEnv(pg.env()), clearEnv: true });
      const tocs: Record<string, ArchiveToc> = {};
      for (const [name, path] of Object.entries(paths)) {
        using file = await Deno.open(path);
        tocs[name] = await readArchiveToc(file.readable, path);
      }

      await t.step("readArchiveToc lists exactly what pg_restore --list lists", async () => {
        for (const [name, toc] of Object.entries(tocs)) {
          const listed = expectedListing(
            await pgRestore(pg, ["--list", "--verbose", paths[name]]),
          );
          const all = new Set(toc.entries.map((e) => e.dumpId));
          const mine = tocListFile(toc, all).split("\n").filter((l) => /^\d/.test(l));
          assert.deepEqual(mine, listed.lines, `${name}: entry lines`);
          assert.deepEqual(
            new Map(toc.entries.map((e) => [e.dumpId, e.deps])),
            listed.deps,
            `${name}: dependencies`,
          );
          assert.equal(toc.version, "1.14.0", name);
          assert.match(toc.pgDumpVersion ?? "", /^15\./, name);
          assert.match(toc.serverVersion ?? "", /^15\./, name);
          assert.equal(toc.database, name === "shop" ? "shop" : "awkward");
        }
        assert.equal(tocs.awkward.compression, "gzip");
        assert.equal(tocs["awkward, uncompressed"].compression, "none");
        const dataStates = (toc: ArchiveToc) =>
          new Set(toc.entries.filter((e) => e.desc === "TABLE DATA").map((e) => e.dataState));
        assert.deepEqual(dataStates(tocs.awkward), new Set(["offset_not_set"]), "from a pipe");
        assert.deepEqual(dataStates(tocs["awkward, to a file"]), new Set(["offset_set"]));
        const offsets = tocs["awkward, to a file"].entries
          .filter((e) => e.dataState === "offset_set").map((e) => e.dataOffset);
        assert.ok(offsets.every((o) => o >= tocs["awkward, to a file"].tocBytes), "data after TOC");
        assert.ok(tocs.awkward.tocBytes < archives.awkward.length / 2, "the TOC is the start");
        // Chunk boundaries anywhere give the same result.
        const chunked = await readArchiveToc(streamOf(archives.awkward, 7), "chunked");
        assert.deepEqual(chunked.entries, tocs.awkward.entries);
      });

      await t.step("awkward: a table brings its sequence, data, key, ACL; not the FK", () => {
        const sel = selectForTables(tocs.awkward, { tables: ["app.orders"], schemas: [] });
        assert.deepEqual(chosenEntries(sel), [
          "ACL app TABLE orders",
          "CONSTRAINT app orders orders_pkey",
          "DEFAULT app orders order_no",
          "SEQUENCE OWNED BY app orders_order_no_seq",
          "SEQUENCE SET app orders_order_no_seq",
          "SEQUENCE app orders_order_no_seq",
          "TABLE DATA app orders",
          "TABLE app orders",
        ]);
        assert.deepEqual(sel.notes, [
          'skipped foreign key "orders_customer_id_fkey" of app.orders: it references ' +
          'public."MixedCase Customers", which is not being restored',
          "app.orders needs type app.order_status, which this restore does not create: it " +
          "must exist in the target",
        ]);
        assert.deepEqual(schemasNeeded(sel), ["app"]);
      });

      await t.step(
        "awkward: both ends of a foreign key keep it; a trigger brings its function",
        () => {
          const sel = selectForTables(tocs.awkward, {
            tables: ["MixedCase Customers", '"app"."orders"'],
            schemas: [],
          });
          assert.deepEqual(sel.tables, [
            { schema: "app", name: "orders" },
            { schema: "public", name: "MixedCase Customers" },
          ]);
          assert.deepEqual(chosenEntries(sel), [
            "ACL app FUNCTION set_search_key()",
            "ACL app TABLE orders",
            'ACL public COLUMN "MixedCase Customers"."Name"',
            'ACL public COLUMN "MixedCase Customers".id',
            "COMMENT app CONSTRAINT orders_customer_id_fkey ON orders",
            "COMMENT app FUNCTION set_search_key()",
            'COMMENT public COLUMN "MixedCase Customers".notes',
            'COMMENT public CONSTRAINT "MixedCase Customers email unique" ON "MixedCase Customers"',
            'COMMENT public INDEX "customers lower(email)"',
            'COMMENT public TABLE "MixedCase Customers"',
            'COMMENT public TRIGGER "set search key" ON "MixedCase Customers"',
            "CONSTRAINT app orders orders_pkey",
            "CONSTRAINT public MixedCase Customers MixedCase Customers email unique",
            "CONSTRAINT public MixedCase Customers MixedCase Customers_pkey",
            "DEFAULT app orders order_no",
            "FK CONSTRAINT app orders orders_customer_id_fkey",
            "FUNCTION app set_search_key()",
            "INDEX public customers lower(email)",
            "SEQUENCE OWNED BY app orders_order_no_seq",
            "SEQUENCE SET app orders_order_no_seq",
            "SEQUENCE SET public MixedCase Customers_id_seq",
            "SEQUENCE app orders_order_no_seq",
            "SEQUENCE public MixedCase Customers_id_seq",
            "TABLE DATA app orders",
            "TABLE DATA public MixedCase Customers",
            "TABLE app orders",
            "TABLE public MixedCase Customers",
            "TRIGGER public MixedCase Customers set search key",
          ]);
          assert.deepEqual(sel.functions.map((f) => `${f.schema}.${f.signature}`), [
            "app.set_search_key()",
          ]);
          assert.ok(sel.notes.includes(
            'restoring function app.set_search_key() too: trigger "set search key" of ' +
              'public."MixedCase Customers" calls it; it must not exist in the target yet',
          ));
          assert.deepEqual(schemasNeeded(sel), ["app", "public"]);
          assert.ok(
            !sel.entries.some((e) => /BLOB|LARGE OBJECT/.test(`${e.desc} ${e.tag}`)),
            "never large objects",
          );
        },
      );

      await t.step("awkward: a schema brings its tables, partitions and identity sequence", () => {
        const sales = 'Sales "Ünïcode" Dept';
        const sel = selectForTables(tocs.awkward, { tables: [], schemas: [sales] });
        assert.deepEqual(sel.tables.map((x) => x.name).sort(), [
          "Events Default",
          'Order "Lines"',
          "events",
          "events_2023",
          "events_2024",
          "events_2025",
        ]);
        const kinds = new Map<string, number>();
        for (const e of sel.entries) kinds.set(e.desc, (kinds.get(e.desc) ?? 0) + 1);
        assert.deepEqual(Object.fromEntries(kinds), {
          "TABLE": 6,
          "COMMENT": 2,
          "ACL": 1,
          "SEQUENCE": 1,
          "TABLE ATTACH": 4,
          "TABLE DATA": 5,
          "SEQUENCE SET": 1,
          "CONSTRAINT": 6,
          "INDEX": 1,
          "INDEX ATTACH": 4,
        });
        assert.ok(sel.notes[0].startsWith('skipped foreign key "Order ""Lines""_order_no_fkey"'));
        // The same tables by partition root, quoted as SQL.
        const byRoot = selectForTables(tocs.awkward, {
          tables: ['"Sales ""Ünïcode"" Dept".events'],
          schemas: [],
        });
        assert.equal(byRoot.tables.length, 5, "the root and its four partitions");
        const alone = selectForTables(tocs.awkward, {
          tables: [`${sales}.events_2024`],
          schemas: [],
        });
        assert.deepEqual(chosenEntries(alone), [
          `CONSTRAINT ${sales} events_2024 events_2024_pkey`,
          `TABLE DATA ${sales} events_2024`,
          `TABLE ${sales} events_2024`,
        ]);
        assert.deepEqual(alone.notes, [
          '"Sales ""Ünïcode"" Dept".events_2024 is restored as a standalone table: its ' +
          'partitioned table "Sales ""Ünïcode"" Dept".events is not being restored',
        ]);
      });

      await t.step(
        "awkward: archives without some data say so and still list the definitions",
        () => {
          for (
            const name of [
              "awkward, pre-data only without orders data",
              "awkward, without orders data",
            ]
          ) {
            const sel = selectForTables(tocs[name], { tables: ["app.orders"], schemas: [] });
            assert.ok(!chosenEntries(sel).includes("TABLE DATA app orders"), name);
            assert.ok(chosenEntries(sel).includes("TABLE app orders"), name);
            assert.ok(
              sel.notes.includes(
                "app.orders has no data in this backup: only its definition is restored",
              ),
              name,
            );
          }
        },
      );

      await t.step("shop: one table brings its parts and its trigger function, not its FK", () => {
        const sel = selectForTables(tocs.shop, { tables: ["shop.orders"], schemas: [] });
        assert.deepEqual(chosenEntries(sel), [
          "ACL shop TABLE orders",
          "COMMENT audit FUNCTION touch()",
          "COMMENT shop COLUMN orders.note",
          "COMMENT shop INDEX orders_customer_idx",
          "COMMENT shop TRIGGER orders_touch ON orders",
          "CONSTRAINT shop orders orders_pkey",
          "FUNCTION audit touch()",
          "INDEX shop orders_customer_idx",
          "POLICY shop orders orders_visible",
          "ROW SECURITY shop orders",
          "RULE shop orders orders_keep",
          "SEQUENCE SET shop orders_id_seq",
          "SEQUENCE shop orders_id_seq",
          "STATISTICS shop orders_stats",
          "TABLE DATA shop orders",
          "TABLE shop orders",
          "TRIGGER shop orders orders_touch",
        ]);
        assert.deepEqual(sel.notes, [
          'skipped foreign key "orders_customer_fk" of shop.orders: it references ' +
          "shop.customers, which is not being restored",
          'restoring function audit.touch() too: trigger "orders_touch" of shop.orders calls ' +
          "it; it must not exist in the target yet",
        ]);
        assert.deepEqual(schemasNeeded(sel), ["audit", "shop"]);
        const invoices = selectForTables(tocs.shop, { tables: ["invoices"], schemas: [] });
        assert.deepEqual(chosenEntries(invoices), [
          "CONSTRAINT shop invoices invoices_pkey",
          "SEQUENCE SET shop invoice_seq",
          "SEQUENCE shop invoice_seq",
          "TABLE DATA shop invoices",
          "TABLE shop invoices",
        ]);
        assert.deepEqual(invoices.notes, [
          "restoring sequence shop.invoice_seq too: shop.invoices uses it",
        ]);
        assert.throws(
          () => selectForTables(tocs.shop, { tables: ["shop.child"], schemas: [] }),
          /cannot restore shop\.child without shop\.base/,
        );
      });

      const restoreInto = async (target: string, tables: string[], viaStdin: boolean) => {
        const sel = selectForTables(tocs.shop, { tables, schemas: [] });
        await pg.createDatabase(target);
        const schemas = schemasNeeded(sel);
        await pg.psql(schemas.map((s) => `CREATE SCHEMA ${quoteIdent(s)};`).join("\n"), {
          db: target,
        });
        const list = `${dir}/${target}.list`;
        await Deno.writeTextFile(list, tocListFile(tocs.shop, sel.dumpIds));
        const args = [
          "--exit-on-error",
          "--single-transaction",
          "--no-password",
          "--use-list",
          list,
          "--dbname",
          conninfoDbname(target),
        ];
        if (viaStdin) await pgRestore(pg, args, archives.shop);
        else await pgRestore(pg, [...args, paths.shop]);
        return sel;
      };
      const relations = async (db: string) =>
        (await pg.psql(
          `SELECT n.nspname || '.' || c.relname || ' ' || c.relkind::text FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname IN ('shop', 'audit') ORDER BY 1`,
          { db },
        )).trim().split("\n").filter(Boolean);
      /** Catalog facts about the given tables, comparable between databases. */
      const facts = async (db: string, tables: string[]) => {
        const names = tables.map((t) => `'${t}'`).join(", ");
        const rel = `(SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                       WHERE n.nspname || '.' || c.relname IN (${names}))`;
        return (await pg.psql(
          `SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' ||
                  pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid IN ${rel}
           UNION ALL SELECT 'index ' || indexrelid::regclass || ' ' ||
                  pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid IN ${rel}
           UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger
                  WHERE tgrelid IN ${rel} AND NOT tgisinternal
           UNION ALL SELECT 'policy ' || polname FROM pg_policy WHERE polrelid IN ${rel}
           UNION ALL SELECT 'rule ' || rulename FROM pg_rewrite
                  WHERE ev_class IN ${rel} AND rulename <> '_RETURN'
           UNION ALL SELECT 'statistics ' || stxname FROM pg_statistic_ext
                  WHERE stxrelid IN ${rel}
           UNION ALL SELECT 'table ' || oid::regclass || ' rls=' || relrowsecurity ||
                  ' acl=' || coalesce(relacl::text, '-') || ' comment=' ||
                  coalesce(obj_description(oid, 'pg_class'), '-') FROM pg_class
                  WHERE oid IN ${rel}
           UNION ALL SELECT 'partition ' || inhrelid::regclass || ' of ' ||
                  inhparent::regclass FROM pg_inherits WHERE inhrelid IN ${rel}
           ORDER BY 1`,
          { db },
        )).trim().split("\n");
      };
      const source = await snapshotDatabase(pg, "shop");

      await t.step(
        "pg_restore -L restores the chosen tables with keys, FK, sequences and trigger",
        async () => {
          const tables = ["shop.customers", "shop.orders", "shop.events"];
          const sel = await restoreInto("shop_copy", tables, false);
          assert.deepEqual(sel.notes, [
            'restoring function audit.touch() too: trigger "orders_touch" of shop.orders calls ' +
            "it; it must not exist in the target yet",
          ]);
          assert.deepEqual(await relations("shop_copy"), [
            "shop.customers r",
            "shop.customers_email_key i",
            "shop.customers_id_seq S",
            "shop.customers_pkey i",
            "shop.events p",
            "shop.events_2024 r",
            "shop.events_2024_kind_idx i",
            "shop.events_2024_pkey i",
            "shop.events_2025 r",
            "shop.events_2025_kind_idx i",
            "shop.events_2025_pkey i",
            "shop.events_kind I",
            "shop.events_pkey I",
            "shop.orders r",
            "shop.orders_customer_idx i",
            "shop.orders_id_seq S",
            "shop.orders_pkey i",
          ]);
          const all = [...tables, "shop.events_2024", "shop.events_2025"];
          const sourceFacts = await facts("shop", all);
          for (
            const fact of [
              "constraint shop.orders orders_customer_fk FOREIGN KEY",
              "index shop.orders_customer_idx",
              "trigger orders_touch",
              "policy orders_visible",
              "rule orders_keep",
              "statistics orders_stats",
              "partition shop.events_2024 of shop.events",
              "table shop.orders rls=true acl={postgres=arwdDxt/postgres,shop_reader=r/postgres}",
              "table shop.customers rls=false acl=- comment=People who buy",
            ]
          ) assert.ok(sourceFacts.some((f) => f.startsWith(fact)), `the source has ${fact}`);
          assert.deepEqual(await facts("shop_copy", all), sourceFacts);
          const copy = await snapshotDatabase(pg, "shop_copy");
          const pick = <T>(r: Record<string, T>, keys: string[]) =>
            Object.fromEntries(keys.map((k) => [k, r[k]]));
          assert.deepEqual(
            copy.tables,
            pick(source.tables, [
              "shop.customers",
              "shop.events_2024",
              "shop.events_2025",
              "shop.orders",
            ]),
          );
          assert.equal(copy.tables["shop.orders"].rows, 50);
          assert.deepEqual(
            copy.sequences,
            pick(source.sequences, ["shop.customers_id_seq", "shop.orders_id_seq"]),
          );
          assert.equal(copy.sequences["shop.customers_id_seq"], "40/true");
          // Only the trigger function came along; the view and the other tables did not.
          assert.equal(
            (await pg.psql(
              "SELECT string_agg(p.oid::regprocedure::text, ',') FROM pg_proc p " +
                "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname IN ('shop', 'audit')",
              { db: "shop_copy" },
            )).trim(),
            "audit.touch()",
          );
          // The trigger works and the identity continues where the source stopped.
          assert.equal(
            (await pg.psql(
              "INSERT INTO shop.orders (customer_id, total) VALUES (1, 2) RETURNING id, touched",
              { db: "shop_copy" },
            )).trim(),
            "51|yes",
          );
        },
      );

      await t.step(
        "pg_restore -L from a pipe restores one table without its foreign key",
        async () => {
          await restoreInto("orders_only", ["shop.orders"], true);
          assert.deepEqual(await relations("orders_only"), [
            "shop.orders r",
            "shop.orders_customer_idx i",
            "shop.orders_id_seq S",
            "shop.orders_pkey i",
          ]);
          const expected = (await facts("shop", ["shop.orders"]))
            .filter((f) => !f.includes("orders_customer_fk"));
          assert.deepEqual(await facts("orders_only", ["shop.orders"]), expected);
          const copy = await snapshotDatabase(pg, "orders_only");
          assert.deepEqual(copy.tables, { "shop.orders": source.tables["shop.orders"] });
          assert.deepEqual(copy.sequences, {
            "shop.orders_id_seq": source.sequences["shop.orders_id_seq"],
          });
        },
      );

      await t.step("a target that has the trigger function takes the list without it", async () => {
        const sel = selectForTables(tocs.shop, { tables: ["shop.orders"], schemas: [] });
        await pg.createDatabase("has_function");
        await pg.psql(
          "CREATE SCHEMA shop; CREATE SCHEMA audit; CREATE FUNCTION audit.touch() RETURNS " +
            "trigger LANGUAGE plpgsql AS $$ BEGIN NEW.touched := 'mine'; RETURN NEW; END $$;",
          { db: "has_function" },
        );
        const list = `${dir}/has_function.list`;
        const args = ["--exit-on-error", "--single-transaction", "--use-list", list];
        const target = ["--dbname", conninfoDbname("has_function"), paths.shop];
        // As chosen, the restore would create the function a second time, and fails.
        await Deno.writeTextFile(list, tocListFile(tocs.shop, sel.dumpIds));
        await assert.rejects(
          pgRestore(pg, [...args, ...target]),
          /function "touch" already exists/,
        );
        const without = new Set(sel.dumpIds);
        for (const f of sel.functions) without.delete(f.dumpId);
        await Deno.writeTextFile(list, tocListFile(tocs.shop, without));
        await pgRestore(pg, [...args, ...target]);
        assert.equal(
          (await pg.psql(
            "INSERT INTO shop.orders (customer_id, total) VALUES (1, 2) RETURNING touched",
            { db: "has_function" },
          )).trim(),
          "mine",
        );
      });
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
});
