/**
 * The manifest: the source of truth of a backup set, written last and atomically.
 * Restore reads its options from here, never from today's flags.
 */
import { DbBackupError } from "../errors.ts";
import type { CompressionAlgorithm } from "../pipeline/compress.ts";
import type { KeySlot } from "../crypto/keys.ts";

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
  /** Size of the data before compression. */
  rawBytes: number;
  /**
   * Check of the data before compression: CRC-32 (hex) in files written since the native
   * engine's speed work, sha256 in older ones. Exactly one is present. The stored bytes'
   * sha256 above is the integrity check; this one catches a compress-decompress round trip
   * that does not give back the original bytes.
   */
  rawCrc32?: string;
  rawSha256?: string;
  /** Encrypted after compression (see `Manifest.encryption`); `bytes`/`sha256` are stored bytes. */
  encrypted?: boolean;
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
  /**
   * The encoding of the chunks' COPY text: the database's own, so no character goes through a
   * conversion on its way out and back (sets written before this field are UTF8).
   */
  encoding?: string;
}

/** The encoding of a native layout's chunks, or a plan's (see NativeLayout.encoding). */
export function chunkEncoding(layout: { encoding?: string }): string {
  return layout.encoding ?? "UTF8";
}

/** The manifest's record of one of the database's files. */
export function fileOf(db: DatabaseRecord, path: string | undefined): FileRecord {
  const f = db.files.find((x) => x.path === path);
  if (!f) {
    throw new DbBackupError("verification", `manifest of "${db.name}" lists no file ${path}`);
  }
  return f;
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
  /** Present when the set is encrypted: how, and the data key wrapped for each key holder. */
  encryption?: EncryptionRecord;
}

export interface EncryptionRecord {
  /** Stream format of every data file and of the sealed manifest (lib/crypto/stream.ts). */
  format: "dbbkenc1";
  cipher: "chacha20-poly1305";
  /** The set's data key, wrapped for each key holder. More can be added with `key rekey`. */
  slots: KeySlot[];
}

/**
 * What `list` and `prune` need, readable without a key. An encrypted set's manifest.json holds
 * only this, the encryption record, the stored files' sizes and checksums (of ciphertext), and
 * the whole manifest sealed with the set's data key.
 */
export interface ManifestSummary {
  id: string;
  kind: SetKind;
  engine: Engine;
  status: SetStatus;
  startedAt: string;
  finishedAt: string;
  server: { version: string; host: string; port: number };
  databases: { name: string; status: PartStatus; error?: string }[];
  globals?: { status: PartStatus; error?: string };
  /** Stored bytes of all files. */
  bytes: number;
  /** Native engine: the snapshots the data spans (2 or more after a resumed backup). */
  snapshots?: number;
  encrypted: boolean;
}

/** The on-disk manifest of an encrypted set. */
export interface SealedManifest {
  format: typeof MANIFEST_FORMAT;
  formatVersion: number;
  id: string;
  summary: ManifestSummary;
  encryption: EncryptionRecord;
  /** Every stored file: checkable without the key. */
  storedFiles: { path: string; bytes: number; sha256: string }[];
  /** base64 of the full manifest, sealed with the data key for the path "manifest.json". */
  sealed: string;
}

export function summarize(m: Manifest): ManifestSummary {
  const counts = m.databases.map((d) => d.native?.snapshots.length ?? 0);
  return {
    id: m.id,
    kind: m.kind,
    engine: m.engine,
    status: m.status,
    startedAt: m.startedAt,
    finishedAt: m.finishedAt,
    server: { version: m.server.version, host: m.server.host, port: m.server.port },
    databases: m.databases.map((d) => ({ name: d.name, status: d.status, error: d.error })),
    globals: m.globals ? { status: m.globals.status, error: m.globals.error } : undefined,
    bytes: manifestFiles(m).reduce((n, f) => n + f.bytes, 0),
    snapshots: m.engine === "native" ? Math.max(1, ...counts) : undefined,
    encrypted: m.encryption !== undefined,
  };
}

/** Every file the manifest lists. */
export function manifestFiles(m: Manifest): FileRecord[] {
  return [...(m.globals?.files ?? []), ...m.databases.flatMap((d) => d.files)];
}

/** A stored manifest: the full one, or an encrypted set's public part with the sealed rest. */
export type StoredManifest =
  | { sealed: false; manifest: Manifest; summary: ManifestSummary }
  | { sealed: true; manifest: SealedManifest; summary: ManifestSummary };

/** Parses manifest.json in either form; throws a "verification" error naming what is wrong. */
export function parseStoredManifest(text: string, where: string): StoredManifest {
  const data = parseJson(text, where);
  if (typeof data === "object" && data !== null && "sealed" in data) {
    const m = data as Partial<SealedManifest>;
    const bad = badManifest(where);
    checkHeader(m, where);
    if (
      typeof m.id !== "string" || typeof m.sealed !== "string" || typeof m.summary !== "object" ||
      m.summary === null || !Array.isArray(m.summary.databases) ||
      typeof m.encryption !== "object" || m.encryption === null ||
      !Array.isArray(m.encryption.slots) || !Array.isArray(m.storedFiles)
    ) {
      throw bad("an encrypted manifest lacks its summary, key slots, file list or sealed part");
    }
    for (const f of m.storedFiles) checkFileEntry(f, where);
    const manifest = m as SealedManifest;
    return { sealed: true, manifest, summary: { ...manifest.summary, id: manifest.id } };
  }
  const manifest = checkManifest(data, where);
  return { sealed: false, manifest, summary: summarize(manifest) };
}

/** Serialises a manifest; an encrypted one as its public part plus `sealed` (base64). */
export function sealedManifestJson(m: Manifest, sealed: Uint8Array): string {
  if (!m.encryption) throw new Error("sealedManifestJson: the manifest has no encryption record");
  // Error texts can name tables: the public summary only says that a part failed.
  const summary = summarize(m);
  const hidden = "failed (the reason is in the encrypted part of the manifest)";
  summary.databases = summary.databases.map((d) => d.error ? { ...d, error: hidden } : d);
  if (summary.globals?.error) summary.globals = { ...summary.globals, error: hidden };
  const out: SealedManifest = {
    format: m.format,
    formatVersion: m.formatVersion,
    id: m.id,
    summary,
    encryption: m.encryption,
    storedFiles: manifestFiles(m).map((f) => ({ path: f.path, bytes: f.bytes, sha256: f.sha256 })),
    sealed: encodeBase64(sealed),
  };
  return JSON.stringify(out, null, 2) + "\n";
}

/** Standard base64 of bytes (the sealed parts of manifests and state records). */
export function encodeBase64(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

export function decodeBase64(text: string): Uint8Array {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

function parseJson(text: string, where: string): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new DbBackupError(
      "verification",
      `manifest ${where} is not valid JSON: ${(err as Error).message}`,
    );
  }
}

function badManifest(where: string) {
  return (what: string) =>
    new DbBackupError("verification", `manifest ${where} is invalid: ${what}`);
}

function checkHeader(m: { format?: unknown; formatVersion?: unknown } | null, where: string) {
  const bad = badManifest(where);
  if (typeof m !== "object" || m === null || m.format !== MANIFEST_FORMAT) {
    throw bad(`format is not "${MANIFEST_FORMAT}"`);
  }
  if (typeof m.formatVersion !== "number" || m.formatVersion > MANIFEST_VERSION) {
    throw bad(`format version ${m.formatVersion} is not supported by this dbbackup`);
  }
}

function checkFileEntry(f: unknown, where: string): void {
  const e = f as Partial<FileRecord> | null;
  if (
    typeof e !== "object" || e === null ||
    typeof e.path !== "string" || e.path.includes("..") || e.path.startsWith("/") ||
    typeof e.sha256 !== "string" || typeof e.bytes !== "number"
  ) {
    throw badManifest(where)(`file entry ${JSON.stringify(e?.path)} is malformed`);
  }
}

/** A full file record also says how big its data was and how to check it. */
function checkFullFileEntry(f: unknown, where: string): void {
  checkFileEntry(f, where);
  const e = f as Partial<FileRecord>;
  if (
    typeof e.rawBytes !== "number" ||
    (typeof e.rawCrc32 !== "string") === (typeof e.rawSha256 !== "string")
  ) {
    throw badManifest(where)(
      `file entry ${JSON.stringify(e.path)} lacks its raw size or its raw checksum`,
    );
  }
}

/** Parses and checks a full (plain or unsealed) manifest. */
export function parseManifest(text: string, where: string): Manifest {
  return checkManifest(parseJson(text, where), where);
}

function checkManifest(data: unknown, where: string): Manifest {
  const m = data as Partial<Manifest>;
  const bad = badManifest(where);
  checkHeader(m, where);
  if (typeof m.id !== "string" || !Array.isArray(m.databases)) throw bad("missing id or databases");
  if (m.kind !== "single" && m.kind !== "cluster") throw bad(`unknown kind ${m.kind}`);
  // Each part must hold a file list, or manifestFiles() below would fail with a TypeError.
  for (const part of [...(m.globals == null ? [] : [m.globals]), ...m.databases]) {
    if (typeof part !== "object" || part === null || !Array.isArray(part.files)) {
      throw bad("a database or globals entry has no file list");
    }
  }
  for (const f of manifestFiles(m as Manifest)) checkFullFileEntry(f, where);
  return m as Manifest;
}
