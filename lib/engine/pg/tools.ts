/**
 * Finds pg_dump, pg_restore, pg_dumpall and psql of a major version that can handle the
 * server: the same major as the server, or newer.
 */
import { DbBackupError } from "../../errors.ts";
import { probeLargeWrites, run } from "../../process/run.ts";

export type PgToolName = "pg_dump" | "pg_dumpall" | "pg_restore" | "psql";

export interface PgTool {
  name: PgToolName;
  path: string;
  version: string;
  major: number;
  /** Runs with a 1 MiB stdout buffer (process/run.ts probeLargeWrites). */
  largeWrites?: boolean;
}

/** Folders searched, in order, for tools of the server's major version. */
export function candidateDirs(major: number, pgBin?: string): string[] {
  const dirs: string[] = [];
  if (pgBin) dirs.push(pgBin);
  dirs.push(
    `/usr/lib/postgresql/${major}/bin`,
    `/usr/pgsql-${major}/bin`,
    `/opt/homebrew/opt/postgresql@${major}/bin`,
    `/usr/local/opt/postgresql@${major}/bin`,
  );
  return dirs;
}

async function isExecutable(path: string): Promise<boolean> {
  try {
    const st = await Deno.stat(path);
    return st.isFile;
  } catch {
    return false;
  }
}

async function toolVersion(
  path: string,
): Promise<{ version: string; major: number; output: string }> {
  const out = await run(path, ["--version"], { describe: `${path} --version` });
  const m = out.stdout.match(/\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?(\S*)/);
  if (!m) throw new DbBackupError("process", `cannot read the version of ${path}`);
  return {
    version: `${m[1]}${m[2] ? `.${m[2]}` : ""}${m[3] ?? ""}`,
    major: Number(m[1]),
    output: out.stdout,
  };
}

/** Finds `name` for a server of `major`; with pgBin only that folder is searched. */
export async function findTool(
  name: PgToolName,
  major: number,
  pgBin?: string,
): Promise<PgTool> {
  const tried: string[] = [];
  const dirs = pgBin ? [pgBin] : candidateDirs(major);
  for (const dir of dirs) {
    const path = `${dir}/${name}`;
    if (!await isExecutable(path)) continue;
    const v = await toolVersion(path);
    tried.push(`${path} (${v.version})`);
    if (v.major >= major) return withLargeWrites(name, path, v);
  }
  if (!pgBin) {
    // Fall back to PATH.
    for (const dir of (Deno.env.get("PATH") ?? "").split(":").filter(Boolean)) {
      const path = `${dir}/${name}`;
      if (!await isExecutable(path)) continue;
      try {
        const v = await toolVersion(path);
        tried.push(`${path} (${v.version})`);
        if (v.major >= major) return withLargeWrites(name, path, v);
      } catch {
        tried.push(`${path} (version unknown)`);
      }
      break;
    }
  }
  throw new DbBackupError(
    "not_found",
    `no ${name} for PostgreSQL ${major} or newer found${
      tried.length ? `; found only ${tried.join(", ")}` : ""
    }; install the PostgreSQL ${major} client tools or point --pg-bin at them`,
  );
}

/** The tool found; those that write backup data to stdout get their large-writes probe. */
async function withLargeWrites(
  name: PgToolName,
  path: string,
  v: { version: string; major: number; output: string },
): Promise<PgTool> {
  const tool: PgTool = { name, path, version: v.version, major: v.major };
  if (name !== "pg_dump" && name !== "psql") return tool;
  return { ...tool, largeWrites: await probeLargeWrites(path, v.output) };
}
