/**
 * `restore single` and `restore cluster`: build a plan (which set, which databases, into
 * which targets, what is created or cleaned), check every file's checksum before the server
 * is touched (a single restore into a database it creates checks them while it restores, and
 * drops the database again if one is damaged), then carry the plan out. `--dry-run` stops
 * after the plan.
 */
import { stopOnFailure } from "../abort.ts";
import { DbBackupError, errorMessage } from "../errors.ts";
import { countUserObjects, listDatabases, serverInfo } from "../engine/pg/catalog.ts";
import { type PgTarget, quoteIdent, quoteLiteral } from "../engine/pg/connect.ts";
import { restoreArchive, restoreGlobalsScript, withListFile } from "../engine/pg/pg_restore.ts";
import { startDatabaseDump } from "../engine/pg/pg_dump.ts";
import {
  restoreDatabaseNative,
  restoreTablesInOneTransaction,
} from "../engine/pg/native_restore.ts";
import {
  readArchiveToc,
  schemasNeeded,
  selectForTables,
  type TableRef,
  type TocEntry,
  tocListFile,
} from "../engine/pg/archive_toc.ts";
import { findTool, type PgTool } from "../engine/pg/tools.ts";
import type { DatabaseRecord, FileRecord, Manifest } from "../repo/manifest.ts";
import type { Repository } from "../repo/repository.ts";
import { withSharedLock } from "../repo/lock.ts";
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
  /** Single restore: only these tables ("schema.table" or "table") and these schemas' tables. */
  tables?: string[];
  schemas?: string[];
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
  | "recreate"
  /** --table/--schema: the chosen tables go into the existing target next to what it holds. */
  | "add-tables"
  /** --table/--schema with --clean: chosen tables that exist are dropped and restored. */
  | "replace-tables";

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
  /** --table/--schema: the archive entries to restore, and the tables they hold. */
  selection?: PlannedSelection;
}

export interface PlannedSelection {
  tables: TableRef[];
  /** pg_restore -L list of the chosen archive entries. */
  list: string;
  notes: string[];
  /** Schemas the restore writes into (created when the target lacks them). */
  schemas: string[];
  /** Chosen tables that exist in the target now (replaced with --clean). */
  existing: TableRef[];
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
  /** The target server's major version (for a pg_dump of a database it has). */
  targetMajor: number;
}

export interface RestoreResult {
  plan: RestorePlan;
  status: "complete" | "partial" | "failed" | "dry-run";
  parts: { part: string; status: "ok" | "failed"; error?: string; notes?: string[] }[];
}

export async function restore(opts: RestoreOptions): Promise<RestoreResult> {
  return await withSharedLock(
    opts.repo.storage,
    "restore",
    (message) => opts.reporter.event({ type: "warning", message }),
    () => restoreLocked(opts),
  );
}

async function restoreLocked(opts: RestoreOptions): Promise<RestoreResult> {
  const plan = await planRestore(opts);
  for (const d of plan.databases) {
    for (const message of d.selection?.notes ?? []) {
      opts.reporter.event({ type: "warning", message });
    }
  }
  const snapshots = snapshotCount(plan.manifest);
  if (snapshots && snapshots > 1) {
    opts.reporter.event({
      type: "warning",
      message:
        `backup ${plan.setId} was resumed: its data spans ${snapshots} snapshots. A table written to between the runs can have rows missing or twice (its chunks can come from both), and the schema and sequence values are those of the first run; where that matters, restore a backup that was not resumed`,
    });
  }
  if (opts.dryRun) return { plan, status: "dry-run", parts: [] };
  // A single restore into a database it creates checks the files while it restores (the
  // check reads the files while pg_restore and the server are busy with the schema): if one is
  // damaged, the restore is stopped and the new database dropped, so nothing changes either
  // way. Every other restore checks them all before it touches the server.
  if (plan.kind === "single" && plan.databases.every((d) => d.action === "create")) {
    const verified = verifyBeforeRestore(opts, plan);
    verified.catch(() => {}); // awaited below, after the restore has stopped
    // Once the restore has stopped, a damaged file is the error to report.
    return await executeRestore(opts, plan, verified).finally(() => verified);
  }
  await verifyBeforeRestore(opts, plan);
  const destructive = plan.databases.filter((d) =>
    d.action === "clean" || d.action === "drop-and-create" || d.action === "recreate" ||
    d.action === "replace-tables"
  ).map((d) =>
    d.action === "clean"
      ? `replace objects in database "${d.target}" (${d.existingObjects} objects now)`
      : d.action === "replace-tables"
      ? `drop and restore ${d.selection!.existing.length} table(s) in database "${d.target}" (${
        d.selection!.existing.map((t) => `${t.schema}.${t.name}`).join(", ")
      })`
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

  const server = await opts.target.withSql(
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
      return {
        major: info.major,
        names: new Set((await listDatabases(sql)).map((d) => d.name)),
      };
    },
  );
  const existing = server.names;

  const filtered = (opts.tables?.length ?? 0) + (opts.schemas?.length ?? 0) > 0;
  if (filtered && opts.kind !== "single") {
    throw new DbBackupError("usage", "--table and --schema work with restore single only");
  }
  const databases: PlannedDatabase[] = [];
  for (const rec of chosen) {
    const target = opts.kind === "single" ? opts.targetName ?? rec.name : rec.name;
    const native = manifest.engine === "native";
    const file = rec.files.find((f) =>
      f.content === (native ? "pg_dump-custom-schema" : "pg_dump-custom")
    );
    if (!file) throw new DbBackupError("verification", `${action}: "${rec.name}" has no archive`);
    if (filtered) {
      databases.push(await planTables(opts, id, rec, file, target, existing.has(target), action));
      continue;
    }
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
      // An empty database is filled as it is; but a cluster restore creates each database from
      // the archive, with its owner, settings, comment and privileges, which filling it left
      // out: the empty one is dropped first (the maintenance database cannot be).
      if (existingObjects === 0) {
        act = opts.kind === "cluster" && target !== "postgres" ? "drop-and-create" : "into-empty";
      } else if (!opts.clean) {
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
      if (act === "clean") await refuseUncleanable(opts, id, file, target, action);
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
    targetMajor: server.major,
  };
}

/**
 * A pg_dump set's restore --clean into a database that stays (a single restore, or the cluster's
 * "postgres"): pg_restore --clean drops every object of the archive, one by one, in reverse
 * order, and stops at the first that fails. A key or index of a partition, attached to its
 * partitioned table's, cannot be dropped on its own ("cannot drop inherited constraint"): the
 * restore failed after dropping the keys and indexes that came before, leaving the database
 * neither as it was nor as backed up. Refused before anything is dropped when the target has
 * such an index that the archive would drop.
 */
async function refuseUncleanable(
  opts: RestoreOptions,
  setId: string,
  file: FileRecord,
  target: string,
  action: string,
): Promise<void> {
  const toc = await readArchiveToc(await opts.repo.openFile(setId, file), `${setId}/${file.path}`);
  const attached = toc.entries.filter((e) => e.desc === "INDEX ATTACH" && e.namespace !== null);
  if (attached.length === 0) return;
  const found = await opts.target.withSql(
    target,
    `${action}: cannot inspect database "${target}"`,
    async (sql) =>
      await sql<{ schema: string; name: string }[]>`
        SELECT n.nspname AS schema, c.relname AS name
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind = 'i' AND c.relispartition
           AND (n.nspname, c.relname) IN (
             SELECT * FROM unnest(${attached.map((e) => e.namespace!)}::text[],
                                  ${attached.map((e) => e.tag)}::text[]))
         ORDER BY 1, 2`,
  );
  if (found.length === 0) return;
  const names = found.map((i) => `${i.schema}.${i.name}`);
  throw new DbBackupError(
    "refused",
    `${action}: pg_restore --clean cannot replace database "${target}" in place: it would stop at dropping ${
      names.slice(0, 3).join(", ")
    }${
      names.length > 3 ? ` and ${names.length - 3} more` : ""
    } (a partition's key or index, which goes only with its partitioned table's), after dropping other objects; restore into a new database (--target NAME --create) or drop "${target}" first`,
  );
}

/**
 * --clean drops each chosen table the target has, and dropping a partitioned table drops its
 * partitions, rows and all (as with pg_restore --clean -t): refused when the target has a
 * partition of one that the restore does not bring back (one created after the backup, say).
 * Dropping a partition takes it and its rows out of its partitioned table, and it came back as a
 * table of its own: refused when that partitioned table is not restored too.
 */
async function refuseToDropPartitions(
  opts: RestoreOptions,
  target: string,
  action: string,
  existing: readonly TableRef[],
  restored: readonly TableRef[],
): Promise<void> {
  // Below the chosen tables: their partitions, at any depth; above: the partitioned table of
  // each chosen one that is a partition.
  const { partitions, parents } = await opts.target.withSql(
    target,
    `${action}: cannot inspect database "${target}"`,
    async (sql) => {
      const schemas = existing.map((t) => t.schema);
      const names = existing.map((t) => t.name);
      const partitions = await sql<{ schema: string; name: string }[]>`
        WITH RECURSIVE chosen AS (
          SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest(${schemas}::text[], ${names}::text[]))
        ), below AS (
          SELECT i.inhrelid AS oid FROM pg_inherits i JOIN chosen ON i.inhparent = chosen.oid
          UNION
          SELECT i.inhrelid FROM pg_inherits i JOIN below ON i.inhparent = below.oid
        )
        SELECT n.nspname AS schema, c.relname AS name
          FROM below JOIN pg_class c ON c.oid = below.oid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relispartition
         ORDER BY 1, 2`;
      const parents = await sql<{ schema: string; name: string; pschema: string; pname: string }[]>`
        SELECT n.nspname AS schema, c.relname AS name,
               pn.nspname AS pschema, p.relname AS pname
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_inherits i ON i.inhrelid = c.oid
          JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace pn ON pn.oid = p.relnamespace
         WHERE c.relispartition
           AND (n.nspname, c.relname) IN (SELECT * FROM unnest(${schemas}::text[], ${names}::text[]))
         ORDER BY 1, 2`;
      return { partitions, parents };
    },
  );
  const isRestored = (p: TableRef) =>
    restored.some((t) => t.schema === p.schema && t.name === p.name);
  const lost = partitions.filter((p) => !isRestored(p));
  const detached = parents.filter((p) => !isRestored({ schema: p.pschema, name: p.pname }));
  if (detached.length > 0) {
    throw new DbBackupError(
      "refused",
      `${action}: --clean would take ${
        detached.map((p) => `${p.schema}.${p.name} out of ${p.pschema}.${p.pname}`).join(", ")
      } in database "${target}" (a dropped partition leaves its partitioned table with its rows, and would come back as a table of its own); restore the partitioned table instead, or detach the partition first`,
    );
  }
  if (lost.length > 0) {
    throw new DbBackupError(
      "refused",
      `${action}: --clean would drop ${
        lost.map((t) => `${t.schema}.${t.name}`).join(", ")
      } in database "${target}" with its rows: a partition of a table being replaced that this backup does not have; detach it first (ALTER TABLE ... DETACH PARTITION) to keep it`,
    );
  }
}

/**
 * --table/--schema: reads the archive's table of contents, chooses the entries, and checks
 * which chosen tables (and trigger functions) the target already has.
 */
async function planTables(
  opts: RestoreOptions,
  setId: string,
  rec: DatabaseRecord,
  file: FileRecord,
  target: string,
  targetExists: boolean,
  action: string,
): Promise<PlannedDatabase> {
  const toc = await readArchiveToc(
    await opts.repo.openFile(setId, file),
    `${setId}/${file.path}`,
  );
  // The target's tables: chosen ones that exist are refused or replaced; foreign keys of chosen
  // tables to ones the target keeps are restored.
  const targetTables: TableRef[] = targetExists
    ? await opts.target.withSql(
      target,
      `${action}: cannot inspect database "${target}"`,
      async (sql) =>
        (await sql<{ schema: string; name: string }[]>`
          SELECT n.nspname AS schema, c.relname AS name
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm')`).map((r) => ({
          schema: r.schema,
          name: r.name,
        })),
    )
    : [];
  if (!targetExists && !opts.create) {
    throw new DbBackupError(
      "refused",
      `${action}: database "${target}" does not exist at ${opts.target.endpoint}; add --create to create it`,
    );
  }
  const selection = selectForTables(toc, {
    tables: opts.tables ?? [],
    schemas: opts.schemas ?? [],
    present: targetTables,
    dataElsewhere: rec.native?.tables.map((t) => ({ schema: t.schema, name: t.name })) ?? [],
  });
  const same = (a: TableRef, b: TableRef) => a.schema === b.schema && a.name === b.name;
  const existing = selection.tables.filter((t) => targetTables.some((x) => same(x, t)));
  if (existing.length > 0 && !opts.clean) {
    throw new DbBackupError(
      "refused",
      `${action}: database "${target}" already has ${
        existing.map((t) => `${t.schema}.${t.name}`).join(", ")
      }; add --clean to drop and restore them`,
    );
  }
  if (existing.length > 0) {
    await refuseToDropPartitions(opts, target, action, existing, selection.tables);
  }
  // What the target already has is used as it is, not created again: trigger functions; and a
  // sequence, while none of the chosen tables is there to be replaced (it belongs to something
  // the target keeps, a table sharing it), value included. An identity sequence is part of its
  // table and is never skipped.
  const presentFunctions = new Set<number>();
  const keptSequences: TocEntry[] = [];
  const sequences = existing.length > 0
    ? []
    : selection.entries.filter((e) =>
      e.desc === "SEQUENCE" && !/\bADD GENERATED\b/.test(e.defn ?? "")
    );
  if (targetExists && selection.functions.length + sequences.length > 0) {
    await opts.target.withSql(
      target,
      `${action}: cannot inspect database "${target}"`,
      async (sql) => {
        const exists = async (lookup: "to_regprocedure" | "to_regclass", name: string) =>
          (await sql.unsafe<{ found: boolean }[]>(
            `SELECT ${lookup}($1) IS NOT NULL AS found`,
            [name],
          ))[0].found;
        for (const f of selection.functions) {
          // pg_dump's tag is "name(argument types)": the types come quoted as needed, the
          // name does not.
          const open = f.signature.indexOf("(");
          const name = `${quoteIdent(f.schema)}.${quoteIdent(f.signature.slice(0, open))}${
            f.signature.slice(open)
          }`;
          if (await exists("to_regprocedure", name)) presentFunctions.add(f.dumpId);
        }
        for (const e of sequences) {
          const name = `${quoteIdent(e.namespace ?? "public")}.${quoteIdent(e.tag)}`;
          if (await exists("to_regclass", name)) keptSequences.push(e);
        }
      },
    );
  }
  const skipped = new Set([
    ...presentFunctions,
    ...keptSequences.map((e) => e.dumpId),
    // Their SEQUENCE SET, OWNED BY, comments and privileges (not the tables and defaults
    // that use them).
    ...selection.entries.filter((e) =>
      SEQUENCE_PARTS.has(e.desc) &&
      e.deps.some((d) => keptSequences.some((k) => k.dumpId === d))
    ).map((e) => e.dumpId),
  ]);
  const ids = new Set([...selection.dumpIds].filter((id) => !skipped.has(id)));
  const kept = selection.functions.filter((f) => presentFunctions.has(f.dumpId));
  const notes = selection.notes.filter((n) =>
    !kept.some((f) => n.startsWith("restoring function ") && n.includes(`.${f.signature} too`)) &&
    !keptSequences.some((e) => n.startsWith(`restoring sequence ${e.namespace}.${e.tag} `))
  );
  if (keptSequences.length > 0) {
    notes.push(
      `kept ${keptSequences.length} sequence(s) the target already has, with their values: ${
        keptSequences.map((e) => `${e.namespace}.${e.tag}`).join(", ")
      }`,
    );
  }
  if (kept.length > 0) {
    notes.push(
      `kept ${kept.length} trigger function(s) the target already has: ${
        kept.map((f) => `${f.schema}.${f.signature}`).join(", ")
      }`,
    );
  }
  return {
    source: rec.name,
    target,
    action: !targetExists ? "create" : existing.length > 0 ? "replace-tables" : "add-tables",
    existingObjects: existing.length,
    file,
    files: rec.files.filter((f) =>
      f === file ||
      rec.native?.tables.some((t) =>
        selection.tables.some((s) => s.schema === t.schema && s.name === t.name) &&
        t.chunks.some((c) => c.path === f.path)
      )
    ),
    record: rec,
    selection: {
      tables: selection.tables,
      list: tocListFile(toc, ids),
      notes,
      schemas: schemasNeeded(selection),
      existing,
    },
  };
}

/** What pg_dump writes about a sequence besides creating it. */
const SEQUENCE_PARTS = new Set(["SEQUENCE SET", "SEQUENCE OWNED BY", "COMMENT", "ACL"]);

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

/**
 * Carries the plan out. With `verified` (the files' check, still running): each database is
 * filled while it runs, and one it fails is stopped and dropped again.
 */
async function executeRestore(
  opts: RestoreOptions,
  plan: RestorePlan,
  verified?: Promise<void>,
): Promise<RestoreResult> {
  const parts: RestoreResult["parts"] = [];
  opts.reporter.event({
    type: "start",
    operation: `restore ${plan.kind}`,
    setId: plan.setId,
    parts: [...(plan.globals ? ["globals"] : []), ...plan.databases.map((d) => d.target)],
  });
  const major = Math.floor(plan.manifest.server.versionNum / 10000);
  const tools: Tools = {
    pgRestore: await findTool("pg_restore", major, opts.pgBin),
    psql: await findTool("psql", major, opts.pgBin),
    definition: plan.databases.some((d) => d.action === "recreate")
      ? {
        pgDump: await findTool("pg_dump", plan.targetMajor, opts.pgBin),
        pgRestore: await findTool("pg_restore", plan.targetMajor, opts.pgBin),
      }
      : undefined,
  };
  if (plan.globals) {
    const started = performance.now();
    try {
      // pg_dumpall's script sets the attributes, password and settings of every role it has,
      // also of those the server has already (their CREATE ROLE fails and is tolerated). That is
      // said plainly; only the role running the restore keeps its password, so that the restore
      // cannot lock it out. (Leaving an existing role's lines out of the script line by line was
      // tried and undone: a value spanning lines left the rest of its statement to run as SQL.)
      const before = await opts.target.withSql(
        "postgres",
        `cannot read the roles at ${opts.target.endpoint}`,
        async (sql) => ({
          roles: (await sql<{ name: string }[]>`
            SELECT rolname AS name FROM pg_roles WHERE rolname !~ '^pg_' ORDER BY 1`)
            .map((r) => r.name),
          self: (await sql<{ name: string; password: string | null }[]>`
            SELECT rolname AS name, rolpassword AS password FROM pg_authid
             WHERE rolname = current_user`)[0],
        }),
      );
      const tolerated = await restoreGlobalsScript(
        tools.psql,
        opts.target,
        await opts.repo.openFile(plan.setId, plan.globals),
        opts.signal,
      );
      await opts.target.withSql(
        "postgres",
        `cannot set the password of role "${before.self.name}" back at ${opts.target.endpoint}`,
        (sql) =>
          sql.unsafe(
            `ALTER ROLE ${quoteIdent(before.self.name)} PASSWORD ${
              before.self.password === null ? "NULL" : quoteLiteral(before.self.password)
            }`,
          ),
      );
      const notes = [
        ...(before.roles.length > 0
          ? [
            `roles the server had already, given the backup's attributes, password and settings where the backup has them (but the password of "${before.self.name}", which runs the restore): ${
              before.roles.join(", ")
            }`,
          ]
          : []),
        ...tolerated.map((t) => `kept existing: ${t}`),
      ];
      parts.push({ part: "globals", status: "ok", notes });
      for (const message of notes) opts.reporter.event({ type: "step", part: "globals", message });
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
  if (perDatabaseJobs > 1 && !spoolAllowed(opts, plan)) {
    opts.reporter.event({
      type: "step",
      message:
        `pg_restore runs with one job: a parallel pg_restore needs the archive as a plaintext file on local disk, and this set is ${
          plan.manifest.encryption ? "encrypted" : "in object storage"
        }`,
    });
  }
  const results = await mapPool(
    plan.databases,
    plan.kind === "single" ? 1 : opts.jobs,
    async (db) => {
      const started = performance.now();
      try {
        await restoreDatabase(opts, plan, db, tools, perDatabaseJobs, verified);
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
  tools: Tools,
  jobs: number,
  verified?: Promise<void>,
): Promise<void> {
  opts.reporter.event({
    type: "step",
    part: db.target,
    message: `restoring "${db.source}" into "${db.target}" (${db.action})`,
  });
  const aside = db.action === "recreate" ? await recreateDatabase(opts, db, tools) : undefined;
  if (db.action === "create") await createDatabase(opts.target, db);
  try {
    if (verified) await fillWhileVerifying(opts, plan, db, tools, jobs, verified);
    else await fillDatabase(opts, plan, db, tools, jobs);
  } catch (err) {
    // A database this restore created and could not fill is removed again; one it replaced
    // is put back.
    if (db.action === "create" || db.action === "create-from-archive") {
      await dropDatabase(opts.target, db.target).catch(() => {});
    }
    if (aside) await putBack(opts, db.target, aside);
    throw err;
  }
  if (aside) {
    await dropDatabase(opts.target, aside, { template: true }).catch((err) =>
      opts.reporter.event({
        type: "warning",
        message:
          `"${db.target}" is restored, but the database it replaced, renamed to "${aside}", could not be dropped: ${
            errorMessage(err)
          }`,
      })
    );
  }
}

/** After a failed restore: the half-restored database is dropped, `aside` renamed back. */
async function putBack(opts: RestoreOptions, name: string, aside: string): Promise<void> {
  try {
    await dropDatabase(opts.target, name, { template: true });
    await renameDatabase(opts.target, aside, name);
    opts.reporter.event({
      type: "warning",
      message: `database "${name}" is as it was before this restore`,
    });
  } catch (err) {
    opts.reporter.event({
      type: "warning",
      message:
        `database "${name}" could not be put back: what it held before this restore is in the database "${aside}" (${
          errorMessage(err)
        })`,
    });
  }
}

async function renameDatabase(target: PgTarget, from: string, to: string): Promise<void> {
  await target.withSql(
    "postgres",
    `cannot rename database "${from}" to "${to}" at ${target.endpoint}`,
    (sql) => sql.unsafe(`ALTER DATABASE ${quoteIdent(from)} RENAME TO ${quoteIdent(to)}`),
  );
}

/**
 * fillDatabase while the files' check runs: a failed check stops the filling, and both have
 * ended before this returns. The check's failure is the one reported.
 */
async function fillWhileVerifying(
  opts: RestoreOptions,
  plan: RestorePlan,
  db: PlannedDatabase,
  tools: Tools,
  jobs: number,
  verified: Promise<void>,
): Promise<void> {
  const check = stopOnFailure(verified, opts.signal);
  const [filled, checked] = await Promise.allSettled([
    fillDatabase({ ...opts, signal: check.signal }, plan, db, tools, jobs),
    check.task,
  ]);
  if (checked.status === "rejected") throw checked.reason;
  if (filled.status === "rejected") throw filled.reason;
}

/** The restore proper: chosen tables, a native set, or a pg_dump archive. */
async function fillDatabase(
  opts: RestoreOptions,
  plan: RestorePlan,
  db: PlannedDatabase,
  { pgRestore, psql }: Tools,
  jobs: number,
): Promise<void> {
  if (db.selection) {
    const selection = db.selection;
    await createSchemas(opts.target, db.target, selection.schemas);
    await withListFile(
      selection.list,
      (listFile) => restoreTables(opts, plan, db, { pgRestore, psql }, listFile),
    );
    return;
  }
  const fromArchive = db.action === "create-from-archive" || db.action === "drop-and-create";
  if (plan.manifest.engine === "native") {
    await restoreDatabaseNative({
      target: opts.target,
      repo: opts.repo,
      setId: plan.setId,
      record: db.record,
      database: db.target,
      createFromArchive: fromArchive,
      dropFirst: db.action === "drop-and-create",
      jobs,
      spool: spoolAllowed(opts, plan),
      pgRestore,
      psql,
      reporter: opts.reporter,
      signal: opts.signal,
    });
    return;
  }
  const input = (await opts.repo.openFile(plan.setId, db.file)).pipeThrough(
    progressStream(opts.reporter, db.target, db.file.rawBytes),
  );
  // --clean into a database that stays: pg_restore drops the archive's objects one by one and
  // stops at the first it cannot drop (one that only the target has depends on it: a view, a
  // foreign key), after dropping those before it. In one transaction (hence one job), such a
  // failure leaves the target as it was.
  const inPlace = db.action === "clean";
  await restoreArchive(pgRestore, opts.target, input, {
    database: fromArchive ? "postgres" : db.target,
    jobs: inPlace ? 1 : jobs,
    singleTransaction: inPlace,
    spool: spoolAllowed(opts, plan),
    clean: db.action === "clean" || db.action === "drop-and-create",
    create: fromArchive,
    signal: opts.signal,
    describe: `pg_restore of "${db.source}" into "${db.target}" at ${opts.target.endpoint}`,
  });
}

/** --table/--schema: the chosen entries of the archive, and for the native engine their chunks. */
async function restoreTables(
  opts: RestoreOptions,
  plan: RestorePlan,
  db: PlannedDatabase,
  { pgRestore, psql }: Tools,
  listFile: string,
): Promise<void> {
  await restoreTablesInOneTransaction({
    target: opts.target,
    repo: opts.repo,
    setId: plan.setId,
    record: db.record,
    archive: db.file,
    database: db.target,
    only: { tables: db.selection!.tables, listFile, clean: db.action === "replace-tables" },
    pgRestore,
    psql,
    reporter: opts.reporter,
    signal: opts.signal,
  });
}

/** Creates the schemas a table restore writes into when the target lacks them. */
async function createSchemas(target: PgTarget, database: string, schemas: string[]): Promise<void> {
  if (schemas.length === 0) return;
  await target.withSql(
    database,
    `cannot create schemas in database "${database}" at ${target.endpoint}`,
    async (sql) => {
      for (const s of schemas) await sql.unsafe(`CREATE SCHEMA IF NOT EXISTS ${quoteIdent(s)}`);
    },
  );
}

/** The client programs a restore runs. */
interface Tools {
  pgRestore: PgTool;
  psql: PgTool;
  /**
   * For a database that is dropped and created again: pg_dump reads its definition first, and a
   * pg_restore of the same version (the target's) creates it from that.
   */
  definition?: { pgDump: PgTool; pgRestore: PgTool };
}

/** Parallel pg_restore spools a plaintext archive: only for unencrypted sets on local disk. */
function spoolAllowed(opts: RestoreOptions, plan: RestorePlan): boolean {
  return !plan.manifest.encryption && opts.repo.storage.features.directories;
}

/**
 * DROP DATABASE IF EXISTS. With `template`, a template database too (one that a native --clean
 * set aside or created again as a template: "cannot drop a template database" left a full copy
 * behind, or a half-restored template in place).
 */
async function dropDatabase(
  target: PgTarget,
  name: string,
  options: { template?: boolean } = {},
): Promise<void> {
  await target.withSql(
    "postgres",
    `cannot drop database "${name}" at ${target.endpoint}`,
    async (sql) => {
      if (options.template) {
        const [found] = await sql<{ template: boolean }[]>`
          SELECT datistemplate AS template FROM pg_database WHERE datname = ${name}`;
        if (found?.template) {
          await sql.unsafe(`ALTER DATABASE ${quoteIdent(name)} IS_TEMPLATE false`);
        }
      }
      await sql.unsafe(`DROP DATABASE IF EXISTS ${quoteIdent(name)}`);
    },
  );
}

/**
 * Native restore --clean: the target database is created again as it was, with its encoding,
 * locale, owner, connection limit, settings (its own and its roles'), comment and privileges,
 * read with pg_dump --create first. Only its contents are replaced, as pg_restore --clean leaves
 * the database itself alone. (It was created with the backup's encoding and locale and nothing
 * else: owned by the restoring role, its settings and grants gone.) The database it replaces is
 * renamed aside, not dropped, until the restore is complete: a restore that fails (a role the
 * target lacks, a row it rejects) puts it back. Returns the name it was renamed to.
 */
async function recreateDatabase(
  opts: RestoreOptions,
  db: PlannedDatabase,
  tools: Tools,
): Promise<string> {
  const { pgDump, pgRestore } = tools.definition!;
  const child = startDatabaseDump(pgDump, opts.target, db.target, opts.signal, [
    "--create",
    "--schema-only",
    "--exclude-schema=*",
  ]);
  const [definition] = await Promise.all([new Response(child.stdout).bytes(), child.status]);
  const toc = await readArchiveToc(
    ReadableStream.from([definition]),
    `pg_dump --create of "${db.target}"`,
  );
  // The database's own entries only: not the extensions, casts, languages, ... it also holds.
  const own = toc.entries.filter((e) =>
    e.desc === "DATABASE" || e.desc === "DATABASE PROPERTIES" ||
    (["COMMENT", "ACL", "SECURITY LABEL"].includes(e.desc) && e.tag.startsWith("DATABASE "))
  );
  // A name of its own (at most 63 bytes), whatever the target's name.
  const aside = `dbbackup_replaced_${new Date().toISOString().replace(/\D/g, "").slice(0, 14)}_${
    crypto.randomUUID().slice(0, 8)
  }`;
  await renameDatabase(opts.target, db.target, aside);
  opts.reporter.event({
    type: "step",
    part: db.target,
    message: `renamed "${db.target}" to "${aside}" until the restore is complete`,
  });
  try {
    await withListFile(
      tocListFile(toc, new Set(own.map((e) => e.dumpId))),
      (listFile) =>
        restoreArchive(pgRestore, opts.target, ReadableStream.from([definition]), {
          database: "postgres",
          jobs: 1,
          clean: false,
          create: true,
          listFile,
          signal: opts.signal,
          describe: `creating database "${db.target}" again at ${opts.target.endpoint}`,
        }),
    );
  } catch (err) {
    // pg_restore may have created the database before it failed (a setting the restoring role
    // may not make): that one goes, the old one comes back.
    await putBack(opts, db.target, aside);
    throw err;
  }
  return aside;
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
