/** `list`: every set in the repository with its status, databases, sizes and times. */
import { type Manifest, manifestFiles } from "../repo/manifest.ts";
import type { Repository } from "../repo/repository.ts";

export interface SetSummary {
  id: string;
  kind?: string;
  status: string;
  engine?: string;
  databases: { name: string; status: string; error?: string }[];
  /** Stored (compressed) bytes of all files. */
  bytes?: number;
  rawBytes?: number;
  startedAt?: string;
  finishedAt?: string;
  server?: string;
  /** Native engine: snapshots the data spans (more than 1 after a resumed backup). */
  snapshots?: number;
  problem?: string;
}

/** How many snapshots a set's data spans: 1 normally, more after a resumed native backup. */
export function snapshotCount(m: Manifest): number | undefined {
  const counts = m.databases.map((d) => d.native?.snapshots.length ?? 0);
  return m.engine === "native" ? Math.max(1, ...counts) : undefined;
}

export async function list(repo: Repository): Promise<SetSummary[]> {
  const sets = await repo.listSets();
  return sets.map((s) => {
    const m = s.manifest;
    if (!m) return { id: s.id, status: s.status, databases: [], problem: s.problem };
    const files = manifestFiles(m);
    return {
      id: s.id,
      kind: m.kind,
      status: s.status,
      engine: m.engine,
      databases: m.databases.map((d) => ({ name: d.name, status: d.status, error: d.error })),
      bytes: files.reduce((n, f) => n + f.bytes, 0),
      rawBytes: files.reduce((n, f) => n + f.rawBytes, 0),
      startedAt: m.startedAt,
      finishedAt: m.finishedAt,
      server: `${m.server.host}:${m.server.port} (PostgreSQL ${m.server.version})`,
      snapshots: snapshotCount(m),
    };
  });
}
