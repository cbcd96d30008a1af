/**
 * Interrupting a backup: SIGTERM and SIGINT abort cleanly (exit 130, the pg_dump child is
 * stopped, the unfinished set and every temp file removed); SIGKILL cannot be cleaned up, so
 * the set folder stays without a manifest and every command treats it as incomplete.
 */
import { strict as assert } from "node:assert";
import { dbbackup, lockFiles, pgEnv, setDirs, summaryOf, tempRepo } from "./helpers/cli.ts";
import { type PgServer, withPg } from "./helpers/pg_server.ts";
import { waitFor } from "./helpers/wait.ts";

const DB = "big";
/** Rows of md5 text: a plain backup (zstd:3) of them takes about two seconds. */
const ROWS = 1_500_000;
/**
 * The interrupted runs compress with zstd:19, which makes the whole pipeline take minutes:
 * the signal always lands mid-dump, however fast or loaded the machine is.
 */
const SLOW = ["--compression", "zstd:19"];

interface ProcInfo {
  pid: number;
  ppid: number;
  name: string;
  state: string;
}

/** One process from /proc, or undefined when it is gone (a zombie counts as gone). */
async function proc(pid: number): Promise<ProcInfo | undefined> {
  let status: string;
  try {
    status = await Deno.readTextFile(`/proc/${pid}/status`);
  } catch {
    return undefined;
  }
  const field = (name: string) => status.match(new RegExp(`^${name}:\\s*(.*)$`, "m"))?.[1] ?? "";
  const info = {
    pid,
    ppid: Number(field("PPid")),
    name: field("Name"),
    state: field("State").charAt(0),
  };
  return info.state === "Z" || info.state === "X" ? undefined : info;
}

async function allPids(): Promise<number[]> {
  const pids: number[] = [];
  for await (const e of Deno.readDir("/proc")) if (/^\d+$/.test(e.name)) pids.push(Number(e.name));
  return pids;
}

/** NUL-separated /proc/<pid>/<file> as a list of strings; [] when unreadable. */
async function procStrings(pid: number, file: "cmdline" | "environ"): Promise<string[]> {
  try {
    return (await Deno.readTextFile(`/proc/${pid}/${file}`)).split("\0").filter(Boolean);
  } catch {
    return [];
  }
}

/**
 * The live pg_dump child of `parent` that dumps a database. Planning runs a short-lived
 * `pg_dump --version` child first: that one does not count.
 */
async function dumpingChild(parent: number): Promise<ProcInfo | undefined> {
  for (const pid of await allPids()) {
    const p = await proc(pid);
    if (!p || p.ppid !== parent || p.name !== "pg_dump") continue;
    if ((await procStrings(pid, "cmdline")).includes("--format=custom")) return p;
  }
  return undefined;
}

/**
 * Processes started for this server that are still alive: those whose command line names its
 * port or socket folder, or whose environment points at it (dbbackup and its pg_dump children
 * get PGHOST=<socket dir>). The server's own processes mention neither.
 */
async function leftovers(pg: PgServer): Promise<string[]> {
  const port = String(pg.port);
  const found: string[] = [];
  for (const pid of await allPids()) {
    if (pid === Deno.pid) continue;
    const p = await proc(pid);
    if (!p) continue;
    const cmdline = await procStrings(pid, "cmdline");
    const environ = await procStrings(pid, "environ");
    const mentions = cmdline.some((a) =>
      a === port || a.endsWith(`=${port}`) || a.endsWith(`:${port}`) || a.includes(pg.socketDir)
    ) || environ.includes(`PGHOST=${pg.socketDir}`);
    if (mentions) {
      found.push(`${pid} ${p.name}: ${cmdline.join(" ")}`);
    }
  }
  return found;
}

/** Every path under `dir`, relative. */
async function walk(dir: string, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    out.push(prefix + e.name);
    if (e.isDirectory) out.push(...await walk(`${dir}/${e.name}`, `${prefix}${e.name}/`));
  }
  return out.sort();
}

const tempFiles = async (repo: string) => (await walk(repo)).filter((p) => p.includes(".tmp-"));

/** Temp files under `repo` that already hold data: the dump is streaming into the set. */
async function streamingTempFile(repo: string): Promise<string | undefined> {
  for (const p of await tempFiles(repo)) {
    try {
      if ((await Deno.stat(`${repo}/${p}`)).size > 0) return p;
    } catch {
      // renamed or removed meanwhile
    }
  }
  return undefined;
}

async function backendsOfDbbackup(pg: PgServer): Promise<number> {
  return Number(
    (await pg.psql(
      "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dbbackup'",
    )).trim(),
  );
}

interface Started {
  result: Promise<{ code: number; stdout: string; stderr: string }>;
  pid: number;
  pgDump: ProcInfo;
  tempFile: string;
}

/** Starts `backup single` and returns once its pg_dump child streams data into the repo. */
async function startBackup(pg: PgServer, repo: string, extra: string[]): Promise<Started> {
  let pid = 0;
  const result = dbbackup(["--repo", repo, "backup", "single", DB, ...extra], {
    env: pgEnv(pg),
    onStart: (p) => pid = p,
  });
  let exited = false;
  result.finally(() => exited = true).catch(() => {});
  assert.ok(pid > 0, "onStart gave the pid");
  const pgDump = await waitFor("the pg_dump child of dbbackup", async () => {
    if (exited) throw new Error(`dbbackup exited early: ${JSON.stringify(await result)}`);
    return await dumpingChild(pid);
  });
  const tempFile = await waitFor("data in a temp file", async () => {
    if (exited) throw new Error(`dbbackup exited early: ${JSON.stringify(await result)}`);
    return await streamingTempFile(repo);
  });
  return { result, pid, pgDump, tempFile };
}

async function interruptedBackupCleansUp(pg: PgServer, signal: "SIGTERM" | "SIGINT") {
  const repo = await tempRepo();
  try {
    const run = await startBackup(pg, repo, SLOW);
    assert.match(run.tempFile, /^\d{8}T\d{6}Z-single-big\/\.db-001-big\.pgdump\.zst\.tmp-/);
    assert.equal(await backendsOfDbbackup(pg), 1, "pg_dump is connected");
    // The leftover check below does see dbbackup and its pg_dump while they run.
    const running = await leftovers(pg);
    for (const pid of [run.pid, run.pgDump.pid]) {
      assert.ok(running.some((l) => l.startsWith(`${pid} `)), `${pid} in:\n${running.join("\n")}`);
    }

    const t0 = performance.now();
    Deno.kill(run.pid, signal);
    const r = await run.result;
    const elapsed = performance.now() - t0;

    assert.equal(r.code, 130, `exit code 130 after ${signal}; stderr:\n${r.stderr}`);
    assert.match(r.stderr, /interrupted/);
    assert.match(r.stderr, /the unfinished set \S+ was removed/);
    assert.ok(elapsed < 15_000, `dbbackup stopped within 15 s (took ${Math.round(elapsed)} ms)`);

    assert.deepEqual(await setDirs(repo), [], "no set folder is left");
    // Only the repository's (empty) lock folder: the interrupted run released its locks.
    assert.deepEqual(await walk(repo), ["locks"], "nothing else is left in the repository");
    assert.deepEqual(await tempFiles(repo), []);

    // The pg_dump child is gone, and so is every process started for this server.
    await waitFor(
      "pg_dump to be gone",
      async () => (await proc(run.pgDump.pid)) === undefined,
      10_000,
    );
    await waitFor("no leftover processes", async () => (await leftovers(pg)).length === 0, 10_000)
      .catch(async (err) => {
        throw new Error(`${err.message}: ${(await leftovers(pg)).join("\n")}`);
      });
    // The server noticed: pg_dump's session ended.
    await waitFor(
      "pg_dump's backend to end",
      async () => (await backendsOfDbbackup(pg)) === 0,
      10_000,
    );

    const list = await dbbackup(["--repo", repo, "list"], { env: pgEnv(pg) });
    assert.equal(list.code, 0, list.stderr);
    assert.match(list.stdout, /no backup sets/);
    assert.deepEqual(await lockFiles(repo), [], "the interrupted run released its locks");

    // The repository and the server are fine for the next run.
    const again = await dbbackup(["--repo", repo, "backup", "single", DB], { env: pgEnv(pg) });
    assert.equal(again.code, 0, again.stderr);
    const sets = await setDirs(repo);
    assert.equal(sets.length, 1);
    assert.ok((await Deno.stat(`${repo}/${sets[0]}/manifest.json`)).isFile);
    assert.deepEqual(await tempFiles(repo), []);
  } finally {
    await Deno.remove(repo, { recursive: true });
  }
}

Deno.test("interrupting a backup", async (t) => {
  await withPg(async (pg) => {
    await pg.createDatabase(DB);
    await pg.psql(
      `CREATE TABLE t AS SELECT g AS id, md5(g::text) AS a, md5((g * 7)::text) AS b
         FROM generate_series(1, ${ROWS}) g`,
      { db: DB },
    );

    await t.step("SIGTERM during backup single: exit 130, nothing left behind", async () => {
      await interruptedBackupCleansUp(pg, "SIGTERM");
    });

    await t.step("SIGINT during backup single: exit 130, nothing left behind", async () => {
      await interruptedBackupCleansUp(pg, "SIGINT");
    });

    await t.step("SIGKILL leaves an incomplete set that nothing treats as a backup", async () => {
      const repo = await tempRepo();
      try {
        const run = await startBackup(pg, repo, SLOW);
        Deno.kill(run.pid, "SIGKILL");
        const r = await run.result;
        assert.equal(r.code, 137, `killed by SIGKILL: ${JSON.stringify(r)}`);
        // The orphaned pg_dump dies of the broken pipe.
        await waitFor(
          "the orphaned pg_dump to exit",
          async () => (await proc(run.pgDump.pid)) === undefined,
          20_000,
        );

        const [id] = await setDirs(repo);
        assert.deepEqual(await setDirs(repo), [id], "the set folder stays");
        const files = await walk(`${repo}/${id}`);
        assert.ok(!files.includes("manifest.json"), `no manifest: ${files.join(", ")}`);
        assert.equal(files.length, 1, "only the unfinished temp file");
        assert.match(files[0], /^\.db-001-big\.pgdump\.zst\.tmp-/);

        const list = await dbbackup(["--repo", repo, "list"], { env: pgEnv(pg) });
        assert.equal(list.code, 0, list.stderr);
        const row = list.stdout.split("\n").find((l) => l.startsWith(id));
        assert.ok(row, `list shows ${id}:\n${list.stdout}`);
        assert.match(row, /\bincomplete\b/);

        const listJson = await dbbackup(["--repo", repo, "--json", "list"], { env: pgEnv(pg) });
        assert.equal(listJson.code, 0, listJson.stderr);
        assert.deepEqual(JSON.parse(listJson.stdout), [
          { id, group: "single-big", status: "incomplete", databases: [] },
        ]);

        const restore = await dbbackup(
          ["--repo", repo, "restore", "single", id, "--create", "--target", "t"],
          { env: pgEnv(pg) },
        );
        assert.equal(restore.code, 1, `restore: ${JSON.stringify(restore)}`);
        assert.match(restore.stderr, /incomplete/);
        assert.equal(
          (await pg.psql("SELECT count(*) FROM pg_database WHERE datname = 't'")).trim(),
          "0",
          "restore created no database",
        );
        // "latest" never picks the incomplete set either.
        const latest = await dbbackup(
          ["--repo", repo, "restore", "single", "latest", "--create", "--target", "t"],
          { env: pgEnv(pg) },
        );
        assert.equal(latest.code, 1);
        assert.match(latest.stderr, /no complete backup set/);

        const verify = await dbbackup(["--repo", repo, "verify", id], { env: pgEnv(pg) });
        assert.equal(verify.code, 1, `verify: ${JSON.stringify(verify)}`);
        assert.match(verify.stderr, /incomplete/);

        const again = await dbbackup(["--repo", repo, "--json", "backup", "single", DB], {
          env: pgEnv(pg),
        });
        assert.equal(again.code, 0, again.stderr);
        const summary = summaryOf(again);
        assert.equal(summary.status, "complete");
        assert.notEqual(summary.setId, id);
        assert.deepEqual(await setDirs(repo), [id, summary.setId].sort());

        const after = await dbbackup(["--repo", repo, "--json", "list"], { env: pgEnv(pg) });
        const statuses = Object.fromEntries(
          JSON.parse(after.stdout).map((s: { id: string; status: string }) => [s.id, s.status]),
        );
        assert.deepEqual(statuses, { [id]: "incomplete", [summary.setId]: "complete" });
        const verifyNew = await dbbackup(["--repo", repo, "verify", summary.setId]);
        assert.equal(verifyNew.code, 0, verifyNew.stderr);
        assert.equal(
          (await pg.psql("SELECT count(*) FROM pg_database WHERE datname = 't'")).trim(),
          "0",
        );
      } finally {
        await Deno.remove(repo, { recursive: true });
      }
    });
  });
});
