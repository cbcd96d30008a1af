import { strict as assert } from "node:assert";
import { assertSameSnapshot, snapshotDatabase } from "./helpers/compare.ts";
import { dbbackup, loadAwkward, pgEnv, summaryOf, tempRepo } from "./helpers/cli.ts";
import { withTwoPg } from "./helpers/pg_server.ts";

Deno.test("export-sql writes a script that psql alone restores identically, for both engines", async (t) => {
  await withTwoPg(async (a, b) => {
    const repo = await tempRepo();
    try {
      await loadAwkward(a, "shop");
      await b.psql(await Deno.readTextFile(new URL("fixtures/roles.sql", import.meta.url)));
      const before = await snapshotDatabase(a, "shop");
      for (const engine of ["pg_dump", "native"]) {
        await t.step(engine, async () => {
          const r = await dbbackup(
            [
              "--repo",
              repo,
              "--json",
              "backup",
              "single",
              "shop",
              "--engine",
              engine,
              "--chunk-size",
              "16k",
            ],
            { env: pgEnv(a) },
          );
          assert.equal(r.code, 0, r.stderr);
          const id = summaryOf(r).setId;
          const script = `${repo}/${engine}.sql`;
          const e = await dbbackup(["--repo", repo, "export-sql", id, "--output", script]);
          assert.equal(e.code, 0, e.stderr);
          assert.equal((await Deno.stat(script)).mode! & 0o777, 0o600);
          const target = `shop_from_${engine}`;
          await b.createDatabase(target);
          await b.psql(await Deno.readTextFile(script), { db: target });
          assertSameSnapshot(
            await snapshotDatabase(b, target),
            before,
            `psql restore of ${engine}`,
          );

          const again = await dbbackup(["--repo", repo, "export-sql", id, "--output", script]);
          assert.equal(again.code, 1);
          assert.match(again.stderr, /already exists/);
          assert.ok((await Deno.stat(script)).size > 0, "the existing script is untouched");
          // The script was published from a temporary name, which is gone.
          const temps = [];
          for await (const e of Deno.readDir(repo)) {
            if (e.name.includes(".tmp-")) temps.push(e.name);
          }
          assert.deepEqual(temps, []);

          // A database the set does not have: an error, and no script at all.
          const missing = `${repo}/${engine}-missing.sql`;
          const bad = await dbbackup([
            "--repo",
            repo,
            "export-sql",
            id,
            "--database",
            "nope",
            "--output",
            missing,
          ]);
          assert.equal(bad.code, 1, bad.stderr);
          await assert.rejects(Deno.stat(missing), Deno.errors.NotFound);
        });
      }
    } finally {
      await Deno.remove(repo, { recursive: true });
    }
  });
});
