/**
 * `backup single` and `backup cluster`: inspect the server, plan what to dump, claim a new set
 * (or reopen an interrupted one with --resume), dump globals and databases through the chosen
 * engine (pg_dump, or the native COPY engine), publish the manifest last.
 */
import { DbBackupError, errorMessage, InterruptedError } from "../errors.ts";
import { type Compression, compressionSuffix } from "../pipeline/compress.ts";
import {
  type DatabaseInfo,
  listDatabases,
  type ServerInfo,
  serverInfo,
} from "../engine/pg/catalog.ts";
import type { PgTarget } from "../engine/pg/connect.ts";
import { startDatabaseDump, startGlobalsDump } from "../engine/pg/pg_dump.ts";
import { findTool, type PgTool } from "../engine/pg/tools.ts";
import type {
  DatabaseRecord,
  Engine,
  FileRecord,
  GlobalsRecord,
  Manifest,
  SetKind,
} from "../repo/manifest.ts";
import { dumpDatabaseNative } from "../engine/pg/native_dump.ts";
import { MANIFEST_FORMAT, MANIFEST_VERSION } from "../repo/manifest.ts";
import { overallStatus, type Repository, type SetWriter } from "../repo/repository.ts";
import { slug } from "../repo/set_id.ts";
import { acquireLock, type HeldLock } from "../repo/lock.ts";
import type { KeyHolder } from "../crypto/keys.ts";
import { selectDatabases } from "../plan/select.ts";
import { VERSION } from "../version.ts";
import { mapPool } from "./_pool.ts";
import { progressStream, type Reporter } from "./progress.ts";
import type { ChildHandle } from "../process/run.ts";

export interface BackupOptions {
  target: PgTarget;
  repo: Repository;
  kind: SetKind;
  /** The database of a single backup. */
  database?: string;
  includes: string[];
  excludes: string[];
  jobs: number;
  compression: Compression;
  pgBin?: string;
  engine: Engine;
  /** Native engine: tables larger than this are split into chunks. */
  chunkBytes: number;
  /** Continue the newest incomplete set of the same target (native engine). */
  resume: boolean;
  /** Encrypt the set, its data key wrapped for each of these holders. */
  encryptFor?: KeyHolder[];
  dryRun: boolean;
  reporter: Reporter;
  signal?: AbortSignal;
}

export interface BackupPlan {
  kind: SetKind;
  server: ServerInfo;
  endpoint: string;
  databases: DatabaseInfo[];
  skipped: { name: string; reason: string }[];
  globals: boolean;
  pgDump: PgTool;
}

export interface BackupResult {
  setId?: string;
  status: "complete" | "partial" | "failed" | "dry-run";
  plan: BackupPlan;
  manifest?: Manifest;
}

export async function backup(opts: BackupOptions): Promise<BackupResult> {
  if (opts.resume && opts.engine !== "native") {
    throw new DbBackupError("usage", "--resume needs the native engine (--engine native)");
  }
  const plan = await planBackup(opts);
  if (opts.dryRun) return { status: "dry-run", plan };
  // A prune waits until this backup's set is published; the set itself is held exclusively,
  // so a concurrent --resume cannot pick it up while it is being written.
  const repoLock = await acquireLock(opts.repo.storage, "repo", "shared", `backup ${opts.kind}`);
  try {
    const { set, lock } = await claimSet(opts, plan);
    try {
      return await backupInto(opts, plan, set);
    } finally {
      await lock.release().catch(() => {});
    }
  } finally {
    await repoLock.release().catch(() => {});
  }
}

async function backupInto(
  opts: BackupOptions,
  plan: BackupPlan,
  set: SetWriter,
): Promise<BackupResult> {
  opts.reporter.event({
    type: "start",
    operation: `backup ${opts.kind}`,
    setId: set.id,
    parts: [...(plan.globals ? ["globals"] : []), ...plan.databases.map((d) => d.name)],
  });
  // A native set keeps what it wrote when it fails, so `--resume` can continue it; a pg_dump
  // set cannot be continued and is removed.
  const keep = opts.engine === "native";
  try {
    const manifest = await runBackup(opts, plan, set);
    const parts = [
      ...(manifest.globals ? [manifest.globals.status] : []),
      ...manifest.databases.map((d) => d.status),
    ];
    if (parts.every((p) => p === "failed")) {
      const reasons = [
        ...(manifest.globals?.error ? [manifest.globals.error] : []),
        ...manifest.databases.map((d) => d.error ?? ""),
      ];
      throw new DbBackupError("backup_failed", reasons.filter(Boolean).join("; "));
    }
    await set.writeManifest(manifest);
    await set.removeStates().catch(() => {});
    return { setId: set.id, status: manifest.status, plan, manifest };
  } catch (err) {
    if (!keep) await set.discard().catch(() => {});
    const kept = keep
      ? `; the incomplete set ${set.id} was kept: run the same backup with --resume to continue it`
      : `; the unfinished set ${set.id} was removed`;
    if (opts.signal?.aborted) throw new InterruptedError(`backup interrupted${kept}`);
    if (err instanceof DbBackupError) throw new DbBackupError(err.code, `${err.message}${kept}`);
    throw err;
  }
}

/**
 * A new set, or with --resume the newest incomplete set of the same kind and target, locked
 * exclusively. A resumed set loses the temporary files of the run that was killed.
 */
async function claimSet(
  opts: BackupOptions,
  plan: BackupPlan,
): Promise<{ set: SetWriter; lock: HeldLock }> {
  const name = label(opts, plan);
  const purpose = `backup ${opts.kind} ${opts.resume ? "--resume" : ""}`.trim();
  if (opts.resume) {
    // `<time>-<kind>-<label>`, with `-<n>` when two sets were claimed in the same second. The
    // label itself may end in digits ("local-123456", "shop-2"): it must match as a whole.
    const pattern = new RegExp(
      `^\\d{8}T\\d{6}Z-${opts.kind}-${slug(name).replaceAll(".", "\\.")}(-\\d+)?$`,
    );
    const candidates = (await opts.repo.listSets()).filter((s) =>
      s.status === "incomplete" && pattern.test(s.id)
    );
    const last = candidates.at(-1);
    if (last) {
      // Fails with "locked" when another run is writing (or resuming) this set right now.
      const lock = await acquireLock(opts.repo.storage, `set:${last.id}`, "exclusive", purpose);
      try {
        opts.reporter.event({ type: "step", message: `resuming the incomplete set ${last.id}` });
        const set = await opts.repo.reopenSet(last.id);
        let encrypted: boolean;
        try {
          encrypted = await set.resumeEncryption(await opts.repo.openers());
        } catch (err) {
          throw new DbBackupError(
            "key",
            `cannot resume ${last.id}: it is encrypted and ${
              errorMessage(err)
            } (a recipient public key cannot open it: start a new backup instead)`,
          );
        }
        if (opts.encryptFor && !encrypted) {
          throw new DbBackupError(
            "refused",
            `cannot resume ${last.id} with encryption: it was started unencrypted; resume it without --encrypt or start a new backup`,
          );
        }
        const removed = await set.removeTemporaries();
        if (removed > 0) {
          opts.reporter.event({
            type: "step",
            message: `removed ${removed} unfinished file(s) of the interrupted run`,
          });
        }
        return { set, lock };
      } catch (err) {
        await lock.release().catch(() => {});
        throw err;
      }
    }
    opts.reporter.event({
      type: "step",
      message: "no incomplete set to resume: starting a new one",
    });
  }
  const set = await opts.repo.createSet(opts.kind, name);
  let lock: HeldLock;
  try {
    lock = await acquireLock(opts.repo.storage, `set:${set.id}`, "exclusive", purpose);
  } catch (err) {
    // A --resume that found the new folder first holds it now: it is not ours to remove.
    if (!(err instanceof DbBackupError && err.code === "locked")) {
      await set.discard().catch(() => {});
    }
    throw err;
  }
  try {
    if (opts.encryptFor) await set.encryptFor(opts.encryptFor);
    return { set, lock };
  } catch (err) {
    await set.discard().catch(() => {});
    await lock.release().catch(() => {});
    throw err;
  }
}

/** Phase 1: what the server has and what will be dumped; changes nothing. */
export async function planBackup(opts: BackupOptions): Promise<BackupPlan> {
  const { target } = opts;
  const action = opts.kind === "single"
    ? `cannot back up database "${opts.database}"`
    : `cannot back up the cluster at ${target.endpoint}`;
  const { server, databases } = await target.withSql("postgres", action, async (sql) => ({
    server: await serverInfo(sql),
    databases: await listDatabases(sql),
  }));
  let chosen: DatabaseInfo[];
  let skipped: { name: string; reason: string }[] = [];
  if (opts.kind === "single") {
    const db = databases.find((d) => d.name === opts.database);
    if (!db) {
      throw new DbBackupError(
        "not_found",
        `${action}: database "${opts.database}" does not exist at ${target.endpoint}`,
      );
    }
    chosen = [db];
  } else {
    const sel = selectDatabases(databases, opts.includes, opts.excludes);
    chosen = sel.selected.map((n) => databases.find((d) => d.name === n)!);
    skipped = sel.skipped;
    if (chosen.length === 0) {
      throw new DbBackupError("not_found", `${action}: no database matches the filters`);
    }
  }
  const pgDump = await findTool("pg_dump", server.major, opts.pgBin);
  return {
    kind: opts.kind,
    server,
    endpoint: target.endpoint,
    databases: chosen,
    skipped,
    globals: opts.kind === "cluster",
    pgDump,
  };
}

/** Phase 2: dump everything into the claimed set; returns the manifest to publish. */
async function runBackup(opts: BackupOptions, plan: BackupPlan, set: SetWriter): Promise<Manifest> {
  const startedAt = new Date().toISOString();
  let globals: GlobalsRecord | undefined;
  if (plan.globals) {
    const pgDumpall = await findTool("pg_dumpall", plan.server.major, opts.pgBin);
    globals = await dumpGlobals(opts, pgDumpall, set);
  }
  const databases = await mapPool(
    plan.databases,
    opts.jobs,
    (db, i) => dumpDatabase(opts, plan, set, db, i + 1),
  );
  const status = overallStatus([
    ...(globals ? [globals.status] : []),
    ...databases.map((d) => d.status),
  ]);
  return {
    format: MANIFEST_FORMAT,
    formatVersion: MANIFEST_VERSION,
    id: set.id,
    tool: { name: "dbbackup", version: VERSION },
    kind: opts.kind,
    dbType: "postgres",
    engine: opts.engine,
    status,
    server: {
      version: plan.server.version,
      versionNum: plan.server.versionNum,
      host: opts.target.settings.host.value,
      port: opts.target.settings.port.value,
      system: plan.server.systemIdentifier,
    },
    dumpTool: `pg_dump ${plan.pgDump.version}`,
    startedAt,
    finishedAt: new Date().toISOString(),
    compression: { ...opts.compression },
    restore: { format: "custom", includes: opts.includes, excludes: opts.excludes },
    globals,
    databases,
  };
}

async function dumpGlobals(
  opts: BackupOptions,
  tool: PgTool,
  set: SetWriter,
): Promise<GlobalsRecord> {
  const started = performance.now();
  opts.reporter.event({ type: "step", part: "globals", message: "dumping roles and tablespaces" });
  try {
    // A resumed set holds the globals of the interrupted run: they are dumped again.
    if (opts.resume) {
      await set.removeFile(`globals.sql${compressionSuffix(opts.compression.algorithm)}`);
    }
    const child = startGlobalsDump(tool, opts.target, opts.signal);
    const file = await writeChildOutput(
      opts,
      set,
      child,
      "globals.sql",
      "pg_dumpall-globals",
      "globals",
    );
    report(opts, "globals", started, file);
    return { status: "ok", files: [file] };
  } catch (err) {
    if (opts.signal?.aborted) throw err;
    const error = `globals: ${errorMessage(err)}`;
    report(opts, "globals", started, undefined, error);
    return { status: "failed", error, files: [] };
  }
}

async function dumpDatabase(
  opts: BackupOptions,
  plan: BackupPlan,
  set: SetWriter,
  db: DatabaseInfo,
  index: number,
): Promise<DatabaseRecord> {
  const startedAt = new Date().toISOString();
  const started = performance.now();
  const base = {
    name: db.name,
    owner: db.owner,
    encoding: db.encoding,
    collate: db.collate,
    ctype: db.ctype,
    sizeBytes: db.sizeBytes,
    startedAt,
  };
  opts.reporter.event({ type: "step", part: db.name, message: `dumping database "${db.name}"` });
  const tool = plan.pgDump;
  if (opts.engine === "native") return await dumpNative(opts, plan, set, db, index, base, started);
  try {
    const child = startDatabaseDump(tool, opts.target, db.name, opts.signal);
    const name = `db-${String(index).padStart(3, "0")}-${slug(db.name)}.pgdump`;
    const file = await writeChildOutput(
      opts,
      set,
      child,
      name,
      "pg_dump-custom",
      db.name,
      db.sizeBytes,
    );
    report(opts, db.name, started, file);
    return { ...base, status: "ok", finishedAt: new Date().toISOString(), files: [file] };
  } catch (err) {
    if (opts.signal?.aborted) throw err;
    const error = `database "${db.name}": ${errorMessage(err)}`;
    report(opts, db.name, started, undefined, error);
    return { ...base, status: "failed", error, finishedAt: new Date().toISOString(), files: [] };
  }
}

async function dumpNative(
  opts: BackupOptions,
  plan: BackupPlan,
  set: SetWriter,
  db: DatabaseInfo,
  index: number,
  base: Omit<DatabaseRecord, "status" | "finishedAt" | "files">,
  started: number,
): Promise<DatabaseRecord> {
  try {
    const result = await dumpDatabaseNative({
      target: opts.target,
      database: db.name,
      set,
      prefix: `db-${String(index).padStart(3, "0")}`,
      compression: opts.compression,
      jobs: opts.jobs,
      chunkBytes: opts.chunkBytes,
      pgDump: plan.pgDump,
      psql: await findTool("psql", plan.server.major, opts.pgBin),
      serverMajor: plan.server.major,
      resume: opts.resume,
      reporter: opts.reporter,
      part: db.name,
      signal: opts.signal,
    });
    if (result.reused > 0) {
      opts.reporter.event({
        type: "step",
        part: db.name,
        message: `reused ${result.reused} chunk(s) of "${db.name}" from the interrupted run`,
      });
    }
    const bytes = result.files.reduce((n, f) => n + f.bytes, 0);
    opts.reporter.event({
      type: "part",
      part: db.name,
      status: "ok",
      bytes,
      elapsedMs: Math.round(performance.now() - started),
    });
    return {
      ...base,
      status: "ok",
      finishedAt: new Date().toISOString(),
      files: result.files,
      native: result.layout,
    };
  } catch (err) {
    if (opts.signal?.aborted) throw err;
    const error = `database "${db.name}": ${errorMessage(err)}`;
    report(opts, db.name, started, undefined, error);
    return { ...base, status: "failed", error, finishedAt: new Date().toISOString(), files: [] };
  }
}

/** Streams a child's stdout into the set; the file is published only if the child succeeded. */
async function writeChildOutput(
  opts: BackupOptions,
  set: SetWriter,
  child: ChildHandle,
  name: string,
  content: string,
  part: string,
  expectedBytes?: number,
): Promise<FileRecord> {
  try {
    return await set.writeFile(
      name,
      child.stdout.pipeThrough(progressStream(opts.reporter, part, expectedBytes)),
      { compression: opts.compression, content, ready: child.status, signal: opts.signal },
    );
  } catch (err) {
    child.kill("SIGKILL");
    // The child's own error says more than a broken pipe.
    await child.status.catch((childErr) => {
      throw childErr;
    });
    throw err;
  }
}

function report(
  opts: BackupOptions,
  part: string,
  started: number,
  file?: FileRecord,
  error?: string,
): void {
  opts.reporter.event({
    type: "part",
    part,
    status: error ? "failed" : "ok",
    bytes: file?.bytes,
    elapsedMs: Math.round(performance.now() - started),
    error,
  });
}

function label(opts: BackupOptions, plan: BackupPlan): string {
  if (opts.kind === "single") return opts.database!;
  const host = opts.target.settings.host.value;
  return host.startsWith("/")
    ? `local-${plan.server.systemIdentifier?.slice(-6) ?? "socket"}`
    : host;
}
