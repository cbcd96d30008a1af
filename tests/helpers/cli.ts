/**
 * Runs dbbackup's CLI (main.ts) as a child process, the way a user or a systemd unit would,
 * with an explicit environment: nothing from the test process leaks in.
 */
import { spawn } from "../../lib/process/run.ts";
import { V8_FLAGS_ARG } from "../../lib/v8_flags.ts";
import { cleanEnv, type PgServer } from "./pg_server.ts";
import { waitFor } from "./wait.ts";

const MAIN = new URL("../../main.ts", import.meta.url).pathname;

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface CliOptions {
  env?: Record<string, string>;
  /** Called with the child's pid once it started. */
  onStart?: (pid: number) => void;
  /** A run longer than this is SIGKILLed and throws: a hung run fails the test, not the suite. */
  limitMs?: number;
}

/** `dbbackup <args>`; never throws on a non-zero exit (the exit code is the result). */
export async function dbbackup(args: string[], options: CliOptions = {}): Promise<CliResult> {
  const child = spawn(Deno.execPath(), ["run", "-A", "--quiet", V8_FLAGS_ARG, MAIN, ...args], {
    describe: `dbbackup ${args.join(" ")}`,
    env: cleanEnv({ NO_COLOR: "1", ...options.env }),
    clearEnv: true,
    okCodes: Array.from({ length: 256 }, (_, i) => i),
  });
  options.onStart?.(child.pid);
  let hung = false;
  const timer = options.limitMs === undefined ? undefined : setTimeout(() => {
    hung = true;
    child.kill("SIGKILL");
  }, options.limitMs);
  try {
    const [stdout, status] = await Promise.all([new Response(child.stdout).text(), child.status]);
    if (hung) {
      throw new Error(
        `dbbackup ${
          args.join(" ")
        } did not finish in ${options.limitMs} ms:\n${stdout}${status.stderr}`,
      );
    }
    return { code: status.code, stdout, stderr: status.stderr };
  } finally {
    clearTimeout(timer);
  }
}

/** Environment for dbbackup to reach `pg` over its unix socket as the superuser. */
export function pgEnv(pg: PgServer, extra: Record<string, string> = {}): Record<string, string> {
  return { ...pg.env(), PGPASSFILE: "/nonexistent/pgpass", ...extra };
}

/** A fresh empty folder for a repository; remove it with `Deno.remove(dir, {recursive})`. */
export async function tempRepo(): Promise<string> {
  return await Deno.makeTempDir({ prefix: "dbbackup-test-repo-" });
}

/** Whether `path` exists (an error other than "not found" is thrown). */
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}

/**
 * The folders of a repository (complete sets or not), except `locks/`, the repository's lock
 * folder; `lockFiles` lists what is in that one.
 */
export async function setDirs(repo: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(repo)) {
    if (e.isDirectory && e.name !== "locks") out.push(e.name);
  }
  return out.sort();
}

/** The lock files held in a repository right now. */
export async function lockFiles(repo: string): Promise<string[]> {
  const out: string[] = [];
  try {
    for await (const e of Deno.readDir(`${repo}/locks`)) out.push(e.name);
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  return out.sort();
}

/** Loads the awkward dataset (roles first) into a new database `db` on `pg`. */
export async function loadAwkward(pg: PgServer, db: string, withRoles = true): Promise<void> {
  const dir = new URL("../fixtures/", import.meta.url);
  if (withRoles) await pg.psql(await Deno.readTextFile(new URL("roles.sql", dir)));
  await pg.createDatabase(db);
  await pg.psql(await Deno.readTextFile(new URL("awkward.sql", dir)), { db });
}

/**
 * Runs `dbbackup <args>` and SIGKILLs it as soon as `ready()` returns a value (polled); fails
 * when the run ends first. Returns that value, the killed pid and the result (exit 137).
 */
export async function dbbackupKilledWhen<T>(
  args: string[],
  env: Record<string, string>,
  what: string,
  ready: () => Promise<T | undefined>,
  run: (args: string[], options: CliOptions) => Promise<CliResult> = dbbackup,
): Promise<{ value: T; pid: number; result: CliResult }> {
  let pid = 0;
  let finished: CliResult | undefined;
  const running = run(args, { env, onStart: (p) => pid = p });
  let settled = false;
  running.then((r) => finished = r, () => {}).finally(() => settled = true);
  let value: T;
  try {
    value = await waitFor(what, async () => {
      if (settled) {
        if (!finished) await running; // throws why it failed
        throw new Error(
          `the backup ended (exit ${finished!.code}) before ${what} were seen:\n${
            finished!.stderr
          }`,
        );
      }
      return await ready();
    }, 30_000);
  } finally {
    if (!settled) Deno.kill(pid, "SIGKILL");
  }
  const result = await running;
  if (result.code !== 137) {
    throw new Error(
      `expected the run to be killed by SIGKILL (137), got ${result.code}: ${result.stderr}`,
    );
  }
  return { value, pid, result };
}

/**
 * argv of `backup single <db>` into `repo` through the native engine with one job and
 * `chunkSize` chunks (small, so a test table is split), then `extra`.
 */
export function nativeBackupArgs(
  repo: string,
  db: string,
  chunkSize: string,
  extra: string[] = [],
): string[] {
  return [
    "--repo",
    repo,
    "-j",
    "1",
    "backup",
    "single",
    db,
    "--engine",
    "native",
    "--chunk-size",
    chunkSize,
    ...extra,
  ];
}

/**
 * A database `db` whose table `wide` holds `rows` rows of md5 text (about 350 bytes each),
 * plus a small table and a sequence, so that a native backup takes a while.
 */
export async function loadWide(pg: PgServer, db: string, rows: number): Promise<void> {
  await pg.createDatabase(db);
  await pg.psql(
    `CREATE TABLE wide (id bigserial PRIMARY KEY, a text, b text, n int);
     INSERT INTO wide (a, b, n)
       SELECT repeat(md5(g::text), 5), repeat(md5((g * 7)::text), 5), g % 1000
       FROM generate_series(1, ${rows}) g;
     CREATE TABLE small (k text PRIMARY KEY, v jsonb);
     INSERT INTO small SELECT 'k' || g, jsonb_build_object('g', g) FROM generate_series(1, 500) g;
     CREATE SEQUENCE counter START 40;
     SELECT nextval('counter');
     VACUUM ANALYZE;`,
    { db },
  );
}

/** The last line of a `--json` run's stdout, parsed: the summary object. */
// deno-lint-ignore no-explicit-any
export function summaryOf(r: CliResult): any {
  return JSON.parse(r.stdout.trim().split("\n").at(-1)!);
}
