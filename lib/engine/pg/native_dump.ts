/**
 * The native PostgreSQL dump of one database: a leader transaction exports a snapshot; the
 * schema (with sequences and large objects) comes from `pg_dump --snapshot`, and every table's
 * rows stream out through `COPY ... TO STDOUT` on `jobs` workers that import the same
 * snapshot. Tables larger than the chunk size are split into heap page ranges, so one huge
 * table keeps every worker busy. Each chunk is its own file, compressed and checksummed while
 * written, and recorded in a state record so an interrupted backup can be resumed.
 */
import { DbBackupError, errorMessage, InterruptedError } from "../../errors.ts";
import type { Compression } from "../../pipeline/compress.ts";
import {
  chunkEncoding,
  type FileRecord,
  type NativeLayout,
  type TableRecord,
} from "../../repo/manifest.ts";
import type { SetWriter } from "../../repo/repository.ts";
import { ChildExitError } from "../../process/run.ts";
import { largestFirst, type PageRange, planPageRanges } from "../../plan/chunks.ts";
import type { Reporter } from "../../ops/progress.ts";
import { type PgTarget, quoteIdent, quoteLiteral, type Sql } from "./connect.ts";
import { spawnPsql } from "./psql.ts";
import {
  changedSinceSnapshot,
  type DataTable,
  exactTablePattern,
  listDataTables,
  tablesFingerprint,
} from "./native_catalog.ts";
import { startDatabaseDump } from "./pg_dump.ts";
import type { PgTool } from "./tools.ts";

export const DEFAULT_CHUNK_BYTES = 256 * 1024 * 1024;

/** Tables smaller than this (or than the chunk size) are left to pg_dump's archive. */
export const SMALL_TABLE_BYTES = 4 * 1024 * 1024;
/** How often one chunk is tried before the database counts as failed. */
const CHUNK_ATTEMPTS = 3;

export interface NativeDumpOptions {
  target: PgTarget;
  database: string;
  set: SetWriter;
  /** File name prefix of this database in the set, e.g. "db-001". */
  prefix: string;
  compression: Compression;
  jobs: number;
  chunkBytes: number;
  pgDump: PgTool;
  /** Runs each chunk's COPY TO: a C client streams rows far cheaper than JS can. */
  psql: PgTool;
  serverMajor: number;
  /** Reuse chunks an interrupted run of the same set already wrote. */
  resume: boolean;
  reporter: Reporter;
  /** Progress part name (the database). */
  part: string;
  signal?: AbortSignal;
  /** Test hook: called with each chunk's file name once it is published. */
  onChunk?: (path: string) => void;
}

export interface NativeDumpResult {
  files: FileRecord[];
  layout: NativeLayout;
  /** Chunks reused from an earlier, interrupted run. */
  reused: number;
}

/** The plan of one database, written before any data so a resumed run follows it. */
interface PlanState {
  /** The database the plan is for (absent in plans of older versions). */
  database?: string;
  fingerprint: string;
  tables: (Omit<TableRecord, "chunks"> & { ranges: PageRange[] })[];
  skipped: { table: string; reason: string }[];
  /** The encoding the chunks are written in (absent in plans of older versions: UTF8). */
  encoding?: string;
  /**
   * The server the plan was made on: its system identifier where the role may read it, else
   * its endpoint (absent in plans of older versions).
   */
  server?: string;
}

/** What a published file looked like, with the snapshot its data came from. */
interface FileState {
  file: FileRecord;
  rows: number;
  snapshot: { id: string; takenAt: string };
}

interface ChunkJob {
  table: number;
  chunk: number;
  range: PageRange;
  bytes: number;
  attempts: number;
}

export async function dumpDatabaseNative(o: NativeDumpOptions): Promise<NativeDumpResult> {
  // The leader's connection; every chunk gets a connection of its own (see dumpChunks).
  const sql = o.target.connect(o.database, 1);
  // Our own abort: the first failure stops the other workers and pg_dump.
  const stop = new AbortController();
  const onOuterAbort = () => stop.abort(o.signal?.reason);
  o.signal?.addEventListener("abort", onOuterAbort, { once: true });
  try {
    const leader = await sql.reserve();
    try {
      await leader.unsafe("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY");
      const [{ snapshot: snapshotId }] = await leader.unsafe<{ snapshot: string }[]>(
        "SELECT pg_export_snapshot() AS snapshot",
      );
      const snapshot = { id: snapshotId, takenAt: new Date().toISOString() };
      const listing = await listDataTables(leader);
      await lockTables(leader, listing.tables);
      const changed = await changedSinceSnapshot(leader, listing.tables);
      if (changed.length > 0) {
        throw new DbBackupError(
          "backup_failed",
          `table(s) ${changed.join(", ")} of "${o.database}" were truncated, rewritten or ` +
            "replaced by another session just after the backup's snapshot was taken (TRUNCATE, " +
            "ALTER TABLE, VACUUM FULL, CLUSTER or DROP and CREATE): in that snapshot they would " +
            "read as empty, so nothing was dumped; run the backup again",
        );
      }
      const server = await serverIdentity(leader, o.target.endpoint);
      const plan = await loadOrMakePlan(
        o,
        listing.tables,
        listing.skipped,
        listing.encoding,
        server,
      );
      const states = o.resume ? await o.set.readStates(`${o.prefix}.`) : new Map();
      const progress = new ByteProgress(o.reporter, o.part);

      const schemaTask = dumpSchema(o, plan, snapshot, states, stop.signal);
      const chunkTask = dumpChunks(o, plan, snapshot, states, progress, stop.signal);
      const settled = await Promise.allSettled([schemaTask, chunkTask]);
      const failure = settled.find((s) => s.status === "rejected");
      if (failure) {
        stop.abort();
        throw (failure as PromiseRejectedResult).reason;
      }
      const schema = (settled[0] as PromiseFulfilledResult<FileState>).value;
      const chunks =
        (settled[1] as PromiseFulfilledResult<{ states: ChunkState[]; reused: number }>)
          .value;
      await leader.unsafe("COMMIT");
      return assemble(plan, schema, chunks.states, chunks.reused);
    } finally {
      leader.release();
    }
  } catch (err) {
    if (o.signal?.aborted) throw new InterruptedError(`interrupted while dumping "${o.database}"`);
    throw err instanceof DbBackupError ? err : o.target.explain(
      err,
      `cannot back up database "${o.database}"`,
      o.database,
    );
  } finally {
    o.signal?.removeEventListener("abort", onOuterAbort);
    await sql.end({ timeout: 5 }).catch(() => {});
  }
}

/** The server's system identifier, or where the role may not read it, the endpoint. */
async function serverIdentity(leader: Sql, endpoint: string): Promise<string> {
  try {
    await leader.unsafe("SAVEPOINT dbbackup_identity");
    const [row] = await leader.unsafe<{ id: string }[]>(
      "SELECT system_identifier::text AS id FROM pg_catalog.pg_control_system()",
    );
    await leader.unsafe("RELEASE SAVEPOINT dbbackup_identity");
    return `system ${row.id}`;
  } catch {
    await leader.unsafe("ROLLBACK TO SAVEPOINT dbbackup_identity");
    return `endpoint ${endpoint}`;
  }
}

/** Takes ACCESS SHARE locks so no table is dropped, altered or truncated during the dump. */
async function lockTables(leader: Sql, tables: readonly DataTable[]): Promise<void> {
  for (let i = 0; i < tables.length; i += 500) {
    const names = tables.slice(i, i + 500).map((t) => t.qualified).join(", ");
    await leader.unsafe(`LOCK TABLE ${names} IN ACCESS SHARE MODE`);
  }
}

async function loadOrMakePlan(
  o: NativeDumpOptions,
  tables: DataTable[],
  skipped: PlanState["skipped"],
  encoding: string,
  server: string,
): Promise<PlanState> {
  const fingerprint = tablesFingerprint(tables);
  const planName = `${o.prefix}.plan`;
  if (o.resume) {
    const previous = (await o.set.readStates(planName)).get(planName) as PlanState | undefined;
    if (previous) {
      // Another database's set (a similar name, or a cluster whose list of databases changed).
      if (previous.database !== undefined && previous.database !== o.database) {
        throw new DbBackupError(
          "refused",
          `cannot resume backup ${o.set.id} with "${o.database}": its ${o.prefix} is "${previous.database}"; start a new backup`,
        );
      }
      // Another server with the same database and tables (a resume pointed elsewhere, or a
      // cluster backup by host name): its chunks would be mixed with this one's.
      if (previous.server !== undefined && previous.server !== server) {
        throw new DbBackupError(
          "refused",
          `cannot resume backup ${o.set.id} of "${o.database}": the interrupted run read another server (${previous.server}, now ${server}); start a new backup`,
        );
      }
      if (previous.fingerprint !== fingerprint) {
        throw new DbBackupError(
          "refused",
          `cannot resume backup ${o.set.id} of "${o.database}": its tables or columns changed since the interrupted run; start a new backup`,
        );
      }
      return previous;
    }
  }
  const canSplit = o.serverMajor >= 14; // TID range scans make page ranges cheap
  // Small tables stay in pg_dump's archive (same snapshot): a connection per table would cost
  // more than their rows.
  const small = Math.min(o.chunkBytes, SMALL_TABLE_BYTES);
  // pg_dump reads its --exclude-table-data patterns in the database's encoding, and arguments
  // can only be passed as UTF-8: in a database of another encoding, the pattern of a name with
  // a non-ASCII character matches nothing, and that table's rows would be in the archive as well
  // as in its chunks (restored twice). Such tables stay in the archive.
  const patternsMatch = (t: DataTable) =>
    encoding === "UTF8" || [...t.schema + t.name].every((ch) => ch.charCodeAt(0) < 0x80);
  const native = tables.filter((t) => t.bytes >= small && patternsMatch(t));
  const plan: PlanState = {
    database: o.database,
    server,
    fingerprint,
    skipped,
    encoding,
    tables: native.map((t) => ({
      schema: t.schema,
      name: t.name,
      columns: t.columns,
      bytes: t.bytes,
      ranges: planPageRanges(t, o.chunkBytes, canSplit),
    })),
  };
  await o.set.writeState(planName, plan);
  return plan;
}

/** pg_dump of everything except the data of the tables the workers copy. */
async function dumpSchema(
  o: NativeDumpOptions,
  plan: PlanState,
  snapshot: FileState["snapshot"],
  states: Map<string, unknown>,
  signal: AbortSignal,
): Promise<FileState> {
  const stateName = `${o.prefix}.schema`;
  const previous = states.get(stateName) as FileState | undefined;
  if (previous && await o.set.fileMatches(previous.file)) return previous;
  await clearLeftovers(o, stateName, `${o.prefix}-schema.pgdump`, previous);
  const excludes = plan.tables.map((t) =>
    `--exclude-table-data=${exactTablePattern(t.schema, t.name)}`
  );
  const child = startDatabaseDump(o.pgDump, o.target, o.database, signal, [
    `--snapshot=${snapshot.id}`,
    // Its locks on the tables the leader holds wait only behind a session that waits for the
    // leader (see dumpChunks): fail after a minute instead of waiting for ever.
    "--lock-wait-timeout=60s",
    ...excludes,
  ]);
  let file: FileRecord;
  try {
    file = await o.set.writeFile(`${o.prefix}-schema.pgdump`, child.stdout, {
      compression: o.compression,
      content: "pg_dump-custom-schema",
      ready: child.status,
      signal,
    });
  } catch (err) {
    child.kill("SIGKILL");
    await child.status.catch((childErr) => {
      throw childErr;
    });
    throw err;
  }
  const state: FileState = { file, rows: 0, snapshot };
  await o.set.writeState(stateName, state);
  return state;
}

interface ChunkState extends FileState {
  table: number;
  chunk: number;
  range: PageRange;
}

async function dumpChunks(
  o: NativeDumpOptions,
  plan: PlanState,
  snapshot: FileState["snapshot"],
  states: Map<string, unknown>,
  progress: ByteProgress,
  signal: AbortSignal,
): Promise<{ states: ChunkState[]; reused: number }> {
  const done: ChunkState[] = [];
  const todo: ChunkJob[] = [];
  let reused = 0;
  for (const [ti, t] of plan.tables.entries()) {
    for (const [ci, range] of t.ranges.entries()) {
      const previous = states.get(chunkName(o.prefix, ti, ci)) as ChunkState | undefined;
      if (previous && await o.set.fileMatches(previous.file)) {
        done.push(previous);
        reused++;
        continue;
      }
      await clearLeftovers(o, chunkName(o.prefix, ti, ci), chunkFile(o.prefix, ti, ci), previous);
      const pages = (range.to ?? Math.max(range.from + 1, Math.ceil(t.bytes / 8192))) - range.from;
      todo.push({ table: ti, chunk: ci, range, bytes: pages * 8192, attempts: 0 });
    }
  }
  const queue = largestFirst(todo);
  let failure: unknown;

  // Every chunk is copied by a psql child of its own that imports the snapshot: the rows
  // arrive through its stdout in large reads, and its exit status decides whether the file is
  // published. (postgres.js emits one chunk per row, costing several CPU-seconds per GB on
  // the thread that also compresses and hashes; and it can leave a connection's socket paused
  // after a COPY TO, porsager/postgres#1016.)
  const copyOne = async (job: ChunkJob) => {
    const t = plan.tables[job.table];
    const qualified = `${quoteIdent(t.schema)}.${quoteIdent(t.name)}`;
    const cols = t.columns.join(", ");
    const whole = job.range.from === 0 && job.range.to === null;
    const select = `SELECT ${cols} FROM ONLY ${qualified}${
      whole
        ? ""
        : ` WHERE ctid >= '(${job.range.from},0)'::tid${
          job.range.to === null ? "" : ` AND ctid < '(${job.range.to},0)'::tid`
        }`
    }`;
    // psql's \copy reports the server's count of rows ("COPY n", which --output sends to
    // stderr) where counting the newlines here cost a CPU-second per 2 GB. \copy takes one
    // line: a name with a line break in it is copied the plain way and its rows counted here.
    const counted = /[\r\n]/.test(select);
    // In the database's own encoding: a conversion to UTF-8 and back is not lossless for every
    // character (EUC_JP's NEC row 13, for one, came back as other codes).
    const encoding = `(ENCODING ${quoteLiteral(chunkEncoding(plan))})`;
    const copy = counted
      ? whole
        ? `COPY ${qualified}${cols ? ` (${cols})` : ""} TO STDOUT ${encoding}`
        : `COPY (${select}) TO STDOUT ${encoding}`
      : `\\copy (${select}) to pstdout with ${encoding}`;
    const child = spawnPsql(o.psql, o.target, o.database, [
      "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
      `SET TRANSACTION SNAPSHOT ${quoteLiteral(snapshot.id)}`,
      // The leader holds this lock already, so it is refused only when another session waits
      // for a lock that conflicts with it (ALTER TABLE, TRUNCATE, ...): that session waits for
      // the leader, and without NOWAIT this COPY would queue behind it, for ever (a wait the
      // server cannot see as a deadlock). pg_dump's workers do the same.
      `LOCK TABLE ONLY ${qualified} IN ACCESS SHARE MODE NOWAIT`,
      ...(counted ? [] : ["\\set QUIET off"]),
      copy,
      "COMMIT",
    ], {
      describe: `COPY of chunk ${job.chunk + 1} of ${t.schema}.${t.name}`,
      stdout: "piped",
      statusToStderr: !counted,
      signal,
    });
    const counter = counted ? new RowCounter() : undefined;
    let rows = 0;
    // The file is published only once psql exited cleanly and said how many rows it sent.
    const ready = child.status.then((status) => {
      rows = counter ? counter.rows : copiedRows(status.stderr, t);
    });
    // writeFile awaits it at the end; a stream that fails first must not leave it unhandled.
    ready.catch(() => {});
    const data = counter ? child.stdout.pipeThrough(counter) : child.stdout;
    const file = await o.set.writeFile(
      chunkFile(o.prefix, job.table, job.chunk),
      data.pipeThrough(progress.stream()),
      { compression: o.compression, content: "copy-text", signal, ready },
    );
    const state: ChunkState = {
      file,
      rows,
      snapshot,
      table: job.table,
      chunk: job.chunk,
      range: job.range,
    };
    await o.set.writeState(chunkName(o.prefix, job.table, job.chunk), state);
    done.push(state);
    o.onChunk?.(file.path);
  };

  const worker = async () => {
    while (queue.length > 0 && failure === undefined && !signal.aborted) {
      const job = queue.shift()!;
      job.attempts++;
      try {
        await copyOne(job);
      } catch (err) {
        if (signal.aborted) return;
        if (/could not obtain lock on relation/.test(errorMessage(err))) {
          const t = plan.tables[job.table];
          failure ??= new DbBackupError(
            "backup_failed",
            `another session is waiting for a lock on table ${t.schema}.${t.name} of "${o.database}" that conflicts with the backup's (ALTER TABLE, TRUNCATE, LOCK, ...): it waits for the backup to end, and the backup would wait for it; run the backup again once that session is done`,
            { cause: err },
          );
          return;
        }
        // A chunk that failed (connection reset, backend killed) is tried again on a new
        // connection that imports the same snapshot, while the leader still holds it.
        if (job.attempts < CHUNK_ATTEMPTS && worthRetrying(err)) {
          o.reporter.event({
            type: "warning",
            message: `retrying chunk ${job.chunk + 1} of table ${plan.tables[job.table].schema}.${
              plan.tables[job.table].name
            } (${errorMessage(err)})`,
          });
          queue.push(job);
          continue;
        }
        failure ??= err;
        return;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(o.jobs, queue.length)) }, worker));
  if (failure !== undefined) throw failure;
  if (signal.aborted) throw new InterruptedError(`interrupted while dumping "${o.database}"`);
  return { states: done, reused };
}

/**
 * Whether a chunk that failed with `err` may succeed on a new connection: psql lost its
 * connection (exit status 2: a reset, a terminated backend, a restarting server) or was killed,
 * or the failure was not psql's. An error the server reported for the statements themselves
 * (exit status 1: a permission, row-level security, a snapshot no longer there) would only come
 * back, and the retries delayed the failure.
 */
function worthRetrying(err: unknown): boolean {
  return !(err instanceof ChildExitError) || err.signal !== null || err.status === 2;
}

function assemble(
  plan: PlanState,
  schema: FileState,
  chunks: ChunkState[],
  reused: number,
): NativeDumpResult {
  const snapshots: FileState["snapshot"][] = [];
  // Snapshot ids repeat after a server restart: the time tells two snapshots apart.
  const snapshotIndex = (s: FileState["snapshot"]) => {
    let i = snapshots.findIndex((x) => x.id === s.id && x.takenAt === s.takenAt);
    if (i < 0) i = snapshots.push(s) - 1;
    return i;
  };
  snapshotIndex(schema.snapshot);
  const tables: TableRecord[] = plan.tables.map((t) => ({
    schema: t.schema,
    name: t.name,
    columns: t.columns,
    bytes: t.bytes,
    chunks: [],
  }));
  const sorted = [...chunks].sort((a, b) => a.table - b.table || a.chunk - b.chunk);
  for (const c of sorted) {
    tables[c.table].chunks.push({
      path: c.file.path,
      fromPage: c.range.from,
      toPage: c.range.to,
      rows: c.rows,
      snapshot: snapshotIndex(c.snapshot),
    });
  }
  return {
    files: [schema.file, ...sorted.map((c) => c.file)],
    layout: {
      snapshots,
      schemaPath: schema.file.path,
      tables,
      skipped: plan.skipped,
      fingerprint: plan.fingerprint,
      encoding: chunkEncoding(plan),
    },
    reused,
  };
}

function chunkName(prefix: string, table: number, chunk: number): string {
  return `${prefix}.t${String(table + 1).padStart(5, "0")}-c${String(chunk + 1).padStart(4, "0")}`;
}

/** The file name of a chunk, before the compression suffix. */
function chunkFile(prefix: string, table: number, chunk: number): string {
  return chunkName(prefix, table, chunk).replace(".", "-") + ".copy";
}

/**
 * Before a resumed run redoes a file, removes what the interrupted run left of it: a file that
 * no longer matches its state record, and the record; or a file published just before the run
 * was killed, when its record was not written yet. Either would stop the new file from being
 * published ("refusing to overwrite").
 */
async function clearLeftovers(
  o: NativeDumpOptions,
  stateName: string,
  fileName: string,
  previous: FileState | undefined,
): Promise<void> {
  if (!o.resume) return;
  if (previous) await o.set.removeFile(previous.file.path);
  await o.set.removeFile(o.set.storedPath(fileName, o.compression));
  await o.set.removeState(stateName);
}

/** The row count of the last "COPY n" status line psql printed. */
function copiedRows(stderr: string, t: { schema: string; name: string }): number {
  const last = [...stderr.matchAll(/^COPY (\d+)$/gm)].at(-1);
  if (!last) {
    throw new DbBackupError(
      "process",
      `psql did not report how many rows of ${t.schema}.${t.name} it copied`,
    );
  }
  return Number(last[1]);
}

/** Counts rows of COPY text data: every row ends with a newline, and data never has one. */
class RowCounter extends TransformStream<Uint8Array, Uint8Array> {
  readonly #count: { rows: number };
  constructor() {
    const count = { rows: 0 };
    super({
      transform(chunk, controller) {
        for (let p = chunk.indexOf(10); p !== -1; p = chunk.indexOf(10, p + 1)) count.rows++;
        controller.enqueue(chunk);
      },
    });
    this.#count = count;
  }
  get rows(): number {
    return this.#count.rows;
  }
}

/** Adds up the bytes of all chunks of a database and reports them twice a second. */
class ByteProgress {
  #bytes = 0;
  #last = 0;
  readonly #started = performance.now();
  constructor(private readonly reporter: Reporter, private readonly part: string) {}
  stream(): TransformStream<Uint8Array, Uint8Array> {
    return new TransformStream({
      transform: (chunk, controller) => {
        this.#bytes += chunk.byteLength;
        const now = performance.now();
        if (now - this.#last >= 500) {
          this.#last = now;
          this.reporter.event({
            type: "progress",
            part: this.part,
            bytes: this.#bytes,
            elapsedMs: Math.round(now - this.#started),
          });
        }
        controller.enqueue(chunk);
      },
    });
  }
}
