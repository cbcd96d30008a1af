/**
 * Restore of a natively dumped database: the schema archive's pre-data section, then every
 * chunk through `COPY ... FROM STDIN` on `jobs` connections at once, then the archive's data
 * section (sequence values, large objects), then post-data (indexes, constraints, triggers)
 * with `jobs` pg_restore workers. Every chunk is checked against its checksums as it streams;
 * a mismatch stops the restore and names the chunk.
 */
import type { ChunkRecord, DatabaseRecord, FileRecord, TableRecord } from "../../repo/manifest.ts";
import type { Repository } from "../../repo/repository.ts";
import { DbBackupError } from "../../errors.ts";
import type { Reporter } from "../../ops/progress.ts";
import { dbnameConninfo, type PgTarget, quoteIdent } from "./connect.ts";
import { COPY_SESSION_ENV } from "./native_dump.ts";
import { feedChild, spawn } from "../../process/run.ts";
import { restoreArchive, withListFile } from "./pg_restore.ts";
import {
  type ArchiveToc,
  postDataByTable,
  readArchiveToc,
  tableKey,
  tocListFile,
} from "./archive_toc.ts";
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

/**
 * Tables at least this big, or split into chunks, get their indexes and keys built as soon as
 * their rows are in.
 */
const EARLY_POST_DATA_BYTES = 32 * 1024 * 1024;

/** Which post-data entries of the big tables can be restored as soon as each table is loaded. */
async function earlyPostData(
  o: NativeRestoreOptions,
  schema: FileRecord,
  tables: readonly TableRecord[],
): Promise<Map<string, number[]>> {
  const big = tables.filter((t) => t.chunks.length > 1 || t.bytes >= EARLY_POST_DATA_BYTES);
  if (big.length === 0) return new Map();
  const toc = await readArchiveToc(await o.repo.openFile(o.setId, schema), schema.path);
  return postDataByTable(toc, big);
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
  // Big tables first, each table's chunks one after another: a table is complete early and its
  // indexes and keys are built (below) while the other worker still loads rows.
  const sizeOf = (t: TableRecord) => t.chunks.reduce((n, c) => n + file(c.path).rawBytes, 0);
  const ordered = [...tables].sort((a, b) => sizeOf(b) - sizeOf(a));
  const queue = ordered.flatMap((t) => t.chunks.map((chunk) => ({ table: t, chunk })));
  const early = only ? new Map<string, number[]>() : await earlyPostData(o, schema, ordered);
  const left = new Map(ordered.map((t) => [t, t.chunks.length]));
  o.reporter.event({
    type: "step",
    part: o.database,
    message: `copying ${queue.length} chunk(s) of ${tables.length} table(s)`,
  });
  const copyChunk = async (table: TableRecord, chunk: ChunkRecord) => {
    const qualified = `${quoteIdent(table.schema)}.${quoteIdent(table.name)}`;
    const cols = table.columns.length ? ` (${table.columns.join(", ")})` : "";
    const data = await o.repo.openFile(o.setId, file(chunk.path));
    // Each chunk goes through a psql child's COPY FROM STDIN, one transaction per chunk: a
    // chunk whose checksum fails is cut off before its last piece and psql is killed, so the
    // server rolls it back and no row of it stays behind.
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
  };
  let toc: ArchiveToc | undefined;
  const tocOf = async () =>
    toc ??= await readArchiveToc(await o.repo.openFile(o.setId, schema), schema.path);
  let failed = false;
  // Tables being loaded right now: two sessions loading one table slow each other down
  // (relation extension lock), so a worker prefers a chunk of another table.
  const loading = new Map<TableRecord, number>();
  const next = () => {
    const i = queue.findIndex((j) => !loading.get(j.table));
    return queue.splice(i < 0 ? 0 : i, 1)[0];
  };
  const worker = async () => {
    while (queue.length > 0 && !failed) {
      if (o.signal?.aborted) throw o.signal.reason;
      const { table, chunk } = next();
      loading.set(table, (loading.get(table) ?? 0) + 1);
      try {
        try {
          await copyChunk(table, chunk);
        } finally {
          loading.set(table, loading.get(table)! - 1);
        }
        const remaining = left.get(table)! - 1;
        left.set(table, remaining);
        const ids = early.get(tableKey(table));
        if (remaining === 0 && ids) {
          o.reporter.event({
            type: "step",
            part: o.database,
            message: `building the indexes and keys of ${table.schema}.${table.name}`,
          });
          await withListFile(
            tocListFile(await tocOf(), new Set(ids)),
            async (listFile) =>
              restoreArchive(o.pgRestore, o.target, await o.repo.openFile(o.setId, schema), {
                database: o.database,
                jobs: 1,
                clean: false,
                create: false,
                section: "post-data",
                listFile,
                signal: o.signal,
                describe: describe(`indexes and keys of ${table.schema}.${table.name}`),
              }),
          );
        }
      } catch (err) {
        failed = true;
        throw err;
      }
    }
  };
  // Every worker finishes (or fails) before the restore goes on or reports a failure.
  const settled = await Promise.allSettled(
    Array.from({ length: Math.max(1, Math.min(o.jobs, queue.length)) }, worker),
  );
  const rejected = settled.find((r) => r.status === "rejected");
  if (rejected) throw (rejected as PromiseRejectedResult).reason;
  const done = new Set([...early.values()].flat());

  await section("data", 1);
  if (done.size === 0) {
    await section("post-data", o.jobs);
    return;
  }
  // The rest of post-data: what was not built table by table above.
  const all = await tocOf();
  const rest = new Set(
    all.entries.filter((e) => e.section === "post-data" && !done.has(e.dumpId)).map((e) =>
      e.dumpId
    ),
  );
  if (rest.size === 0) return;
  o.reporter.event({
    type: "step",
    part: o.database,
    message: `restoring the rest of post-data of "${o.database}"`,
  });
  await withListFile(
    tocListFile(all, rest),
    async (listFile) =>
      restoreArchive(o.pgRestore, o.target, await o.repo.openFile(o.setId, schema), {
        database: o.database,
        jobs: o.jobs,
        spool: o.spool,
        clean: false,
        create: false,
        section: "post-data",
        listFile,
        signal: o.signal,
        describe: describe("pg_restore --section=post-data"),
      }),
  );
}
