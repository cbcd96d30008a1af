/**
 * Runs dbbackup's CLI (main.ts) as a child process, the way a user or a systemd unit would,
 * with an explicit environment: nothing from the test process leaks in.
 */
import { spawn } from "../../lib/process/run.ts";
import { cleanEnv, type PgServer } from "./pg_server.ts";

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
}

/** `dbbackup <args>`; never throws on a non-zero exit (the exit code is the result). */
export async function dbbackup(args: string[], options: CliOptions = {}): Promise<CliResult> {
  const child = spawn(Deno.execPath(), ["run", "-A", "--quiet", MAIN, ...args], {
    describe: `dbbackup ${args.join(" ")}`,
    env: cleanEnv({ NO_COLOR: "1", ...options.env }),
    clearEnv: true,
    okCodes: Array.from({ length: 256 }, (_, i) => i),
  });
  options.onStart?.(child.pid);
  const [stdout, status] = await Promise.all([new Response(child.stdout).text(), child.status]);
  return { code: status.code, stdout, stderr: status.stderr };
}

/** Environment for dbbackup to reach `pg` over its unix socket as the superuser. */
export function pgEnv(pg: PgServer, extra: Record<string, string> = {}): Record<string, string> {
  return { ...pg.env(), PGPASSFILE: "/nonexistent/pgpass", ...extra };
}

/** A fresh empty folder for a repository; remove it with `Deno.remove(dir, {recursive})`. */
export async function tempRepo(): Promise<string> {
  return await Deno.makeTempDir({ prefix: "dbbackup-test-repo-" });
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
