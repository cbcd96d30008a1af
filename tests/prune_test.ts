/**
 * `prune` end to end on a repository with sets of several groups, incomplete and damaged sets
 * and files that are not sets; and `backup --prune` against a real server.
 */
import { strict as assert } from "node:assert";
import { LocalStorage } from "../lib/storage/local.ts";
import { Repository } from "../lib/repo/repository.ts";
import { type Manifest, MANIFEST_FORMAT, MANIFEST_VERSION } from "../lib/repo/manifest.ts";
import { dbbackup, exists, lockFiles, pgEnv, setDirs, summaryOf, tempRepo } from "./helpers/cli.ts";
import { withPg } from "./helpers/pg_server.ts";

const HOUR = 3_600_000;
const NOW = Date.now();

interface SetSpec {
  /** Hours before now. */
  age: number;
  db?: string;
  host?: string;
  kind?: "single" | "cluster";
  status?: "complete" | "partial" | "incomplete";
}

/** A set as backup writes it: one data file, then (unless incomplete) the manifest. */
async function makeSet(repo: Repository, spec: SetSpec): Promise<string> {
  const kind = spec.kind ?? "single";
  const host = spec.host ?? "db1";
  const db = spec.db ?? "shop";
  const when = new Date(NOW - spec.age * HOUR);
  const set = await repo.createSet(kind, kind === "single" ? db : host, when);
  const file = await set.writeFile("db-001", ReadableStream.from([new TextEncoder().encode(db)]), {
    compression: { algorithm: "none", level: 0 },
    content: "pg_dump-custom",
  });
  if (spec.status === "incomplete") return set.id;
  const status = spec.status ?? "complete";
  const manifest: Manifest = {
    format: MANIFEST_FORMAT,
    formatVersion: MANIFEST_VERSION,
    id: set.id,
    tool: { name: "dbbackup", version: "test" },
    kind,
    dbType: "postgres",
    engine: "pg_dump",
    status,
    server: { version: "15", versionNum: 150000, host, port: 5432 },
    dumpTool: "pg_dump (PostgreSQL) 15",
    startedAt: when.toISOString(),
    finishedAt: when.toISOString(),
    compression: { algorithm: "none", level: 0 },
    restore: { format: "custom", includes: [], excludes: [] },
    databases: [{
      name: db,
      status: status === "partial" ? "failed" : "ok",
      error: status === "partial" ? "failed on purpose" : undefined,
      startedAt: when.toISOString(),
      finishedAt: when.toISOString(),
      files: [file],
    }],
  };
  await set.writeManifest(manifest);
  return set.id;
}

Deno.test("prune keeps what the policy says per group and never touches what is not a set", async (t) => {
  const dir = await tempRepo();
  try {
    const repo = new Repository(new LocalStorage(dir));
    // Group db1:5432/shop: one complete set a day for 10 days, two on the newest day.
    const shop: string[] = [];
    for (let day = 9; day >= 0; day--) shop.push(await makeSet(repo, { age: day * 24 + 2 }));
    const shopNewest = await makeSet(repo, { age: 1 });
    // Group db1:5432/crm: only old sets; the newest is always kept.
    const crmOld = await makeSet(repo, { age: 40 * 24, db: "crm" });
    const crmNewest = await makeSet(repo, { age: 30 * 24, db: "crm" });
    // Group db2:5432 cluster.
    const cluster1 = await makeSet(repo, { age: 3 * 24, kind: "cluster", host: "db2" });
    const cluster2 = await makeSet(repo, { age: 2 * 24, kind: "cluster", host: "db2" });
    // Unfinished sets: an old incomplete and an old partial one go, a fresh incomplete one
    // (a backup that may be running) stays.
    const oldIncomplete = await makeSet(repo, { age: 50, status: "incomplete" });
    const oldPartial = await makeSet(repo, { age: 49, status: "partial" });
    const freshIncomplete = await makeSet(repo, { age: 0.5, status: "incomplete" });
    // A set whose manifest is damaged is left alone, and so is everything that is not a set.
    const damaged = await makeSet(repo, { age: 100 });
    await Deno.writeTextFile(`${dir}/${damaged}/manifest.json`, "{ not json", { mode: 0o600 });
    await Deno.mkdir(`${dir}/notes`);
    await Deno.writeTextFile(`${dir}/notes/keep.txt`, "mine");
    await Deno.writeTextFile(`${dir}/README.txt`, "mine too");
    const before = await setDirs(dir);

    // keep-within counts back from each group's newest set, so the outcome does not depend on
    // the time of day or zone (calendar rules are covered by lib/retention's tables).
    const policy = ["--keep-within", "2d", "--grace", "24h"];
    await t.step("--dry-run decides and changes nothing", async () => {
      const r = await dbbackup(["--repo", dir, "--json", "--dry-run", "prune", ...policy]);
      assert.equal(r.code, 0, r.stderr);
      const out = summaryOf(r);
      assert.equal(out.status, "dry-run");
      assert.ok(out.decisions.some((d: { keep: boolean }) => !d.keep));
      assert.deepEqual(await setDirs(dir), before);
    });

    await t.step("a prune while another process holds the repository is refused", async () => {
      await Deno.mkdir(`${dir}/locks`, { recursive: true });
      const lock = `${dir}/locks/held.json`;
      await Deno.writeTextFile(
        lock,
        JSON.stringify({
          scope: "repo",
          mode: "shared",
          purpose: "backup single",
          hostname: Deno.hostname(),
          pid: Deno.pid,
          createdAt: new Date().toISOString(),
          refreshedAt: new Date().toISOString(),
        }),
      );
      const r = await dbbackup(["--repo", dir, "prune", ...policy]);
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /is locked by backup single \(pid \d+/);
      assert.deepEqual(await setDirs(dir), before, "nothing removed");
      await Deno.remove(lock);
    });

    await t.step("prune removes exactly the sets the policy does not keep", async () => {
      const r = await dbbackup(["--repo", dir, "--json", "prune", ...policy]);
      assert.equal(r.code, 0, r.stderr);
      const out = summaryOf(r);
      assert.equal(out.status, "complete");
      const removed = out.decisions.filter((d: { removed: boolean }) => d.removed).map((
        d: { id: string },
      ) => d.id).sort();
      // shop: the newest is 1 h old; sets 2 h and 26 h old are within 2 days of it, the one
      // 50 h old is not. crm: the older set is 10 days older than the newest. cluster: both
      // within 2 days of each other.
      const shopKept = [shopNewest, shop[9], shop[8]];
      const expectedRemoved = [
        ...shop.filter((id) => !shopKept.includes(id)),
        crmOld,
        oldIncomplete,
        oldPartial,
      ].sort();
      assert.deepEqual(removed, expectedRemoved, r.stdout);
      const remaining = await setDirs(dir);
      for (const id of [...shopKept, crmNewest, cluster1, cluster2, freshIncomplete, damaged]) {
        assert.ok(remaining.includes(id), `${id} kept`);
      }
      for (const id of expectedRemoved) assert.ok(!remaining.includes(id), `${id} removed`);
      assert.ok(remaining.includes("notes"));
      assert.equal(await Deno.readTextFile(`${dir}/notes/keep.txt`), "mine");
      assert.equal(await Deno.readTextFile(`${dir}/README.txt`), "mine too");
      assert.deepEqual(out.leftAlone.map((s: { id: string }) => s.id), [damaged]);
      const reasons = new Map<string, string[]>(
        out.decisions.map((d: { id: string; reasons: string[] }) => [d.id, d.reasons]),
      );
      assert.ok(reasons.get(crmNewest)!.includes("newest complete set of its group"));
      assert.ok(reasons.get(freshIncomplete)!.some((r) => r.includes("younger than grace")));
      assert.deepEqual(await lockFiles(dir), [], "the prune released its lock");
    });

    await t.step(
      "a set whose removal was interrupted after its manifest is removed next time",
      async () => {
        // Removal order is manifest first: an interrupted prune leaves an incomplete set.
        const victim = shop[8];
        await Deno.remove(`${dir}/${victim}/manifest.json`);
        const list = await dbbackup(["--repo", dir, "list"]);
        assert.match(list.stdout.split("\n").find((l) => l.startsWith(victim)) ?? "", /incomplete/);
        const r = await dbbackup(["--repo", dir, "prune", ...policy]);
        assert.equal(r.code, 0, r.stderr);
        assert.ok(!(await exists(`${dir}/${victim}`)), "the orphaned data is gone");
      },
    );

    await t.step("--group narrows the prune; no keep rule at all is refused", async () => {
      const r = await dbbackup(["--repo", dir, "prune", "--keep-last", "1", "--group", "db2*"]);
      assert.equal(r.code, 0, r.stderr);
      const remaining = await setDirs(dir);
      assert.ok(!remaining.includes(cluster1) && remaining.includes(cluster2));
      assert.ok(
        remaining.includes(shopNewest) && remaining.includes(shop[9]),
        "other groups untouched",
      );
      const none = await dbbackup(["--repo", dir, "prune"]);
      assert.equal(none.code, 2, none.stderr);
      assert.match(none.stderr, /refusing to prune without a keep rule/);
      const bad = await dbbackup(["--repo", dir, "prune", "--keep-within", "3x"]);
      assert.equal(bad.code, 2, bad.stderr);
      assert.match(bad.stderr, /invalid --keep-within "3x"/);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("backup --prune applies the configured policy to its own group, only after a complete backup", async () => {
  await withPg(async (pg) => {
    const repo = await tempRepo();
    const cfgDir = await Deno.makeTempDir({ prefix: "dbbackup-test-cfg-" });
    try {
      await pg.createDatabase("shop");
      await pg.createDatabase("crm");
      await pg.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 100) g", { db: "shop" });
      const cfg = `${cfgDir}/config.json`;
      const env = pgEnv(pg);
      const noPolicy = await dbbackup(["--repo", repo, "backup", "single", "shop", "--prune"], {
        env: { ...env, XDG_CONFIG_HOME: cfgDir },
      });
      assert.equal(noPolicy.code, 2, noPolicy.stderr);
      assert.match(noPolicy.stderr, /refusing to prune without a keep rule/);
      assert.deepEqual(await setDirs(repo), [], "refused before backing up");

      await Deno.writeTextFile(cfg, JSON.stringify({ prune: { keepLast: 1 } }));
      const run = async (db: string, prune: boolean) => {
        const r = await dbbackup([
          "--config",
          cfg,
          "--repo",
          repo,
          "--json",
          "backup",
          "single",
          db,
          ...(prune ? ["--prune"] : []),
        ], { env });
        return {
          ...r,
          summary: r.code === 0 ? summaryOf(r) : undefined,
        };
      };
      const crm = await run("crm", false);
      assert.equal(crm.code, 0, crm.stderr);
      const first = await run("shop", false);
      assert.equal(first.code, 0, first.stderr);
      // Set ids have one-second resolution; the next set must be newer.
      await new Promise((r) => setTimeout(r, 1100));
      const second = await run("shop", true);
      assert.equal(second.code, 0, second.stderr);
      assert.deepEqual(second.summary.prune.removed, [first.summary.setId]);
      assert.deepEqual(await setDirs(repo), [crm.summary.setId, second.summary.setId].sort());

      const failed = await run("nope", true);
      assert.equal(failed.code, 1, failed.stderr);
      assert.deepEqual(
        await setDirs(repo),
        [crm.summary.setId, second.summary.setId].sort(),
        "a failed backup prunes nothing",
      );
    } finally {
      await Deno.remove(repo, { recursive: true });
      await Deno.remove(cfgDir, { recursive: true });
    }
  });
});
