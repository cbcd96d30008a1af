/**
 * `restore single` and `restore cluster`: build a plan (which set, which databases, into
 * which targets, what is created or cleaned), check every file's checksum before the server
 * is touched, then carry the plan out. `--dry-run` stops after the plan.
 */
import { DbBackupError, errorMessage } from "../errors.ts";
import { countUserObjects, listDatabases, serverInfo } from "../engine/pg/catalog.ts";
import { type PgTarget, quoteIdent, quoteLiteral } from "../engine/pg/connect.ts";
import { restoreArchive, restoreGlobalsScript } from "../engine/pg/pg_restore.ts";
import { restoreDatabaseNative } from "../engine/pg/native_restore.ts";
import { findTool } from "../engine/pg/tools.ts";
import type { DatabaseRecord, FileRecord, Manifest } from "../repo/manifest.ts";
import type { Repository } from "../repo/repository.ts";
import { mapPool } from "./_pool.ts";
import { snapshotCount } from "./list.ts";
import { progressStream, type Reporter } from "./progress.ts";
import { checkStored } from "./verify.ts";

export interface RestoreOptions {
  target: PgTarget;
  repo: Repository;
  ref: string;
  kind: "single" | "cluster";
  /** Which database of the set (single restore); default: the only one. */
  database?: string;
  /** Target database name (single restore); default: the original name. */
  targetName?: string;
  create: boolean;
  clean: boolean;
  jobs: number;
  pgBin?: string;
  dryRun: boolean;
  reporter: Reporter;
  signal?: AbortSignal;
  /** Called before anything destructive (clean, drop) happens; throws to refuse. */
  confirmDestructive?: (plan: RestorePlan, what: string[]) => Promise<void>;
}

export type DatabaseAction =
  /** The target does not exist: dbbackup creates it, then pg_restore fills it. */
  | "create"
  /** The target exists and is empty: pg_restore fills it. */
  | "into-empty"
  /** The target has objects: pg_restore drops the archive's objects and recreates them. */
  | "clean"
  /** pg_restore --create creates the database with its properties from the archive. */
  | "create-from-archive"
  /** Cluster restore with --clean: pg_restore drops and recreates the whole database. */
  | "drop-and-create"
  /** Native single restore with --clean: the database is dropped and created empty again. */
  | "recreate";

export interface PlannedDatabase {
  source: string;
  target: string;
  action: DatabaseAction;
  /** Objects the target holds now. */
  existingObjects: number;
  /** The archive pg_restore reads (the schema archive for the native engine). */
  file: FileRecord;
  /** Every file the restore reads. */
  files: FileRecord[];
  record: DatabaseRecord;
}

export interface RestorePlan {
  setId: string;
  kind: "single" | "cluster";
  endpoint: string;
  setStatus: Manifest["status"];
  globals?: FileRecord;
  databases: PlannedDatabase[];
  /** Databases of the set that cannot be restored (they failed at backup time). */
  skipped: { name: string; reason: string }[];
  jobs: number;
  manifest: Manifest;
}

export interface RestoreResult {
  plan: RestorePlan;
  status: "complete" | "partial" | "failed" | "dry-run";
  parts: { part: string; status: "ok" | "failed"; error?: string; notes?: string[] }[];
}

export async function restore(opts: RestoreOptions): Promise<RestoreResult> {
  const plan = await planRestore(opts);
  const snapshots = snapshotCount(plan.manifest);
  if (snapshots && snapshots > 1) {
    opts.reporter.event({
      type: "warning",
      message:
        `backup ${plan.setId} was resumed: its data spans ${snapshots} snapshots, so tables dumped after the interruption come from a later moment than the others`,
    });
  }
  if (opts.dryRun) return { plan, status: "dry-run", parts: [] };
  await verifyBeforeRestore(opts, plan);
  const destructive = plan.databases.filter((d) =>
    d.action === "clean" || d.action === "drop-and-create" || d.action === "recreate"
  ).map((d) =>
    d.action === "clean"
      ? `replace objects in database "${d.target}" (${d.existingObjects} objects now)`
      : `drop and recreate database "${d.target}" (${d.existingObjects} objects now)`
  );
  if (destructive.length > 0) await opts.confirmDestructive?.(plan, destructive);
  return await executeRestore(opts, plan);
}

/** Reads the manifest and the target server's state; decides what to do or refuses. */
export async function planRestore(opts: RestoreOptions): Promise<RestorePlan> {
  const id = await opts.repo.resolveId(opts.ref);
  const manifest = await opts.repo.readManifest(id);
  const action = `cannot restore backup ${id}`;
  if (opts.kind === "cluster" && manifest.kind !== "cluster") {
    throw new DbBackupError(
      "refused",
      `${action}: it is a ${manifest.kind} backup; use "restore single"`,
    );
  }
  // Databases that failed at backup time are listed when the restore would have taken them.
  const skipped = manifest.databases.filter((d) => d.status !== "ok" && (opts.kind === "cluster"))
    .map((d) => ({
      name: d.name,
      reason: d.error ?? "failed at backup time",
    }));
  let chosen: DatabaseRecord[];
  if (opts.kind === "single") {
    const available = manifest.databases.map((d) => d.name);
    const name = opts.database ?? (available.length === 1 ? available[0] : undefined);
    if (name === undefined) {
      throw new DbBackupError(
        "usage",
        `${action}: it holds ${available.length} databases (${
          available.map((n) => `"${n}"`).join(", ")
        }); choose one with --database`,
      );
    }
    const rec = manifest.databases.find((d) => d.name === name);
    if (!rec) {
      throw new DbBackupError("not_found", `${action}: it has no database "${name}"`);
    }
    if (rec.status !== "ok") {
      throw new DbBackupError(
        "refused",
        `${action}: database "${name}" failed at backup time: ${rec.error}`,
      );
    }
    chosen = [rec];
  } else {
    chosen = manifest.databases.filter((d) => d.status === "ok");
  }

  const existing = await opts.target.withSql(
    "postgres",
    `${action} into ${opts.target.endpoint}`,
    async (sql) => {
      const info = await serverInfo(sql);
      const dumpMajor = Math.floor(manifest.server.versionNum / 10000);
      if (info.major < dumpMajor) {
        throw new DbBackupError(
          "refused",
          `${action}: it comes from PostgreSQL ${manifest.server.version}, the target runs ${info.version} (older)`,
        );
      }
      return new Set((await listDatabases(sql)).map((d) => d.name));
    },
  );

  const databases: PlannedDatabase[] = [];
  for (const rec of chosen) {
    const target = opts.kind === "single" ? opts.targetName ?? rec.name : rec.name;
    const native = manifest.engine === "native";
    const file = rec.files.find((f) =>
      f.content === (native ? "pg_dump-custom-schema" : "pg_dump-custom")
    );
    if (!file) throw new DbBackupError("verification", `${action}: "${rec.name}" has no archive`);
    let existingObjects = 0;
    let act: DatabaseAction;
    if (!existing.has(target)) {
      if (opts.kind === "single" && !opts.create) {
        throw new DbBackupError(
          "refused",
          `${action}: database "${target}" does not exist at ${opts.target.endpoint}; add --create to create it`,
        );
      }
      act = opts.kind === "single" ? "create" : "create-from-archive";
    } else {
      existingObjects = await opts.target.withSql(
        target,
        `${action}: cannot inspect database "${target}"`,
        countUserObjects,
      );
      if (existingObjects === 0) act = "into-empty";
      else if (!opts.clean) {
        throw new DbBackupError(
          "refused",
          `${action}: database "${target}" at ${opts.target.endpoint} is not empty (${existingObjects} objects); add --clean to replace its objects`,
        );
      } else if (native && opts.kind === "single") {
        // Section-by-section restores cannot drop objects in dependency order: start afresh.
        act = "recreate";
      } else if (target === "postgres") {
        // The maintenance database cannot be dropped while pg_restore is connected to it.
        if (native) {
          throw new DbBackupError(
            "refused",
            `${action}: the database "postgres" at ${opts.target.endpoint} is not empty; the native engine cannot clean it in place: empty it first`,
          );
        }
        act = "clean";
      } else act = opts.kind === "single" ? "clean" : "drop-and-create";
    }
    databases.push({
      source: rec.name,
      target,
      action: act,
      existingObjects,
      file,
      files: rec.files,
      record: rec,
    });
  }
  return {
    setId: id,
    kind: opts.kind,
    endpoint: opts.target.endpoint,
    setStatus: manifest.status,
    globals: opts.kind === "cluster" && manifest.globals?.status === "ok"
      ? manifest.globals.files[0]
      : undefined,
    databases,
    skipped,
    jobs: opts.jobs,
    manifest,
  };
}

/** Every file the plan reads must match its manifest before anything is changed. */
async function verifyBeforeRestore(opts: RestoreOptions, plan: RestorePlan): Promise<void> {
  const files = [
    ...(plan.globals ? [plan.globals] : []),
    ...plan.databases.flatMap((d) => d.files),
  ];
  opts.reporter.event({
    type: "step",
    message: `verifying ${files.length} file(s) of ${plan.setId}`,
  });
  const checks = await mapPool(files, opts.jobs, (f) => checkStored(opts.repo, plan.setId, f));
  const bad = checks.filter((c) => !c.ok);
  if (bad.length > 0) {
    throw new DbBackupError(
      "verification",
      `refusing to restore ${plan.setId}: ${bad.map((c) => c.problem).join("; ")}`,
    );
  }
}

async function executeRestore(opts: RestoreOptions, plan: RestorePlan): Promise<RestoreResult> {
  const parts: RestoreResult["parts"] = [];
  opts.reporter.event({
    type: "start",
    operation: `restore ${plan.kind}`,
    setId: plan.setId,
    parts: [...(plan.globals ? ["globals"] : []), ...plan.databases.map((d) => d.target)],
  });
  const major = Math.floor(plan.manifest.server.versionNum / 10000);
  const pgRestore = await findTool("pg_restore", major, opts.pgBin);
  if (plan.globals) {
    const started = performance.now();
    try {
      const psql = await findTool("psql", major, opts.pgBin);
      const tolerated = await restoreGlobalsScript(
        psql,
        opts.target,
        await opts.repo.openFile(plan.setId, plan.globals),
        opts.signal,
      );
      parts.push({ part: "globals", status: "ok", notes: tolerated });
      for (const t of tolerated) {
        opts.reporter.event({ type: "step", part: "globals", message: `kept existing: ${t}` });
      }
      reportPart(opts, "globals", started);
    } catch (err) {
      if (opts.signal?.aborted) throw err;
      // Databases whose owners are missing would fail one by one; stop here instead.
      throw new DbBackupError("restore_failed", errorMessage(err));
    }
  }
  // A cluster restore runs databases in parallel, each with one job; a single restore gives
  // all jobs to pg_restore.
  const perDatabaseJobs = plan.kind === "single" ? opts.jobs : 1;
  const results = await mapPool(
    plan.databases,
    plan.kind === "single" ? 1 : opts.jobs,
    async (db) => {
      const started = performance.now();
      try {
        await restoreDatabase(opts, plan, db, pgRestore, perDatabaseJobs);
        reportPart(opts, db.target, started);
        return { part: db.target, status: "ok" as const };
      } catch (err) {
        if (opts.signal?.aborted) throw err;
        const error = `database "${db.target}": ${errorMessage(err)}`;
        reportPart(opts, db.target, started, error);
        return { part: db.target, status: "failed" as const, error };
      }
    },
  );
  parts.push(...results);
  const failed = results.filter((r) => r.status === "failed").length;
  const status = failed === 0 ? "complete" : failed === results.length ? "failed" : "partial";
  return { plan, status, parts };
}

async function restoreDatabase(
  opts: RestoreOptions,
  plan: RestorePlan,
  db: PlannedDatabase,
  pgRestore: Awaited<ReturnType<typeof findTool>>,
  jobs: number,
): Promise<void> {
  opts.reporter.event({
    type: "step",
    part: db.target,
    message: `restoring "${db.source}" into "${db.target}" (${db.action})`,
  });
  if (db.action === "recreate") await dropDatabase(opts.target, db.target);
  if (db.action === "create" || db.action === "recreate") await createDatabase(opts.target, db);
  const fromArchive = db.action === "create-from-archive" || db.action === "drop-and-create";
  if (plan.manifest.engine === "native") {
    try {
      await restoreDatabaseNative({
        target: opts.target,
        repo: opts.repo,
        setId: plan.setId,
        record: db.record,
        database: db.target,
        createFromArchive: fromArchive,
        dropFirst: db.action === "drop-and-create",
        jobs,
        pgRestore,
        reporter: opts.reporter,
        signal: opts.signal,
      });
    } catch (err) {
      // A database this restore created and could not fill is removed again.
      if (db.action === "create" || db.action === "create-from-archive") {
        await dropDatabase(opts.target, db.target).catch(() => {});
      }
      throw err;
    }
    return;
  }
  const input = (await opts.repo.openFile(plan.setId, db.file)).pipeThrough(
    progressStream(opts.reporter, db.target, db.file.rawBytes),
  );
  try {
    await restoreArchive(pgRestore, opts.target, input, {
      database: fromArchive ? "postgres" : db.target,
      jobs,
      clean: db.action === "clean" || db.action === "drop-and-create",
      create: fromArchive,
      signal: opts.signal,
      describe: `pg_restore of "${db.source}" into "${db.target}" at ${opts.target.endpoint}`,
    });
  } catch (err) {
    // A database this restore created and could not fill is removed again.
    if (db.action === "create" || db.action === "create-from-archive") {
      await dropDatabase(opts.target, db.target).catch(() => {});
    }
    throw err;
  }
}

async function dropDatabase(target: PgTarget, name: string): Promise<void> {
  await target.withSql(
    "postgres",
    `cannot drop database "${name}" at ${target.endpoint}`,
    (sql) => sql.unsafe(`DROP DATABASE IF EXISTS ${quoteIdent(name)}`),
  );
}

/** CREATE DATABASE with the encoding and locale the backup recorded. */
async function createDatabase(target: PgTarget, db: PlannedDatabase): Promise<void> {
  const r = db.record;
  let stmt = `CREATE DATABASE ${quoteIdent(db.target)} TEMPLATE template0`;
  if (r.encoding) stmt += ` ENCODING ${quoteLiteral(r.encoding)}`;
  if (r.collate) stmt += ` LC_COLLATE ${quoteLiteral(r.collate)}`;
  if (r.ctype) stmt += ` LC_CTYPE ${quoteLiteral(r.ctype)}`;
  await target.withSql(
    "postgres",
    `cannot create database "${db.target}" at ${target.endpoint}`,
    (sql) => sql.unsafe(stmt),
  );
}

function reportPart(opts: RestoreOptions, part: string, started: number, error?: string): void {
  opts.reporter.event({
    type: "part",
    part,
    status: error ? "failed" : "ok",
    elapsedMs: Math.round(performance.now() - started),
    error,
  });
}
