/**
 * The manifest: the source of truth of a backup set, written last and atomically.
 * Restore reads its options from here, never from today's flags.
 */
import { DbBackupError } from "../errors.ts";
import type { CompressionAlgorithm } from "../pipeline/compress.ts";

export const MANIFEST_FILE = "manifest.json";
export const MANIFEST_FORMAT = "dbbackup-manifest";
export const MANIFEST_VERSION = 1;

export type SetKind = "single" | "cluster";
export type SetStatus = "complete" | "partial" | "failed";
export type PartStatus = "ok" | "failed";
export type Engine = "pg_dump" | "native";

export interface FileRecord {
  /** Path relative to the set folder. */
  path: string;
  /** What the file holds: "pg_dump-custom" archive, "pg_dumpall-globals" SQL. */
  content: string;
  compression: CompressionAlgorithm;
  /** Size and sha256 of the stored (compressed) bytes. */
  bytes: number;
  sha256: string;
  /** Size and sha256 of the data before compression. */
  rawBytes: number;
  rawSha256: string;
}

export interface DatabaseRecord {
  name: string;
  status: PartStatus;
  error?: string;
  owner?: string;
  encoding?: string;
  collate?: string;
  ctype?: string;
  /** pg_database_size() when the backup started. */
  sizeBytes?: number;
  startedAt: string;
  finishedAt: string;
  files: FileRecord[];
  /** How the native engine laid the database out; absent for the pg_dump engine. */
  native?: NativeLayout;
}

/** A snapshot the native engine read data from. */
export interface SnapshotRecord {
  id: string;
  takenAt: string;
}

/** One chunk of a table's rows: a COPY text file of a range of heap pages. */
export interface ChunkRecord {
  /** The file's path (also listed in the database's files). */
  path: string;
  /** First heap page, inclusive; the last chunk of a table has `toPage` null (open end). */
  fromPage: number;
  toPage: number | null;
  rows: number;
  /** Index into `snapshots`. */
  snapshot: number;
}

export interface TableRecord {
  schema: string;
  name: string;
  /** Column names, quoted as identifiers, in COPY order (no generated or dropped ones). */
  columns: string[];
  /** Heap bytes when the backup was planned. */
  bytes: number;
  chunks: ChunkRecord[];
}

export interface NativeLayout {
  /** One snapshot normally; two or more when the backup was resumed. */
  snapshots: SnapshotRecord[];
  /** pg_dump archive of everything but the data of `tables` (schema, sequences, large objects). */
  schemaPath: string;
  tables: TableRecord[];
  /** Relations whose data is not backed up (foreign tables), with why. */
  skipped: { table: string; reason: string }[];
  /** sha256 of the table definitions the plan was made for. */
  fingerprint: string;
}

export interface GlobalsRecord {
  status: PartStatus;
  error?: string;
  files: FileRecord[];
}

export interface Manifest {
  format: typeof MANIFEST_FORMAT;
  formatVersion: number;
  id: string;
  tool: { name: "dbbackup"; version: string };
  kind: SetKind;
  dbType: "postgres";
  engine: Engine;
  status: SetStatus;
  server: { version: string; versionNum: number; host: string; port: number; system?: string };
  /** Tool versions that wrote the data (pg_dump --version). */
  dumpTool: string;
  startedAt: string;
  finishedAt: string;
  compression: { algorithm: CompressionAlgorithm; level: number };
  /** Options restore needs: the archive format and how the data was selected. */
  restore: { format: "custom"; includes: string[]; excludes: string[] };
  globals?: GlobalsRecord;
  databases: DatabaseRecord[];
}

/** Every file the manifest lists. */
export function manifestFiles(m: Manifest): FileRecord[] {
  return [...(m.globals?.files ?? []), ...m.databases.flatMap((d) => d.files)];
}

/** Parses and checks a manifest; throws a "verification" error naming what is wrong. */
export function parseManifest(text: string, where: string): Manifest {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw new DbBackupError(
      "verification",
      `manifest ${where} is not valid JSON: ${(err as Error).message}`,
    );
  }
  const m = data as Partial<Manifest>;
  const bad = (what: string) =>
    new DbBackupError("verification", `manifest ${where} is invalid: ${what}`);
  if (typeof m !== "object" || m === null || m.format !== MANIFEST_FORMAT) {
    throw bad(`format is not "${MANIFEST_FORMAT}"`);
  }
  if (typeof m.formatVersion !== "number" || m.formatVersion > MANIFEST_VERSION) {
    throw bad(`format version ${m.formatVersion} is not supported by this dbbackup`);
  }
  if (typeof m.id !== "string" || !Array.isArray(m.databases)) throw bad("missing id or databases");
  if (m.kind !== "single" && m.kind !== "cluster") throw bad(`unknown kind ${m.kind}`);
  // Each part must hold a file list, or manifestFiles() below would fail with a TypeError.
  for (const part of [...(m.globals == null ? [] : [m.globals]), ...m.databases]) {
    if (typeof part !== "object" || part === null || !Array.isArray(part.files)) {
      throw bad("a database or globals entry has no file list");
    }
  }
  for (const f of manifestFiles(m as Manifest)) {
    if (
      typeof f !== "object" || f === null ||
      typeof f.path !== "string" || f.path.includes("..") || f.path.startsWith("/") ||
      typeof f.sha256 !== "string" || typeof f.bytes !== "number"
    ) {
      throw bad(`file entry ${JSON.stringify(f?.path)} is malformed`);
    }
  }
  return m as Manifest;
}
