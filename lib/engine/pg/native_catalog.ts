/** Catalog queries of the native engine: which tables hold data, their columns and sizes. */
import { createHash } from "node:crypto";
import type { Sql } from "./connect.ts";

export interface DataTable {
  schema: string;
  name: string;
  /** `"schema"."name"`, quoted by the server. */
  qualified: string;
  /** Quoted column names in attribute order, without generated or dropped columns. */
  columns: string[];
  /** Column types, for the fingerprint. */
  types: string[];
  /** pg_table_size: the heap with its TOAST data. */
  bytes: number;
  /** Heap pages, the unit of chunk ranges. */
  pages: number;
  /** The table's oid and its file as the snapshot sees them (see `changedSinceSnapshot`). */
  oid: number;
  filenode: number;
}

export interface DataTables {
  tables: DataTable[];
  /** The database's encoding (server_encoding), e.g. "UTF8". */
  encoding: string;
  /** Relations whose data is not dumped natively, with why. */
  skipped: { table: string; reason: string }[];
}

/**
 * Every table whose rows belong in the backup: ordinary tables and partitions (relkind r),
 * permanent or unlogged, outside system schemas and not owned by an extension (pg_dump's
 * schema archive keeps the data of extension configuration tables). Partitioned parents hold
 * no rows of their own: their leaves are dumped, once each.
 */
export async function listDataTables(sql: Sql): Promise<DataTables> {
  const rows = await sql.unsafe<{
    schema: string;
    name: string;
    qualified: string;
    relkind: string;
    columns: string[];
    types: string[];
    bytes: string;
    heap: string;
    block_size: number;
    oid: string;
    filenode: string;
  }[]>(`
    SELECT n.nspname AS schema, c.relname AS name,
           quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS qualified,
           c.relkind::text AS relkind,
           ARRAY(SELECT quote_ident(a.attname) FROM pg_attribute a
                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                    AND a.attgenerated = '' ORDER BY a.attnum) AS columns,
           ARRAY(SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                    AND a.attgenerated = '' ORDER BY a.attnum) AS types,
           CASE WHEN c.relkind = 'r' THEN pg_table_size(c.oid) ELSE 0 END::text AS bytes,
           CASE WHEN c.relkind = 'r' THEN pg_relation_size(c.oid) ELSE 0 END::text AS heap,
           current_setting('block_size')::int AS block_size,
           c.oid::text AS oid, c.relfilenode::text AS filenode
      FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind IN ('r', 'f')
       AND c.relpersistence IN ('p', 'u')
       AND n.nspname NOT IN ('pg_catalog', 'information_schema')
       AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
       AND NOT EXISTS (SELECT 1 FROM pg_depend d
                        WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                          AND d.deptype = 'e')
     ORDER BY n.nspname, c.relname`);
  const tables: DataTable[] = [];
  const skipped: DataTables["skipped"] = [];
  for (const r of rows) {
    if (r.relkind === "f") {
      skipped.push({ table: r.qualified, reason: "foreign table: its data lives elsewhere" });
      continue;
    }
    const bytes = Number(r.bytes);
    const heap = Number(r.heap);
    tables.push({
      schema: r.schema,
      name: r.name,
      qualified: r.qualified,
      columns: r.columns,
      types: r.types,
      bytes,
      pages: Math.ceil(heap / r.block_size),
      oid: Number(r.oid),
      filenode: Number(r.filenode),
    });
  }
  const [{ encoding }] = await sql.unsafe<{ encoding: string }[]>(
    "SELECT current_setting('server_encoding') AS encoding",
  );
  return { tables, skipped, encoding };
}

/**
 * The tables (of `tables`, listed in this transaction's snapshot) that another session truncated,
 * rewrote (ALTER TABLE, VACUUM FULL, CLUSTER) or dropped and created again after the snapshot was
 * taken and before their locks were granted. Neither TRUNCATE nor a rewrite is MVCC-safe: the
 * snapshot would read the new, empty or newer file and find no rows at all. Call it once every
 * table is locked: the catalog functions below see the committed state, the SELECT the snapshot's.
 */
export async function changedSinceSnapshot(
  sql: Sql,
  tables: readonly DataTable[],
): Promise<string[]> {
  if (tables.length === 0) return [];
  const rows = await sql.unsafe<{ qualified: string }[]>(
    `SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS qualified
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.oid = ANY($1::oid[])
        AND (to_regclass(quote_ident(n.nspname) || '.' || quote_ident(c.relname))
               IS DISTINCT FROM c.oid
             OR pg_relation_filenode(c.oid) IS DISTINCT FROM c.relfilenode)
      ORDER BY 1`,
    [`{${tables.map((t) => t.oid).join(",")}}`],
  );
  return rows.map((r) => r.qualified);
}

/** sha256 of the table definitions: a resumed backup must find the same ones. */
export function tablesFingerprint(tables: readonly DataTable[]): string {
  const h = createHash("sha256");
  for (const t of tables) {
    h.update(JSON.stringify([t.qualified, t.columns, t.types]));
    h.update("\n");
  }
  return h.digest("hex");
}

/** A pg_dump/psql name pattern that matches exactly this schema and table. */
export function exactTablePattern(schema: string, name: string): string {
  const q = (s: string) => `"${s.replace(/"/g, '""')}"`;
  return `${q(schema)}.${q(name)}`;
}
