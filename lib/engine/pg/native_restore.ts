/**
 * Restore of a natively dumped database: the schema archive's pre-data section, then every
 * chunk through `COPY ... FROM STDIN` on `jobs` connections at once, then the archive's data
 * section (sequence values, large objects), then post-data (indexes, constraints, triggers)
 * with `jobs` pg_restore workers. Every chunk is checked against its checksums as it streams;
 * a mismatch stops the restore and names the chunk.
 */
import type { DatabaseRecord, FileRecord } from "../../repo/manifest.ts";
import type { Repository } from "../../repo/repository.ts";
import { largestFirst } from "../../plan/chunks.ts";
import { DbBackupError } from "../../errors.ts";
import type { Reporter } from "../../ops/progress.ts";
import { mapPool } from "../../ops/_pool.ts";
import { dbnameConninfo, type PgTarget, quoteIdent } from "./connect.ts";
import { COPY_SESSION_ENV } from "./native_dump.ts";
import { feedChild, spawn } from "../../process/run.ts";
import { restoreArchive } from "./pg_restore.ts";
import type { PgTool } from "./tools.ts";

export interface NativeRestoreOptions {
  target: PgTarget;
  repo: Repository;
  setId: string;
  record: DatabaseRecord;
  /** The database to fill (it exists, or pre-data creates it with `createFromArchive`). */
  database: string;
  /** pg_restore --create: the database is created from the archive, with its properties. */
  createFromArchive: boolean;
  /** With createFromArchive: drop the database first if it exists. */
  dropFirst: boolean;
  jobs: number;
  /** Whether pg_restore may spool the schema archive to local disk for parallel post-data. */
  spool: boolean;
  /** --table/--schema: only these tables, and only the archive entries of `listFile`. */
  only?: { tables: { schema: string; name: string }[]; listFile: string; clean: boolean };
  pgRestore: PgTool;
  psql: PgTool;
  reporter: Reporter;
  signal?: AbortSignal;
}

export async function restoreDatabaseNative(o: NativeRestoreOptions): Promise<void> {
  const layout = o.record.native;
  if (!layout) {
    throw new DbBackupError("verification", `database "${o.record.name}" has no native layout`);
  }
  const files = new Map<string, FileRecord>(o.record.files.map((f) => [f.path, f]));
  const file = (path: string) => {
    const f = files.get(path);
    if (!f) throw new DbBackupError("verification", `manifest lists no file ${path}`);
    return f;
  };
  const schema = file(layout.schemaPath);
  const describe = (what: string) =>
    `${what} of "${o.record.name}" into "${o.database}" at ${o.target.endpoint}`;
  const section = async (name: "pre-data" | "data" | "post-data", jobs: number) => {
    o.reporter.event({
      type: "step",
      part: o.database,
      message: `restoring ${name} of "${o.database}"`,
    });
    await restoreArchive(o.pgRestore, o.target, await o.repo.openFile(o.setId, schema), {
      database: name === "pre-data" && o.createFromArchive ? "postgres" : o.database,
      jobs,
      spool: o.spool,
      clean: name === "pre-data" && (o.dropFirst || (o.only?.clean ?? false)),
      listFile: o.only?.listFile,
      create: name === "pre-data" && o.createFromArchive,
      section: name,
      signal: o.signal,
      describe: describe(`pg_restore --section=${name}`),
    });
  };

  await section("pre-data", 1);

  const only = o.only;
  const tables = only
    ? layout.tables.filter((t) =>
      only.tables.some((s) => s.schema === t.schema && s.name === t.name)
    )
    : layout.tables;
  const chunks = largestFirst(
    tables.flatMap((t) =>
      t.chunks.map((c) => ({ table: t, chunk: c, bytes: file(c.path).rawBytes }))
    ),
  );
  o.reporter.event({
    type: "step",
    part: o.database,
    message: `copying ${chunks.length} chunk(s) of ${tables.length} table(s)`,
  });
  // Each chunk goes through a psql child's COPY FROM STDIN, one transaction per chunk: a
  // chunk whose checksum fails is cut off before its last piece and psql is killed, so the
  // server rolls it back and no row of it stays behind.
  await mapPool(chunks, o.jobs, async ({ table, chunk }) => {
    if (o.signal?.aborted) throw o.signal.reason;
    const qualified = `${quoteIdent(table.schema)}.${quoteIdent(table.name)}`;
    const cols = table.columns.length ? ` (${table.columns.join(", ")})` : "";
    const data = await o.repo.openFile(o.setId, file(chunk.path));
    const child = spawn(o.psql.path, [
      "--no-psqlrc",
      "--quiet",
      "--no-password",
      "--set",
      "ON_ERROR_STOP=1",
      "--command",
      `COPY ${qualified}${cols} FROM STDIN`,
      "--dbname",
      dbnameConninfo(o.database),
    ], {
      describe: describe(`COPY of chunk ${chunk.path}`),
      env: { ...o.target.childEnv(), ...COPY_SESSION_ENV },
      clearEnv: true,
      stdin: "piped",
      stdout: "null",
      signal: o.signal,
    });
    await Promise.all([feedChild(child, data), child.status]);
  });

  await section("data", 1);
  await section("post-data", o.jobs);
}
