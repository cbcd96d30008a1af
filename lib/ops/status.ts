/** `status`: the effective settings, the server, its databases, the tools and the repository. */
import { errorMessage } from "../errors.ts";
import type { Settings } from "../config/settings.ts";
import { listDatabases, serverInfo } from "../engine/pg/catalog.ts";
import type { PgTarget } from "../engine/pg/connect.ts";
import { findTool, type PgToolName } from "../engine/pg/tools.ts";
import type { Repository } from "../repo/repository.ts";

export interface StatusReport {
  settings: Record<string, { value: unknown; source: string }>;
  connection: {
    ok: boolean;
    endpoint: string;
    transport: "unix socket" | "tcp";
    tls?: boolean;
    auth?: string;
    user: string;
    error?: string;
  };
  server?: { version: string; versionNum: number; superuser: boolean; systemIdentifier?: string };
  databases?: {
    name: string;
    sizeBytes: number;
    encoding: string;
    owner: string;
    template: boolean;
  }[];
  tools: {
    name: PgToolName;
    path?: string;
    version?: string;
    matchesServer?: boolean;
    error?: string;
  }[];
  repository: {
    location: string;
    exists: boolean;
    sets: number;
    freeBytes?: number;
    /** Why the repository could not be read (e.g. S3 credentials), if it could not. */
    error?: string;
  };
  warnings: string[];
}

export async function status(
  settings: Settings,
  target: PgTarget,
  repo: Repository,
): Promise<StatusReport> {
  const report: StatusReport = {
    settings: settingsTable(settings),
    connection: {
      ok: false,
      endpoint: target.endpoint,
      transport: target.isSocket ? "unix socket" : "tcp",
      user: target.user,
    },
    tools: [],
    repository: { location: repo.location, exists: false, sets: 0 },
    warnings: target.warnings,
  };
  let major: number | undefined;
  try {
    await target.withSql("postgres", "cannot connect", async (sql) => {
      const info = await serverInfo(sql);
      major = info.major;
      report.server = {
        version: info.version,
        versionNum: info.versionNum,
        superuser: info.isSuperuser,
        systemIdentifier: info.systemIdentifier,
      };
      report.connection.tls = info.ssl;
      report.databases = (await listDatabases(sql)).map((d) => ({
        name: d.name,
        sizeBytes: d.sizeBytes,
        encoding: d.encoding,
        owner: d.owner,
        template: d.isTemplate,
      }));
    });
    report.connection.ok = true;
    report.connection.auth = target.passwordRequested
      ? `password (from ${target.passwordSource ?? "prompt"})`
      : "no password requested (trust, peer or certificate)";
  } catch (err) {
    report.connection.error = errorMessage(err);
  }
  for (const name of ["pg_dump", "pg_restore", "pg_dumpall", "psql"] as const) {
    if (major === undefined) {
      report.tools.push({ name, error: "unknown server version" });
      continue;
    }
    try {
      const tool = await findTool(name, major, settings.pgBin?.value);
      report.tools.push({
        name,
        path: tool.path,
        version: tool.version,
        matchesServer: tool.major === major,
      });
    } catch (err) {
      report.tools.push({ name, error: errorMessage(err) });
    }
  }
  try {
    const root = await repo.storage.stat("");
    report.repository.exists = root !== undefined;
    if (root) {
      report.repository.sets = (await repo.listSets()).length;
      report.repository.freeBytes = await repo.storage.freeSpace();
    }
  } catch (err) {
    report.repository.error = errorMessage(err);
  }
  return report;
}

/** Every setting with its source; secrets never appear (the password is not a setting). */
export function settingsTable(s: Settings): StatusReport["settings"] {
  const out: StatusReport["settings"] = {};
  for (const [key, setting] of Object.entries(s)) {
    if (setting && typeof setting === "object" && "source" in setting) {
      out[key] = { value: setting.value, source: setting.source };
    }
  }
  return out;
}
