/**
 * Restore of a natively dumped database: the part of the schema archive's pre-data section the
 * big tables need, then every table through `COPY ... FROM STDIN` on `jobs` connections at
 * once, biggest first, while the rest of pre-data is restored beside them (the other tables
 * wait for it), each big table's indexes and keys built as soon as its rows are in; last in
 * that queue the archive's data section (the small tables' rows, sequence values, large
 * objects) and the other tables' indexes and keys; then the rest of post-data (foreign keys,
 * partition index attachments) with `jobs` pg_restore workers. Every chunk is checked against
 * its checksums as it streams; a mismatch stops the restore and names the chunk.
 */
import {
  chunkEncoding,
  type DatabaseRecord,
  fileOf,
  type FileRecord,
  type NativeLayout,
  type TableRecord,
} from "../../repo/manifest.ts";
import type { Repository } from "../../repo/repository.ts";
import { stopOnFailure } from "../../abort.ts";
import { DbBackupError } from "../../errors.ts";
import type { Reporter } from "../../ops/progress.ts";
import { type PgTarget, quoteIdent, quoteLiteral } from "./connect.ts";
import { spawnPsqlScript } from "./psql.ts";
import { feedChild } from "../../process/run.ts";
import type postgres from "postgres";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { ReadableStream as NodeReadableStream } from "node:stream/web";
import { archiveScript, restoreArchive, withListFile } from "./pg_restore.ts";
import {
  archiveTables,
  effectiveSections,
  postDataByTable,
  preDataFor,
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
  pgRestore: PgTool;
  psql: PgTool;
  reporter: Reporter;
  signal?: AbortSignal;
}

const END_OF_COPY = new TextEncoder().encode("\\.\n");

/**
 * Tables at least this big, or split into chunks, get their indexes and keys built as soon as
 * their rows are in.
 */
const EARLY_POST_DATA_BYTES = 32 * 1024 * 1024;

/** `restore single --table/--schema` of a set of either engine. */
export interface TablesRestoreOptions {
  target: PgTarget;
  repo: Repository;
  setId: string;
  record: DatabaseRecord;
  /** The database's archive: the whole dump (pg_dump engine) or its schema (native). */
  archive: FileRecord;
  /** The database to fill; it exists. */
  database: string;
  /** Only these tables, and only the archive entries of `listFile`. */
  only: { tables: { schema: string; name: string }[]; listFile: string; clean: boolean };
  pgRestore: PgTool;
  psql: PgTool;
  reporter: Reporter;
  signal?: AbortSignal;
}

/**
 * --table/--schema, for sets of both engines: everything in one transaction of one psql
 * session, so a failure (a chunk that does not verify, a clash in the target) leaves the target
 * as it was, also with --clean: pg_restore's SQL for the chosen pre-data entries (with DROP ...
 * IF EXISTS for --clean), then each chosen native table's chunks as COPY ... FROM stdin with
 * inline data, then the chosen data and post-data entries. --clean drops pre-data objects only:
 * a table takes its indexes, keys and triggers with it, and pg_restore's own DROP of a
 * partition's key or index fails ("cannot drop inherited constraint"), as pg_restore --clean -t
 * of a partitioned table did.
 */
export async function restoreTablesInOneTransaction(o: TablesRestoreOptions): Promise<void> {
  const only = o.only;
  const file = (path: string) => fileOf(o.record, path);
  const tables = (o.record.native?.tables ?? []).filter((t) =>
    only.tables.some((s) => s.schema === t.schema && s.name === t.name)
  );
  o.reporter.event({
    type: "step",
    part: o.database,
    message: `restoring ${only.tables.length} table(s) into "${o.database}" in one transaction`,
  });
  const describe = (what: string) =>
    `${what} of ${only.tables.length} table(s) of "${o.record.name}" into "${o.database}" at ${o.target.endpoint}`;
  const script = async (section: "pre-data" | "data" | "post-data") =>
    archiveScript(o.pgRestore, o.target, await o.repo.openFile(o.setId, o.archive), {
      section,
      listFile: only.listFile,
      clean: section === "pre-data" && only.clean,
      describe: describe(`pg_restore --section=${section} --file=-`),
      signal: o.signal,
    });
  // COMMIT comes last, after every chunk verified and every section written: if this process
  // dies midway, psql reads end-of-file before it and the server rolls everything back.
  const parts: Part[] = [
    sql("BEGIN;\n"),
    () => script("pre-data"),
    ...tables.flatMap((t) => chunkCopies(o, file, t)),
    () => script("data"),
    () => script("post-data"),
    sql("COMMIT;\n"),
  ];
  const child = spawnPsqlScript(o.psql, o.target, o.database, {
    describe: describe("psql"),
    signal: o.signal,
  });
  await Promise.all([feedChild(child, concatStreams(parts)), child.status]);
}

/** A part of a psql script: made when the part before it has been read to its end. */
type Part = () => Promise<ReadableStream<Uint8Array>>;

/** A script part of literal SQL. */
function sql(text: string): Part {
  return () => Promise.resolve(ReadableStream.from([new TextEncoder().encode(text)]));
}

/**
 * The COPY ... FROM STDIN that loads one of `table`'s chunks: its columns, in the chunks' own
 * encoding (whatever client_encoding the session or script has), with FREEZE where asked.
 */
export function copyFromStdin(
  table: TableRecord,
  layout: NativeLayout,
  options: { freeze?: boolean } = {},
): string {
  const qualified = `${quoteIdent(table.schema)}.${quoteIdent(table.name)}`;
  const columns = table.columns.length ? ` (${table.columns.join(", ")})` : "";
  const encoding = `ENCODING ${quoteLiteral(chunkEncoding(layout))}`;
  return `COPY ${qualified}${columns} FROM STDIN (${options.freeze ? "FREEZE, " : ""}${encoding})`;
}

/** One COPY ... FROM stdin per chunk of `table`, each with its verified data inline. */
function chunkCopies(
  o: Pick<TablesRestoreOptions, "repo" | "setId" | "record">,
  file: (path: string) => FileRecord,
  table: TableRecord,
): Part[] {
  return table.chunks.flatMap((c) => [
    sql(`${copyFromStdin(table, o.record.native!)};\n`),
    () => o.repo.openFile(o.setId, file(c.path)),
    () => Promise.resolve(ReadableStream.from([END_OF_COPY])),
  ]);
}

/** The streams `parts` make, one after another, each made when the one before has ended. */
function concatStreams(parts: readonly Part[]): ReadableStream<Uint8Array> {
  let i = 0;
  let reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      while (true) {
        if (!reader) {
          if (i >= parts.length) return controller.close();
          reader = (await parts[i++]()).getReader();
        }
        const { done, value } = await reader.read();
        if (!done) return controller.enqueue(value);
        reader = undefined;
      }
    },
    async cancel(reason) {
      await reader?.cancel(reason);
    },
  }, { highWaterMark: 0 });
}

/**
 * Runs `statement` (a COPY ... FROM STDIN) on `tx` and sends it `data`; resolves when the server
 * has taken every row. postgres.js (3.4.9) resolves a COPY's query as soon as the server is ready
 * for data, and a failure reported after the last piece was sent (the server still parsing what
 * its socket held: a row it rejects, a constraint, a full disk, a cancel) only rejects that
 * settled query, so the copy would wait for its end forever (the connection idle in an aborted
 * transaction). The query's rejection is therefore watched as well, and ends the copy with the
 * server's error.
 */
async function copyIn(
  tx: postgres.TransactionSql,
  statement: string,
  data: ReadableStream<Uint8Array>,
): Promise<void> {
  const query = tx.unsafe(statement);
  const settle = query as unknown as { reject?: (err: unknown) => void };
  const reject = settle.reject;
  if (typeof reject !== "function") {
    // Not the postgres.js this was written against: fail rather than risk a silent hang.
    throw new DbBackupError("process", "postgres.js exposes no COPY failure to watch");
  }
  const failed = new Promise<never>((_, fail) => {
    settle.reject = (err) => {
      fail(err);
      reject.call(query, err);
    };
  });
  failed.catch(() => {});
  const copy = await query.writable();
  const piped = pipeline(Readable.fromWeb(data as NodeReadableStream<Uint8Array>), copy);
  try {
    await Promise.race([piped, failed]);
  } catch (err) {
    // The server has left COPY mode: it ignores the CopyFail this sends. The source stream is
    // cancelled and the pipeline settles before the error goes on.
    copy.destroy(err instanceof Error ? err : new Error(String(err)));
    await piped.catch(() => {});
    throw err;
  }
}

/**
 * Whether a column of `tables` holds values of a type whose input looks up catalog objects by
 * name (regclass, regtype, regproc and the other reg* types), also inside a domain, an array, a
 * composite type or a range.
 */
async function namesCatalogObjects(
  sql: postgres.Sql,
  tables: readonly TableRecord[],
): Promise<boolean> {
  const [{ uses }] = await sql.unsafe<{ uses: boolean }[]>(
    `WITH RECURSIVE used(oid) AS (
       SELECT a.atttypid FROM pg_catalog.pg_attribute a
         JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE (n.nspname, c.relname) IN
                (SELECT x ->> 0, x ->> 1 FROM jsonb_array_elements($1::text::jsonb) x)
          AND a.attnum > 0 AND NOT a.attisdropped
       UNION
       SELECT inner_type.oid FROM used JOIN pg_catalog.pg_type t ON t.oid = used.oid,
         LATERAL (SELECT t.typbasetype UNION ALL SELECT t.typelem
                  UNION ALL SELECT a.atttypid FROM pg_catalog.pg_attribute a
                             WHERE a.attrelid = t.typrelid AND a.attnum > 0
                               AND NOT a.attisdropped
                  UNION ALL SELECT r.rngsubtype FROM pg_catalog.pg_range r
                             WHERE r.rngtypid = t.oid) inner_type(oid)
        WHERE inner_type.oid <> 0)
     SELECT EXISTS (SELECT FROM used JOIN pg_catalog.pg_type t ON t.oid = used.oid
                     WHERE t.typnamespace = 'pg_catalog'::regnamespace
                       AND t.typname IN ('regclass', 'regcollation', 'regconfig',
                                         'regdictionary', 'regnamespace', 'regoper',
                                         'regoperator', 'regproc', 'regprocedure', 'regrole',
                                         'regtype')) AS uses`,
    [JSON.stringify(tables.map((t) => [t.schema, t.name]))],
  );
  return uses;
}

export async function restoreDatabaseNative(o: NativeRestoreOptions): Promise<void> {
  const layout = o.record.native;
  if (!layout) {
    throw new DbBackupError("verification", `database "${o.record.name}" has no native layout`);
  }
  const file = (path: string) => fileOf(o.record, path);
  const schema = file(layout.schemaPath);
  const describe = (what: string) =>
    `${what} of "${o.record.name}" into "${o.database}" at ${o.target.endpoint}`;
  /**
   * A section of the schema archive, or of it only the entries `only.ids`. With `create`, the
   * run that creates the database (by default the pre-data restore, when the archive should).
   */
  const section = async (
    name: "pre-data" | "data" | "post-data",
    jobs: number,
    only?: { ids: Iterable<number>; what: string },
    create = name === "pre-data" && o.createFromArchive,
  ) => {
    o.reporter.event({
      type: "step",
      part: o.database,
      message: `restoring ${only?.what ?? name} of "${o.database}"`,
    });
    const restore = async (listFile?: string) =>
      restoreArchive(o.pgRestore, o.target, await o.repo.openFile(o.setId, schema), {
        database: create ? "postgres" : o.database,
        jobs,
        spool: o.spool,
        clean: create && o.dropFirst,
        create,
        section: name,
        listFile,
        signal: o.signal,
        describe: describe(`pg_restore --section=${name}${only ? ` (${only.what})` : ""}`),
      });
    if (!only) return await restore();
    await withListFile(tocListFile(toc, new Set(only.ids)), restore);
  };

  const tables = layout.tables;
  // The schema archive's table of contents (its start only).
  const toc = await readArchiveToc(await o.repo.openFile(o.setId, schema), schema.path);
  // Big tables first: a table is complete early and its indexes and keys are built (below)
  // while the other workers still load rows.
  const sizeOf = (t: TableRecord) => t.chunks.reduce((n, c) => n + file(c.path).rawBytes, 0);
  const ordered = [...tables].sort((a, b) => sizeOf(b) - sizeOf(a));
  const big = ordered.filter((t) => t.chunks.length > 1 || t.bytes >= EARLY_POST_DATA_BYTES);
  const early = postDataByTable(toc, big);
  // Every other table's own indexes and keys (the small native tables', and those whose rows
  // are in the archive's data section): built together by one pg_restore, the last job.
  const bigKeys = new Set(big.map(tableKey));
  const late = [
    ...postDataByTable(toc, archiveTables(toc).filter((t) => !bigKeys.has(tableKey(t))))
      .values(),
  ].flat();

  // Pre-data in two parts: first what the big tables need (their definitions, what they use,
  // and what uses them), then, while their rows are loaded, the rest (pg_restore restores
  // pre-data one entry at a time, most of it waiting on the server: a second or more for a
  // few hundred tables, during which the big loads already run).
  const first = preDataFor(toc, big);
  const sections = effectiveSections(toc);
  const second = toc.entries.filter((e) =>
    sections.get(e.dumpId) === "pre-data" && !first.has(e.dumpId)
  ).map((e) => e.dumpId);
  // A failure of the rest of pre-data stops the loads under way (with the same error).
  let restOfPreData: Promise<void> = Promise.resolve();
  let signal = o.signal;
  if (big.length === 0 || second.length === 0) {
    await section("pre-data", 1);
  } else {
    await section("pre-data", 1, { ids: first, what: "pre-data of the big tables" });
    const rest = () => section("pre-data", 1, { ids: second, what: "the rest of pre-data" }, false);
    // A value of a reg* type (regclass, regtype, ...) names another object, which has to exist
    // when the row is read: big tables holding such values wait for all of pre-data.
    const waitForAll = await o.target.withSql(
      o.database,
      describe("reading the column types"),
      (sql) => namesCatalogObjects(sql, big),
    );
    if (waitForAll) await rest();
    else ({ task: restOfPreData, signal } = stopOnFailure(rest(), o.signal));
  }

  o.reporter.event({
    type: "step",
    part: o.database,
    message: `copying ${
      tables.reduce((n, t) => n + t.chunks.length, 0)
    } chunk(s) of ${tables.length} table(s)`,
  });
  // Each table is loaded in one transaction on a connection of its own: TRUNCATE (the table
  // was just created by pre-data; a guard refuses one that holds rows), then COPY ... FREEZE of
  // each of its chunks in turn. FREEZE writes the rows already frozen, which saves the server
  // work in the COPY and in the index builds after it (about 10% and 15% here). The chunks go
  // straight from the decompressor to the server in large CopyData messages (through psql,
  // which reads its input 4 KiB at a time, the client side cost 30% more CPU). Each chunk is
  // checked as it streams: a chunk that fails its checksum ends its COPY with CopyFail before
  // its last piece, and the table's transaction rolls back; so does one whose connection
  // breaks, also when this process is killed.
  //
  // An abort (Ctrl-C, or a damaged file found by the check that runs beside a restore into a new
  // database) ends the chunks' streams: each COPY under way ends with CopyFail and its table's
  // transaction rolls back, then the connections close as usual. (Destroying the connections
  // mid-transaction, as before, once let a CONNECTION_DESTROYED rejection escape postgres.js
  // where nothing could catch it: a test run failed with it as an uncaught error.)
  const pool = o.target.connect(o.database, Math.max(1, o.jobs));
  const loadTable = async (table: TableRecord) => {
    const qualified = `${quoteIdent(table.schema)}.${quoteIdent(table.name)}`;
    const tag = `$g${crypto.randomUUID().replaceAll("-", "")}$`;
    const guard = `DO ${tag}BEGIN IF EXISTS (SELECT FROM ONLY ${qualified}) THEN ` +
      `RAISE EXCEPTION 'refusing to load table %: it is not empty', ${
        quoteLiteral(`${table.schema}.${table.name}`)
      }; END IF; END${tag}`;
    // The chunk being loaded, named when the server rejects its rows too.
    let loading: string | undefined;
    try {
      await pool.begin(async (tx) => {
        await tx.unsafe(guard);
        await tx.unsafe(`TRUNCATE ONLY ${qualified}`);
        for (const c of table.chunks) {
          loading = c.path;
          let data = await o.repo.openFile(o.setId, file(c.path));
          if (signal) data = data.pipeThrough(new TransformStream(), { signal });
          await copyIn(tx, copyFromStdin(table, layout, { freeze: true }), data);
          loading = undefined;
        }
      });
    } catch (err) {
      if (signal?.aborted) throw signal.reason;
      const what = loading ? `chunk ${loading} of table` : "table";
      throw o.target.explain(
        err,
        describe(`COPY of ${what} ${table.schema}.${table.name}`),
        o.database,
      );
    }
  };
  /**
   * Post-data entries `ids` of the archive, by one pg_restore with `jobs` workers; with
   * `oneTransaction` (one table's few entries), all or none of them.
   */
  const postData = (ids: Iterable<number>, jobs: number, what: string, oneTransaction = false) =>
    withListFile(
      tocListFile(toc, new Set(ids)),
      async (listFile) =>
        restoreArchive(o.pgRestore, o.target, await o.repo.openFile(o.setId, schema), {
          database: o.database,
          jobs,
          spool: o.spool,
          clean: false,
          create: false,
          section: "post-data",
          listFile,
          singleTransaction: oneTransaction,
          signal: o.signal,
          describe: describe(what),
        }),
    );
  // The loads of the tables without early post-data: the last job waits for them.
  const smallLoads: Promise<void>[] = [];
  const jobs: (() => Promise<void>)[] = ordered.map((table) => async () => {
    const ids = early.get(tableKey(table));
    if (!ids) {
      const load = restOfPreData.then(() => loadTable(table));
      smallLoads.push(load);
      return await load;
    }
    await loadTable(table);
    // An index may use a function of the rest of pre-data.
    await restOfPreData;
    o.reporter.event({
      type: "step",
      part: o.database,
      message: `building the indexes and keys of ${table.schema}.${table.name}`,
    });
    await postData(ids, 1, `indexes and keys of ${table.schema}.${table.name}`, true);
  });
  // Last: the archive's data section (the small tables' rows, sequence values, large objects),
  // which needs none of the tables above, then the indexes and keys of every table but the big
  // ones, once the small native tables are loaded too (every job before this one has started).
  jobs.push(async () => {
    await restOfPreData;
    await section("data", 1);
    await Promise.all(smallLoads);
    if (late.length === 0) return;
    o.reporter.event({
      type: "step",
      part: o.database,
      message: "building the indexes and keys of the other tables",
    });
    await postData(late, 1, "indexes and keys of the other tables");
  });
  let failed = false;
  const worker = async () => {
    while (jobs.length > 0 && !failed) {
      if (signal?.aborted) throw signal.reason;
      try {
        await jobs.shift()!();
      } catch (err) {
        failed = true;
        throw err;
      }
    }
  };
  // Every worker finishes (or fails) before the restore goes on or reports a failure.
  const settled = await Promise.allSettled([
    ...Array.from({ length: Math.max(1, Math.min(o.jobs, jobs.length)) }, worker),
    restOfPreData,
  ]).finally(async () => {
    await pool.end({ timeout: 5 }).catch(() => {});
  });
  const rejected = settled.find((r) => r.status === "rejected");
  if (rejected) throw (rejected as PromiseRejectedResult).reason;

  // The rest of post-data: foreign keys, partition index attachments, and everything else
  // that was not built table by table above. Post-data as pg_restore's --section sees it:
  // comments and labels on indexes, keys and triggers have no section of their own and come
  // with the entries before them.
  const done = new Set([...early.values(), late].flat());
  const rest = toc.entries.filter((e) =>
    sections.get(e.dumpId) === "post-data" && !done.has(e.dumpId)
  ).map((e) => e.dumpId);
  if (rest.length === 0) return;
  o.reporter.event({
    type: "step",
    part: o.database,
    message: `restoring the rest of post-data of "${o.database}"`,
  });
  await postData(rest, o.jobs, "pg_restore --section=post-data");
}
