import { strict as assert } from "node:assert";
import { DbBackupError } from "../../errors.ts";
import { run, spawn } from "../../process/run.ts";
import { assertSameSnapshot, snapshotDatabase } from "../../../tests/helpers/compare.ts";
import { loadAwkward } from "../../../tests/helpers/cli.ts";
import {
  cleanEnv,
  conninfoDbname,
  type PgServer,
  withPg,
} from "../../../tests/helpers/pg_server.ts";
import { writeDataOffsets } from "./archive_offsets.ts";
import { type ArchiveToc, readArchiveToc } from "./archive_toc.ts";

/**
 * `pg_dump --format=custom` of `db` into `to`: through a pipe, as dbbackup runs it, or with
 * --file, where pg_dump seeks back and records the data offsets.
 */
async function pgDump(
  pg: PgServer,
  db: string,
  args: readonly string[],
  to: string,
  how: "pipe" | "file",
): Promise<void> {
  const argv = ["--format=custom", ...args, "--dbname", conninfoDbname(db)];
  const options = { describe: `pg_dump of ${db}`, env: cleanEnv(pg.env()), clearEnv: true };
  if (how === "file") {
    await run(`${pg.binDir}/pg_dump`, [...argv, "--file", to], options);
    return;
  }
  const child = spawn(`${pg.binDir}/pg_dump`, argv, options);
  const [bytes] = await Promise.all([new Response(child.stdout).arrayBuffer(), child.status]);
  await Deno.writeFile(to, new Uint8Array(bytes));
}

async function tocOf(path: string): Promise<ArchiveToc> {
  return await readArchiveToc((await Deno.open(path)).readable, path);
}

/** Each entry's data state and offset, by dump ID. */
function offsets(toc: ArchiveToc): Map<number, string> {
  return new Map(toc.entries.map((e) => [e.dumpId, `${e.dataState} ${e.dataOffset}`]));
}

Deno.test("writeDataOffsets gives a piped archive the data offsets pg_dump writes into a file", async (t) => {
  await withPg(async (pg) => {
    const dir = await Deno.makeTempDir({ prefix: "dbbackup-test-offsets-" });
    try {
      // The awkward dataset (large objects, partitions, empty tables) plus a table of many
      // short rows (chunks across read boundaries) and one 3 MB value (a chunk longer than
      // the scanner's buffer).
      await loadAwkward(pg, "awkward");
      await pg.psql(
        `CREATE TABLE many_rows AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 60000) g;
         CREATE TABLE one_big AS SELECT 1 AS id, repeat(md5('x'), 100000) AS v;`,
        { db: "awkward" },
      );
      const before = await snapshotDatabase(pg, "awkward");

      for (const [name, args] of [["gzip", []], ["uncompressed", ["--compress=0"]]] as const) {
        await t.step(name, async () => {
          const piped = `${dir}/${name}-piped.dump`;
          const file = `${dir}/${name}-file.dump`;
          await pgDump(pg, "awkward", args, piped, "pipe");
          await pgDump(pg, "awkward", args, file, "file");
          const withData = (await tocOf(piped)).entries.filter((e) =>
            e.dataState === "offset_not_set"
          );
          assert.ok(withData.length >= 10, `entries with data from the pipe: ${withData.length}`);
          assert.ok(withData.some((e) => e.desc === "BLOBS"), "large objects among them");

          assert.equal(await writeDataOffsets(piped), withData.length);
          assert.deepEqual(offsets(await tocOf(piped)), offsets(await tocOf(file)));
          assert.equal((await Deno.stat(piped)).size, (await Deno.stat(file)).size);

          // Nothing left to do a second time: the file stays as it is.
          const patched = await Deno.readFile(piped);
          assert.equal(await writeDataOffsets(piped), 0);
          assert.deepEqual(await Deno.readFile(piped), patched);

          // pg_restore -j 2 follows the offsets to the same data.
          const db = `from_${name}`;
          await pg.createDatabase(db);
          await run(`${pg.binDir}/pg_restore`, ["--jobs=2", "--exit-on-error", "-d", db, piped], {
            describe: "pg_restore -j2",
            env: cleanEnv(pg.env()),
            clearEnv: true,
          });
          assertSameSnapshot(await snapshotDatabase(pg, db), before, `pg_restore of ${name}`);
        });
      }

      await t.step("a truncated archive is refused and left as it was", async () => {
        const piped = `${dir}/cut.dump`;
        await pgDump(pg, "awkward", ["--compress=0"], piped, "pipe");
        const toc = await tocOf(piped);
        const whole = await Deno.readFile(piped);
        const cut = whole.subarray(0, toc.tocBytes + Math.floor((whole.length - toc.tocBytes) / 2));
        await Deno.writeFile(piped, cut);
        await assert.rejects(
          () => writeDataOffsets(piped),
          (err: unknown) =>
            err instanceof DbBackupError && err.code === "verification" &&
            err.message.includes(piped),
        );
        assert.deepEqual(await Deno.readFile(piped), cut);
      });
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
});
