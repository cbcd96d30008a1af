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
