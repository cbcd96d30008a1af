/**
 * Snapshots of a database (schema, table contents, sequences, large objects, materialized views)
 * and of cluster-wide roles, and a strict comparison with a readable diff.
 *
 * Round-trip tests snapshot the source, back up, restore elsewhere, snapshot the target and call
 * `assertSameSnapshot`. Everything is read through `psql`/`pg_dump` of the server's own bin dir,
 * with output formats pinned (UTC, ISO dates, C collation for ordering) so that two servers
 * holding the same data produce identical snapshots.
 */
import { run } from "../../lib/process/run.ts";
import { cleanEnv, conninfoDbname, type PgServer, quoteIdent } from "./pg_server.ts";

export interface TableStat {
  rows: number;
  /** md5 of all rows as text, sorted with the C collation and joined by newlines. */
  md5: string;
}

export interface MatviewState {
  populated: boolean;
  /** Only for populated views (an unpopulated one cannot be read). */
  rows?: number;
  md5?: string;
}

export interface LargeObjectMeta {
  owner: string;
  acl: string | null;
  comment: string | null;
}

export interface DbSnapshot {
  /** `pg_dump --schema-only`, minus the lines that differ between runs. */
  schema: string;
  /** Ordinary tables and leaf partitions, keyed by `schema.table` (quoted where needed). */
  tables: Record<string, TableStat>;
  /** Keyed by `schema.sequence`; value `last_value/is_called`, e.g. `1041/true`. */
  sequences: Record<string, string>;
  /** `oid:md5-of-content`, ordered by OID. */
  largeObjects: string[];
  /** Owner, ACL and comment per large object OID. */
  largeObjectMeta: Record<string, LargeObjectMeta>;
  /** Keyed by `schema.view`. */
  matviews: Record<string, MatviewState>;
}

export interface RoleState {
  rolsuper: boolean;
  rolinherit: boolean;
  rolcreaterole: boolean;
  rolcreatedb: boolean;
  rolcanlogin: boolean;
  rolreplication: boolean;
  rolbypassrls: boolean;
  rolconnlimit: number;
  rolvaliduntil: string | null;
  /** Whether a password is set (the SCRAM verifier itself is salted, so it is not compared). */
  hasPassword: boolean;
  /** Roles this role is a member of, sorted; `name (admin)` when granted WITH ADMIN OPTION. */
  memberOf: string[];
  /** `ALTER ROLE ... SET` settings (database-independent ones), sorted. */
  config: string[];
}

export interface GlobalsSnapshot {
  /** Every role whose name does not start with `pg_`, the bootstrap superuser included. */
  roles: Record<string, RoleState>;
}

/**
 * Pins everything that changes how values print, so text forms are comparable across servers.
 * search_path is emptied so only fully qualified names resolve.
 */
const SESSION_SETUP = `
SET search_path = pg_catalog;
SET TimeZone = 'UTC';
SET DateStyle = 'ISO, YMD';
SET IntervalStyle = 'postgres';
SET extra_float_digits = 1;
SET bytea_output = 'hex';
`;

/** Takes a snapshot of database `db` on `pg`. */
export async function snapshotDatabase(pg: PgServer, db: string): Promise<DbSnapshot> {
  const [schema, relations, largeObjects] = await Promise.all([
    dumpSchema(pg, db),
    listRelations(pg, db),
    readLargeObjects(pg, db),
  ]);
  const snapshot: DbSnapshot = {
    schema,
    tables: {},
    sequences: {},
    largeObjects: largeObjects.map((lo) => `${lo.oid}:${lo.md5}`),
    largeObjectMeta: {},
    matviews: {},
  };
  for (const lo of largeObjects) {
    snapshot.largeObjectMeta[lo.oid] = { owner: lo.owner, acl: lo.acl, comment: lo.comment };
  }

  // One query computes the contents of every table, sequence and populated matview.
  const parts = relations.map((rel, i) => {
    const name = `${quoteIdent(rel.schema)}.${quoteIdent(rel.name)}`;
    if (rel.kind === "S") {
      return `SELECT ${i} AS i, 0::bigint AS n, last_value::text || '/' || is_called::text AS v ` +
        `FROM ${name}`;
    }
    if (rel.kind === "m" && !rel.populated) {
      return `SELECT ${i} AS i, 0::bigint AS n, NULL::text AS v`;
    }
    // `(r.*)` is the whole row even when the table has a column called "r".
    return `SELECT ${i} AS i, count(*) AS n, ` +
      `md5(coalesce(string_agg((r.*)::text, E'\\n' ORDER BY (r.*)::text COLLATE "C"), '')) ` +
      `AS v FROM ${name} AS r`;
  });
  const results = parts.length === 0
    ? []
    : await psqlJson<{ i: number; n: number; v: string | null }[]>(
      pg,
      db,
      `SELECT coalesce(json_agg(x ORDER BY x.i), '[]') FROM (\n${
        parts.join("\nUNION ALL\n")
      }\n) AS x`,
    );
  if (results.length !== relations.length) {
    throw new Error(`snapshot of ${db}: expected ${relations.length} results, ${results.length}`);
  }
  for (const { i, n, v } of results) {
    const rel = relations[i];
    const key = displayName(rel.schema, rel.name);
    if (rel.kind === "r") snapshot.tables[key] = { rows: n, md5: v ?? "" };
    else if (rel.kind === "S") snapshot.sequences[key] = v ?? "";
    else if (rel.populated) snapshot.matviews[key] = { populated: true, rows: n, md5: v ?? "" };
    else snapshot.matviews[key] = { populated: false };
  }
  return snapshot;
}

/** Takes a snapshot of the cluster's roles and role memberships. */
export async function snapshotGlobals(pg: PgServer): Promise<GlobalsSnapshot> {
  // pg_authid (not pg_roles) to see whether a password is set; needs a superuser, as we are.
  // Memberships are distinct (role, admin) pairs: from PostgreSQL 16 on, the same membership
  // can be granted several times by different grantors.
  const rows = await psqlJson<(RoleState & { rolname: string })[]>(
    pg,
    "postgres",
    `SELECT coalesce(json_agg(r ORDER BY r.rolname COLLATE "C"), '[]') FROM (
       SELECT a.rolname, a.rolsuper, a.rolinherit, a.rolcreaterole, a.rolcreatedb, a.rolcanlogin,
              a.rolreplication, a.rolbypassrls, a.rolconnlimit, a.rolvaliduntil::text AS rolvaliduntil,
              a.rolpassword IS NOT NULL AS "hasPassword",
              ARRAY(
                SELECT DISTINCT g.rolname || CASE WHEN m.admin_option THEN ' (admin)' ELSE '' END
                FROM pg_auth_members m JOIN pg_authid g ON g.oid = m.roleid
                WHERE m.member = a.oid
                ORDER BY 1
              ) AS "memberOf",
              ARRAY(
                SELECT unnest(s.setconfig) FROM pg_db_role_setting s
                WHERE s.setrole = a.oid AND s.setdatabase = 0 ORDER BY 1
              ) AS config
       FROM pg_authid a
       WHERE a.rolname !~ '^pg_'
     ) AS r`,
  );
  const roles: Record<string, RoleState> = {};
  for (const { rolname, ...state } of rows) roles[rolname] = state;
  return { roles };
}

/** Throws an Error listing every difference; returns normally only when the snapshots match. */
export function assertSameSnapshot<T extends DbSnapshot | GlobalsSnapshot>(
  actual: T,
  expected: T,
  label: string,
): void {
  const problems = diffSnapshots(actual, expected);
  if (problems.length === 0) return;
  throw new Error(
    `${label}: snapshots differ (${problems.length} difference(s); "-" expected, "+" actual)\n` +
      problems.map((p) => indent(p, "  ")).join("\n"),
  );
}

/** Every difference between two snapshots as readable text; empty when they are equal. */
export function diffSnapshots(actual: unknown, expected: unknown): string[] {
  const out: string[] = [];
  diffValue("", actual, expected, out);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

/** Lines of `pg_dump` output that legitimately differ between two dumps of the same database. */
const VOLATILE_DUMP_LINES = [
  /^-- Dumped from database version /,
  /^-- Dumped by pg_dump version /,
  // pg_dump 13.22/14.19/15.14/16.10/17.6 and later wrap the script in \restrict KEY ...
  // \unrestrict KEY with a random key (CVE-2025-8714).
  /^\\(un)?restrict /,
];

async function dumpSchema(pg: PgServer, db: string): Promise<string> {
  const { stdout } = await run(
    `${pg.binDir}/pg_dump`,
    ["--schema-only", "--no-password", "-d", conninfoDbname(db)],
    {
      describe: `pg_dump --schema-only of database ${JSON.stringify(db)}`,
      env: cleanEnv(pg.env()),
      clearEnv: true,
    },
  );
  if (!stdout.includes("PostgreSQL database dump")) {
    throw new Error(`pg_dump of ${db} produced no dump:\n${stdout.slice(0, 500)}`);
  }
  return stdout
    .split("\n")
    .filter((line) => !VOLATILE_DUMP_LINES.some((re) => re.test(line)))
    .join("\n");
}

interface Relation {
  schema: string;
  name: string;
  kind: "r" | "S" | "m";
  populated: boolean;
}

/** Tables (incl. leaf partitions; partitioned parents hold no rows), sequences, matviews. */
function listRelations(pg: PgServer, db: string): Promise<Relation[]> {
  return psqlJson<Relation[]>(
    pg,
    db,
    `SELECT coalesce(json_agg(x ORDER BY x.schema COLLATE "C", x.name COLLATE "C"), '[]') FROM (
       SELECT n.nspname AS schema, c.relname AS name, c.relkind AS kind,
              c.relispopulated AS populated
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE c.relkind IN ('r', 'S', 'm')
         AND n.nspname !~ '^pg_'  -- pg_catalog, pg_toast, other sessions' pg_temp_N
         AND n.nspname <> 'information_schema'
     ) AS x`,
  );
}

interface LargeObjectRow extends LargeObjectMeta {
  oid: string;
  md5: string;
}

function readLargeObjects(pg: PgServer, db: string): Promise<LargeObjectRow[]> {
  return psqlJson<LargeObjectRow[]>(
    pg,
    db,
    `SELECT coalesce(json_agg(x ORDER BY x.n), '[]') FROM (
       SELECT l.oid AS n, l.oid::text AS oid, md5(lo_get(l.oid)) AS md5,
              pg_get_userbyid(l.lomowner) AS owner, l.lomacl::text AS acl,
              obj_description(l.oid, 'pg_largeobject') AS comment
       FROM pg_largeobject_metadata l
     ) AS x`,
  );
}

/** Runs one query returning a single JSON value, with the pinned session settings. */
async function psqlJson<T>(pg: PgServer, db: string, query: string): Promise<T> {
  const out = await pg.psql(`${SESSION_SETUP}\n${query};\n`, { db });
  try {
    return JSON.parse(out) as T;
  } catch {
    throw new Error(`expected one JSON value from psql on ${db}, got:\n${out.slice(0, 500)}`);
  }
}

/** `schema.name`, each part double-quoted only when it is not a plain lower-case name. */
function displayName(schema: string, name: string): string {
  const part = (s: string) => /^[a-z_][a-z0-9_$]*$/.test(s) ? s : quoteIdent(s);
  return `${part(schema)}.${part(name)}`;
}

// ---------------------------------------------------------------------------------------------
// Diffing
// ---------------------------------------------------------------------------------------------

function diffValue(path: string, actual: unknown, expected: unknown, out: string[]): void {
  const where = path || "(root)";
  if (typeof actual === "string" && typeof expected === "string") {
    if (actual === expected) return;
    if (actual.includes("\n") || expected.includes("\n")) {
      out.push(`${where}: text differs:\n${indent(lineDiff(expected, actual), "  ")}`);
    } else {
      out.push(`${where}: expected ${show(expected)}, got ${show(actual)}`);
    }
    return;
  }
  if (Array.isArray(actual) && Array.isArray(expected)) {
    const a = actual.map(show);
    const e = expected.map(show);
    if (a.join("\n") !== e.join("\n")) {
      out.push(`${where}: lists differ:\n${indent(lineDiff(e.join("\n"), a.join("\n")), "  ")}`);
    }
    return;
  }
  if (isRecord(actual) && isRecord(expected)) {
    const keys = [...new Set([...Object.keys(expected), ...Object.keys(actual)])].sort();
    for (const key of keys) {
      const sub = path ? (/^[A-Za-z_]\w*$/.test(key) ? `${path}.${key}` : `${path}[${key}]`) : key;
      if (!(key in actual)) out.push(`${sub}: missing (expected ${show(expected[key])})`);
      else if (!(key in expected)) out.push(`${sub}: unexpected (got ${show(actual[key])})`);
      else diffValue(sub, actual[key], expected[key], out);
    }
    return;
  }
  if (actual !== expected) out.push(`${where}: expected ${show(expected)}, got ${show(actual)}`);
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function show(v: unknown): string {
  return v === undefined ? "undefined" : JSON.stringify(v);
}

function indent(text: string, prefix: string): string {
  return text.split("\n").map((l) => prefix + l).join("\n");
}

const MAX_DIFF_LINES = 80;
const CONTEXT = 2;
/** Above this many LCS cells, the differing middle is shown as one block instead. */
const MAX_LCS_CELLS = 4_000_000;

/**
 * A unified-style diff of two texts: hunks with line numbers, `-` expected, `+` actual and a
 * little context, truncated after MAX_DIFF_LINES lines.
 */
function lineDiff(expectedText: string, actualText: string): string {
  const e = expectedText.split("\n");
  const a = actualText.split("\n");
  // Strip the common prefix and suffix; only the middle needs the quadratic LCS.
  let start = 0;
  while (start < e.length && start < a.length && e[start] === a[start]) start++;
  let endE = e.length;
  let endA = a.length;
  while (endE > start && endA > start && e[endE - 1] === a[endA - 1]) {
    endE--;
    endA--;
  }
  const em = e.slice(start, endE);
  const am = a.slice(start, endA);

  type Op = { kind: " " | "-" | "+"; text: string; ei: number; ai: number };
  const ops: Op[] = [];
  for (let i = 0; i < start; i++) ops.push({ kind: " ", text: e[i], ei: i, ai: i });
  if ((em.length + 1) * (am.length + 1) > MAX_LCS_CELLS) {
    em.forEach((text, i) => ops.push({ kind: "-", text, ei: start + i, ai: start }));
    am.forEach((text, i) => ops.push({ kind: "+", text, ei: endE, ai: start + i }));
  } else {
    // lcs[i][j] = length of the LCS of em[i..] and am[j..]
    const lcs = Array.from({ length: em.length + 1 }, () => new Uint32Array(am.length + 1));
    for (let i = em.length - 1; i >= 0; i--) {
      for (let j = am.length - 1; j >= 0; j--) {
        lcs[i][j] = em[i] === am[j]
          ? lcs[i + 1][j + 1] + 1
          : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
      }
    }
    let i = 0;
    let j = 0;
    while (i < em.length || j < am.length) {
      if (i < em.length && j < am.length && em[i] === am[j]) {
        ops.push({ kind: " ", text: em[i], ei: start + i++, ai: start + j++ });
      } else if (i < em.length && (j === am.length || lcs[i + 1][j] >= lcs[i][j + 1])) {
        ops.push({ kind: "-", text: em[i], ei: start + i++, ai: start + j });
      } else {
        ops.push({ kind: "+", text: am[j], ei: start + i, ai: start + j++ });
      }
    }
  }
  for (let k = 0; k < e.length - endE; k++) {
    ops.push({ kind: " ", text: e[endE + k], ei: endE + k, ai: endA + k });
  }

  // Keep changed lines plus CONTEXT lines around them; "@@" headers start each hunk.
  const keep = new Array<boolean>(ops.length).fill(false);
  ops.forEach((op, k) => {
    if (op.kind === " ") return;
    for (let c = Math.max(0, k - CONTEXT); c <= Math.min(ops.length - 1, k + CONTEXT); c++) {
      keep[c] = true;
    }
  });
  const lines: string[] = [];
  for (let k = 0; k < ops.length; k++) {
    if (!keep[k]) continue;
    if (k === 0 || !keep[k - 1]) {
      lines.push(`@@ expected line ${ops[k].ei + 1}, actual line ${ops[k].ai + 1} @@`);
    }
    lines.push(`${ops[k].kind} ${ops[k].text}`);
  }
  if (lines.length > MAX_DIFF_LINES) {
    const more = lines.length - MAX_DIFF_LINES;
    return [...lines.slice(0, MAX_DIFF_LINES), `... (${more} more diff lines)`].join("\n");
  }
  return lines.join("\n");
}
