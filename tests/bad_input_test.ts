/**
 * Bad input and failure paths of the CLI, run as a child process the way a user would:
 * unknown databases, wrong passwords, unreachable servers, damaged or incomplete backup sets,
 * refused restores, usage errors, partial cluster backups and secrets in process arguments.
 *
 * Every case checks the exit code, that stderr names the thing that is wrong (database,
 * host:port, file), and that nothing that existed before was changed or lost: the target
 * databases (by snapshot), the list of databases, and every file of the repository.
 */
import { strict as assert } from "node:assert";
import { createHash } from "node:crypto";
import { type CliResult, dbbackup, pgEnv, setDirs, tempRepo } from "./helpers/cli.ts";
import { assertSameSnapshot, snapshotDatabase } from "./helpers/compare.ts";
import { type PgServer, withPg, withTwoPg } from "./helpers/pg_server.ts";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const ALICE_PASSWORD = "alice-secret-pw"; // from tests/fixtures/roles.sql

function assertIncludes(text: string, part: string, what: string): void {
  assert.ok(text.includes(part), `${what}: ${JSON.stringify(part)} not in:\n${text}`);
}

/** Exit code first: on a mismatch the message shows everything the CLI printed. */
function assertExit(r: CliResult, code: number, what: string): void {
  assert.equal(
    r.code,
    code,
    `${what}: exit code ${r.code}, expected ${code}\n--- stdout ---\n${r.stdout}\n--- stderr ---\n${r.stderr}`,
  );
}

/** The CLI's error line: `dbbackup: error: <message>` on stderr. */
function assertError(r: CliResult, parts: string[], what: string): void {
  assertIncludes(r.stderr, "dbbackup: error: ", what);
  for (const p of parts) assertIncludes(r.stderr, p, what);
}

/** Every file under `dir` (relative path -> size and sha256), folders as `path/`. */
async function treeState(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (rel: string) => {
    for await (const e of Deno.readDir(rel ? `${dir}/${rel}` : dir)) {
      const path = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory) {
        out[`${path}/`] = "dir";
        await walk(path);
      } else {
        const bytes = await Deno.readFile(`${dir}/${path}`);
        out[path] = `${bytes.length} ${createHash("sha256").update(bytes).digest("hex")}`;
      }
    }
  };
  await walk("");
  return out;
}

async function copyTree(from: string, to: string): Promise<void> {
  await Deno.mkdir(to, { recursive: true });
  for await (const e of Deno.readDir(from)) {
    if (e.isDirectory) await copyTree(`${from}/${e.name}`, `${to}/${e.name}`);
    else await Deno.copyFile(`${from}/${e.name}`, `${to}/${e.name}`);
  }
}

async function databaseNames(pg: PgServer): Promise<string[]> {
  const out = await pg.psql('SELECT datname FROM pg_database ORDER BY datname COLLATE "C"');
  return out.trim().split("\n");
}

/** A TCP port on 127.0.0.1 that nothing listens on (just released by us). */
function closedPort(): number {
  for (;;) {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (listener.addr as Deno.NetAddr).port;
    listener.close();
    if (port !== 5432) return port;
  }
}

/** Environment for a TCP connection with a password; no password file is consulted. */
function tcpEnv(password: string): Record<string, string> {
  return { PGPASSWORD: password, PGPASSFILE: "/nonexistent/pgpass" };
}

function tcpFlags(pg: PgServer, user: string): string[] {
  return ["-H", "127.0.0.1", "-p", String(pg.port), "-U", user];
}

async function readManifest(repo: string, id: string): Promise<Record<string, unknown>> {
  return JSON.parse(await Deno.readTextFile(`${repo}/${id}/manifest.json`));
}

/** A small database: a table with a serial key, a view and a sequence position. */
const SHOP_SQL = `
CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, price numeric(10,2));
CREATE VIEW expensive AS SELECT id, name FROM items WHERE price > 100;
INSERT INTO items (name, price) SELECT 'item ' || g, g * 1.5 FROM generate_series(1, 200) g;
`;

/** The same schema with other rows: an older copy a restore --clean must replace. */
const STALE_SHOP_SQL = `
CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, price numeric(10,2));
CREATE VIEW expensive AS SELECT id, name FROM items WHERE price > 100;
INSERT INTO items (name, price) SELECT 'stale ' || g, g * 7 FROM generate_series(1, 30) g;
`;

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

Deno.test("bad connection input and bad usage fail with a named cause and create no backup set", async (t) => {
  await withPg(async (pg) => {
    const repo = await tempRepo();
    try {
      await pg.psql(await Deno.readTextFile(new URL("./fixtures/roles.sql", import.meta.url)));
      await pg.createDatabase("shop");
      await pg.psql(SHOP_SQL, { db: "shop" });
      const before = await snapshotDatabase(pg, "shop");
      const dbs = await databaseNames(pg);

      await t.step(
        "backup of an unknown database: exit 1 naming the database and endpoint",
        async () => {
          const r = await dbbackup(["--repo", repo, "backup", "single", "no_such_db"], {
            env: pgEnv(pg),
          });
          assertExit(r, 1, "backup single no_such_db");
          assertError(r, [
            'database "no_such_db" does not exist',
            `${pg.socketDir}:${pg.port}`,
          ], "unknown database");
          assert.deepEqual(await setDirs(repo), [], "no set folder was created");
        },
      );

      await t.step(
        'wrong password over TCP: exit 1, authentication failed for user "alice", password never printed',
        async () => {
          const wrong = "Wr0ng-Pa55-zq7";
          const r = await dbbackup(
            ["--repo", repo, ...tcpFlags(pg, "alice"), "backup", "single", "shop"],
            { env: tcpEnv(wrong) },
          );
          assertExit(r, 1, "backup with a wrong password");
          assertError(r, [
            'authentication failed for user "alice"',
            `127.0.0.1:${pg.port}`,
          ], "wrong password");
          assert.ok(!r.stdout.includes(wrong) && !r.stderr.includes(wrong), "password printed");
          assert.deepEqual(await setDirs(repo), [], "no set folder was created");
        },
      );

      await t.step("closed port: exit 1, connection refused at 127.0.0.1:<port>", async () => {
        const port = closedPort();
        const flags = ["-H", "127.0.0.1", "-p", String(port), "-U", "alice"];
        const r = await dbbackup(["--repo", repo, ...flags, "backup", "single", "shop"], {
          env: tcpEnv(ALICE_PASSWORD),
        });
        assertExit(r, 1, "backup from a closed port");
        assertError(r, [`connection refused at 127.0.0.1:${port}`], "closed port");
        assert.deepEqual(await setDirs(repo), [], "no set folder was created");
      });

      await t.step("unknown option, unknown command and invalid --jobs: exit 2", async () => {
        const unknownOption = await dbbackup(["--repo", repo, "--frobnicate", "list"], {
          env: pgEnv(pg),
        });
        assertExit(unknownOption, 2, "unknown option");
        assertIncludes(unknownOption.stderr, "--frobnicate", "unknown option message");

        const unknownCommand = await dbbackup(["--repo", repo, "frobnicate"], { env: pgEnv(pg) });
        assertExit(unknownCommand, 2, "unknown command");
        assertIncludes(unknownCommand.stderr, "frobnicate", "unknown command message");

        const badJobs = await dbbackup(["--repo", repo, "-j", "x", "backup", "single", "shop"], {
          env: pgEnv(pg),
        });
        assertExit(badJobs, 2, "-j x");
        assertError(badJobs, ['"x"', "jobs"], "invalid --jobs");
        assert.deepEqual(await setDirs(repo), [], "no set folder was created");
      });

      await t.step("the server was not changed by any of it", async () => {
        assert.deepEqual(await databaseNames(pg), dbs);
        assertSameSnapshot(await snapshotDatabase(pg, "shop"), before, "shop after bad input");
      });
    } finally {
      await Deno.remove(repo, { recursive: true });
    }
  });
});

Deno.test("damaged, incomplete or refused restores exit non-zero and change nothing on the target", async (t) => {
  await withTwoPg(async (src, dst) => {
    const repo = await tempRepo();
    const scratch: string[] = [];
    try {
      await src.createDatabase("shop");
      await src.psql(SHOP_SQL, { db: "shop" });
      await dst.createDatabase("shop");
      await dst.psql(STALE_SHOP_SQL, { db: "shop" });
      await dst.createDatabase("bystander");
      await dst.psql(
        "CREATE TABLE notes (id int PRIMARY KEY, body text); INSERT INTO notes VALUES (1, 'keep me');",
        {
          db: "bystander",
        },
      );

      const source = await snapshotDatabase(src, "shop");
      const dstDbs = await databaseNames(dst);
      const dstShop = await snapshotDatabase(dst, "shop");
      const dstBystander = await snapshotDatabase(dst, "bystander");
      /** The target server holds exactly the databases and data it had at the start. */
      const assertTargetUnchanged = async (what: string) => {
        assert.deepEqual(await databaseNames(dst), dstDbs, `${what}: databases on the target`);
        assertSameSnapshot(await snapshotDatabase(dst, "shop"), dstShop, `${what}: target "shop"`);
        assertSameSnapshot(
          await snapshotDatabase(dst, "bystander"),
          dstBystander,
          `${what}: target "bystander"`,
        );
      };

      const made = await dbbackup(["--repo", repo, "backup", "single", "shop"], {
        env: pgEnv(src),
      });
      assertExit(made, 0, "backup single shop");
      const [id] = await setDirs(repo);
      assert.ok(id, "a set was created");
      const dataFile = "db-001-shop.pgdump.zst";
      const pristine = await treeState(repo);
      assert.ok(pristine[`${id}/${dataFile}`], `${dataFile} exists: ${Object.keys(pristine)}`);
      assert.ok(pristine[`${id}/manifest.json`], "manifest.json exists");

      const damages: [string, (path: string) => Promise<void>][] = [
        ["missing", (path) => Deno.remove(path)],
        ["truncated", async (path) => {
          const bytes = await Deno.readFile(path);
          await Deno.writeFile(path, bytes.subarray(0, Math.floor(bytes.length / 2)));
        }],
        ["one byte flipped", async (path) => {
          const bytes = await Deno.readFile(path);
          bytes[Math.floor(bytes.length / 2)] ^= 0xff;
          await Deno.writeFile(path, bytes);
        }],
      ];
      for (const [damage, mutate] of damages) {
        await t.step(
          `data file ${damage}: verify and restore exit 4 naming the file; nothing is created`,
          async () => {
            const copy = await Deno.makeTempDir({ prefix: "dbbackup-test-damaged-" });
            scratch.push(copy);
            await copyTree(repo, copy);
            await mutate(`${copy}/${id}/${dataFile}`);
            const damaged = await treeState(copy);

            const v = await dbbackup(["--repo", copy, "verify", id], { env: pgEnv(dst) });
            assertExit(v, 4, `verify (${damage})`);
            assertIncludes(
              v.stdout + v.stderr,
              `${id}/${dataFile}`,
              `verify names the file (${damage})`,
            );
            assertIncludes(v.stdout, "FAILED", `verify reports failure (${damage})`);

            const r = await dbbackup(
              ["--repo", copy, "restore", "single", id, "--target", "x", "--create"],
              { env: pgEnv(dst) },
            );
            assertExit(r, 4, `restore (${damage})`);
            assertError(r, [`${id}/${dataFile}`], `restore names the file (${damage})`);
            await assertTargetUnchanged(`restore of a set with a ${damage} file`);
            assert.ok(!(await databaseNames(dst)).includes("x"), 'database "x" was not created');
            assert.deepEqual(await treeState(copy), damaged, "the damaged repository is unchanged");
          },
        );
      }
      assert.deepEqual(await treeState(repo), pristine, "the original repository is unchanged");

      await t.step(
        "restore into a non-empty target: refused without --clean, and without --yes; replaced with --clean --yes",
        async () => {
          const noClean = await dbbackup(["--repo", repo, "restore", "single", id], {
            env: pgEnv(dst),
          });
          assertExit(noClean, 1, "restore into non-empty without --clean");
          assertError(noClean, ['"shop"', "not empty", "--clean"], "non-empty target");
          await assertTargetUnchanged("refused restore without --clean");

          const noYes = await dbbackup(["--repo", repo, "restore", "single", id, "--clean"], {
            env: pgEnv(dst),
          });
          assertExit(noYes, 2, "restore --clean without --yes and without a terminal");
          assertError(noYes, ["--yes"], "--clean without confirmation");
          await assertTargetUnchanged("refused restore --clean without --yes");

          const yes = await dbbackup(
            ["--repo", repo, "--yes", "restore", "single", id, "--clean"],
            {
              env: pgEnv(dst),
            },
          );
          assertExit(yes, 0, "restore --clean --yes");
          assertSameSnapshot(await snapshotDatabase(dst, "shop"), source, "target after --clean");
          assertSameSnapshot(
            await snapshotDatabase(dst, "bystander"),
            dstBystander,
            "bystander after the restore",
          );
          assert.deepEqual(await databaseNames(dst), dstDbs, "no database added or removed");
          assert.deepEqual(await treeState(repo), pristine, "the repository is unchanged");
        },
      );

      await t.step(
        "restore into a database that does not exist, without --create: exit 1 mentioning --create",
        async () => {
          const before = await databaseNames(dst);
          const r = await dbbackup(["--repo", repo, "restore", "single", id, "--target", "newdb"], {
            env: pgEnv(dst),
          });
          assertExit(r, 1, "restore without --create");
          assertError(r, ['"newdb"', "does not exist", "--create"], "missing target");
          assert.deepEqual(await databaseNames(dst), before, "no database was created");
          assert.deepEqual(await treeState(repo), pristine, "the repository is unchanged");
        },
      );

      await t.step(
        "a set without manifest.json is listed as incomplete and refused by restore and verify",
        async () => {
          const incomplete = "20200101T000000Z-single-foo";
          await Deno.mkdir(`${repo}/${incomplete}`);
          await Deno.copyFile(
            `${repo}/${id}/${dataFile}`,
            `${repo}/${incomplete}/db-001-foo.pgdump.zst`,
          );
          const state = await treeState(repo);
          const before = await databaseNames(dst);

          const l = await dbbackup(["--repo", repo, "list"], { env: pgEnv(dst) });
          assertExit(l, 0, "list");
          const row = l.stdout.split("\n").find((line) => line.startsWith(incomplete));
          assert.ok(row, `list shows ${incomplete}:\n${l.stdout}`);
          assertIncludes(row, "incomplete", "list row of the incomplete set");

          const lj = await dbbackup(["--repo", repo, "--json", "list"], { env: pgEnv(dst) });
          assertExit(lj, 0, "list --json");
          const sets = JSON.parse(lj.stdout) as { id: string; status: string }[];
          assert.equal(sets.find((s) => s.id === incomplete)?.status, "incomplete");
          assert.equal(sets.find((s) => s.id === id)?.status, "complete");

          const r = await dbbackup(
            ["--repo", repo, "restore", "single", incomplete, "--create", "--target", "y"],
            { env: pgEnv(dst) },
          );
          assertExit(r, 1, "restore of an incomplete set");
          assertError(r, [incomplete, "incomplete"], "restore of an incomplete set");
          assert.deepEqual(await databaseNames(dst), before, 'database "y" was not created');

          const v = await dbbackup(["--repo", repo, "verify", incomplete], { env: pgEnv(dst) });
          assert.notEqual(v.code, 0, `verify of an incomplete set exited 0:\n${v.stdout}`);
          assertError(v, [incomplete, "incomplete"], "verify of an incomplete set");
          assert.deepEqual(await treeState(repo), state, "the repository is unchanged");
        },
      );
    } finally {
      await Deno.remove(repo, { recursive: true });
      for (const dir of scratch) await Deno.remove(dir, { recursive: true });
    }
  });
});

Deno.test("cluster backup as a non-superuser is partial (exit 3), records why, and its failed database cannot be restored", async (t) => {
  await withPg(async (pg) => {
    const repo = await tempRepo();
    const password = "backup-user-pw-93x";
    try {
      await pg.psql(`
        SET password_encryption = 'scram-sha-256';
        CREATE ROLE backup_user LOGIN PASSWORD '${password}';
        CREATE DATABASE ok_db OWNER backup_user;
        CREATE DATABASE locked_db;
      `);
      await pg.psql(SHOP_SQL, { db: "ok_db", user: "backup_user" });
      await pg.psql(
        `CREATE TABLE open_data (id int);
         CREATE TABLE secrets (id int, secret text);
         INSERT INTO secrets VALUES (1, 'top');
         REVOKE ALL ON secrets FROM PUBLIC;
         GRANT SELECT ON open_data TO backup_user;`,
        { db: "locked_db" },
      );
      const okBefore = await snapshotDatabase(pg, "ok_db");
      const lockedBefore = await snapshotDatabase(pg, "locked_db");

      let id = "";
      await t.step(
        "backup cluster -U backup_user exits 3 and the manifest records each failure",
        async () => {
          const r = await dbbackup(
            ["--repo", repo, ...tcpFlags(pg, "backup_user"), "backup", "cluster"],
            { env: tcpEnv(password) },
          );
          assertExit(r, 3, "backup cluster as backup_user");
          assertIncludes(r.stdout + r.stderr, "locked_db", "the failed database is named");
          const sets = await setDirs(repo);
          assert.equal(sets.length, 1, `one set: ${sets}`);
          id = sets[0];

          const m = await readManifest(repo, id) as {
            status: string;
            globals?: { status: string; error?: string };
            databases: { name: string; status: string; error?: string }[];
          };
          assert.equal(m.status, "partial");
          const byName = Object.fromEntries(m.databases.map((d) => [d.name, d]));
          assert.equal(byName.ok_db?.status, "ok", JSON.stringify(byName.ok_db));
          assert.equal(byName.locked_db?.status, "failed", JSON.stringify(byName.locked_db));
          assertIncludes(byName.locked_db.error ?? "", "permission denied", "locked_db reason");
          assertIncludes(
            byName.locked_db.error ?? "",
            "secrets",
            "locked_db reason names the table",
          );
          // pg_dumpall --globals-only reads pg_authid, which only a superuser may.
          assert.equal(m.globals?.status, "failed", JSON.stringify(m.globals));
          assertIncludes(m.globals?.error ?? "", "pg_authid", "globals reason");
          assert.ok(!JSON.stringify(m).includes(password), "the manifest holds no password");
          assert.ok(!(r.stdout + r.stderr).includes(password), "the password was printed");
        },
      );

      await t.step("list --json shows the set as partial", async () => {
        const l = await dbbackup(["--repo", repo, "--json", "list"], { env: pgEnv(pg) });
        assertExit(l, 0, "list --json");
        const sets = JSON.parse(l.stdout) as {
          id: string;
          status: string;
          databases: { name: string; status: string; error?: string }[];
        }[];
        const set = sets.find((s) => s.id === id);
        assert.equal(set?.status, "partial", l.stdout);
        assert.equal(set.databases.find((d) => d.name === "locked_db")?.status, "failed");
      });

      const repoState = await treeState(repo);

      await t.step("the database that was backed up restores and equals its source", async () => {
        const r = await dbbackup(
          [
            "--repo",
            repo,
            "restore",
            "single",
            id,
            "--database",
            "ok_db",
            "--target",
            "ok_copy",
            "--create",
          ],
          { env: pgEnv(pg) },
        );
        assertExit(r, 0, "restore of ok_db");
        assertSameSnapshot(await snapshotDatabase(pg, "ok_copy"), okBefore, "ok_copy");
      });

      await t.step("the database that failed is refused: exit 1, nothing created", async () => {
        const before = await databaseNames(pg);
        const r = await dbbackup(
          [
            "--repo",
            repo,
            "restore",
            "single",
            id,
            "--database",
            "locked_db",
            "--create",
            "--target",
            "z",
          ],
          { env: pgEnv(pg) },
        );
        assertExit(r, 1, "restore of locked_db");
        assertError(r, ['"locked_db"', "failed at backup time"], "restore of a failed database");
        assert.deepEqual(await databaseNames(pg), before, 'database "z" was not created');
      });

      assert.deepEqual(await treeState(repo), repoState, "the repository is unchanged");
      assertSameSnapshot(await snapshotDatabase(pg, "ok_db"), okBefore, "ok_db unchanged");
      assertSameSnapshot(
        await snapshotDatabase(pg, "locked_db"),
        lockedBefore,
        "locked_db unchanged",
      );
    } finally {
      await Deno.remove(repo, { recursive: true });
    }
  });
});

Deno.test("the password never appears in any process's argv, the output or the manifest during a TCP backup", async () => {
  await withPg(async (pg) => {
    const repo = await tempRepo();
    // Unique to this run, so no other process on the machine can hold it by coincidence.
    const password = `pw-${crypto.randomUUID()}`;
    try {
      await pg.psql(await Deno.readTextFile(new URL("./fixtures/roles.sql", import.meta.url)));
      // Through psql's stdin, never argv.
      await pg.psql(`ALTER ROLE alice SUPERUSER PASSWORD '${password}'`);
      await pg.createDatabase("big");
      await pg.psql(
        `CREATE TABLE rows AS
           SELECT g AS id, md5(g::text) AS a, md5((g * 7)::text) AS b
             FROM generate_series(1, 300000) g;`,
        { db: "big" },
      );

      let cliPid = -1;
      const leaks = new Set<string>();
      /** pg_dump processes started by our dbbackup child. */
      const ourPgDumps = new Set<number>();
      let scans = 0;
      let done = false;
      const scan = () => {
        scans++;
        for (const e of Deno.readDirSync("/proc")) {
          if (!/^\d+$/.test(e.name)) continue;
          let argv: string[];
          let stat: string;
          try {
            argv = new TextDecoder().decode(Deno.readFileSync(`/proc/${e.name}/cmdline`))
              .split("\0");
            stat = Deno.readTextFileSync(`/proc/${e.name}/stat`);
          } catch {
            continue; // the process exited meanwhile
          }
          if (argv.some((a) => a.includes(password))) {
            leaks.add(`pid ${e.name}: ${argv.join(" ")}`);
          }
          // stat is "pid (comm) state ppid ...": comm may hold spaces and parentheses.
          const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
          if (argv[0].split("/").at(-1) === "pg_dump" && ppid === cliPid) {
            ourPgDumps.add(Number(e.name));
          }
        }
      };
      const polling = (async () => {
        while (!done) {
          scan();
          await new Promise((resolve) => setTimeout(resolve, 5));
        }
      })();
      let r: CliResult;
      try {
        r = await dbbackup(
          ["--repo", repo, ...tcpFlags(pg, "alice"), "backup", "single", "big"],
          { env: tcpEnv(password), onStart: (pid) => cliPid = pid },
        );
      } finally {
        done = true;
        await polling;
      }
      assertExit(r, 0, "backup single big as alice over TCP");
      assert.ok(ourPgDumps.size > 0, `no pg_dump of dbbackup was observed in ${scans} scans`);
      assert.deepEqual([...leaks], [], "the password appeared in a process's argv");
      assert.ok(!r.stdout.includes(password), "the password is on stdout");
      assert.ok(!r.stderr.includes(password), "the password is on stderr");
      const [id] = await setDirs(repo);
      const manifest = await Deno.readTextFile(`${repo}/${id}/manifest.json`);
      assert.ok(!manifest.includes(password), "the password is in manifest.json");
    } finally {
      await Deno.remove(repo, { recursive: true });
    }
  });
});
