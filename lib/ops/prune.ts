/**
 * `prune`: applies a retention policy to the sets of a repository, group by group, under an
 * exclusive repository lock. Only folders named like set ids are considered; anything else in
 * the repository is never touched. A set is removed manifest first, then its data, so an
 * interruption leaves an incomplete set (removed by a later prune once past the grace period),
 * never a manifest pointing at missing data. Sets whose manifest cannot be read are left alone.
 */
import { DbBackupError, errorMessage } from "../errors.ts";
import { acquireLock } from "../repo/lock.ts";
import { MANIFEST_FILE } from "../repo/manifest.ts";
import type { ListedSet, Repository } from "../repo/repository.ts";
import { setIdSubject, setIdTime } from "../repo/set_id.ts";
import {
  applyPolicy,
  type Decision,
  type RetentionPolicy,
  type RetentionSet,
} from "../retention/policy.ts";
import type { Reporter } from "./progress.ts";

export interface PruneOptions {
  repo: Repository;
  policy: RetentionPolicy;
  /** Only these groups (exact names, or patterns with `*`); all when empty. */
  groups: string[];
  dryRun: boolean;
  reporter: Reporter;
  now?: Date;
  signal?: AbortSignal;
}

export interface PruneDecision extends Decision {
  status: string;
  /** Whether the set was removed (false in a dry run). */
  removed: boolean;
  error?: string;
}

export interface PruneResult {
  status: "complete" | "partial" | "failed" | "dry-run";
  decisions: PruneDecision[];
  /** Folders that look like sets but whose manifest cannot be read: never removed. */
  leftAlone: { id: string; problem: string }[];
}

/** What a set backs up: host:port/database for a single set, host:port for a cluster set. */
export function groupOf(set: ListedSet): string {
  const m = set.summary;
  if (!m) return setIdSubject(set.id) ?? set.id;
  const server = `${m.server.host}:${m.server.port}`;
  return m.kind === "single" ? `${server}/${m.databases[0]?.name ?? "?"}` : `${server} cluster`;
}

export async function prune(opts: PruneOptions): Promise<PruneResult> {
  const lock = opts.dryRun
    ? undefined
    : await acquireLock(opts.repo.storage, "repo", "exclusive", "prune");
  try {
    const listed = await opts.repo.listSets();
    const leftAlone = listed.filter((s) => s.status === "invalid").map((s) => ({
      id: s.id,
      problem: s.problem ?? "invalid",
    }));
    const candidates: (RetentionSet & { listed: ListedSet })[] = [];
    for (const s of listed) {
      if (s.status === "invalid") continue;
      const time = setIdTime(s.id);
      if (!time) continue;
      const group = groupOf(s);
      if (!matchesGroups(group, opts.groups)) continue;
      candidates.push({ id: s.id, group, time, status: s.status, listed: s });
    }
    const now = opts.now ?? new Date();
    const byId = new Map(candidates.map((c) => [c.id, c]));
    const decisions: PruneDecision[] = applyPolicy(candidates, opts.policy, now).map((d) => ({
      ...d,
      status: byId.get(d.id)!.status,
      removed: false,
    }));
    if (opts.dryRun) return { status: "dry-run", decisions, leftAlone };

    let failed = 0;
    for (const d of decisions.filter((d) => !d.keep)) {
      if (opts.signal?.aborted) throw opts.signal.reason;
      opts.reporter.event({ type: "step", part: d.id, message: `removing ${d.id}` });
      try {
        await removeSet(opts.repo, d.id);
        d.removed = true;
      } catch (err) {
        failed++;
        d.error = errorMessage(err);
        opts.reporter.event({
          type: "warning",
          message: `cannot remove ${d.id}: ${d.error}`,
        });
      }
    }
    const removed = decisions.filter((d) => d.removed).length;
    const status = failed === 0 ? "complete" : removed > 0 ? "partial" : "failed";
    return { status, decisions, leftAlone };
  } finally {
    await lock?.release().catch(() => {});
  }
}

/** Manifest first (the set stops being complete), then everything else of the set. */
async function removeSet(repo: Repository, id: string): Promise<void> {
  const storage = repo.storage;
  if (await storage.stat(`${id}/${MANIFEST_FILE}`)) await storage.remove(`${id}/${MANIFEST_FILE}`);
  await storage.remove(id);
  if (await storage.stat(id)) {
    throw new DbBackupError("io", `set ${id} is still there after removing it`);
  }
}

function matchesGroups(group: string, patterns: string[]): boolean {
  if (patterns.length === 0) return true;
  return patterns.some((p) => {
    if (!p.includes("*")) return p === group;
    const re = new RegExp(
      `^${p.split("*").map((part) => part.replace(/[.+?^${}()|[\]\\]/g, "\\$&")).join(".*")}$`,
    );
    return re.test(group);
  });
}
