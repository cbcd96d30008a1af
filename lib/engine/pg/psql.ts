/**
 * psql as a child that runs a few SQL commands in one session: the native engine's COPY TO and
 * COPY FROM. Connection settings and the password reach it through the environment only.
 */
import { type ChildHandle, spawn } from "../../process/run.ts";
import { dbnameConninfo, pgOptions, type PgTarget, SESSION_SETTINGS } from "./connect.ts";
import type { PgTool } from "./tools.ts";

/** The session settings of postgres.js connections (connect.ts SESSION_SETTINGS). */
const SESSION_ENV: Record<string, string> = {
  PGOPTIONS: pgOptions(SESSION_SETTINGS),
  PGCLIENTENCODING: "UTF8",
};

export interface PsqlOptions {
  describe: string;
  /** "piped" when a command reads COPY data from stdin. */
  stdin?: "piped" | "null";
  /** "piped" when a command writes COPY data to stdout. */
  stdout?: "piped" | "null";
  /**
   * Command statuses go to stderr (--output), so stdout carries nothing but the data. psql
   * runs quietly all the same: a `\set QUIET off` command before the one whose status is wanted
   * ("COPY n" of a `\copy ... to pstdout`) prints it, and a failure's message is not buried in
   * the statuses of the commands before it.
   */
  statusToStderr?: boolean;
  signal?: AbortSignal;
}

/**
 * Runs `commands` in order in one psql session on `database`; the first failing one ends it
 * with a non-zero exit status. COPY ... FROM STDIN commands read stdin up to a `\.` line each.
 */
export function spawnPsql(
  tool: PgTool,
  target: PgTarget,
  database: string,
  commands: readonly string[],
  options: PsqlOptions,
): ChildHandle {
  return start(tool, target, database, commands.flatMap((c) => ["--command", c]), options);
}

/**
 * Runs the SQL script on its stdin (psql's own format: COPY ... FROM stdin with inline data),
 * stopping at the first error. The script brings its own BEGIN and, last, COMMIT: a script cut
 * short (this process died) then ends without COMMIT, and the server rolls it back. (Not
 * --single-transaction: psql commits that at end-of-file, whatever arrived.)
 */
export function spawnPsqlScript(
  tool: PgTool,
  target: PgTarget,
  database: string,
  options: Omit<PsqlOptions, "stdin" | "stdout">,
): ChildHandle {
  return start(tool, target, database, ["--file=-"], { ...options, stdin: "piped" });
}

function start(
  tool: PgTool,
  target: PgTarget,
  database: string,
  what: readonly string[],
  options: PsqlOptions,
): ChildHandle {
  return spawn(tool.path, [
    "--no-psqlrc",
    "--quiet",
    ...(options.statusToStderr ? ["--output=/dev/stderr"] : []),
    "--no-password",
    "--set",
    "ON_ERROR_STOP=1",
    ...what,
    "--dbname",
    dbnameConninfo(database),
  ], {
    describe: options.describe,
    env: { ...target.childEnv(), ...SESSION_ENV },
    clearEnv: true,
    stdin: options.stdin ?? "null",
    stdout: options.stdout ?? "null",
    signal: options.signal,
    largeWrites: options.stdout === "piped" && tool.largeWrites,
  });
}
