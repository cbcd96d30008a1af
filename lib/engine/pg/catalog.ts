/** Catalog queries: server facts, the databases, whether a database holds user objects. */
import type { Sql } from "./connect.ts";

export interface ServerInfo {
  version: string;
  versionNum: number;
  major: number;
  ssl: boolean;
  systemIdentifier?: string;
  currentUser: string;
  isSuperuser: boolean;
}

export interface DatabaseInfo {
  name: string;
  owner: string;
  encoding: string;
  collate: string;
  ctype: string;
  sizeBytes: number;
  isTemplate: boolean;
  allowConnections: boolean;
}

export async function serverInfo(sql: Sql): Promise<ServerInfo> {
  const [row] = await sql<{
    version: string;
    num: string;
    ssl: boolean | null;
    usr: string;
    su: boolean;
  }[]>`
    SELECT current_setting('server_version') AS version,
           current_setting('server_version_num') AS num,
           (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()) AS ssl,
           current_user AS usr,
           (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS su`;
  const versionNum = Number(row.num);
  let systemIdentifier: string | undefined;
  try {
    const [ctl] = await sql<{ id: string }[]>`
      SELECT system_identifier::text AS id FROM pg_control_system()`;
    systemIdentifier = ctl.id;
  } catch {
    // needs pg_monitor or superuser; optional
  }
  return {
    version: row.version,
    versionNum,
    major: Math.floor(versionNum / 10000),
    ssl: row.ssl === true,
    systemIdentifier,
    currentUser: row.usr,
    isSuperuser: row.su,
  };
}

export async function listDatabases(sql: Sql): Promise<DatabaseInfo[]> {
  const rows = await sql<{
    name: string;
    owner: string;
    encoding: string;
    collate: string;
    ctype: string;
    size: string | null;
    istemplate: boolean;
    allowconn: boolean;
  }[]>`
    SELECT d.datname AS name,
           pg_get_userbyid(d.datdba) AS owner,
           pg_encoding_to_char(d.encoding) AS encoding,
           d.datcollate AS collate,
           d.datctype AS ctype,
           CASE WHEN has_database_privilege(d.oid, 'CONNECT')
                THEN pg_database_size(d.oid)::text END AS size,
           d.datistemplate AS istemplate,
           d.datallowconn AS allowconn
      FROM pg_database d
     ORDER BY d.datname`;
  return rows.map((r) => ({
    name: r.name,
    owner: r.owner,
    encoding: r.encoding,
    collate: r.collate,
    ctype: r.ctype,
    sizeBytes: Number(r.size ?? 0),
    isTemplate: r.istemplate,
    allowConnections: r.allowconn,
  }));
}

/**
 * How many user objects a database holds: relations, types, functions and schemas outside
 * the system ones, extensions other than plpgsql, and large objects.
 */
export async function countUserObjects(sql: Sql): Promise<number> {
  const [row] = await sql<{ n: string }[]>`
    WITH user_ns AS (
      SELECT oid FROM pg_namespace
       WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
         AND nspname NOT LIKE 'pg_temp_%' AND nspname NOT LIKE 'pg_toast_temp_%'
    )
    SELECT ((SELECT count(*) FROM pg_class WHERE relnamespace IN (SELECT oid FROM user_ns))
          + (SELECT count(*) FROM pg_proc WHERE pronamespace IN (SELECT oid FROM user_ns))
          + (SELECT count(*) FROM pg_type t WHERE typnamespace IN (SELECT oid FROM user_ns)
                AND t.typrelid = 0 AND t.typelem = 0)
          + (SELECT count(*) FROM pg_namespace WHERE oid IN (SELECT oid FROM user_ns)
                AND nspname <> 'public')
          + (SELECT count(*) FROM pg_extension WHERE extname <> 'plpgsql')
          + (SELECT count(*) FROM pg_largeobject_metadata))::text AS n`;
  return Number(row.n);
}
