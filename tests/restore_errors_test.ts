import { strict as assert } from "node:assert";
import { dbbackup, loadAwkward, pgEnv, tempRepo } from "./helpers/cli.ts";
import { assertSameSnapshot, snapshotDatabase } from "./helpers/compare.ts";
import { withPg, withTwoPg } from "./helpers/pg_server.ts";

Deno.test("restore stops at the first SQL error, reports it, and removes the database it created", async () => {
  await withTwoPg(async (a, b) => {
    const repo = await tempRepo();
    try {
      await loadAwkward(a, "shop");
      const backup = await dbbackup(["--repo", repo, "backup", "single", "shop"], {
        env: pgEnv(a),
      });
      assert.equal(backup.code, 0, backup.stderr);
      // The target server lacks the roles that own the objects: pg_restore fails on the first.
      for (const jobs of ["1", "2"]) {
        const r = await dbbackup(
          ["--repo", repo, "-j", jobs, "restore", "single", "latest", "--create"],
          { env: pgEnv(b) },
        );
        assert.equal(r.code, 1, `-j ${jobs}: ${r.stderr}`);
        assert.match(r.stderr, /pg_restore of "shop" into "shop"/);
        assert.match(r.stderr, /role "app_owner" does not exist|role "Read Only" does not exist/);
        const left = (await b.psql("SELECT count(*) FROM pg_database WHERE datname = 'shop'"))
          .trim();
        assert.equal(left, "0", `-j ${jobs}: the half-restored database was removed`);
      }
    } finally {
      await Deno.remove(repo, { recursive: true });
    }
  });
});

Deno.test("restore --clean of a pg_dump set is refused before anything is dropped when pg_restore could not drop a partition's key", async () => {
  await withPg(async (a) => {
    const repo = await tempRepo();
    try {
      // The awkward dataset has a partitioned table with a primary key, which each partition's
      // key is attached to; pg_restore --clean stops at "cannot drop inherited constraint".
      await loadAwkward(a, "shop");
      const backup = await dbbackup(["--repo", repo, "backup", "single", "shop"], {
        env: pgEnv(a),
      });
      assert.equal(backup.code, 0, backup.stderr);
      await a.psql(
        "CREATE TABLE since_backup (x int PRIMARY KEY); INSERT INTO since_backup VALUES (1)",
        {
          db: "shop",
        },
      );
      const before = await snapshotDatabase(a, "shop");
      const r = await dbbackup(
        ["--repo", repo, "--yes", "-j", "2", "restore", "single", "latest", "--clean"],
        { env: pgEnv(a) },
      );
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /pg_restore --clean cannot replace database "shop" in place/);
      assert.match(r.stderr, /--target NAME --create/);
      assertSameSnapshot(await snapshotDatabase(a, "shop"), before, "shop after the refusal");
    } finally {
      await Deno.remove(repo, { recursive: true });
    }
  });
});

Deno.test("restore --clean of a pg_dump set that cannot drop what the target has built on it changes nothing", async () => {
  await withPg(async (a) => {
    const repo = await tempRepo();
    try {
      await a.createDatabase("shop");
      await a.psql(
        `CREATE TABLE t1 (id int PRIMARY KEY); INSERT INTO t1 SELECT generate_series(1, 100);
         CREATE TABLE t2 (id int PRIMARY KEY); INSERT INTO t2 SELECT generate_series(1, 100);`,
        { db: "shop" },
      );
      const backup = await dbbackup(["--repo", repo, "backup", "single", "shop"], {
        env: pgEnv(a),
      });
      assert.equal(backup.code, 0, backup.stderr);
      // Only the target has the view: DROP TABLE t1 fails, after t2 and t1's key were dropped.
      await a.psql(
        "INSERT INTO t2 SELECT generate_series(101, 150); CREATE VIEW report AS SELECT count(*) FROM t1",
        { db: "shop" },
      );
      const before = await snapshotDatabase(a, "shop");
      const r = await dbbackup(
        ["--repo", repo, "--yes", "-j", "2", "restore", "single", "latest", "--clean"],
        { env: pgEnv(a) },
      );
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /other objects depend on it/);
      assertSameSnapshot(await snapshotDatabase(a, "shop"), before, "shop after the failure");
    } finally {
      await Deno.remove(repo, { recursive: true });
    }
  });
});
