/**
 * Tests of the integration-test harness itself: throwaway servers start and always go away,
 * the fixtures load, snapshots are stable and equal across servers, and every kind of
 * difference makes assertSameSnapshot throw (so a round-trip test can actually fail).
 */
import { run } from "../lib/process/run.ts";
import {
  assertSameSnapshot,
  type DbSnapshot,
  diffSnapshots,
  snapshotDatabase,
  snapshotGlobals,
} from "./helpers/compare.ts";
import { cleanEnv, type PgServer, withPg, withTwoPg } from "./helpers/pg_server.ts";
import { exists } from "./helpers/cli.ts";

const AWKWARD_DB = 'Ärger "db" 1';
const ORDER_LINES = '"Sales ""Ünïcode"" Dept"."Order ""Lines"""';

// ---------------------------------------------------------------------------------------------
// Small assertion helpers (no @std available offline)
// ---------------------------------------------------------------------------------------------

function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new Error(`assertion failed: ${message}`);
}

function assertEquals(actual: unknown, expected: unknown, what: string): void {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`assertion failed: ${what}: expected ${e}, got ${a}`);
}

/** Runs `fn`, requires it to throw, and returns the error message. */
function assertThrowsMessage(fn: () => void, what: string): string {
  try {
    fn();
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  }
  throw new Error(`assertion failed: ${what} did not throw`);
}

async function assertRejectsMessage(fn: () => Promise<unknown>, what: string): Promise<string> {
  try {
    await fn();
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  }
  throw new Error(`assertion failed: ${what} did not reject`);
}

function assertIncludes(text: string, part: string, what: string): void {
  if (!text.includes(part)) {
    throw new Error(`assertion failed: ${what}: ${JSON.stringify(part)} not in:\n${text}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

async function loadAwkward(pg: PgServer, db: string): Promise<void> {
  await pg.psql(await Deno.readTextFile(new URL("./fixtures/roles.sql", import.meta.url)));
  await pg.createDatabase(db);
  const sql = await Deno.readTextFile(new URL("./fixtures/awkward.sql", import.meta.url));
  await pg.psql(sql, { db });
}

/** Runs psql over TCP as `user` with `password` (SCRAM), returning trimmed output. */
async function psqlTcp(pg: PgServer, user: string, password: string, sql: string) {
  const out = await run(`${pg.binDir}/psql`, ["-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql], {
    describe: `psql over TCP as ${user}`,
    env: cleanEnv(pg.tcpEnv(user, password)),
    clearEnv: true,
  });
  return out.stdout.trim();
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

Deno.test("pg_server: starts, answers over socket and TCP, cleans up on stop", async () => {
  let baseDir = "";
  await withPg(async (pg) => {
    baseDir = pg.baseDir;
    assert(await exists(pg.dataDir), "data dir exists while running");
    assert(pg.major >= 13, `major version ${pg.major}`);
    assert(pg.version.startsWith(`${pg.major}.`), `version ${pg.version}`);
    assert(pg.port > 0 && pg.port !== 5432, `port ${pg.port}`);
    assertEquals(pg.env(), {
      PGHOST: pg.socketDir,
      PGPORT: String(pg.port),
      PGUSER: "postgres",
      PGDATABASE: "postgres",
    }, "env()");
    assertEquals(
      (await pg.psql("SELECT current_user, current_setting('listen_addresses')")).trim(),
      "postgres|127.0.0.1",
      "psql over the socket",
    );
    // A SQL error must surface as a rejection, not as output.
    const msg = await assertRejectsMessage(() => pg.psql("SELECT no_such_column"), "bad SQL");
    assertIncludes(msg, "no_such_column", "psql error message");

    // SCRAM password login over TCP.
    await pg.psql(await Deno.readTextFile(new URL("./fixtures/roles.sql", import.meta.url)));
    assertEquals(
      await psqlTcp(pg, "alice", "alice-secret-pw", "SELECT current_user"),
      "alice",
      "TCP login",
    );
    const denied = await assertRejectsMessage(
      () => psqlTcp(pg, "alice", "wrong", "SELECT 1"),
      "TCP login with a wrong password",
    );
    assertIncludes(denied, "password authentication failed", "wrong password error");

    await pg.stop();
    assert(!(await exists(baseDir)), "temp dir removed by stop()");
    await pg.stop(); // idempotent
  });
  assert(baseDir !== "" && !(await exists(baseDir)), "temp dir still gone after withPg");
});

Deno.test("pg_server: withPg removes the server when the body throws", async () => {
  let baseDir = "";
  const msg = await assertRejectsMessage(
    () =>
      withPg(async (pg) => {
        baseDir = pg.baseDir;
        await pg.psql("SELECT 1");
        throw new Error("boom from the test body");
      }),
    "withPg with a throwing body",
  );
  assertEquals(msg, "boom from the test body", "the body's error is passed through");
  assert(baseDir !== "", "body ran");
  assert(!(await exists(baseDir)), `temp dir ${baseDir} removed`);
});

Deno.test("compare: assertSameSnapshot reports each kind of difference", () => {
  const base: DbSnapshot = {
    schema: "CREATE TABLE a (x int);\n\nCREATE TABLE b (y int);\n",
    tables: { "app.a": { rows: 1, md5: "aaa" }, "app.b": { rows: 2, md5: "bbb" } },
    sequences: { "app.s": "5/true" },
    largeObjects: ["1:x", "2:y"],
    largeObjectMeta: {},
    matviews: { "app.m": { populated: false } },
  };
  const copy = structuredClone(base);
  assertSameSnapshot(copy, base, "identical");
  assertEquals(diffSnapshots(copy, base), [], "no differences");

  const changed: DbSnapshot = {
    ...structuredClone(base),
    schema: "CREATE TABLE a (x bigint);\n\nCREATE TABLE b (y int);\n",
    tables: { "app.a": { rows: 1, md5: "zzz" }, '"Odd ""T"""': { rows: 0, md5: "" } },
    sequences: { "app.s": "5/false" },
    largeObjects: ["1:x", "2:CHANGED"],
  };
  const msg = assertThrowsMessage(
    () => assertSameSnapshot(changed, base, "synthetic"),
    "assertSameSnapshot on different snapshots",
  );
  for (
    const part of [
      "synthetic: snapshots differ (6 difference(s)",
      "- CREATE TABLE a (x int);",
      "+ CREATE TABLE a (x bigint);",
      'tables[app.a].md5: expected "aaa", got "zzz"',
      "tables[app.b]: missing",
      'tables["Odd ""T"""]: unexpected',
      'sequences[app.s]: expected "5/true", got "5/false"',
      '- "2:y"',
      '+ "2:CHANGED"',
    ]
  ) assertIncludes(msg, part, "synthetic diff");
});

Deno.test("harness: awkward fixture round-trips between two servers; changes are detected", async (t) => {
  await withTwoPg(async (a, b) => {
    await t.step("load roles.sql + awkward.sql on both servers", async () => {
      await Promise.all([loadAwkward(a, AWKWARD_DB), loadAwkward(b, AWKWARD_DB)]);
    });

    const snapA: DbSnapshot = await snapshotDatabase(a, AWKWARD_DB);

    await t.step("the snapshot sees the whole dataset", () => {
      const rows = Object.fromEntries(Object.entries(snapA.tables).map(([k, v]) => [k, v.rows]));
      assertEquals(rows, {
        '"Sales ""Ünïcode"" Dept"."Events Default"': 469,
        '"Sales ""Ünïcode"" Dept"."Order ""Lines"""': 2000,
        '"Sales ""Ünïcode"" Dept".events_2023': 243,
        '"Sales ""Ünïcode"" Dept".events_2024': 244,
        '"Sales ""Ünïcode"" Dept".events_2025': 244,
        'app."Bytes & Blöbs"': 23,
        'app."Scratch Cache"': 100,
        "app.empty_table": 0,
        "app.legacy_dropped_col": 250,
        "app.orders": 1500,
        'public."MixedCase Customers"': 1000,
      }, "row counts (leaf partitions only, no partitioned parent)");
      assertEquals(snapA.sequences, {
        '"Sales ""Ünïcode"" Dept"."Order ""Lines""_line_id_seq"': "2000/true",
        'app."Ticket Seq"': "7/false",
        "app.invoice_no_seq": "1041/true",
        "app.orders_order_no_seq": "1500/true",
        'public."MixedCase Customers_id_seq"': "1000/true",
      }, "sequences");
      assertEquals(snapA.largeObjects.map((lo) => lo.split(":")[0]), [
        "424201",
        "424202",
        "424203",
      ], "large object OIDs");
      assertEquals(snapA.largeObjectMeta["424201"].owner, "app_owner", "large object owner");
      assertIncludes(snapA.largeObjectMeta["424202"].comment ?? "", "Eight KB", "LO comment");
      assertEquals(snapA.matviews['"Sales ""Ünïcode"" Dept"."Stale Totals"'], {
        populated: false,
      }, "unpopulated matview");
      assertEquals(snapA.matviews["app.order_totals"].rows, 5, "populated matview rows");
      assert(!snapA.schema.includes("\\restrict"), "\\restrict line stripped");
      assert(!snapA.schema.includes("-- Dumped from"), "version line stripped");
      assertIncludes(snapA.schema, 'CREATE TABLE "Sales ""Ünïcode"" Dept"', "schema has tables");
    });

    await t.step("a second snapshot of the same database is equal", async () => {
      assertSameSnapshot(await snapshotDatabase(a, AWKWARD_DB), snapA, "A vs A");
    });

    await t.step("the same fixture on another server gives an equal snapshot", async () => {
      assertSameSnapshot(await snapshotDatabase(b, AWKWARD_DB), snapA, "B vs A");
      assertSameSnapshot(await snapshotGlobals(b), await snapshotGlobals(a), "globals B vs A");
    });

    await t.step("one changed row is reported, naming its table", async () => {
      await b.psql(`UPDATE ${ORDER_LINES} SET qty = qty + 1 WHERE line_id = 7`, {
        db: AWKWARD_DB,
      });
      const snapB = await snapshotDatabase(b, AWKWARD_DB);
      const msg = assertThrowsMessage(
        () => assertSameSnapshot(snapB, snapA, "after UPDATE"),
        "assertSameSnapshot after an UPDATE",
      );
      assertIncludes(msg, `tables[${ORDER_LINES}].md5: expected`, "diff names the table");
      assertEquals(diffSnapshots(snapB, snapA).length, 1, "exactly one difference");
      // Undo, and the snapshots agree again.
      await b.psql(`UPDATE ${ORDER_LINES} SET qty = qty - 1 WHERE line_id = 7`, {
        db: AWKWARD_DB,
      });
      assertSameSnapshot(await snapshotDatabase(b, AWKWARD_DB), snapA, "after undoing UPDATE");
    });

    await t.step("a schema change is reported as a line diff", async () => {
      await b.psql("COMMENT ON TABLE app.empty_table IS 'changed'", { db: AWKWARD_DB });
      const snapB = await snapshotDatabase(b, AWKWARD_DB);
      const msg = assertThrowsMessage(
        () => assertSameSnapshot(snapB, snapA, "after COMMENT"),
        "assertSameSnapshot after a COMMENT",
      );
      assertIncludes(msg, "schema: text differs:", "diff names the schema");
      assertIncludes(msg, "+ COMMENT ON TABLE app.empty_table IS 'changed';", "added line");
      assertEquals(diffSnapshots(snapB, snapA).length, 1, "exactly one difference");
      await b.psql("COMMENT ON TABLE app.empty_table IS NULL", { db: AWKWARD_DB });
      assertSameSnapshot(await snapshotDatabase(b, AWKWARD_DB), snapA, "after undoing COMMENT");
    });

    await t.step("a changed role attribute or membership is reported", async () => {
      const globalsA = await snapshotGlobals(a);
      await b.psql('ALTER ROLE reporting CREATEDB; REVOKE "Read Only" FROM reporting;');
      const globalsB = await snapshotGlobals(b);
      const msg = assertThrowsMessage(
        () => assertSameSnapshot(globalsB, globalsA, "globals"),
        "assertSameSnapshot on changed globals",
      );
      assertIncludes(msg, "roles.reporting.rolcreatedb: expected false, got true", "attribute");
      assertIncludes(msg, "roles.reporting.memberOf: lists differ", "membership");
      assertIncludes(msg, '- "Read Only"', "lost membership");
      assertEquals(diffSnapshots(globalsB, globalsA).length, 2, "exactly two differences");
    });

    await t.step("a changed large object is reported", async () => {
      await b.psql("SELECT lo_put(424202, 100, '\\x00ff'::bytea)", { db: AWKWARD_DB });
      const snapB = await snapshotDatabase(b, AWKWARD_DB);
      const msg = assertThrowsMessage(
        () => assertSameSnapshot(snapB, snapA, "after lo_put"),
        "assertSameSnapshot after lo_put",
      );
      assertIncludes(msg, "largeObjects: lists differ", "diff names the large objects");
      assertIncludes(msg, '- "424202:', "diff shows the expected entry");
      assertIncludes(msg, '+ "424202:', "diff shows the actual entry");
      assertEquals(diffSnapshots(snapB, snapA).length, 1, "exactly one difference");
    });
  });
});
