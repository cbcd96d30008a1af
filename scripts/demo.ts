/**
 * dbbackup's main job end to end on scratch servers it creates: seed a small realistic
 * database cluster, back it up, verify it, restore it into a fresh cluster, compare, clean up.
 * Run through scripts/demo.sh. Exits non-zero when anything differs.
 */
import { dbbackup, loadAwkward, pgEnv, tempRepo } from "../tests/helpers/cli.ts";
import { assertSameSnapshot, snapshotDatabase, snapshotGlobals } from "../tests/helpers/compare.ts";
import { withTwoPg } from "../tests/helpers/pg_server.ts";
import { run } from "../lib/process/run.ts";

const say = (text: string) => console.log(`\n\x1b[1m== ${text}\x1b[0m`);

async function step(title: string, args: string[], env: Record<string, string>) {
  say(title);
  console.log(`$ dbbackup ${args.join(" ")}`);
  const r = await dbbackup(args, { env });
  if (r.stdout.trim()) console.log(r.stdout.trimEnd());
  if (r.stderr.trim()) console.log(r.stderr.trimEnd());
  if (r.code !== 0) throw new Error(`dbbackup ${args[0]} exited with ${r.code}`);
  return r;
}

const repo = await tempRepo();
try {
  await withTwoPg(async (source, target) => {
    say(`scratch servers: source on port ${source.port}, target on port ${target.port}`);
    await loadAwkward(source, "shop");
    await source.createDatabase("bench");
    await run(`${source.binDir}/pgbench`, ["-i", "-s", "2", "-q", "bench"], {
      describe: "pgbench -i",
      env: source.env(),
      clearEnv: true,
    });
    const dbs = ["shop", "bench", "postgres"];
    const before = new Map<string, Awaited<ReturnType<typeof snapshotDatabase>>>();
    for (const db of dbs) before.set(db, await snapshotDatabase(source, db));
    const roles = await snapshotGlobals(source);
    console.log(
      `seeded: ${dbs.length} databases, ${
        [...before.values()].reduce((n, s) => n + Object.keys(s.tables).length, 0)
      } tables, ${Object.keys(roles.roles).length} roles`,
    );

    await step("status of the source", ["--repo", repo, "status"], pgEnv(source));
    await step("backup cluster", ["--repo", repo, "backup", "cluster"], pgEnv(source));
    await step("list", ["--repo", repo, "list"], {});
    await step("verify --deep", ["--repo", repo, "verify", "--deep", "latest"], {});
    await step(
      "restore cluster into the fresh target server",
      ["--repo", repo, "restore", "cluster", "latest"],
      pgEnv(target),
    );

    say("compare source and target");
    assertSameSnapshot(await snapshotGlobals(target), roles, "roles");
    for (const db of dbs) {
      const after = await snapshotDatabase(target, db);
      assertSameSnapshot(after, before.get(db)!, `database ${db}`);
      const rows = Object.values(after.tables).reduce((n, t) => n + t.rows, 0);
      console.log(
        `${db}: schema identical, ${Object.keys(after.tables).length} tables with ${rows} rows ` +
          `identical (per-table md5), ${after.largeObjects.length} large objects identical`,
      );
    }
    console.log("roles and memberships identical");
  });
  say("demo finished: the restored cluster matches the backed-up one");
} finally {
  await Deno.remove(repo, { recursive: true });
}
