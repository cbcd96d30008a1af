/**
 * `export-sql`: one database of a set as a plain SQL script that psql alone can restore, so no
 * backup ever locks anyone in. Files are verified as they stream; nothing is decompressed to
 * disk.
 */
import { DbBackupError } from "../errors.ts";
import { feedChild, spawn } from "../process/run.ts";
import { copyFromStdin } from "../engine/pg/native_restore.ts";
import { findTool, type PgTool } from "../engine/pg/tools.ts";
import { type DatabaseRecord, fileOf, type FileRecord } from "../repo/manifest.ts";
import type { Repository } from "../repo/repository.ts";
import { withSharedLock } from "../repo/lock.ts";

export interface ExportSqlOptions {
  repo: Repository;
  ref: string;
  /** Which database of the set; default: the only one. */
  database?: string;
  /** Receives the script; it is not closed. */
  output: WritableStream<Uint8Array>;
  pgBin?: string;
  signal?: AbortSignal;
  /** Told when the repository is read without a lock. */
  warn?: (message: string) => void;
}

export interface ExportSqlResult {
  setId: string;
  database: string;
  engine: string;
}

export async function exportSql(opts: ExportSqlOptions): Promise<ExportSqlResult> {
  return await withSharedLock(
    opts.repo.storage,
    "export-sql",
    (message) => opts.warn?.(message),
    () => exportSqlLocked(opts),
  );
}

async function exportSqlLocked(opts: ExportSqlOptions): Promise<ExportSqlResult> {
  const setId = await opts.repo.resolveId(opts.ref);
  const manifest = await opts.repo.readManifest(setId);
  const names = manifest.databases.map((d) => d.name);
  const name = opts.database ?? (names.length === 1 ? names[0] : undefined);
  if (name === undefined) {
    throw new DbBackupError(
      "usage",
      `cannot export backup ${setId}: it holds ${names.length} databases (${
        names.map((n) => `"${n}"`).join(", ")
      }); choose one with --database`,
    );
  }
  const db = manifest.databases.find((d) => d.name === name);
  if (!db) throw new DbBackupError("not_found", `backup ${setId} has no database "${name}"`);
  if (db.status !== "ok") {
    throw new DbBackupError("refused", `database "${name}" failed at backup time: ${db.error}`);
  }
  const pgRestore = await findTool(
    "pg_restore",
    Math.floor(manifest.server.versionNum / 10000),
    opts.pgBin,
  );
  const writer = opts.output.getWriter();
  const text = (s: string) => writer.write(new TextEncoder().encode(s));
  try {
    await text(
      `-- dbbackup export-sql of database "${name}" from backup ${setId} (${manifest.engine} engine)\n`,
    );
    if (manifest.engine === "native") await exportNative(opts, setId, db, pgRestore, writer, text);
    else {
      const archive = fileOf(db, db.files.find((f) => f.content === "pg_dump-custom")?.path);
      await archiveToSql(opts, setId, archive, pgRestore, writer);
    }
  } catch (err) {
    // What was written so far (a pipe into psql has taken it already) ends in a statement that
    // fails, whatever psql's own settings: the script is never taken as complete. (A chunk
    // that did not verify had its data before it loaded, and psql exited 0.) First the end of
    // a COPY under way, then an error that stops psql.
    await text(
      `\n\\.\n\\set ON_ERROR_STOP on\nDO $dbbackup$ BEGIN RAISE EXCEPTION 'dbbackup export-sql failed: this script is incomplete'; END $dbbackup$;\n`,
    ).catch(() => {});
    throw err;
  } finally {
    writer.releaseLock();
  }
  return { setId, database: name, engine: manifest.engine };
}

async function exportNative(
  opts: ExportSqlOptions,
  setId: string,
  db: DatabaseRecord,
  pgRestore: PgTool,
  writer: WritableStreamDefaultWriter<Uint8Array>,
  text: (s: string) => Promise<void>,
): Promise<void> {
  const layout = db.native!;
  const schema = fileOf(db, layout.schemaPath);
  await archiveToSql(opts, setId, schema, pgRestore, writer, "pre-data");
  for (const t of layout.tables) {
    for (const c of t.chunks) {
      await text(`\n${copyFromStdin(t, layout)};\n`);
      const data = await opts.repo.openFile(setId, fileOf(db, c.path));
      for await (const chunk of data) await writer.write(chunk);
      await text("\\.\n");
    }
  }
  await archiveToSql(opts, setId, schema, pgRestore, writer, "data");
  await archiveToSql(opts, setId, schema, pgRestore, writer, "post-data");
}

/** pg_restore --file=- turns (a section of) a custom archive into SQL text. */
async function archiveToSql(
  opts: ExportSqlOptions,
  setId: string,
  file: FileRecord,
  pgRestore: PgTool,
  writer: WritableStreamDefaultWriter<Uint8Array>,
  section?: "pre-data" | "data" | "post-data",
): Promise<void> {
  const child = spawn(pgRestore.path, [
    "--file=-",
    ...(section ? [`--section=${section}`] : []),
  ], {
    describe: `pg_restore --file=- of ${setId}/${file.path}`,
    stdin: "piped",
    signal: opts.signal,
  });
  const input = feedChild(child, await opts.repo.openFile(setId, file));
  const output = (async () => {
    for await (const chunk of child.stdout) await writer.write(chunk);
  })();
  await Promise.all([input, output, child.status]);
}
