/**
 * Benchmark: dbbackup against pg_dump/pg_restore on the same data, in one run.
 *
 *   deno run -A scripts/bench.ts [--scale N] [--jobs N] [--rounds N] [--keep]
 *
 * Builds a dataset on a throwaway server (pgbench at --scale, a wide text/jsonb table, a
 * table of 64 KB-1 MB bytea values, a few hundred small tables), then backs it up with
 * `pg_dump -Fc`, `pg_dump -Fd -j N`, dbbackup --engine pg_dump and dbbackup --engine native,
 * restores each into a fresh database, checks each restore's row counts, and prints wall
 * time, CPU time (user+sys of the tool and its children, not the server), the machine's busy
 * CPU time during the step (the server's work included: with everything else idle, what the
 * step cost the machine), peak RSS (the largest process of the tool's tree, from GNU time)
 * and output size, with ratios to the
 * pg_dump figures of the same run. Scale 100 gives about 2.3 GB of raw data. Before every
 * step: CHECKPOINT, sync, and a read of what the step reads (the database's files, or the
 * backup it restores), so no step pays for the one before or finds its input evicted.
 */
import { run } from "../lib/process/run.ts";
import { startPg } from "../tests/helpers/pg_server.ts";
import { V8_FLAGS_ARG } from "../lib/v8_flags.ts";

const args = parseArgs(Deno.args);
const scale = Number(args.scale ?? "10");
const jobs = Number(args.jobs ?? "2");
const rounds = Number(args.rounds ?? "1");
if (!Number.isInteger(rounds) || rounds < 1) {
  throw new Error(`--rounds: expected a whole number of at least 1, got "${args.rounds}"`);
}
const MAIN = new URL("../main.ts", import.meta.url).pathname;

interface Measure {
  wall: number;
  /**
   * CPU seconds the whole machine was busy during the step (server, tool, everything else:
   * /proc/stat), or NaN where that cannot be read. On a busy-bound machine, wall time cannot go
   * below this divided by the cores.
   */
  busy: number;
  cpu: number;
  rssMb: number;
}

interface Result {
  name: string;
  backup: Measure;
  size: number;
  restore: Measure;
}

const pg = await startPg();
const work = await Deno.makeTempDir({ prefix: "dbbackup-bench-" });
await Deno.chown(work, 0, 0).catch(() => {});
try {
  const bin = pg.binDir;
  const env = pg.env();
  const clientEnv = { ...env, PGPASSFILE: "/dev/null" };
  log(`PostgreSQL ${pg.version}, scale ${scale}, jobs ${jobs}, ${Deno.build.target}`);

  log("building the dataset ...");
  await pg.createDatabase("bench");
  await run(`${bin}/pgbench`, ["-i", "-q", "-s", String(scale), "bench"], {
    describe: "pgbench -i",
    env,
    clearEnv: true,
  });
  const n = scale * 10000;
  await pg.psql(
    `
    CREATE TABLE wide (id bigint PRIMARY KEY, title text, body text, doc jsonb, tags text[]);
    INSERT INTO wide
      SELECT g, 'title ' || g, repeat(md5(g::text) || ' lorem ipsum dolor sit amet ', 12),
             jsonb_build_object('id', g, 'name', 'item ' || g, 'price', (g % 1000) / 10.0,
                                'attrs', jsonb_build_object('color', g % 7, 'size', g % 13)),
             ARRAY['t' || (g % 10), 't' || (g % 100)]
        FROM generate_series(1, ${n}) g;
    CREATE TABLE blobs (id int PRIMARY KEY, data bytea);
    INSERT INTO blobs
      SELECT g, decode(string_agg(md5(g::text || ':' || k::text), ''), 'hex')
        FROM generate_series(1, ${Math.max(10, Math.round(scale * 4))}) g,
             generate_series(1, 4096 + (g * 7919) % 61440) k
       GROUP BY g;
    DO $$ BEGIN
      FOR i IN 1..300 LOOP
        EXECUTE format('CREATE TABLE small_%s (id int PRIMARY KEY, v text)', i);
        EXECUTE format('INSERT INTO small_%s SELECT g, md5(g::text) FROM generate_series(1, 50) g', i);
      END LOOP;
    END $$;
    VACUUM ANALYZE;`,
    { db: "bench" },
  );
  const raw = Number(
    (await pg.psql("SELECT pg_database_size('bench')", { db: "bench" })).trim(),
  );
  const counts = await rowCounts("bench");
  log(`dataset: ${(raw / 1e9).toFixed(2)} GB on disk, ${counts.size} tables`);

  /** One list per round, in the same order each round. */
  const results: Result[][] = [];
  const benchDir = `${pg.dataDir}/base/${
    (await pg.psql("SELECT oid FROM pg_database WHERE datname = 'bench'")).trim()
  }`;
  /**
   * Every step starts from the same state: no dirty buffers or dirty pages left by the step
   * before (their writeback would slow this one's reads and fsyncs), and what it reads (the
   * database, or the backup it restores) in the page cache. (Seen here: the kernel reclaims
   * cold page cache proactively, so without this the later steps read from disk.)
   */
  const settle = async (reads: string[]) => {
    await pg.psql("CHECKPOINT");
    await run("sync", [], { describe: "sync" });
    for (const path of reads) await readAll(path);
  };
  const time = async (
    name: string,
    cmd: string,
    argv: string[],
    reads: string[],
    e = clientEnv,
  ) => {
    await settle(reads);
    const busyBefore = await machineBusySeconds();
    const out = await run("/usr/bin/time", ["-f", "BENCH %e %U %S %M", cmd, ...argv], {
      describe: name,
      env: e,
      clearEnv: true,
    });
    const m = out.stderr.match(/BENCH ([\d.]+) ([\d.]+) ([\d.]+) (\d+)/);
    if (!m) throw new Error(`${name}: no timing in ${out.stderr.slice(-500)}`);
    const busy = (await machineBusySeconds()) - busyBefore;
    return {
      wall: Number(m[1]),
      busy,
      cpu: Number(m[2]) + Number(m[3]),
      rssMb: Number(m[4]) / 1024,
    };
  };
  const fresh = async (db: string) => {
    await pg.psql(`DROP DATABASE IF EXISTS ${db}`);
    await pg.createDatabase(db);
  };
  const check = async (db: string, what: string) => {
    const got = await rowCounts(db);
    for (const [t, c] of counts) {
      if (got.get(t) !== c) {
        throw new Error(`${what}: table ${t} has ${got.get(t)} rows, expected ${c}`);
      }
    }
    // The next restore should not pay for this one's disk space and WAL.
    await pg.psql(`DROP DATABASE ${db}`);
  };
  const dbb = (extra: string[]) => [
    "run",
    "-A",
    V8_FLAGS_ARG,
    MAIN,
    "--repo",
    `${work}/repo`,
    "-j",
    String(jobs),
    "--quiet",
    ...extra,
  ];

  /** A reference run: pg_dump `dumpArgs` into `out`, then pg_restore -j of it into `db`. */
  const reference = async (
    name: string,
    dumpArgs: string[],
    out: string,
    db: string,
  ): Promise<Result> => {
    log(`${name} ...`);
    const backup = await time(name, `${bin}/pg_dump`, [...dumpArgs, "-f", out, "bench"], [
      benchDir,
    ]);
    await fresh(db);
    const restore = await time(`pg_restore of ${name}`, `${bin}/pg_restore`, [
      `-j${jobs}`,
      "-d",
      db,
      out,
    ], [out]);
    await check(db, `pg_restore of ${name}`);
    return { name, backup, size: await size(out), restore };
  };

  for (let n = 1; n <= rounds; n++) {
    if (rounds > 1) log(`round ${n} of ${rounds}`);
    const round: Result[] = [];
    for (const old of ["bench.dump", "bench.dir", "repo"]) {
      await Deno.remove(`${work}/${old}`, { recursive: true }).catch(() => {});
    }
    round.push(await reference("pg_dump -Fc", ["-Fc"], `${work}/bench.dump`, "r_fc"));
    round.push(
      await reference(`pg_dump -Fd -j${jobs}`, ["-Fd", `-j${jobs}`], `${work}/bench.dir`, "r_fd"),
    );

    for (const engine of ["pg_dump", "native"]) {
      log(`dbbackup --engine ${engine} ...`);
      const before = new Set(await listDir(`${work}/repo`));
      const b = await time(
        `dbbackup ${engine}`,
        Deno.execPath(),
        dbb(["backup", "single", "bench", "--engine", engine]),
        [benchDir],
      );
      // The new set's folder (the repository also has its locks/ folder).
      const id = (await listDir(`${work}/repo`)).find((x) => !before.has(x) && x !== "locks")!;
      const db = `r_${engine}`;
      const r = await time(
        `dbbackup restore ${engine}`,
        Deno.execPath(),
        dbb([
          "restore",
          "single",
          id,
          "--target",
          db,
          "--create",
        ]),
        [`${work}/repo/${id}`],
      );
      await check(db, `dbbackup restore of ${engine}`);
      round.push({
        name: `dbbackup ${engine}`,
        backup: b,
        size: await size(`${work}/repo/${id}`),
        restore: r,
      });
    }
    results.push(round);
  }

  // Ratios are taken within a round (this machine's speed drifts between minutes), and with
  // several rounds each figure is the median over the rounds.
  const median = (xs: number[]) => {
    const sorted = [...xs].sort((a, b) => a - b);
    const mid = Math.floor(sorted.length / 2);
    return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  };
  const figure = (i: number, f: (round: Result[], r: Result) => number) =>
    median(results.map((round) => f(round, round[i])));
  const rows = [[
    "tool",
    "backup s",
    "x -Fc",
    "x -Fd",
    "cpu s",
    "busy s",
    "rss MB",
    "size MB",
    "x -Fc",
    "restore s",
    "x pg_restore -Fd",
    "busy s",
    "rss MB",
  ]];
  // results[n][0] is pg_dump -Fc, [1] pg_dump -Fd (whose pg_restore is the restore reference).
  results[0].forEach((r, i) => {
    rows.push([
      r.name,
      figure(i, (_, x) => x.backup.wall).toFixed(1),
      figure(i, (round, x) => x.backup.wall / round[0].backup.wall).toFixed(2),
      figure(i, (round, x) => x.backup.wall / round[1].backup.wall).toFixed(2),
      figure(i, (_, x) => x.backup.cpu).toFixed(1),
      figure(i, (_, x) => x.backup.busy).toFixed(1),
      figure(i, (_, x) => x.backup.rssMb).toFixed(0),
      (figure(i, (_, x) => x.size) / 1e6).toFixed(0),
      figure(i, (round, x) => x.size / round[0].size).toFixed(2),
      figure(i, (_, x) => x.restore.wall).toFixed(1),
      figure(i, (round, x) => x.restore.wall / round[1].restore.wall).toFixed(2),
      figure(i, (_, x) => x.restore.busy).toFixed(1),
      figure(i, (_, x) => x.restore.rssMb).toFixed(0),
    ]);
  });
  console.log(
    `\nscale ${scale}, ${
      (raw / 1e9).toFixed(2)
    } GB database, jobs ${jobs}, ${navigator.hardwareConcurrency} cores, PostgreSQL ${pg.version}${
      rounds > 1 ? `, median of ${rounds} rounds` : ""
    }\n`,
  );
  console.log(markdownTable(rows));
  if (rounds > 1) {
    console.log("\nnative engine, each round:");
    const native = results[0].length - 1;
    results.forEach((round, n) => {
      const x = round[native];
      console.log(
        `round ${n + 1}: backup ${x.backup.wall.toFixed(1)} s = ${
          (x.backup.wall / round[0].backup.wall).toFixed(2)
        }x -Fc (${round[0].backup.wall.toFixed(1)} s), ${
          (x.backup.wall / round[1].backup.wall).toFixed(2)
        }x -Fd; size ${(x.size / round[0].size).toFixed(2)}x; restore ${
          x.restore.wall.toFixed(1)
        } s = ${(x.restore.wall / round[1].restore.wall).toFixed(2)}x pg_restore -Fd (${
          round[1].restore.wall.toFixed(1)
        } s); restore busy ${x.restore.busy.toFixed(1)} CPU-s (pg_restore -Fd: ${
          round[1].restore.busy.toFixed(1)
        }); rss ${x.backup.rssMb.toFixed(0)} / ${x.restore.rssMb.toFixed(0)} MB`,
      );
    });
  }
} finally {
  if (!args.keep) await Deno.remove(work, { recursive: true }).catch(() => {});
  await pg.stop();
}

/**
 * CPU seconds all cores have been busy since boot (user, nice, system, irq, softirq, steal:
 * everything but idle and iowait), from /proc/stat; NaN where there is none.
 */
async function machineBusySeconds(): Promise<number> {
  try {
    const line = (await Deno.readTextFile("/proc/stat")).split("\n")[0];
    const [user, nice, system, , , irq, softirq, steal] = line.trim().split(/\s+/).slice(1)
      .map(Number);
    // USER_HZ is 100 on every Linux this runs on.
    return (user + nice + system + irq + softirq + steal) / 100;
  } catch {
    return NaN;
  }
}

async function rowCounts(db: string): Promise<Map<string, number>> {
  const out = await pg.psql(
    `SELECT c.relname, (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I', c.relname), false, true, '')))[1]::text
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind = 'r' AND n.nspname = 'public'`,
    { db },
  );
  const m = new Map<string, number>();
  for (const line of out.trim().split("\n")) {
    const [t, c] = line.split("|");
    m.set(t, Number(c));
  }
  return m;
}

/** Reads every file under `path` (a file or a folder) once, so it is in the page cache. */
async function readAll(path: string): Promise<void> {
  const st = await Deno.stat(path);
  if (st.isDirectory) {
    for await (const e of Deno.readDir(path)) await readAll(`${path}/${e.name}`);
    return;
  }
  if (!st.isFile) return;
  const file = await Deno.open(path);
  try {
    const buffer = new Uint8Array(1 << 20);
    while (await file.read(buffer) !== null) {
      // only the reading matters
    }
  } finally {
    file.close();
  }
}

async function size(path: string): Promise<number> {
  const st = await Deno.stat(path);
  if (st.isFile) return st.size;
  let total = 0;
  for await (const e of Deno.readDir(path)) total += await size(`${path}/${e.name}`);
  return total;
}

async function listDir(path: string): Promise<string[]> {
  const out: string[] = [];
  try {
    for await (const e of Deno.readDir(path)) out.push(e.name);
  } catch {
    // not there yet
  }
  return out;
}

function markdownTable(rows: string[][]): string {
  const line = (r: string[]) => `| ${r.join(" | ")} |`;
  return [line(rows[0]), line(rows[0].map(() => "---")), ...rows.slice(1).map(line)].join("\n");
}

function log(text: string): void {
  console.error(`[${new Date().toISOString().slice(11, 19)}] ${text}`);
}

function parseArgs(argv: string[]): Record<string, string | undefined> {
  const out: Record<string, string | undefined> = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith("--")) continue;
    const [k, v] = a.slice(2).split("=");
    if (v !== undefined) out[k] = v;
    else if (argv[i + 1] && !argv[i + 1].startsWith("--")) out[k] = argv[++i];
    else out[k] = "true";
  }
  return out;
}
