/** `list`: every set in the repository with its status, databases, sizes and times. */
import type { Manifest } from "../repo/manifest.ts";
import type { Repository } from "../repo/repository.ts";
import { groupOf } from "./prune.ts";

export interface SetSummary {
  id: string;
  /** What the set backs up; prune keeps or removes within each group. */
  group: string;
  kind?: string;
  status: string;
  engine?: string;
  databases: { name: string; status: string; error?: string }[];
  /** Stored (compressed, maybe encrypted) bytes of all files. */
  bytes?: number;
  encrypted?: boolean;
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
    const m = s.summary;
    const group = groupOf(s);
    if (!m) return { id: s.id, group, status: s.status, databases: [], problem: s.problem };
    return {
      id: s.id,
      group,
      kind: m.kind,
      status: s.status,
      engine: m.engine,
      encrypted: m.encrypted,
      databases: m.databases,
      bytes: m.bytes,
      startedAt: m.startedAt,
      finishedAt: m.finishedAt,
      server: `${m.server.host}:${m.server.port} (PostgreSQL ${m.server.version})`,
      snapshots: m.snapshots,
    };
  });
}
