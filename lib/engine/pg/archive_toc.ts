/**
 * The table of contents (TOC) of a pg_dump custom-format archive, and the choice of TOC entries
 * that restores only some tables (`restore single --table NAME --schema NAME`).
 *
 * ## Reading
 *
 * `readArchiveToc` follows PostgreSQL's pg_backup_archiver.c (ReadHead, ReadToc, ReadInt,
 * ReadStr, ReadOffset) and pg_backup_custom.c (_ReadExtraToc). The header and the TOC sit at
 * the start of the file, before any table data, so only that much of the stream is read; then
 * the stream is cancelled. Layout, for archive versions 1.12 to 1.16 (PostgreSQL 9.0 to 17+;
 * pg_dump 15 writes 1.14):
 *
 * - "PGDMP", then the bytes major, minor, revision, intSize, offSize and format (1 = custom).
 * - int: 1 sign byte (1 = negative) and intSize bytes of magnitude, least significant first.
 *   str: an int length (negative = null) and that many bytes (UTF-8 is assumed).
 * - Compression: an int level before 1.15 (0 = none, else gzip), an algorithm byte from 1.15
 *   (0 none, 1 gzip, 2 lz4, 3 zstd). Then 7 ints of creation time (struct tm, the dumping
 *   machine's local time), str database name, str server version, str pg_dump version.
 * - int entry count, then per entry: int dumpId, int hadDumper, str tableoid, str oid, str tag,
 *   str desc, int section (1 none, 2 pre-data, 3 data, 4 post-data), str defn, str dropStmt,
 *   str copyStmt, str namespace, str tablespace, str tableam (1.14+), int relkind (1.16+),
 *   str owner, str withOids ("false"), strs of dependency dumpIds until a null str, and the
 *   custom format's extra data: a data-state byte (1 offset not set, 2 set, 3 no data) and
 *   offSize bytes of data offset, least significant first.
 *
 * ## Choosing entries for some tables
 *
 * `selectForTables` picks, in this order:
 *
 * 1. The chosen tables: each `--table` ("schema.table", or "table" in any schema; a name that
 *    is ambiguous or unknown is a UsageError listing the candidates or close names) and every
 *    table of each `--schema`. Tables are TABLE entries (or, in a data-only archive, TABLE DATA
 *    entries). A chosen partitioned table brings its partitions, found through the TABLE ATTACH
 *    entries that depend on it, recursively. A chosen table that depends on another TABLE
 *    entry which is not chosen and is not its partition parent (inheritance, a column of that
 *    table's row type) is a UsageError: its CREATE TABLE could not run.
 * 2. Their TABLE DATA (a note says when a chosen table has none in the archive).
 * 3. Entries that belong to a chosen table: INDEX, CONSTRAINT, CHECK CONSTRAINT, FK CONSTRAINT,
 *    TRIGGER, DEFAULT, RULE, POLICY, ROW SECURITY, STATISTICS (extended), INDEX ATTACH and
 *    TABLE ATTACH. "Belongs to" means: the entry depends on the table, and it depends on no
 *    other table or its tag is the table's name or starts with it and a space (pg_dump tags
 *    these "<table> <name>"; the entry is in the table's schema). Parts of other tables that
 *    merely depend on a chosen one (their foreign keys to it, views) are not taken. Such an entry is taken only when every
 *    table it depends on is chosen - for an FK CONSTRAINT also the tables of the index or
 *    constraint it references; otherwise it is skipped with a note (`skipped foreign key
 *    "orders_customer_fk" of public.orders: it references public.customers, which is not being
 *    restored`). ATTACH entries belong to the partition; a partition chosen without its parent
 *    is restored as a standalone table, with a note.
 * 4. Sequences the tables use: SEQUENCE entries that depend on a chosen table (serial and
 *    identity sequences are owned by their table), and SEQUENCE entries that a chosen TABLE or
 *    an included DEFAULT depends on (nextval of another sequence), each with its SEQUENCE SET.
 *    SEQUENCE OWNED BY is taken when its sequence is and every table that sequence depends on
 *    is chosen. A sequence owned by a table that is not chosen is created without OWNED BY (a
 *    note says so); an identity sequence of such a table cannot be created, so the DEFAULT that
 *    uses it is skipped with a note.
 * 5. Trigger functions: FUNCTION entries that an included TRIGGER depends on. They are created
 *    by the restore (CREATE FUNCTION, not CREATE OR REPLACE), so they must not exist in the
 *    target yet: `Selection.functions` lists them (so a caller can leave out the ones that
 *    exist) and a note says so. Without them pg_restore stops at CREATE TRIGGER when the target
 *    lacks the function, which is the usual case for a fresh target.
 * 6. COMMENT, ACL and SECURITY LABEL entries of anything taken above: those with at least one
 *    dependency (other than an ACL) that is taken. This is pg_restore's own rule for them.
 *
 * Never taken: large objects (BLOB, BLOBS, BLOB METADATA, LARGE OBJECT comments and ACLs),
 * other tables, views, materialized views, schemas (the caller creates the schemas
 * `schemasNeeded` names), types, domains, extensions. Any other object a taken entry depends on
 * (a TYPE, DOMAIN, FUNCTION used in a default or a check, a COLLATION, ...) gets a note: it must
 * already exist in the target.
 *
 * `tocListFile` renders the choice as a `pg_restore -L` list in archive order. pg_restore
 * restores the entries of a list in the list's order, and an archive read from a pipe cannot
 * be read backwards, so the order must stay the archive's.
 */
import { DbBackupError, UsageError } from "../../errors.ts";

export type TocSection = "none" | "pre-data" | "data" | "post-data";

/** Where the custom format stored an entry's data. */
export type DataState = "offset_not_set" | "offset_set" | "no_data";

export interface TocEntry {
  dumpId: number;
  /** pg_dump had a data dumper for this entry (TABLE DATA, BLOBS, ...). */
  hadDumper: boolean;
  /** The catalog the object lives in (pg_class, pg_proc, ...), 0 when none. */
  tableoid: number;
  oid: number;
  /** The object's name; for dependent objects "<table> <name>", "COLUMN t.c", ... */
  tag: string;
  /** The kind of entry: "TABLE", "TABLE DATA", "INDEX", "FK CONSTRAINT", ... */
  desc: string;
  section: TocSection;
  /** The SQL that creates the object; null when there is none. */
  defn: string | null;
  /** The schema, null when the object is not in one. */
  namespace: string | null;
  owner: string | null;
  /** The dumpIds this entry depends on, in archive order. */
  deps: number[];
  dataState: DataState;
  /** Byte offset of the entry's data block in the archive, when `dataState` is "offset_set". */
  dataOffset: number;
  /** Where in the archive the entry's data state and offset are written. */
  offsetPos: number;
}

export interface ArchiveToc {
  /** Where the archive came from, for messages. */
  source: string;
  /** Archive format version, e.g. "1.14.0". */
  version: string;
  intSize: number;
  offSize: number;
  compression: "none" | "gzip" | "lz4" | "zstd";
  /** When pg_dump started, in the dumping machine's local time: "2026-11-27 03:00:00". */
  createdAt: string;
  /** The database that was dumped. */
  database: string | null;
  serverVersion: string | null;
  pgDumpVersion: string | null;
  /** Bytes of the archive taken by the header and the TOC. */
  tocBytes: number;
  entries: TocEntry[];
}

const MAGIC = "PGDMP";
const FORMAT_CUSTOM = 1;
const MIN_MINOR = 12;
const MAX_MINOR = 16;
/** Longer strings in a TOC mean a corrupt archive, not a big function body. */
const MAX_STRING_BYTES = 256 * 1024 * 1024;

const SECTIONS: Record<number, TocSection> = {
  1: "none",
  2: "pre-data",
  3: "data",
  4: "post-data",
};
const DATA_STATES: Record<number, DataState> = {
  1: "offset_not_set",
  2: "offset_set",
  3: "no_data",
};
const COMPRESSION_ALGORITHMS: Record<number, ArchiveToc["compression"]> = {
  0: "none",
  1: "gzip",
  2: "lz4",
  3: "zstd",
};

/** The parser ran past the bytes read so far: read at least `until` bytes, then parse again. */
class NeedMore {
  constructor(readonly until: number) {}
}

/** A problem with the bytes themselves: reported with the source named. */
class Corrupt extends Error {}

/** Reads ints, strings and offsets the way pg_backup_archiver.c writes them. */
class Cursor {
  pos = 0;
  intSize = 4;
  offSize = 8;
  readonly #decoder = new TextDecoder();

  constructor(readonly buf: Uint8Array) {}

  #need(n: number): void {
    if (this.pos + n > this.buf.length) throw new NeedMore(this.pos + n);
  }

  byte(): number {
    this.#need(1);
    return this.buf[this.pos++];
  }

  bytes(n: number): Uint8Array {
    this.#need(n);
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  /** ReadInt: a sign byte, then intSize bytes, least significant first. */
  int(): number {
    const sign = this.byte();
    const raw = this.bytes(this.intSize);
    let value = 0;
    for (let i = raw.length - 1; i >= 0; i--) {
      if (i >= 4 && raw[i] !== 0) throw new Corrupt(`an integer does not fit in 32 bits`);
      value = value * 256 + raw[i];
    }
    if (value > 0x7fffffff) throw new Corrupt(`an integer does not fit in 32 bits`);
    return sign ? -value : value;
  }

  /** ReadStr: an int length (negative = null), then the bytes. */
  str(): string | null {
    const len = this.int();
    if (len < 0) return null;
    if (len > MAX_STRING_BYTES) throw new Corrupt(`a string claims ${len} bytes`);
    return this.#decoder.decode(this.bytes(len));
  }

  /** ReadOffset (1.7+): a state byte, then offSize bytes, least significant first. */
  offset(): { state: DataState; offset: number } {
    const flag = this.byte();
    const state = DATA_STATES[flag];
    if (!state) throw new Corrupt(`unexpected data offset flag ${flag}`);
    const raw = this.bytes(this.offSize);
    let offset = 0;
    for (let i = raw.length - 1; i >= 0; i--) {
      if (i >= 6 && raw[i] !== 0) throw new Corrupt("a data offset is too large");
      offset = offset * 256 + raw[i];
    }
    return { state, offset };
  }
}

/**
 * Reads the header and TOC of a pg_dump custom-format archive from `stream`, reading only as
 * far as the end of the TOC, then cancels the stream. Anything that is not a readable archive
 * of version 1.12 to 1.16 is a DbBackupError("verification") naming `source`.
 */
export async function readArchiveToc(
  stream: ReadableStream<Uint8Array>,
  source: string,
): Promise<ArchiveToc> {
  const reader = stream.getReader();
  let buf = new Uint8Array(64 * 1024);
  let len = 0;
  let ended = false;
  try {
    for (;;) {
      try {
        return parseArchiveToc(buf.subarray(0, len), source);
      } catch (err) {
        if (!(err instanceof NeedMore)) throw err;
        if (ended) {
          throw new DbBackupError(
            "verification",
            `cannot read the table of contents of ${source}: ${
              len === 0
                ? "it is empty"
                : `it ends after ${len} bytes, inside its header or table of contents (truncated?)`
            }`,
          );
        }
        // Read at least what the parser asked for, and at least double, so that re-parsing
        // from the start costs O(n log n) in all.
        const want = Math.max(err.until, len * 2);
        while (len < want) {
          const { done, value } = await reader.read();
          if (done) {
            ended = true;
            break;
          }
          if (len + value.byteLength > buf.length) {
            const grown = new Uint8Array(Math.max(buf.length * 2, len + value.byteLength));
            grown.set(buf.subarray(0, len));
            buf = grown;
          }
          buf.set(value, len);
          len += value.byteLength;
        }
      }
    }
  } finally {
    await reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}

/** Parses a whole header and TOC from `buf`; throws NeedMore when `buf` ends too early. */
function parseArchiveToc(buf: Uint8Array, source: string): ArchiveToc {
  const fail = (why: string) =>
    new DbBackupError("verification", `cannot read the table of contents of ${source}: ${why}`);
  const c = new Cursor(buf);
  const start = new TextDecoder().decode(buf.subarray(0, MAGIC.length));
  if (!MAGIC.startsWith(start) || (buf.length > 0 && start.length === 0)) {
    throw fail(notAnArchive(buf));
  }
  c.bytes(MAGIC.length);
  const major = c.byte();
  const minor = c.byte();
  const rev = c.byte();
  const version = `${major}.${minor}.${rev}`;
  if (major !== 1 || minor < MIN_MINOR || minor > MAX_MINOR) {
    throw fail(
      `archive version ${version} is not supported (dbbackup reads 1.${MIN_MINOR} to ` +
        `1.${MAX_MINOR}, written by pg_dump 9.0 to 17 and later)`,
    );
  }
  c.intSize = c.byte();
  if (c.intSize < 1 || c.intSize > 8) throw fail(`implausible integer size ${c.intSize}`);
  c.offSize = c.byte();
  if (c.offSize < 1 || c.offSize > 16) throw fail(`implausible offset size ${c.offSize}`);
  const format = c.byte();
  if (format !== FORMAT_CUSTOM) {
    throw fail(`archive format ${format} is not the custom format (pg_dump -Fc)`);
  }
  try {
    let compression: ArchiveToc["compression"];
    if (minor >= 15) {
      const algorithm = c.byte();
      const known = COMPRESSION_ALGORITHMS[algorithm];
      if (!known) throw new Corrupt(`unknown compression algorithm ${algorithm}`);
      compression = known;
    } else {
      compression = c.int() === 0 ? "none" : "gzip";
    }
    const [sec, min, hour, mday, mon, year] = [
      c.int(),
      c.int(),
      c.int(),
      c.int(),
      c.int(),
      c.int(),
    ];
    c.int(); // tm_isdst
    const p2 = (n: number) => String(n).padStart(2, "0");
    const createdAt = `${year + 1900}-${p2(mon + 1)}-${p2(mday)} ${p2(hour)}:${p2(min)}:${p2(sec)}`;
    const database = c.str();
    const serverVersion = c.str();
    const pgDumpVersion = c.str();

    const count = c.int();
    if (count < 0) throw new Corrupt(`negative entry count ${count}`);
    const entries: TocEntry[] = [];
    for (let i = 0; i < count; i++) entries.push(readEntry(c, minor));
    return {
      source,
      version,
      intSize: c.intSize,
      offSize: c.offSize,
      compression,
      createdAt,
      database,
      serverVersion,
      pgDumpVersion,
      tocBytes: c.pos,
      entries,
    };
  } catch (err) {
    if (err instanceof Corrupt) throw fail(`${err.message} at byte ${c.pos} (corrupt archive?)`);
    throw err;
  }
}

/** ReadToc's loop body plus the custom format's _ReadExtraToc. */
function readEntry(c: Cursor, minor: number): TocEntry {
  const dumpId = c.int();
  if (dumpId <= 0) throw new Corrupt(`entry ID ${dumpId} out of range`);
  const hadDumper = c.int() !== 0;
  const tableoid = oidOf(c.str());
  const oid = oidOf(c.str());
  const tag = c.str() ?? "";
  const desc = c.str() ?? "";
  const sectionNo = c.int();
  const section = SECTIONS[sectionNo];
  if (!section) throw new Corrupt(`entry ${dumpId} has unknown section ${sectionNo}`);
  const defn = c.str();
  c.str(); // dropStmt
  c.str(); // copyStmt
  const namespace = c.str();
  c.str(); // tablespace
  if (minor >= 14) c.str(); // tableam
  if (minor >= 16) c.int(); // relkind
  const owner = c.str();
  c.str(); // withOids: always "false" since PostgreSQL 12
  const deps: number[] = [];
  for (;;) {
    const dep = c.str();
    if (dep === null) break;
    const n = Number.parseInt(dep, 10);
    if (!Number.isFinite(n)) throw new Corrupt(`entry ${dumpId} has dependency "${dep}"`);
    deps.push(n);
  }
  const offsetPos = c.pos;
  const { state, offset } = c.offset();
  return {
    dumpId,
    hadDumper,
    tableoid,
    oid,
    tag,
    desc,
    section,
    defn,
    namespace,
    owner,
    deps,
    dataState: state,
    dataOffset: offset,
    offsetPos,
  };
}

/** An OID written as a decimal string (sscanf "%u"); 0 when absent. */
function oidOf(text: string | null): number {
  const n = Number.parseInt(text ?? "", 10);
  return Number.isFinite(n) && n >= 0 ? n : 0;
}

/** Why bytes that lack the magic are not an archive, as precisely as the first bytes tell. */
function notAnArchive(buf: Uint8Array): string {
  if (buf[0] === 0x1f && buf[1] === 0x8b) {
    return "it is gzip-compressed, not a pg_dump custom-format archive (decompress it first)";
  }
  if (buf[0] === 0x28 && buf[1] === 0xb5 && buf[2] === 0x2f && buf[3] === 0xfd) {
    return "it is zstd-compressed, not a pg_dump custom-format archive (decompress it first)";
  }
  const head = new TextDecoder().decode(buf.subarray(0, 64));
  if (head.startsWith("--")) {
    return "it is a plain SQL script, not a pg_dump custom-format archive";
  }
  return 'it is not a pg_dump custom-format archive (no "PGDMP" at its start)';
}

// ---------------------------------------------------------------------------------------------
// Choosing entries for some tables
// ---------------------------------------------------------------------------------------------

/** `--table` names ("schema.table" or "table") and `--schema` names. */
export interface TableFilter {
  tables: readonly string[];
  schemas: readonly string[];
  /**
   * Tables the target already has (and keeps): foreign keys of chosen tables that reference
   * them are restored too, instead of being skipped.
   */
  present?: readonly TableRef[];
  /** Chosen tables whose rows come from elsewhere (native chunks): no "no data" note. */
  dataElsewhere?: readonly TableRef[];
}

export interface TableRef {
  schema: string;
  name: string;
}

export interface Selection {
  /** The entries to restore: write them with `tocListFile` and pass that to `pg_restore -L`. */
  dumpIds: Set<number>;
  /** The chosen tables (with the partitions they brought), in archive order. */
  tables: TableRef[];
  /** What was left out or added, and why; for the user. */
  notes: string[];
  /** Trigger functions the restore creates; they must not exist in the target yet. */
  functions: { schema: string; signature: string; dumpId: number }[];
  /** The chosen entries, in archive order. */
  entries: TocEntry[];
}

/** Entries that belong to one table, or (the ATTACH ones) to a partition and its parent. */
const TABLE_PARTS = new Set([
  "INDEX",
  "CONSTRAINT",
  "CHECK CONSTRAINT",
  "FK CONSTRAINT",
  "TRIGGER",
  "DEFAULT",
  "RULE",
  "POLICY",
  "ROW SECURITY",
  "STATISTICS",
  "INDEX ATTACH",
  "TABLE ATTACH",
]);

/** Entries that decorate another entry and follow it (pg_restore's own rule for them). */
const DECORATIONS = new Set(["COMMENT", "ACL", "SECURITY LABEL"]);

/**
 * Dependencies that need no note when they are not restored: the caller creates schemas,
 * tables are chosen or refused explicitly, the rest follows its table.
 */
const QUIET_DEPENDENCIES = new Set([
  "SCHEMA",
  "TABLE",
  "TABLE DATA",
  "INDEX",
  "CONSTRAINT",
  "CHECK CONSTRAINT",
  "FK CONSTRAINT",
  "TABLE ATTACH",
  "INDEX ATTACH",
  "DEFAULT",
  "SEQUENCE",
  "ACL",
  "COMMENT",
  "SECURITY LABEL",
  "DATABASE",
  "ENCODING",
  "STDSTRINGS",
  "SEARCHPATH",
]);

interface TableInfo {
  schema: string;
  name: string;
  /** The TABLE entry; absent in a data-only archive. */
  table?: TocEntry;
  data?: TocEntry;
}

/** A TABLE ATTACH entry with the partition it attaches and the partitioned table. */
interface Attach {
  entry: TocEntry;
  partition?: number;
  parent?: number;
}

/** Lookups over one TOC that every phase of the choice uses. */
class TocIndex {
  readonly byId: Map<number, TocEntry>;
  readonly tables: TableInfo[];
  readonly attaches: Attach[];

  constructor(readonly toc: ArchiveToc) {
    this.byId = new Map(toc.entries.map((e) => [e.dumpId, e]));
    this.tables = collectTables(toc, this.byId);
    this.attaches = toc.entries.filter((e) => e.desc === "TABLE ATTACH").map((entry) => {
      const deps = this.tableDeps(entry);
      const partition = deps.find((d) => {
        const t = this.byId.get(d)!;
        return t.tag === entry.tag && t.namespace === entry.namespace;
      });
      return { entry, partition, parent: deps.find((d) => d !== partition) };
    });
  }

  entry(id: number): TocEntry {
    return this.byId.get(id)!;
  }

  /** The TABLE entries `e` depends on, each once. */
  tableDeps(e: TocEntry): number[] {
    return [...new Set(e.deps.filter((d) => this.byId.get(d)?.desc === "TABLE"))];
  }

  /**
   * The table an entry belongs to: its only table, else the one whose name starts the entry's
   * tag ("<table> <name>"; the longest such name wins).
   */
  ownerOf(e: TocEntry): number | undefined {
    if (e.desc === "TABLE") return e.dumpId;
    const deps = this.tableDeps(e);
    if (deps.length === 1) return deps[0];
    let best: TocEntry | undefined;
    for (const d of deps) {
      const t = this.entry(d);
      if (t.namespace !== e.namespace) continue;
      if (e.tag !== t.tag && !e.tag.startsWith(`${t.tag} `)) continue;
      if (!best || t.tag.length > best.tag.length) best = t;
    }
    return best?.dumpId;
  }

  /** "orders_customer_fk" out of the tag "orders orders_customer_fk" of a table's entry. */
  partName(e: TocEntry): string {
    const owner = this.ownerOf(e);
    const prefix = owner === undefined ? "" : `${this.entry(owner).tag} `;
    return prefix && e.tag.startsWith(prefix) ? e.tag.slice(prefix.length) : e.tag;
  }

  /** An entry's object for messages: `app.orders`, `public."Mixed Case"`. */
  label(id: number): string {
    const e = this.entry(id);
    return displayName(e.namespace ?? "", e.tag);
  }

  /** `shop.orders` for a table's own entries, `"orders_pkey" of shop.orders` for its parts. */
  describe(e: TocEntry): string {
    const owner = this.ownerOf(e);
    if (owner === undefined || owner === e.dumpId) return this.label(e.dumpId);
    return `${e.desc.toLowerCase()} ${quoteName(this.partName(e))} of ${this.label(owner)}`;
  }

  isPartitioned(t: TocEntry): boolean {
    return this.attaches.some((a) => a.parent === t.dumpId) ||
      /\bPARTITION BY\b/.test(t.defn ?? "");
  }
}

/**
 * Chooses the entries of `toc` that restore the tables `filter` names; see the module comment
 * for the exact rules. Unknown or ambiguous names are a UsageError.
 */
export function selectForTables(toc: ArchiveToc, filter: TableFilter): Selection {
  if (filter.tables.length === 0 && filter.schemas.length === 0) {
    throw new UsageError("choose at least one table with --table or --schema");
  }
  const index = new TocIndex(toc);
  const notes: string[] = [];
  const chosen = chooseTables(index, filter, notes);
  const chosenIds = new Set(chosen.flatMap((t) => t.table ? [t.table.dumpId] : []));
  const selected = new Set<number>();
  const has = (list: readonly TableRef[] | undefined, t: TableRef) =>
    list?.some((r) => r.schema === t.schema && r.name === t.name) ?? false;
  const presentIds = new Set(
    index.tables.flatMap((t) => t.table && has(filter.present, t) ? [t.table.dumpId] : []),
  );
  for (const t of chosen) {
    if (t.table) selected.add(t.table.dumpId);
    if (t.data) selected.add(t.data.dumpId);
    else if (t.table && !index.isPartitioned(t.table) && !has(filter.dataElsewhere, t)) {
      notes.push(
        `${displayName(t.schema, t.name)} has no data in this backup: only its definition ` +
          `is restored`,
      );
    }
  }
  addTableParts(index, chosenIds, presentIds, selected, notes);
  addSequences(index, chosenIds, selected, notes);
  const functions = addTriggerFunctions(index, selected, notes);
  for (const e of toc.entries) {
    if (!DECORATIONS.has(e.desc) || /^(LARGE OBJECTS? |DATABASE )/.test(e.tag)) continue;
    if (e.deps.some((d) => selected.has(d) && index.byId.get(d)?.desc !== "ACL")) {
      selected.add(e.dumpId);
    }
  }
  notePrerequisites(index, selected, notes);
  return {
    dumpIds: selected,
    tables: chosen.map((t) => ({ schema: t.schema, name: t.name })),
    notes,
    functions,
    entries: toc.entries.filter((e) => selected.has(e.dumpId)),
  };
}

/** Step 1: the named tables, the tables of the named schemas, their partitions; archive order. */
function chooseTables(index: TocIndex, filter: TableFilter, notes: string[]): TableInfo[] {
  const { toc, tables } = index;
  const chosen = new Set<TableInfo>();
  for (const name of filter.tables) chosen.add(resolveTable(toc, tables, name));
  for (const name of filter.schemas) {
    const schema = resolveSchema(toc, tables, name);
    const inSchema = tables.filter((t) => t.schema === schema);
    if (inSchema.length === 0) notes.push(`schema ${displayIdent(schema)} has no tables`);
    for (const t of inSchema) chosen.add(t);
  }
  const idsOf = () => new Set([...chosen].flatMap((t) => t.table ? [t.table.dumpId] : []));
  const byTableId = new Map(tables.flatMap((t) => t.table ? [[t.table.dumpId, t] as const] : []));
  for (let grew = true; grew;) {
    grew = false;
    const ids = idsOf();
    for (const a of index.attaches) {
      if (a.partition === undefined || a.parent === undefined) continue;
      if (ids.has(a.parent) && !ids.has(a.partition)) {
        chosen.add(byTableId.get(a.partition)!);
        grew = true;
      }
    }
    // Archives from before TABLE ATTACH create partitions with CREATE TABLE ... PARTITION OF.
    for (const t of tables) {
      if (!t.table || ids.has(t.table.dumpId)) continue;
      if (!/\bPARTITION OF\b/.test(t.table.defn ?? "")) continue;
      if (index.tableDeps(t.table).some((d) => ids.has(d))) {
        chosen.add(t);
        grew = true;
      }
    }
  }
  // A table whose CREATE TABLE needs another table (inheritance, a column of its row type).
  const ids = idsOf();
  for (const t of chosen) {
    if (!t.table) continue;
    for (const d of index.tableDeps(t.table)) {
      if (ids.has(d)) continue;
      if (index.attaches.some((a) => a.partition === t.table!.dumpId && a.parent === d)) continue;
      throw new UsageError(
        `cannot restore ${displayName(t.schema, t.name)} without ${index.label(d)}: its ` +
          `definition depends on that table (inheritance or a column of its row type); add ` +
          `--table ${index.label(d)}`,
      );
    }
  }
  return tables.filter((t) => chosen.has(t));
}

/** Step 3: indexes, constraints, triggers, ... of the chosen tables, when all they need is. */
function addTableParts(
  index: TocIndex,
  chosen: ReadonlySet<number>,
  present: ReadonlySet<number>,
  selected: Set<number>,
  notes: string[],
): void {
  for (const e of index.toc.entries) {
    if (!TABLE_PARTS.has(e.desc)) continue;
    const deps = index.tableDeps(e);
    if (deps.length === 0) continue; // e.g. an index on a materialized view
    const attach = e.desc === "TABLE ATTACH" || e.desc === "INDEX ATTACH";
    const owner = attach ? undefined : index.ownerOf(e);
    if (owner !== undefined ? !chosen.has(owner) : !deps.some((d) => chosen.has(d))) continue;
    const related = new Set(deps);
    if (e.desc === "FK CONSTRAINT") {
      // The referenced table, also when only its unique index or constraint is a dependency.
      for (const d of e.deps) {
        const ref = index.byId.get(d);
        if (ref?.desc === "CONSTRAINT" || ref?.desc === "INDEX") {
          for (const t of index.tableDeps(ref)) related.add(t);
        }
      }
    }
    // A foreign key may also reference a table the target keeps.
    const missing = [...related].filter((d) =>
      !chosen.has(d) && !(e.desc === "FK CONSTRAINT" && present.has(d))
    );
    if (missing.length === 0) {
      selected.add(e.dumpId);
      continue;
    }
    const list = missing.map((d) => index.label(d)).join(", ");
    const names = `${list}, ${missing.length > 1 ? "which are" : "which is"} not being restored`;
    if (e.desc === "FK CONSTRAINT" && owner !== undefined) {
      notes.push(
        `skipped foreign key ${quoteName(index.partName(e))} of ${index.label(owner)}: it ` +
          `references ${names}`,
      );
    } else if (e.desc === "TABLE ATTACH") {
      notes.push(
        `${index.label(deps.find((d) => chosen.has(d))!)} is restored as a standalone table: ` +
          `its partitioned table ${list} is not being restored`,
      );
    } else if (e.desc !== "INDEX ATTACH") {
      notes.push(`skipped ${index.describe(e)}: it depends on ${names}`);
    }
  }
}

/**
 * Step 4: sequences owned by chosen tables, and those a chosen table or an included default
 * uses, with their SEQUENCE SET and (when the owning table is chosen) SEQUENCE OWNED BY.
 */
function addSequences(
  index: TocIndex,
  chosen: ReadonlySet<number>,
  selected: Set<number>,
  notes: string[],
): void {
  const sequences = new Set<number>();
  const ownedByChosen = (seq: TocEntry) => {
    const owners = index.tableDeps(seq);
    return owners.length > 0 && owners.every((d) => chosen.has(d));
  };
  for (const e of index.toc.entries) {
    if (e.desc === "SEQUENCE" && ownedByChosen(e)) sequences.add(e.dumpId);
  }
  for (const user of index.toc.entries) {
    if (!selected.has(user.dumpId) || (user.desc !== "TABLE" && user.desc !== "DEFAULT")) continue;
    for (const d of user.deps) {
      const seq = index.byId.get(d);
      if (seq?.desc !== "SEQUENCE" || sequences.has(d)) continue;
      const owners = index.tableDeps(seq).map((t) => index.label(t)).join(", ");
      if (owners && /^\s*ALTER TABLE\b/.test(seq.defn ?? "")) {
        // An identity sequence is created by its own table's ALTER TABLE; without that table
        // it cannot exist, so neither can a default that uses it.
        selected.delete(user.dumpId);
        notes.push(
          `skipped ${index.describe(user)}: it uses ${index.label(d)}, the identity sequence ` +
            `of ${owners}, which is not being restored`,
        );
        continue;
      }
      sequences.add(d);
      notes.push(
        owners
          ? `restoring sequence ${index.label(d)} for ${index.describe(user)} without OWNED BY: ` +
            `its owner ${owners} is not being restored`
          : `restoring sequence ${index.label(d)} too: ${index.describe(user)} uses it`,
      );
    }
  }
  for (const e of index.toc.entries) {
    if (e.desc === "SEQUENCE" && sequences.has(e.dumpId)) selected.add(e.dumpId);
    if (!sequences.has(e.deps[0])) continue;
    if (e.desc === "SEQUENCE SET") selected.add(e.dumpId);
    if (e.desc === "SEQUENCE OWNED BY" && ownedByChosen(index.entry(e.deps[0]))) {
      selected.add(e.dumpId);
    }
  }
}

/** Step 5: the functions included triggers call; they are created by the restore. */
function addTriggerFunctions(
  index: TocIndex,
  selected: Set<number>,
  notes: string[],
): Selection["functions"] {
  const functions: Selection["functions"] = [];
  for (const e of index.toc.entries) {
    if (e.desc !== "TRIGGER" || !selected.has(e.dumpId)) continue;
    for (const d of e.deps) {
      const fn = index.byId.get(d);
      if (fn?.desc !== "FUNCTION" || selected.has(d)) continue;
      selected.add(d);
      const schema = fn.namespace ?? "";
      functions.push({ schema, signature: fn.tag, dumpId: d });
      notes.push(
        `restoring function ${displayIdent(schema)}.${fn.tag} too: ${index.describe(e)} calls ` +
          `it; it must not exist in the target yet`,
      );
    }
  }
  return functions;
}

/** Notes for objects the chosen entries need that the restore does not create. */
function notePrerequisites(index: TocIndex, selected: ReadonlySet<number>, notes: string[]): void {
  const needs = new Map<number, Set<string>>();
  for (const e of index.toc.entries) {
    if (!selected.has(e.dumpId)) continue;
    for (const d of e.deps) {
      const dep = index.byId.get(d);
      if (!dep || selected.has(d) || QUIET_DEPENDENCIES.has(dep.desc)) continue;
      const owner = index.ownerOf(e);
      const users = needs.get(d) ?? new Set<string>();
      users.add(index.label(owner ?? e.dumpId));
      needs.set(d, users);
    }
  }
  for (const [d, users] of needs) {
    const dep = index.entry(d);
    notes.push(
      `${[...users].join(", ")} ${users.size > 1 ? "need" : "needs"} ${dep.desc.toLowerCase()} ` +
        `${displayIdent(dep.namespace ?? "")}.${dep.tag}, which this restore does not create: ` +
        `it must exist in the target`,
    );
  }
}

/**
 * The schemas the restore writes into: those of every chosen entry (the chosen tables, and
 * e.g. a trigger function in another schema). The caller creates the ones the target lacks.
 */
export function schemasNeeded(selection: Selection): string[] {
  const schemas = new Set<string>();
  for (const t of selection.tables) schemas.add(t.schema);
  for (const e of selection.entries) {
    if (e.namespace && e.namespace !== "pg_catalog") schemas.add(e.namespace);
  }
  return [...schemas].sort();
}

/**
 * A `pg_restore -L` list of the entries in `dumpIds`, in archive order, in the format
 * `pg_restore --list` prints ("<dumpId>; <tableoid> <oid> <desc> <namespace> <tag> <owner>").
 * pg_restore reads only the leading dumpId of each line; lines starting with ";" are comments.
 */
export function tocListFile(toc: ArchiveToc, dumpIds: ReadonlySet<number>): string {
  const lines = [
    `; dbbackup: ${dumpIds.size} of ${toc.entries.length} entries of ${oneLine(toc.source)}`,
    `; database ${oneLine(toc.database ?? "-")}, dumped by pg_dump ${
      oneLine(toc.pgDumpVersion ?? "-")
    }`,
  ];
  for (const e of toc.entries) {
    if (!dumpIds.has(e.dumpId)) continue;
    lines.push(
      `${e.dumpId}; ${e.tableoid} ${e.oid} ${e.desc} ${oneLine(e.namespace ?? "-")} ${
        oneLine(e.tag)
      } ${oneLine(e.owner ?? "")}`,
    );
  }
  return lines.join("\n") + "\n";
}

// ---------------------------------------------------------------------------------------------

/** Tables by TABLE entry, plus TABLE DATA entries without one (a data-only archive). */
function collectTables(toc: ArchiveToc, byId: Map<number, TocEntry>): TableInfo[] {
  const tables: TableInfo[] = [];
  const byTableId = new Map<number, TableInfo>();
  const byName = new Map<string, TableInfo>();
  const key = (e: TocEntry) => `${e.namespace ?? ""}\u0000${e.tag}`;
  for (const e of toc.entries) {
    if (e.desc !== "TABLE") continue;
    const t: TableInfo = { schema: e.namespace ?? "", name: e.tag, table: e };
    tables.push(t);
    byTableId.set(e.dumpId, t);
    byName.set(key(e), t);
  }
  for (const e of toc.entries) {
    if (e.desc !== "TABLE DATA") continue;
    const owner = byId.get(e.deps[0]);
    let t = owner?.desc === "TABLE" ? byTableId.get(owner.dumpId) : byName.get(key(e));
    if (!t) {
      t = { schema: e.namespace ?? "", name: e.tag };
      tables.push(t);
      byName.set(key(e), t);
    }
    t.data = e;
  }
  return tables;
}

function resolveTable(toc: ArchiveToc, tables: readonly TableInfo[], name: string): TableInfo {
  const exact = tables.filter((t) => t.name === name || `${t.schema}.${t.name}` === name);
  let found = exact;
  if (found.length === 0) {
    const parts = parseQualifiedName(name);
    if (parts?.length === 1) found = tables.filter((t) => t.name === parts[0]);
    if (parts?.length === 2) {
      found = tables.filter((t) => t.schema === parts[0] && t.name === parts[1]);
    }
  }
  if (found.length === 1) return found[0];
  if (found.length > 1) {
    throw new UsageError(
      `table "${name}" is ambiguous in ${toc.source}: it could be ${
        found.map((t) => displayName(t.schema, t.name)).join(", ")
      }; give it as schema.table`,
    );
  }
  const hints: string[] = [];
  const others = toc.entries.filter((e) =>
    /^(VIEW|MATERIALIZED VIEW|FOREIGN TABLE|SEQUENCE)$/.test(e.desc) &&
    (e.tag === name || `${e.namespace}.${e.tag}` === name)
  );
  for (const e of others) {
    hints.push(
      `${displayName(e.namespace ?? "", e.tag)} is a ${e.desc.toLowerCase()}, not a table`,
    );
  }
  const close = closest(name, tables.map((t) => displayName(t.schema, t.name)), (candidate) => {
    const t = tables.find((x) => displayName(x.schema, x.name) === candidate)!;
    return [t.name, `${t.schema}.${t.name}`, candidate];
  });
  if (close.length > 0) hints.push(`did you mean ${close.join(", ")}?`);
  throw new UsageError(
    `no table "${name}" in ${toc.source}${hints.length ? `: ${hints.join("; ")}` : ""}`,
  );
}

function resolveSchema(toc: ArchiveToc, tables: readonly TableInfo[], name: string): string {
  const known = new Set(tables.map((t) => t.schema));
  for (const e of toc.entries) if (e.desc === "SCHEMA") known.add(e.tag);
  if (known.has(name)) return name;
  const parts = parseQualifiedName(name);
  if (parts?.length === 1 && known.has(parts[0])) return parts[0];
  const close = closest(name, [...known].map(displayIdent), (candidate) => {
    const s = [...known].find((x) => displayIdent(x) === candidate)!;
    return [s, candidate];
  });
  throw new UsageError(
    `no schema "${name}" in ${toc.source}${
      close.length ? `: did you mean ${close.join(", ")}?` : ""
    }`,
  );
}

/**
 * Up to 5 candidates that look like `name`: equal ignoring case, containing it (or contained),
 * or within a small edit distance of any of the spellings `forms` gives for the candidate.
 */
function closest(
  name: string,
  candidates: readonly string[],
  forms: (candidate: string) => string[],
): string[] {
  const wanted = name.toLowerCase();
  const scored: { candidate: string; score: number }[] = [];
  for (const candidate of candidates) {
    let score = Infinity;
    for (const form of forms(candidate).map((f) => f.toLowerCase())) {
      if (form === wanted) score = Math.min(score, 0);
      else if (wanted.length >= 3 && (form.includes(wanted) || wanted.includes(form))) {
        score = Math.min(score, 1);
      } else {
        const d = editDistance(wanted, form);
        if (d <= Math.max(2, Math.floor(wanted.length / 4))) score = Math.min(score, 1 + d);
      }
    }
    if (score < Infinity) scored.push({ candidate, score });
  }
  scored.sort((a, b) => a.score - b.score || a.candidate.localeCompare(b.candidate));
  return scored.slice(0, 5).map((s) => s.candidate);
}

/** Levenshtein distance. */
function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = row;
  }
  return prev[b.length];
}

/**
 * `name` read as an SQL name with one or two parts: `"Mixed Case".orders`, `App.Orders`
 * (unquoted parts fold to lower case). Null when it is not one.
 */
function parseQualifiedName(name: string): string[] | null {
  const parts: string[] = [];
  let i = 0;
  while (i <= name.length) {
    if (name[i] === '"') {
      let part = "";
      i++;
      for (;;) {
        if (i >= name.length) return null;
        if (name[i] === '"') {
          if (name[i + 1] !== '"') break;
          i++;
        }
        part += name[i++];
      }
      i++;
      parts.push(part);
    } else {
      const m = /^[^".]+/.exec(name.slice(i));
      if (!m) return null;
      parts.push(m[0].trim().toLowerCase());
      i += m[0].length;
    }
    if (i === name.length) break;
    if (name[i] !== ".") return null;
    i++;
  }
  return parts.length >= 1 && parts.length <= 2 ? parts : null;
}

/** An identifier for messages: as is when plain, else double-quoted (like quote_ident). */
function displayIdent(name: string): string {
  return /^[a-z_][a-z0-9_$]*$/.test(name) ? name : `"${name.replaceAll('"', '""')}"`;
}

function displayName(schema: string, name: string): string {
  return schema ? `${displayIdent(schema)}.${displayIdent(name)}` : displayIdent(name);
}

/** A constraint, trigger or column name in messages: always double-quoted. */
function quoteName(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/** pg_restore's sanitize_line: a TOC list line must stay one line. */
function oneLine(text: string): string {
  return text.replace(/[\r\n]/g, " ");
}

/** Post-data entries that belong to one table alone and need nothing else of post-data. */
const OWN_POST_DATA = new Set(["INDEX", "CONSTRAINT", "TRIGGER", "RULE", "POLICY", "STATISTICS"]);

/**
 * For each of `tables`, the post-data entries (indexes, primary keys and unique constraints,
 * triggers, rules, policies, statistics) that can be restored as soon as that table's rows
 * are in: they depend on that table only and on no other post-data entry. Foreign keys,
 * partition index attachments and everything else are left for the end.
 */
export function postDataByTable(
  toc: ArchiveToc,
  tables: readonly TableRef[],
): Map<string, number[]> {
  const index = new TocIndex(toc);
  const postData = new Set(
    toc.entries.filter((e) => e.section === "post-data").map((e) => e.dumpId),
  );
  // Each table's own entries, found in one pass over the archive.
  const own = new Map<number, number[]>();
  for (const e of toc.entries) {
    if (e.section !== "post-data" || !OWN_POST_DATA.has(e.desc)) continue;
    const deps = index.tableDeps(e);
    if (deps.length !== 1 || e.deps.some((d) => postData.has(d))) continue;
    const ids = own.get(deps[0]);
    if (ids) ids.push(e.dumpId);
    else own.set(deps[0], [e.dumpId]);
  }
  const byName = new Map(index.tables.map((t) => [tableKey(t), t.table]));
  const out = new Map<string, number[]>();
  for (const t of tables) {
    const table = byName.get(tableKey(t));
    const ids = table && own.get(table.dumpId);
    if (ids) out.set(tableKey(t), ids);
  }
  return out;
}

/**
 * The pre-data entries that must be restored before rows can be loaded into `tables` without
 * waiting for the rest of pre-data: those tables' own entries, every pre-data entry that uses
 * them (directly or through another such entry: defaults, comments, sequences they own, views,
 * partitions and children), and everything all of these need. Restoring the rest of pre-data
 * while the tables are loaded then takes no lock a load holds (a load holds its table's
 * ACCESS EXCLUSIVE lock until it commits). Also the entries about the database itself (its
 * properties, comment, labels, privileges): pg_restore restores them only in the run that
 * creates the database (--create), so they go with the first part.
 */
export function preDataFor(toc: ArchiveToc, tables: readonly TableRef[]): Set<number> {
  const sections = effectiveSections(toc);
  const pre = toc.entries.filter((e) => sections.get(e.dumpId) === "pre-data");
  const byId = new Map(pre.map((e) => [e.dumpId, e]));
  const keys = new Set(tables.map(tableKey));
  const users = new Set(
    pre.filter((e) =>
      e.desc === "TABLE" && keys.has(tableKey({ schema: e.namespace ?? "", name: e.tag }))
    )
      .map((e) => e.dumpId),
  );
  // Archive order puts an entry after what it needs, so one pass usually finds every user;
  // passes repeat until none is added, in case it does not.
  for (let grew = users.size > 0; grew;) {
    grew = false;
    for (const e of pre) {
      if (!users.has(e.dumpId) && e.deps.some((d) => users.has(d))) {
        users.add(e.dumpId);
        grew = true;
      }
    }
  }
  const needed = new Set<number>();
  const stack = [...users];
  for (const e of pre) {
    if (/^DATABASE( PROPERTIES)?$/.test(e.desc) || e.tag.startsWith("DATABASE ")) {
      stack.push(e.dumpId);
    }
  }
  while (stack.length > 0) {
    const id = stack.pop()!;
    if (needed.has(id)) continue;
    needed.add(id);
    for (const d of byId.get(id)?.deps ?? []) if (byId.has(d) && !needed.has(d)) stack.push(d);
  }
  return needed;
}

/** Every table the archive creates (its TABLE entries). */
export function archiveTables(toc: ArchiveToc): TableRef[] {
  return toc.entries.filter((e) => e.desc === "TABLE").map((e) => ({
    schema: e.namespace ?? "",
    name: e.tag,
  }));
}

/** The map key `postDataByTable` uses for a table. */
export function tableKey(t: TableRef): string {
  return JSON.stringify([t.schema, t.name]);
}

/**
 * The section pg_restore restores each entry in: its own, or for an entry without one
 * (comments, security labels, ACLs) the section of the last entry before it that has one
 * (pre-data at the start), as pg_restore's --section filter decides.
 */
export function effectiveSections(toc: ArchiveToc): Map<number, TocSection> {
  const out = new Map<number, TocSection>();
  let current: TocSection = "pre-data";
  for (const e of toc.entries) {
    if (e.section !== "none") current = e.section;
    out.set(e.dumpId, current);
  }
  return out;
}
