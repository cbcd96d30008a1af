/**
 * Round trips through both engines: back up from one server, restore into another,
 * and compare schema dumps, per-table row hashes, sequences, large objects and roles.
 */
import { strict as assert } from "node:assert";
import { assertSameSnapshot, snapshotDatabase, snapshotGlobals } from "./helpers/compare.ts";
import {
  dbbackup,
  loadAwkward,
  loadWide,
  pgEnv,
  setDirs,
  summaryOf,
  tempRepo,
} from "./helpers/cli.ts";
import {
  type PgServer,
  queryValue as q,
  quoteLiteral,
  withPg,
  withTwoPg,
} from "./helpers/pg_server.ts";

const AWKWARD_DB = 'Ärger "db" 1';
const ENGINES = ["pg_dump", "native"] as const;

async function readManifest(repo: string, id: string) {
  return JSON.parse(await Deno.readTextFile(`${repo}/${id}/manifest.json`));
}

async function dbSettings(pg: PgServer, db: string): Promise<string> {
  return await q(
    pg,
    `SELECT coalesce(array_to_string(s.setconfig, ','), '') FROM pg_database d
       LEFT JOIN pg_db_role_setting s ON s.setdatabase = d.oid AND s.setrole = 0
      WHERE d.datname = ${quoteLiteral(db)}`,
  );
}

for (const engine of ENGINES) {
  Deno.test(`backup single (${engine}) restores into another server with identical schema and rows`, async (t) => {
    await withTwoPg(async (a, b) => {
      const repo = await tempRepo();
      try {
        await loadAwkward(a, AWKWARD_DB);
        const before = await snapshotDatabase(a, AWKWARD_DB);
        assert.ok(Object.keys(before.tables).length >= 8, "the dataset has many tables");
        assert.ok(before.largeObjects.length >= 3, "the dataset has large objects");

        const backup = await dbbackup([
          "--repo",
          repo,
          "--json",
          "backup",
          "single",
          AWKWARD_DB,
          "--engine",
          engine,
          ...(engine === "native" ? ["--chunk-size", "16k"] : []),
        ], { env: pgEnv(a) });
        assert.equal(backup.code, 0, backup.stderr);
        const summary = summaryOf(backup);
        assert.equal(summary.type, "summary");
        assert.equal(summary.status, "complete");
        const id: string = summary.setId;
        assert.deepEqual(await setDirs(repo), [id]);

        const manifest = await readManifest(repo, id);
        assert.equal(manifest.kind, "single");
        assert.equal(manifest.databases[0].name, AWKWARD_DB);
        assert.equal(manifest.databases[0].files[0].compression, "zstd");
        assert.equal(manifest.engine, engine);
        if (engine === "native") {
          const tables: { chunks: unknown[] }[] = manifest.databases[0].native.tables;
          assert.ok(tables.some((t) => t.chunks.length > 1), "some table was split into chunks");
          assert.equal(manifest.databases[0].native.snapshots.length, 1);
        }
        for await (const f of Deno.readDir(`${repo}/${id}`)) {
          const mode = (await Deno.stat(`${repo}/${id}/${f.name}`)).mode! & 0o777;
          assert.equal(mode, 0o600, `${f.name} is 0600`);
        }
        assert.equal((await Deno.stat(`${repo}/${id}`)).mode! & 0o777, 0o700);

        await t.step("verify and verify --deep pass", async () => {
          const v = await dbbackup(["--repo", repo, "verify", id]);
          assert.equal(v.code, 0, v.stderr);
          const deep = await dbbackup(["--repo", repo, "verify", "--deep", id]);
          assert.equal(deep.code, 0, deep.stderr);
          assert.match(deep.stdout, /ok/);
        });

        // Single-database backups carry no roles: the target needs them, as with pg_restore.
        await b.psql(await Deno.readTextFile(new URL("fixtures/roles.sql", import.meta.url)));

        await t.step("restore --create under the original name", async () => {
          const r = await dbbackup(["--repo", repo, "restore", "single", id, "--create"], {
            env: pgEnv(b),
          });
          assert.equal(r.code, 0, r.stderr);
          assertSameSnapshot(await snapshotDatabase(b, AWKWARD_DB), before, "restored database");
        });

        await t.step("restore --target with parallel jobs", async () => {
          const r = await dbbackup(
            [
              "--repo",
              repo,
              "-j",
              "2",
              "restore",
              "single",
              "latest",
              "--target",
              "copy two",
              "--create",
            ],
            { env: pgEnv(b) },
          );
          assert.equal(r.code, 0, r.stderr);
          if (engine === "native") {
            // Tables split into chunks get their indexes and keys while other tables load.
            assert.match(r.stderr, /building the indexes and keys of /);
          }
          assertSameSnapshot(await snapshotDatabase(b, "copy two"), before, "restored copy (-j 2)");
        });

        await t.step("restore into an existing empty database needs no flags", async () => {
          await b.createDatabase("empty target");
          const r = await dbbackup(
            ["--repo", repo, "restore", "single", id, "--target", "empty target"],
            { env: pgEnv(b) },
          );
          assert.equal(r.code, 0, r.stderr);
          assertSameSnapshot(await snapshotDatabase(b, "empty target"), before, "into empty");
        });

        await t.step("the source was not changed by the backup", async () => {
          assertSameSnapshot(await snapshotDatabase(a, AWKWARD_DB), before, "source after backup");
        });
      } finally {
        await Deno.remove(repo, { recursive: true });
      }
    });
  });
}

Deno.test("a schema with more tables than one transaction can lock restores with both engines", async () => {
  // The target's lock table holds about 10 x 42 backends = 420 locks; creating the 300 tables
  // below (each with its TOAST table and index) in one transaction needs about 900.
  await withTwoPg(async (a, b) => {
    const repo = await tempRepo();
    try {
      await a.createDatabase("many");
      for (let from = 1; from <= 300; from += 100) {
        await a.psql(
          `DO $$ BEGIN FOR i IN ${from}..${from + 99} LOOP
             EXECUTE format('CREATE TABLE t_%s (id int PRIMARY KEY, v text)', i);
             EXECUTE format('INSERT INTO t_%s VALUES (%s, repeat(''x'', %s))', i, i, i);
           END LOOP; END $$;`,
          { db: "many" },
        );
      }
      const before = await snapshotDatabase(a, "many");
      assert.equal(Object.keys(before.tables).length, 300);
      for (const [engine, jobs] of [["pg_dump", "1"], ["native", "2"]]) {
        const made = await dbbackup(
          ["--repo", repo, "--json", "backup", "single", "many", "--engine", engine],
          { env: pgEnv(a) },
        );
        assert.equal(made.code, 0, made.stderr);
        const id = summaryOf(made).setId;
        const target = `many_${engine}`;
        const r = await dbbackup(
          ["--repo", repo, "-j", jobs, "restore", "single", id, "--target", target, "--create"],
          { env: pgEnv(b) },
        );
        assert.equal(r.code, 0, `${engine} -j ${jobs}: ${r.stderr}`);
        assertSameSnapshot(await snapshotDatabase(b, target), before, `${engine} restore`);
      }
    } finally {
      await Deno.remove(repo, { recursive: true });
    }
  }, { max_locks_per_transaction: "10", max_connections: "20" });
});

Deno.test("gzip and uncompressed backups restore identically", async () => {
  await withTwoPg(async (a, b) => {
    const repo = await tempRepo();
    try {
      await loadAwkward(a, "shop");
      await b.psql(await Deno.readTextFile(new URL("fixtures/roles.sql", import.meta.url)));
      const before = await snapshotDatabase(a, "shop");
      for (const spec of ["gzip:1", "none"]) {
        const r = await dbbackup(
          ["--repo", repo, "--json", "backup", "single", "shop", "--compression", spec],
          { env: pgEnv(a) },
        );
        assert.equal(r.code, 0, r.stderr);
        const id = summaryOf(r).setId;
        const m = await readManifest(repo, id);
        assert.equal(m.compression.algorithm, spec.split(":")[0]);
        const target = `shop_${spec.split(":")[0]}`;
        const res = await dbbackup(
          ["--repo", repo, "restore", "single", id, "--target", target, "--create"],
          { env: pgEnv(b) },
        );
        assert.equal(res.code, 0, res.stderr);
        assertSameSnapshot(await snapshotDatabase(b, target), before, `restore of ${spec}`);
      }
    } finally {
      await Deno.remove(repo, { recursive: true });
    }
  });
});

for (const engine of ENGINES) {
  Deno.test(`backup cluster (${engine}) restores roles, settings and every database into a fresh server`, async (t) => {
    await withTwoPg(async (a, b) => {
      const repo = await tempRepo();
      try {
        await loadAwkward(a, AWKWARD_DB);
        await loadAwkward(a, "shop", false);
        await a.createDatabase("empty_db");
        await a.psql(`ALTER DATABASE empty_db SET work_mem = '8MB';
        ALTER DATABASE shop OWNER TO app_owner;
        COMMENT ON DATABASE shop IS 'the shop';`);
        const dbs = [AWKWARD_DB, "shop", "empty_db", "postgres"];
        const before = new Map<string, Awaited<ReturnType<typeof snapshotDatabase>>>();
        for (const db of dbs) before.set(db, await snapshotDatabase(a, db));
        const globals = await snapshotGlobals(a);

        const r = await dbbackup(
          [
            "--repo",
            repo,
            "-j",
            "2",
            "backup",
            "cluster",
            "--engine",
            engine,
            "--chunk-size",
            "16k",
          ],
          { env: pgEnv(a) },
        );
        assert.equal(r.code, 0, r.stderr);
        const [id] = await setDirs(repo);
        const manifest = await readManifest(repo, id);
        assert.equal(manifest.kind, "cluster");
        assert.equal(manifest.status, "complete");
        assert.equal(manifest.globals.status, "ok");
        assert.deepEqual(
          manifest.databases.map((d: { name: string }) => d.name).sort(),
          [...dbs].sort(),
          "every connectable non-template database, no templates",
        );

        await t.step("list --json shows the set", async () => {
          const l = await dbbackup(["--repo", repo, "list", "--json"]);
          assert.equal(l.code, 0, l.stderr);
          const sets = JSON.parse(l.stdout);
          assert.equal(sets.length, 1);
          assert.equal(sets[0].id, id);
          assert.equal(sets[0].status, "complete");
          assert.equal(sets[0].kind, "cluster");
          assert.equal(sets[0].databases.length, 4);
          assert.ok(sets[0].bytes > 0);
        });

        await t.step("verify --deep reads every archive, the empty ones too", async () => {
          const v = await dbbackup(["--repo", repo, "verify", "--deep", id]);
          assert.equal(v.code, 0, v.stdout + v.stderr);
        });

        await t.step("restore cluster --dry-run changes nothing", async () => {
          const dry = await dbbackup(["--repo", repo, "--dry-run", "restore", "cluster", id], {
            env: pgEnv(b),
          });
          assert.equal(dry.code, 0, dry.stderr);
          assert.match(dry.stdout, /dry run/);
          assert.equal(await q(b, "SELECT count(*) FROM pg_database WHERE datname = 'shop'"), "0");
          assert.equal(await q(b, "SELECT count(*) FROM pg_roles WHERE rolname = 'alice'"), "0");
        });

        await t.step("restore cluster reproduces roles and every database", async () => {
          const res = await dbbackup(["--repo", repo, "-j", "2", "restore", "cluster", id], {
            env: pgEnv(b),
          });
          assert.equal(res.code, 0, res.stderr);
          assertSameSnapshot(await snapshotGlobals(b), globals, "roles");
          for (const db of dbs) {
            assertSameSnapshot(await snapshotDatabase(b, db), before.get(db)!, `database ${db}`);
          }
          assert.equal(await dbSettings(b, "empty_db"), "work_mem=8MB");
          assert.equal(
            await q(b, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'shop'"),
            "app_owner",
          );
          assert.equal(
            await q(
              b,
              "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = 'shop'",
            ),
            "the shop",
          );
        });

        await t.step(
          "a second restore cluster is refused without --clean, nothing changed",
          async () => {
            await b.psql("CREATE TABLE extra_marker (x int); INSERT INTO extra_marker VALUES (1)", {
              db: "shop",
            });
            const res = await dbbackup(["--repo", repo, "restore", "cluster", id], {
              env: pgEnv(b),
            });
            assert.equal(res.code, 1);
            assert.match(res.stderr, /not empty/);
            assert.equal(await q(b, "SELECT count(*) FROM extra_marker", "shop"), "1");
          },
        );

        await t.step("restore cluster --clean --yes replaces the changed databases", async () => {
          const res = await dbbackup(
            ["--repo", repo, "--yes", "restore", "cluster", id, "--clean"],
            {
              env: pgEnv(b),
            },
          );
          assert.equal(res.code, 0, res.stderr);
          for (const db of dbs) {
            assertSameSnapshot(await snapshotDatabase(b, db), before.get(db)!, `database ${db}`);
          }
        });
      } finally {
        await Deno.remove(repo, { recursive: true });
      }
    });
  });
}

Deno.test("backup cluster --include/--exclude select databases by glob", async () => {
  await withTwoPg(async (a, _b) => {
    const repo = await tempRepo();
    try {
      for (const db of ["app_one", "app_two", "app_test", "other"]) await a.createDatabase(db);
      const r = await dbbackup(
        [
          "--repo",
          repo,
          "--json",
          "backup",
          "cluster",
          "--include",
          "app_*",
          "--exclude",
          "*_test",
        ],
        { env: pgEnv(a) },
      );
      assert.equal(r.code, 0, r.stderr);
      const summary = summaryOf(r);
      assert.deepEqual(
        summary.databases.map((d: { name: string }) => d.name).sort(),
        ["app_one", "app_two"],
      );
    } finally {
      await Deno.remove(repo, { recursive: true });
    }
  });
});

for (const engine of ENGINES) {
  Deno.test(`a database whose sessions default to read-only and end idle transactions backs up and restores (${engine})`, async () => {
    await withTwoPg(async (a, b) => {
      const repo = await tempRepo();
      try {
        await loadWide(a, "ro", 3000);
        await a.psql("ALTER DATABASE ro SET default_transaction_read_only = on");
        // The native backup's leader idles in its transaction while the workers copy.
        await a.psql("ALTER DATABASE ro SET idle_in_transaction_session_timeout = '20ms'");
        const before = await snapshotDatabase(a, "ro");
        const r = await dbbackup(
          [
            "--repo",
            repo,
            "-j",
            "2",
            "backup",
            "cluster",
            "--engine",
            engine,
            "--chunk-size",
            "64k",
          ],
          { env: pgEnv(a) },
        );
        assert.equal(r.code, 0, r.stderr);
        const [id] = await setDirs(repo);

        const cluster = await dbbackup(["--repo", repo, "-j", "2", "restore", "cluster", id], {
          env: pgEnv(b),
        });
        assert.equal(cluster.code, 0, cluster.stderr);
        assertSameSnapshot(await snapshotDatabase(b, "ro"), before, "database ro");
        assert.equal(
          await dbSettings(b, "ro"),
          "default_transaction_read_only=on,idle_in_transaction_session_timeout=20ms",
        );

        const single = await dbbackup(
          [
            "--repo",
            repo,
            "-j",
            "2",
            "restore",
            "single",
            id,
            "--database",
            "ro",
            "--target",
            "ro2",
            "--create",
          ],
          { env: pgEnv(b) },
        );
        assert.equal(single.code, 0, single.stderr);
        assertSameSnapshot(await snapshotDatabase(b, "ro2"), before, "database ro2");
      } finally {
        await Deno.remove(repo, { recursive: true });
      }
    });
  });
}

/** What a database is beyond its contents: owner, limit, privileges, comment, settings. */
async function databaseDefinition(pg: PgServer, db: string): Promise<string> {
  return await q(
    pg,
    `SELECT concat_ws(' | ', pg_get_userbyid(d.datdba), d.datconnlimit, d.datacl::text,
              shobj_description(d.oid, 'pg_database'), d.encoding, d.datcollate,
              (SELECT string_agg(coalesce(r.rolname, '-') || ':' ||
                                 array_to_string(s.setconfig, ','), ';' ORDER BY r.rolname)
                 FROM pg_db_role_setting s LEFT JOIN pg_roles r ON r.oid = s.setrole
                WHERE s.setdatabase = d.oid))
       FROM pg_database d WHERE d.datname = ${quoteLiteral(db)}`,
  );
}

for (const engine of ENGINES) {
  Deno.test(`restore single --clean (${engine}) replaces the contents and keeps the database's owner, settings, comment and privileges`, async () => {
    await withPg(async (a) => {
      const repo = await tempRepo();
      try {
        await loadWide(a, "shop", 3000);
        const before = await snapshotDatabase(a, "shop");
        const r = await dbbackup(
          ["--repo", repo, "backup", "single", "shop", "--engine", engine, "--chunk-size", "64k"],
          { env: pgEnv(a) },
        );
        assert.equal(r.code, 0, r.stderr);
        await a.psql(
          `CREATE ROLE app_owner; CREATE ROLE reader;
           ALTER DATABASE shop OWNER TO app_owner;
           ALTER DATABASE shop CONNECTION LIMIT 7;
           ALTER DATABASE shop SET search_path TO app, "$user", public;
           ALTER ROLE reader IN DATABASE shop SET statement_timeout = '5s';
           COMMENT ON DATABASE shop IS 'the shop';
           REVOKE ALL ON DATABASE shop FROM PUBLIC;
           GRANT CONNECT ON DATABASE shop TO reader;`,
        );
        await a.psql("UPDATE wide SET n = -1 WHERE id % 7 = 0; DROP TABLE small", { db: "shop" });
        const definition = await databaseDefinition(a, "shop");
        assert.match(definition, /^app_owner \| 7 \| .*reader=c\/app_owner.* \| the shop \|/);

        const res = await dbbackup(
          ["--repo", repo, "--yes", "-j", "2", "restore", "single", "latest", "--clean"],
          { env: pgEnv(a) },
        );
        assert.equal(res.code, 0, res.stderr);
        assertSameSnapshot(await snapshotDatabase(a, "shop"), before, "shop as backed up");
        assert.equal(await databaseDefinition(a, "shop"), definition);
      } finally {
        await Deno.remove(repo, { recursive: true });
      }
    });
  });
}

Deno.test("a native restore --clean that fails puts the database it replaced back as it was", async () => {
  await withTwoPg(async (a, b) => {
    const repo = await tempRepo();
    try {
      // Owned by a role the target server lacks: pre-data fails after the database was replaced.
      await a.psql("CREATE ROLE app_owner");
      await loadWide(a, "shop", 3000);
      await a.psql("ALTER TABLE small OWNER TO app_owner", { db: "shop" });
      const r = await dbbackup(
        ["--repo", repo, "backup", "single", "shop", "--engine", "native", "--chunk-size", "64k"],
        { env: pgEnv(a) },
      );
      assert.equal(r.code, 0, r.stderr);
      await b.psql("CREATE ROLE keeper; CREATE DATABASE shop OWNER keeper");
      await b.psql(
        "CREATE TABLE precious (x int); INSERT INTO precious SELECT generate_series(1, 500)",
        { db: "shop" },
      );
      const before = await snapshotDatabase(b, "shop");
      const definition = await databaseDefinition(b, "shop");
      const databases = "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database";
      const names = await q(b, databases);

      const res = await dbbackup(
        ["--repo", repo, "--yes", "-j", "2", "restore", "single", "latest", "--clean"],
        { env: pgEnv(b) },
      );
      assert.equal(res.code, 1, res.stderr);
      assert.match(res.stderr, /role "app_owner" does not exist/);
      assert.match(res.stderr, /database "shop" is as it was before this restore/);
      assertSameSnapshot(await snapshotDatabase(b, "shop"), before, "shop put back");
      assert.equal(await databaseDefinition(b, "shop"), definition);
      assert.equal(await q(b, databases), names, "no database left behind");
    } finally {
      await Deno.remove(repo, { recursive: true });
    }
  });
});

for (const engine of ENGINES) {
  Deno.test(`a target role's search_path and array_nulls change no reg* value or NULL array element (${engine})`, async () => {
    await withTwoPg(async (a, b) => {
      const repo = await tempRepo();
      try {
        await a.createDatabase("shop");
        // app.lower(text) would take over an unqualified lower(text) on a search_path that puts
        // app first; with array_nulls off, an unquoted NULL element reads as the string "NULL".
        await a.psql(
          `CREATE SCHEMA app;
           CREATE FUNCTION app.lower(text) RETURNS text LANGUAGE sql AS 'SELECT $1';
           CREATE TABLE app.big (id int PRIMARY KEY, f regprocedure, a text[], pad text);
           INSERT INTO app.big SELECT g, 'pg_catalog.lower(text)', ARRAY[NULL, 'x'],
                                      repeat('p', 100) FROM generate_series(1, 3000) g;
           CREATE TABLE app.small (id int PRIMARY KEY, a text[]);
           INSERT INTO app.small VALUES (1, ARRAY[NULL, 'y']);`,
          { db: "shop" },
        );
        const before = await snapshotDatabase(a, "shop");
        const r = await dbbackup(
          ["--repo", repo, "backup", "single", "shop", "--engine", engine, "--chunk-size", "64k"],
          { env: pgEnv(a) },
        );
        assert.equal(r.code, 0, r.stderr);
        await b.psql(
          `ALTER ROLE postgres SET search_path = app, pg_catalog;
           ALTER ROLE postgres SET array_nulls = off;`,
        );
        const res = await dbbackup(
          ["--repo", repo, "-j", "2", "restore", "single", "latest", "--create"],
          { env: pgEnv(b) },
        );
        assert.equal(res.code, 0, res.stderr);
        await b.psql("ALTER ROLE postgres RESET ALL");
        assert.equal(
          await q(
            b,
            `SELECT count(*) FILTER (WHERE f = 'pg_catalog.lower(text)'::regprocedure
                                       AND a[1] IS NULL) FROM app.big`,
            "shop",
          ),
          "3000",
        );
        assert.equal(await q(b, "SELECT a[1] IS NULL FROM app.small", "shop"), "t");
        assertSameSnapshot(await snapshotDatabase(b, "shop"), before, "shop after restore");
      } finally {
        await Deno.remove(repo, { recursive: true });
      }
    });
  });
}

for (const engine of ENGINES) {
  Deno.test(`restore cluster (${engine}) into a server with an empty database of the same name gives it the backup's owner, settings, comment and privileges`, async () => {
    await withTwoPg(async (a, b) => {
      const repo = await tempRepo();
      try {
        await a.psql(
          `CREATE ROLE alice; CREATE ROLE bob;
           CREATE DATABASE app OWNER alice CONNECTION LIMIT 9;
           REVOKE ALL ON DATABASE app FROM PUBLIC; GRANT CONNECT ON DATABASE app TO bob;
           ALTER DATABASE app SET work_mem = '7MB'; COMMENT ON DATABASE app IS 'the app';`,
        );
        await a.psql("CREATE TABLE x (i int); INSERT INTO x VALUES (1), (2)", { db: "app" });
        const before = await snapshotDatabase(a, "app");
        const r = await dbbackup(["--repo", repo, "backup", "cluster", "--engine", engine], {
          env: pgEnv(a),
        });
        assert.equal(r.code, 0, r.stderr);
        await b.psql("CREATE DATABASE app");
        const unconfirmed = await dbbackup(["--repo", repo, "restore", "cluster", "latest"], {
          env: pgEnv(b),
        });
        assert.equal(unconfirmed.code, 2, unconfirmed.stderr);
        assert.match(unconfirmed.stderr, /drop and recreate database "app" \(0 objects now\)/);
        const res = await dbbackup(["--repo", repo, "--yes", "restore", "cluster", "latest"], {
          env: pgEnv(b),
        });
        assert.equal(res.code, 0, res.stderr);
        assertSameSnapshot(await snapshotDatabase(b, "app"), before, "app");
        assert.equal(await databaseDefinition(b, "app"), await databaseDefinition(a, "app"));
      } finally {
        await Deno.remove(repo, { recursive: true });
      }
    });
  });
}

for (const engine of ENGINES) {
  Deno.test(`backup cluster (${engine}) keeps a template database of the user's and says which databases it cannot back up`, async () => {
    await withTwoPg(async (a, b) => {
      const repo = await tempRepo();
      try {
        await a.createDatabase("tpl");
        await a.psql("CREATE TABLE y (i int); INSERT INTO y VALUES (1), (2)", { db: "tpl" });
        await a.psql("ALTER DATABASE tpl IS_TEMPLATE true");
        await a.psql("CREATE DATABASE closed; ALTER DATABASE closed ALLOW_CONNECTIONS false");
        const before = await snapshotDatabase(a, "tpl");
        const r = await dbbackup(["--repo", repo, "backup", "cluster", "--engine", engine], {
          env: pgEnv(a),
        });
        assert.equal(r.code, 0, r.stderr);
        assert.match(r.stdout, /"tpl": ok/);
        assert.match(r.stdout, /skipped "closed": does not allow connections/);
        const res = await dbbackup(["--repo", repo, "restore", "cluster", "latest"], {
          env: pgEnv(b),
        });
        assert.equal(res.code, 0, res.stderr);
        assertSameSnapshot(await snapshotDatabase(b, "tpl"), before, "tpl");
        assert.equal(
          await q(b, "SELECT datistemplate FROM pg_database WHERE datname = 'tpl'"),
          "t",
        );
      } finally {
        await Deno.remove(repo, { recursive: true });
      }
    });
  });
}

Deno.test("restore cluster gives existing roles the backup's attributes, keeps the restoring role's password, and runs no SQL hidden in a setting", async () => {
  await withTwoPg(async (a, b) => {
    const repo = await tempRepo();
    try {
      await a.psql(
        `CREATE ROLE alice LOGIN CREATEDB PASSWORD 'source-pw';
         CREATE ROLE team; GRANT team TO alice;
         ALTER ROLE postgres PASSWORD 'source-superuser-pw';`,
      );
      // A role may set its own defaults: a value with a line break in it must stay a value.
      await a.psql(`ALTER ROLE alice SET search_path = E'"hi\\nALTER ROLE alice SUPERUSER; --"'`, {
        user: "alice",
      });
      const r = await dbbackup(["--repo", repo, "backup", "cluster"], { env: pgEnv(a) });
      assert.equal(r.code, 0, r.stderr);
      await b.psql("CREATE ROLE alice LOGIN NOCREATEDB PASSWORD 'target-pw'");
      const role = (pg: PgServer, name: string) =>
        q(
          pg,
          `SELECT concat_ws(' | ', rolsuper, rolcanlogin, rolcreatedb, rolpassword,
                    (SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting
                      WHERE setrole = a.oid AND setdatabase = 0))
             FROM pg_authid a WHERE rolname = ${quoteLiteral(name)}`,
        );
      const superuser = await role(b, "postgres");
      const res = await dbbackup(["--repo", repo, "restore", "cluster", "latest"], {
        env: pgEnv(b),
      });
      assert.equal(res.code, 0, res.stderr);
      assert.match(res.stdout + res.stderr, /roles the server had already, given the backup's/);
      assert.equal(await role(b, "alice"), await role(a, "alice"), "alice as backed up");
      assert.match(await role(b, "alice"), /^f \| /, "alice is no superuser");
      assert.equal(await role(b, "postgres"), superuser, "the restoring role's password kept");
      assert.equal(await q(b, "SELECT pg_has_role('alice', 'team', 'MEMBER')"), "t");
    } finally {
      await Deno.remove(repo, { recursive: true });
    }
  });
});

Deno.test("a native restore --clean whose database cannot be created again as it was puts the old one back", async () => {
  await withPg(async (a) => {
    const repo = await tempRepo();
    try {
      // The owner restores its own database; a setting for another role in it is one only a
      // superuser may make again.
      await a.psql(
        `CREATE ROLE owner LOGIN CREATEDB; CREATE ROLE other LOGIN;
         CREATE DATABASE app OWNER owner;
         ALTER ROLE other IN DATABASE app SET work_mem = '8MB';`,
      );
      await a.psql("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 100)", {
        db: "app",
        user: "owner",
      });
      const env = pgEnv(a, { PGUSER: "owner" });
      const r = await dbbackup(["--repo", repo, "backup", "single", "app", "--engine", "native"], {
        env,
      });
      assert.equal(r.code, 0, r.stderr);
      await a.psql("INSERT INTO t SELECT generate_series(101, 150)", { db: "app", user: "owner" });
      const before = await snapshotDatabase(a, "app");
      const databases = "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database";
      const names = await q(a, databases);
      const res = await dbbackup(
        ["--repo", repo, "--yes", "restore", "single", "latest", "--clean"],
        { env },
      );
      assert.equal(res.code, 1, res.stderr);
      assert.match(res.stderr, /permission denied/);
      assert.match(res.stderr, /database "app" is as it was before this restore/);
      assertSameSnapshot(await snapshotDatabase(a, "app"), before, "app put back");
      assert.equal(await q(a, databases), names, "no database left behind");
    } finally {
      await Deno.remove(repo, { recursive: true });
    }
  });
});

Deno.test("a native restore --clean of a template database leaves no copy behind", async () => {
  await withPg(async (a) => {
    const repo = await tempRepo();
    try {
      await loadWide(a, "tpl", 3000);
      await a.psql("ALTER DATABASE tpl IS_TEMPLATE true");
      const before = await snapshotDatabase(a, "tpl");
      const r = await dbbackup(
        ["--repo", repo, "backup", "single", "tpl", "--engine", "native", "--chunk-size", "64k"],
        { env: pgEnv(a) },
      );
      assert.equal(r.code, 0, r.stderr);
      await a.psql("DELETE FROM wide WHERE id % 2 = 0", { db: "tpl" });
      const databases = "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database";
      const names = await q(a, databases);
      const res = await dbbackup(
        ["--repo", repo, "--yes", "restore", "single", "latest", "--clean"],
        { env: pgEnv(a) },
      );
      assert.equal(res.code, 0, res.stderr);
      assert.doesNotMatch(res.stderr, /could not be dropped/);
      assertSameSnapshot(await snapshotDatabase(a, "tpl"), before, "tpl as backed up");
      assert.equal(await q(a, databases), names, "no database left behind");
      assert.equal(await q(a, "SELECT datistemplate FROM pg_database WHERE datname = 'tpl'"), "t");
    } finally {
      await Deno.remove(repo, { recursive: true });
    }
  });
});
