/**
 * `restore single --table/--schema`, for both engines: only the chosen tables come back, with
 * their rows (per-table hashes equal the source's), indexes, constraints, triggers (and the
 * trigger function), sequences and partitions; foreign keys to tables left out are skipped with
 * a warning; existing tables are refused without --clean and replaced with it; unknown names
 * and --dry-run change nothing.
 */
import { strict as assert } from "node:assert";
import { assertSameSnapshot, type DbSnapshot, snapshotDatabase } from "./helpers/compare.ts";
import { type CliResult, dbbackup, pgEnv, summaryOf, tempRepo } from "./helpers/cli.ts";
import { type PgServer, quoteLiteral, withTwoPg } from "./helpers/pg_server.ts";

const ENGINES = ["pg_dump", "native"] as const;
const SOURCE_DB = "shop";

/**
 * Two schemas. app.customers (serial), app.orders (identity, FK to customers, a CHECK, an
 * index, a BEFORE INSERT trigger calling audit.touch()), a partitioned app.events with two
 * partitions, a small app.other (small enough that the native engine leaves its rows in
 * pg_dump's archive) and audit.log, which no step below chooses. Both sequences are ahead of
 * max(id), so "continues after the backup's value" and "after max(id)" differ.
 */
const SOURCE_SQL = `
CREATE SCHEMA app;
CREATE SCHEMA audit;
CREATE FUNCTION audit.touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.note := 'touched:' || coalesce(NEW.note, '');
  RETURN NEW;
END $$;
CREATE TABLE app.customers (
  id serial PRIMARY KEY,
  name text NOT NULL CONSTRAINT customers_name_key UNIQUE,
  email text
);
CREATE TABLE app.orders (
  id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  customer_id int NOT NULL CONSTRAINT orders_customer_fk REFERENCES app.customers (id),
  amount numeric(10, 2) NOT NULL CONSTRAINT orders_amount_check CHECK (amount >= 0),
  placed_at timestamptz NOT NULL DEFAULT now(),
  note text
);
CREATE INDEX orders_placed_idx ON app.orders (placed_at);
CREATE TRIGGER orders_touch BEFORE INSERT ON app.orders
  FOR EACH ROW EXECUTE FUNCTION audit.touch();
CREATE TABLE app.events (
  id bigint NOT NULL,
  at date NOT NULL,
  payload text,
  PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
CREATE TABLE app.events_2025 PARTITION OF app.events
  FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE app.events_2026 PARTITION OF app.events
  FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE app.other (x int, y int);
CREATE TABLE audit.log (id bigserial PRIMARY KEY, message text);

INSERT INTO app.customers (name, email)
  SELECT 'customer ' || g, 'c' || g || '@example.com' FROM generate_series(1, 2000) g;
SELECT setval('app.customers_id_seq', 2100);
INSERT INTO app.orders (customer_id, amount, placed_at, note)
  SELECT 1 + g % 2000, (g % 500) * 1.25,
         timestamptz '2026-01-01 00:00:00+00' + g * interval '7 minutes',
         'order ' || g || repeat(' x', g % 9)
  FROM generate_series(1, 5000) g;
DELETE FROM app.orders WHERE id > 4990;
INSERT INTO app.events
  SELECT g, date '2025-01-01' + g % 730, 'event ' || g || repeat('-', g % 13)
  FROM generate_series(1, 6000) g;
INSERT INTO app.other SELECT g, g * g FROM generate_series(1, 50) g;
INSERT INTO audit.log (message) SELECT 'log ' || g FROM generate_series(1, 300) g;
ANALYZE;
`;

/** Tables (and leaf partitions) of the source, as snapshotDatabase keys them. */
const CUSTOMERS = "app.customers";
const ORDERS = "app.orders";
const APP_TABLES = [
  "app.customers",
  "app.events_2025",
  "app.events_2026",
  "app.orders",
  "app.other",
];
/** The partitioned parent too, for catalog facts (it holds no rows of its own). */
const APP_RELATIONS = [...APP_TABLES, "app.events"].sort();

/** One value from a query, trimmed. */
async function q(pg: PgServer, sql: string, db = SOURCE_DB): Promise<string> {
  return (await pg.psql(sql, { db })).trim();
}

/** `schema.name:relkind` of every relation in the app and audit schemas, sorted. */
async function relations(pg: PgServer, db: string): Promise<string[]> {
  const out = await q(
    pg,
    `SELECT n.nspname || '.' || c.relname || ':' || c.relkind::text FROM pg_class c
       JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname IN ('app', 'audit')`,
    db,
  );
  return out === "" ? [] : out.split("\n").sort();
}

async function databaseExists(pg: PgServer, db: string): Promise<boolean> {
  const sql = `SELECT count(*) FROM pg_database WHERE datname = ${quoteLiteral(db)}`;
  return await q(pg, sql, "postgres") === "1";
}

/**
 * What a user means by "the table's schema", from the catalogs, one line per fact: columns
 * (type, NOT NULL, identity, default), constraints, indexes, user triggers, partition key and
 * bound. Each line starts with the table's name.
 */
async function tableFacts(pg: PgServer, db: string, tables: readonly string[]): Promise<string[]> {
  const names = tables.map(quoteLiteral).join(", ");
  const out = await q(
    pg,
    `WITH t AS (
       SELECT c.oid, n.nspname || '.' || c.relname AS name, c.relkind, c.relpartbound
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname || '.' || c.relname IN (${names}) AND c.relkind IN ('r', 'p')
     )
     SELECT coalesce(json_agg(f ORDER BY f COLLATE "C"), '[]') FROM (
       SELECT t.name || ' relkind ' || t.relkind::text FROM t
       UNION ALL
       SELECT t.name || ' column ' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
              || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
              || CASE a.attidentity WHEN 'a' THEN ' generated always as identity'
                                    WHEN 'd' THEN ' generated by default as identity'
                                    ELSE '' END
              || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
         FROM t JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped
         LEFT JOIN pg_attrdef d ON d.adrelid = t.oid AND d.adnum = a.attnum
       UNION ALL
       SELECT t.name || ' constraint ' || co.conname || ': ' || pg_get_constraintdef(co.oid)
         FROM t JOIN pg_constraint co ON co.conrelid = t.oid
       UNION ALL
       SELECT t.name || ' index ' || pg_get_indexdef(i.indexrelid)
         FROM t JOIN pg_index i ON i.indrelid = t.oid
       UNION ALL
       SELECT t.name || ' trigger ' || pg_get_triggerdef(tg.oid)
         FROM t JOIN pg_trigger tg ON tg.tgrelid = t.oid AND NOT tg.tgisinternal
       UNION ALL
       SELECT t.name || ' partition key ' || pg_get_partkeydef(t.oid) FROM t WHERE t.relkind = 'p'
       UNION ALL
       SELECT t.name || ' partition of ' || i.inhparent::regclass::text || ' '
              || pg_get_expr(t.relpartbound, t.oid)
         FROM t JOIN pg_inherits i ON i.inhrelid = t.oid
     ) AS x(f)`,
    db,
  );
  return JSON.parse(out);
}

/** The definition of audit.touch() and how many functions of that name exist. */
async function touchFunction(pg: PgServer, db: string): Promise<{ count: number; def: string }> {
  const [count, def] = (await q(
    pg,
    `SELECT count(*), coalesce(max(pg_get_functiondef(p.oid)), '') FROM pg_proc p
       JOIN pg_namespace n ON n.oid = p.pronamespace
      WHERE n.nspname = 'audit' AND p.proname = 'touch'`,
    db,
  )).split("|");
  return { count: Number(count), def: def ?? "" };
}

/** The entries of `record` for `keys` (all of them must be there). */
function pick<T>(record: Record<string, T>, keys: readonly string[]): Record<string, T> {
  const out: Record<string, T> = {};
  for (const k of keys) {
    assert.ok(k in record, `${k} is in the source snapshot`);
    out[k] = record[k];
  }
  return out;
}

/** `last_value` of a sequence in a snapshot ("2100/true" -> 2100). */
function seqValue(snapshot: DbSnapshot, name: string): number {
  return Number(snapshot.sequences[name].split("/")[0]);
}

/**
 * Asserts that database `db` on `pg` holds exactly `tables` of the source's app/audit tables,
 * with the source's row hashes, and the source's values for `sequences` (and no others).
 */
async function assertSameTables(
  pg: PgServer,
  db: string,
  source: DbSnapshot,
  tables: readonly string[],
  sequences: readonly string[],
): Promise<void> {
  const restored = await snapshotDatabase(pg, db);
  assert.deepEqual(Object.keys(restored.tables).sort(), [...tables].sort(), "restored tables");
  assert.deepEqual(restored.tables, pick(source.tables, tables), "per-table row hashes");
  assert.deepEqual(
    restored.sequences,
    pick(source.sequences, sequences),
    "sequence values (last_value/is_called)",
  );
}

for (const engine of ENGINES) {
  Deno.test(`restore single --table/--schema (${engine}) restores only the chosen tables with their rows and schema`, async (t) => {
    await withTwoPg(async (src, dst) => {
      const repo = await tempRepo();
      try {
        await src.createDatabase(SOURCE_DB);
        await src.psql(SOURCE_SQL, { db: SOURCE_DB });
        const source = await snapshotDatabase(src, SOURCE_DB);
        assert.deepEqual(Object.keys(source.tables).sort(), [...APP_TABLES, "audit.log"].sort());
        const sourceFacts = await tableFacts(src, SOURCE_DB, APP_RELATIONS);
        const sourceTouch = await touchFunction(src, SOURCE_DB);
        assert.equal(sourceTouch.count, 1);

        const backup = await dbbackup([
          "--repo",
          repo,
          "--json",
          "backup",
          "single",
          SOURCE_DB,
          "--engine",
          engine,
          ...(engine === "native" ? ["--chunk-size", "16k"] : []),
        ], { env: pgEnv(src) });
        assert.equal(backup.code, 0, backup.stderr);
        const id: string = summaryOf(backup).setId;
        if (engine === "native") {
          const manifest = JSON.parse(await Deno.readTextFile(`${repo}/${id}/manifest.json`));
          const chunks = new Map<string, number>(
            manifest.databases[0].native.tables.map((
              x: { schema: string; name: string; chunks: unknown[] },
            ) => [`${x.schema}.${x.name}`, x.chunks.length]),
          );
          for (const name of [CUSTOMERS, ORDERS, "app.events_2025", "app.events_2026"]) {
            assert.ok(
              (chunks.get(name) ?? 0) > 1,
              `${name} is split into chunks: ${chunks.get(name)}`,
            );
          }
          assert.ok(!chunks.has("app.other"), "app.other is small: its rows stay in the archive");
        }

        /** `dbbackup --repo R [globals] restore single ID args` against `pg`. */
        const restore = (pg: PgServer, args: string[], globals: string[] = []) =>
          dbbackup(["--repo", repo, ...globals, "restore", "single", id, ...args], {
            env: pgEnv(pg),
          });
        const noFalseWarnings = (r: CliResult) => {
          // Chunked tables have no TABLE DATA in the native schema archive, but they do have data.
          assert.doesNotMatch(r.stderr, /has no data in this backup/, r.stderr);
        };

        await t.step(
          "--dry-run prints the plan with the chosen tables and changes nothing",
          async () => {
            const dry = await restore(
              dst,
              ["--table", ORDERS, "--table", CUSTOMERS, "--target", "t_dry", "--create"],
              ["--dry-run"],
            );
            assert.equal(dry.code, 0, dry.stderr);
            assert.match(dry.stdout, /dry run: nothing will be changed/);
            assert.match(dry.stdout, /"shop" -> "t_dry": create/);
            const line = dry.stdout.split("\n").find((l) => l.trim().startsWith("tables:"));
            assert.ok(line, `the plan lists the tables:\n${dry.stdout}`);
            assert.deepEqual(
              line.trim().slice("tables:".length).split(",").map((s) => s.trim()).sort(),
              [CUSTOMERS, ORDERS],
            );
            assert.equal(await databaseExists(dst, "t_dry"), false, "no database was created");

            // Into the source with --clean: the plan says it would replace, nothing is replaced.
            const dryClean = await restore(src, ["--table", ORDERS, "--clean"], [
              "--dry-run",
              "--yes",
            ]);
            assert.equal(dryClean.code, 0, dryClean.stderr);
            assert.match(dryClean.stdout, /"shop" -> "shop": replace-tables/);
            assert.match(dryClean.stdout, /tables: app\.orders\n/);
            assertSameSnapshot(
              await snapshotDatabase(src, SOURCE_DB),
              source,
              "source after dry run",
            );
          },
        );

        await t.step(
          "an unknown --table exits 2 with a suggestion and creates nothing",
          async () => {
            const r = await restore(dst, ["--table", "ordrs", "--target", "t_unknown", "--create"]);
            assert.equal(r.code, 2, r.stdout + r.stderr);
            assert.match(r.stderr, /no table "ordrs"/);
            assert.match(r.stderr, /did you mean app\.orders\b/);
            assert.equal(await databaseExists(dst, "t_unknown"), false);
          },
        );

        await t.step("--table is not an option of restore cluster", async () => {
          const r = await dbbackup(["--repo", repo, "restore", "cluster", id, "--table", ORDERS], {
            env: pgEnv(dst),
          });
          assert.equal(r.code, 2, r.stdout + r.stderr);
          assert.match(r.stderr, /unknown option '--table'/);
          assert.equal(await databaseExists(dst, SOURCE_DB), false);
        });

        await t.step(
          "--table orders --table customers brings both with FK, trigger and sequences",
          async () => {
            const db = "t1";
            const r = await restore(dst, [
              "--table",
              ORDERS,
              "--table",
              CUSTOMERS,
              "--target",
              db,
              "--create",
            ]);
            assert.equal(r.code, 0, r.stderr);
            assert.doesNotMatch(r.stderr, /skipped/, "nothing is skipped: both FK ends are chosen");
            noFalseWarnings(r);
            assert.deepEqual(await relations(dst, db), [
              "app.customers:r",
              "app.customers_id_seq:S",
              "app.customers_name_key:i",
              "app.customers_pkey:i",
              "app.orders:r",
              "app.orders_id_seq:S",
              "app.orders_pkey:i",
              "app.orders_placed_idx:i",
            ]);
            await assertSameTables(dst, db, source, [CUSTOMERS, ORDERS], [
              "app.customers_id_seq",
              "app.orders_id_seq",
            ]);
            assert.deepEqual(
              await tableFacts(dst, db, [CUSTOMERS, ORDERS]),
              await tableFacts(src, SOURCE_DB, [CUSTOMERS, ORDERS]),
              "columns, constraints (the FK too), indexes and the trigger",
            );
            assert.deepEqual(await touchFunction(dst, db), sourceTouch, "audit.touch() came along");

            // The trigger fires, and both sequences continue after the backup's values.
            const next = await q(
              dst,
              `INSERT INTO app.customers (name) VALUES ('new customer') RETURNING id`,
              db,
            );
            assert.equal(Number(next), seqValue(source, "app.customers_id_seq") + 1);
            assert.equal(Number(next), 2101);
            const inserted = await q(
              dst,
              `INSERT INTO app.orders (customer_id, amount, note) VALUES (1, 2, 'probe')
             RETURNING id || ' ' || note`,
              db,
            );
            assert.equal(inserted, `${seqValue(source, "app.orders_id_seq") + 1} touched:probe`);
            assert.equal(inserted, "5001 touched:probe");
            // The foreign key is enforced.
            await assert.rejects(
              dst.psql("INSERT INTO app.orders (customer_id, amount) VALUES (-1, 1)", { db }),
              /orders_customer_fk/,
            );
          },
        );

        await t.step("--table orders alone skips the FK to customers with a warning", async () => {
          const db = "t2";
          const r = await restore(dst, ["--table", ORDERS, "--create", "--target", db]);
          assert.equal(r.code, 0, r.stderr);
          assert.match(
            r.stderr,
            /warning: skipped foreign key "orders_customer_fk" of app\.orders: it references app\.customers/,
          );
          noFalseWarnings(r);
          assert.deepEqual(await relations(dst, db), [
            "app.orders:r",
            "app.orders_id_seq:S",
            "app.orders_pkey:i",
            "app.orders_placed_idx:i",
          ]);
          await assertSameTables(dst, db, source, [ORDERS], ["app.orders_id_seq"]);
          const expected = (await tableFacts(src, SOURCE_DB, [ORDERS])).filter((f) =>
            !f.includes("orders_customer_fk")
          );
          assert.deepEqual(await tableFacts(dst, db, [ORDERS]), expected, "all but the FK");
          // No FK: an order for a customer that does not exist goes in; the trigger fires.
          assert.equal(
            await q(
              dst,
              `INSERT INTO app.orders (customer_id, amount, note) VALUES (-1, 1, 'p')
               RETURNING id || ' ' || note`,
              db,
            ),
            "5001 touched:p",
          );
        });

        await t.step(
          "--schema app brings every app table, both partitions, no audit table",
          async () => {
            const db = "t3";
            const r = await restore(dst, ["--schema", "app", "--target", db, "--create"]);
            assert.equal(r.code, 0, r.stderr);
            assert.doesNotMatch(r.stderr, /skipped/);
            noFalseWarnings(r);
            const rels = await relations(dst, db);
            assert.ok(rels.includes("app.events:p"), rels.join(" "));
            assert.deepEqual(rels.filter((x) => x.startsWith("audit.")), [], "audit.log stays out");
            await assertSameTables(dst, db, source, APP_TABLES, [
              "app.customers_id_seq",
              "app.orders_id_seq",
            ]);
            assert.deepEqual(await tableFacts(dst, db, APP_RELATIONS), sourceFacts);
            assert.equal(
              await q(dst, "SELECT count(*) FROM app.events WHERE at >= '2026-01-01'", db),
              await q(src, "SELECT count(*) FROM app.events_2026"),
              "rows reach the 2026 partition through the parent",
            );
            assert.deepEqual(await touchFunction(dst, db), sourceTouch);
          },
        );

        await t.step(
          "into the source: refused without --clean; --clean --yes puts app.orders back as backed up",
          async () => {
            const refused = await restore(src, ["--table", ORDERS]);
            assert.equal(refused.code, 1, refused.stdout + refused.stderr);
            assert.match(refused.stderr, /already has app\.orders; add --clean/);
            assertSameSnapshot(
              await snapshotDatabase(src, SOURCE_DB),
              source,
              "source after refusal",
            );

            await src.psql("UPDATE app.orders SET note = 'damaged' WHERE id % 3 = 0", {
              db: SOURCE_DB,
            });
            const damaged = await snapshotDatabase(src, SOURCE_DB);
            assert.notDeepEqual(damaged.tables[ORDERS], source.tables[ORDERS]);

            const unconfirmed = await restore(src, ["--table", ORDERS, "--clean"]);
            assert.equal(unconfirmed.code, 2, unconfirmed.stdout + unconfirmed.stderr);
            assert.match(unconfirmed.stderr, /add --yes/);
            assert.deepEqual((await snapshotDatabase(src, SOURCE_DB)).tables, damaged.tables);

            const r = await restore(src, ["--table", ORDERS, "--clean"], ["--yes"]);
            assert.equal(r.code, 0, r.stderr);
            noFalseWarnings(r);
            const after = await snapshotDatabase(src, SOURCE_DB);
            assert.deepEqual(
              after.tables,
              source.tables,
              "orders as backed up, the others untouched",
            );
            assert.deepEqual(after.sequences, source.sequences);
            assert.deepEqual(await touchFunction(src, SOURCE_DB), sourceTouch, "audit.touch once");
            // Only app.orders is chosen, but app.customers is right there in the target: its
            // foreign key to it is restored too, and everything is as it was.
            assert.doesNotMatch(r.stderr, /skipped foreign key/);
            assert.deepEqual(
              await tableFacts(src, SOURCE_DB, APP_RELATIONS),
              sourceFacts,
              "app.orders has its indexes, constraints (the FK too) and trigger again",
            );
            assert.equal(
              await q(
                src,
                `INSERT INTO app.orders (customer_id, amount, note) VALUES (7, 3, 'again')
               RETURNING id || ' ' || note`,
              ),
              "5001 touched:again",
              "the identity continues after the backup's value and the trigger fires",
            );
          },
        );

        await t.step(
          "--clean of app.events is refused while the target has a partition the backup lacks",
          async () => {
            await src.psql(
              `CREATE TABLE app.events_2027 PARTITION OF app.events
                 FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
               INSERT INTO app.events VALUES (9001, '2027-03-01', 'after the backup');`,
              { db: SOURCE_DB },
            );
            const before = await snapshotDatabase(src, SOURCE_DB);
            const refused = await restore(src, ["--table", "app.events", "--clean"], ["--yes"]);
            assert.equal(refused.code, 1, refused.stdout + refused.stderr);
            assert.match(refused.stderr, /--clean would drop app\.events_2027 .*DETACH PARTITION/);
            assertSameSnapshot(await snapshotDatabase(src, SOURCE_DB), before, "nothing changed");

            // Detached, it is no longer the restore's to drop: it keeps its row, and the
            // damaged app.events comes back as backed up.
            await src.psql(
              `ALTER TABLE app.events DETACH PARTITION app.events_2027;
               UPDATE app.events SET payload = 'damaged' WHERE id % 2 = 0;`,
              { db: SOURCE_DB },
            );
            const r = await restore(src, ["--table", "app.events", "--clean"], ["--yes"]);
            assert.equal(r.code, 0, r.stderr);
            assert.deepEqual((await snapshotDatabase(src, SOURCE_DB)).tables, before.tables);
            assert.equal(
              await q(src, "SELECT payload FROM app.events_2027", SOURCE_DB),
              "after the backup",
            );
          },
        );

        await t.step(
          "--clean of a partition alone is refused: it would take the partition out of app.events",
          async () => {
            const before = await snapshotDatabase(src, SOURCE_DB);
            const r = await restore(src, ["--table", "app.events_2025", "--clean"], ["--yes"]);
            assert.equal(r.code, 1, r.stdout + r.stderr);
            assert.match(r.stderr, /--clean would take app\.events_2025 out of app\.events /);
            assertSameSnapshot(await snapshotDatabase(src, SOURCE_DB), before, "nothing changed");
            assert.equal(
              await q(
                src,
                "SELECT count(*) FROM pg_inherits WHERE inhparent = 'app.events'::regclass",
              ),
              "2",
            );
          },
        );
      } finally {
        await Deno.remove(repo, { recursive: true });
      }
    });
  });
}

for (const engine of ENGINES) {
  Deno.test(`restore --table --clean (${engine}) that fails while loading leaves the target as it was`, async () => {
    await withTwoPg(async (a) => {
      const repo = await tempRepo();
      try {
        await a.createDatabase("stock");
        await a.psql(
          `CREATE DOMAIN qty AS int CHECK (VALUE > 0);
           CREATE TABLE items (id int PRIMARY KEY, q qty NOT NULL, label text);
           CREATE INDEX items_label ON items (label);
           INSERT INTO items SELECT g, 1 + g % 90, repeat(md5(g::text), 8)
             FROM generate_series(1, 5000) g;`,
          { db: "stock" },
        );
        const backup = await dbbackup([
          "--repo",
          repo,
          "--json",
          "backup",
          "single",
          "stock",
          "--engine",
          engine,
          ...(engine === "native" ? ["--chunk-size", "128k"] : []),
        ], { env: pgEnv(a) });
        assert.equal(backup.code, 0, backup.stderr);
        const id = summaryOf(backup).setId;
        // After the backup: one more row, and a stricter domain that the backed-up rows with
        // q >= 50 no longer pass, so the load fails after the table was dropped and recreated.
        await a.psql(
          `INSERT INTO items VALUES (5001, 7, 'after the backup');
           ALTER DOMAIN qty ADD CONSTRAINT below_50 CHECK (VALUE < 50) NOT VALID;`,
          { db: "stock" },
        );
        const before = await snapshotDatabase(a, "stock");
        const r = await dbbackup(
          ["--repo", repo, "--yes", "restore", "single", id, "--table", "items", "--clean"],
          { env: pgEnv(a) },
        );
        assert.equal(r.code, 1, r.stderr);
        assert.match(r.stderr, /below_50/);
        assertSameSnapshot(await snapshotDatabase(a, "stock"), before, "target after the failure");
      } finally {
        await Deno.remove(repo, { recursive: true });
      }
    });
  });
}

Deno.test("restore --table keeps a trigger function the target has, whatever the case of its name", async () => {
  await withTwoPg(async (a) => {
    const repo = await tempRepo();
    try {
      await a.createDatabase("notes");
      await a.psql(
        `CREATE FUNCTION "Touch It"() RETURNS trigger LANGUAGE plpgsql
           AS $$BEGIN NEW.note := NEW.note || ' touched'; RETURN NEW; END$$;
         CREATE TABLE t (id int PRIMARY KEY, note text);
         CREATE TRIGGER touch BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION "Touch It"();
         INSERT INTO t VALUES (1, 'a'), (2, 'b');`,
        { db: "notes" },
      );
      const backup = await dbbackup(["--repo", repo, "--json", "backup", "single", "notes"], {
        env: pgEnv(a),
      });
      assert.equal(backup.code, 0, backup.stderr);
      const id = summaryOf(backup).setId;
      await a.psql("DROP TABLE t", { db: "notes" });
      const r = await dbbackup(["--repo", repo, "restore", "single", id, "--table", "t"], {
        env: pgEnv(a),
      });
      assert.equal(r.code, 0, r.stderr);
      assert.match(
        r.stderr,
        /kept 1 trigger function\(s\) the target already has: public\.Touch It\(\)/,
      );
      assert.equal(
        await a.psql("SELECT string_agg(note, ',' ORDER BY id) FROM t", { db: "notes" }),
        "a touched,b touched\n",
      );
      await a.psql("INSERT INTO t VALUES (3, 'c')", { db: "notes" });
      assert.equal(
        await a.psql("SELECT note FROM t WHERE id = 3", { db: "notes" }),
        "c touched\n",
        "the trigger fires",
      );
    } finally {
      await Deno.remove(repo, { recursive: true });
    }
  });
});

for (const engine of ENGINES) {
  Deno.test(`restore --table (${engine}) uses a sequence shared with a table the target keeps as it is`, async () => {
    await withTwoPg(async (a) => {
      const repo = await tempRepo();
      try {
        await a.createDatabase("ledger");
        await a.psql(
          `CREATE SEQUENCE entry_ids;
           CREATE TABLE credits (id bigint PRIMARY KEY DEFAULT nextval('entry_ids'), amount int);
           CREATE TABLE debits (id bigint PRIMARY KEY DEFAULT nextval('entry_ids'), amount int);
           ALTER SEQUENCE entry_ids OWNED BY credits.id;
           INSERT INTO credits (amount) SELECT g FROM generate_series(1, 3000) g;
           INSERT INTO debits (amount) SELECT -g FROM generate_series(1, 3000) g;`,
          { db: "ledger" },
        );
        const backup = await dbbackup([
          "--repo",
          repo,
          "--json",
          "backup",
          "single",
          "ledger",
          "--engine",
          engine,
          ...(engine === "native" ? ["--chunk-size", "16k"] : []),
        ], { env: pgEnv(a) });
        assert.equal(backup.code, 0, backup.stderr);
        const id = summaryOf(backup).setId;
        const source = await snapshotDatabase(a, "ledger");
        // Later: credits goes on using the sequence, debits is lost.
        await a.psql("INSERT INTO credits (amount) VALUES (99); DROP TABLE debits;", {
          db: "ledger",
        });
        const value = await a.psql("SELECT last_value FROM entry_ids", { db: "ledger" });
        const r = await dbbackup(["--repo", repo, "restore", "single", id, "--table", "debits"], {
          env: pgEnv(a),
        });
        assert.equal(r.code, 0, r.stderr);
        assert.match(
          r.stderr,
          /kept 1 sequence\(s\) the target already has, with their values: public\.entry_ids/,
        );
        assert.equal(
          await a.psql("SELECT last_value FROM entry_ids", { db: "ledger" }),
          value,
          "the sequence value is not turned back",
        );
        const after = await snapshotDatabase(a, "ledger");
        assert.deepEqual(after.tables["public.debits"], source.tables["public.debits"]);
        // New debits take ids after everything handed out so far.
        const next = Number(
          await a.psql("INSERT INTO debits (amount) VALUES (-1) RETURNING id", {
            db: "ledger",
          }),
        );
        assert.equal(next, Number(value) + 1);
      } finally {
        await Deno.remove(repo, { recursive: true });
      }
    });
  });
}
