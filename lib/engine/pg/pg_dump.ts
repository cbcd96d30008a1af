/** pg_dump and pg_dumpall as children whose stdout is the backup data. */
import { type ChildHandle, spawn } from "../../process/run.ts";
import { dbnameConninfo, type PgTarget } from "./connect.ts";
import type { PgTool } from "./tools.ts";

/**
 * Starts `pg_dump --format=custom` of one database, uncompressed (dbbackup compresses the
 * stream itself). The database name goes in a quoted conninfo so no name is ever parsed as
 * an option or a connection string.
 */
export function startDatabaseDump(
  tool: PgTool,
  target: PgTarget,
  database: string,
  signal?: AbortSignal,
  extraArgs: readonly string[] = [],
): ChildHandle {
  return spawn(tool.path, [
    "--format=custom",
    "--compress=0",
    "--no-password",
    ...extraArgs,
    "--dbname",
    dbnameConninfo(database),
  ], {
    describe: `pg_dump of database "${database}" at ${target.endpoint}`,
    env: target.childEnv(),
    clearEnv: true,
    signal,
    largeWrites: tool.largeWrites,
  });
}

/** Starts `pg_dumpall --globals-only`: roles, memberships, tablespaces, role settings. */
export function startGlobalsDump(
  tool: PgTool,
  target: PgTarget,
  signal?: AbortSignal,
): ChildHandle {
  return spawn(tool.path, [
    "--globals-only",
    "--no-password",
    "--dbname",
    dbnameConninfo("postgres"),
  ], {
    describe: `pg_dumpall --globals-only at ${target.endpoint}`,
    env: target.childEnv(),
    clearEnv: true,
    signal,
  });
}
