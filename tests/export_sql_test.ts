import { strict as assert } from "node:assert";
import { assertSameSnapshot, snapshotDatabase } from "./helpers/compare.ts";
import {
  dbbackup,
  loadAwkward,
  loadWide,
  nativeBackupArgs,
  pgEnv,
  setDirs,
  summaryOf,
  tempRepo,
} from "./helpers/cli.ts";
import { cleanEnv, withTwoPg } from "./helpers/pg_server.ts";
import { run } from "../lib/process/run.ts";

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

Deno.test("export-sql of a set with a damaged chunk, piped into psql, ends in a statement that fails", async () => {
  await withTwoPg(async (a, b) => {
    const repo = await tempRepo();
    try {
      await loadWide(a, "big", 6000);
      const r = await dbbackup(nativeBackupArgs(repo, "big", "256k"), { env: pgEnv(a) });
      assert.equal(r.code, 0, r.stderr);
      const [id] = await setDirs(repo);
      const chunk = [...Deno.readDirSync(`${repo}/${id}`)].map((e) => e.name)
        .filter((n) => /\.copy\.zst$/.test(n)).sort().at(-1)!;
      const bytes = await Deno.readFile(`${repo}/${id}/${chunk}`);
      bytes[Math.floor(bytes.length / 2)] ^= 0xff;
      await Deno.writeFile(`${repo}/${id}/${chunk}`, bytes);

      const e = await dbbackup(["--repo", repo, "export-sql", id]);
      assert.notEqual(e.code, 0, "export-sql fails");
      assert.match(e.stderr, new RegExp(chunk.replaceAll(".", "\\.")));
      await b.createDatabase("big");
      // psql as it starts by default, going on after errors: the script's end stops it.
      await assert.rejects(
        run(`${b.binDir}/psql`, ["-X", "-q", "-d", "big"], {
          describe: "psql of the exported script",
          env: cleanEnv(b.env()),
          clearEnv: true,
          input: e.stdout,
        }),
        /exited with code 3[^]*dbbackup export-sql failed: this script is incomplete/,
      );
    } finally {
      await Deno.remove(repo, { recursive: true });
    }
  });
});
