import { Command } from "@commander-js/extra-typings";
import { ExitCode, UsageError } from "../errors.ts";
import { prune, type PruneResult } from "../ops/prune.ts";
import type { PrunePolicySettings } from "../config/config_file.ts";
import { parseDuration } from "../retention/duration.ts";
import { hasAnyRule, type RetentionPolicy } from "../retention/policy.ts";
import { type CliEnv, type Context, type GlobalOptions, makeContext } from "./context.ts";
import { table } from "./format.ts";
import { writeOut } from "./reporters.ts";

export const DEFAULT_GRACE = "24h";

/** The keep flags, shared by `prune` and `backup --prune`. */
export interface KeepFlags {
  keepLast?: string;
  keepHourly?: string;
  keepDaily?: string;
  keepWeekly?: string;
  keepMonthly?: string;
  keepYearly?: string;
  keepWithin?: string;
  grace?: string;
  timeZone?: string;
}

const countFlags = [
  ["keepLast", "--keep-last"],
  ["keepHourly", "--keep-hourly"],
  ["keepDaily", "--keep-daily"],
  ["keepWeekly", "--keep-weekly"],
  ["keepMonthly", "--keep-monthly"],
  ["keepYearly", "--keep-yearly"],
] as const;

/**
 * The policy from the flags when any keep flag is given, else from the config file's "prune"
 * object; refuses when neither has a keep rule.
 */
export function resolvePolicy(flags: KeepFlags, config?: PrunePolicySettings): RetentionPolicy {
  const fromFlags = countFlags.some(([k]) => flags[k] !== undefined) ||
    flags.keepWithin !== undefined;
  const src: Record<string, string | number | undefined> = fromFlags ? { ...flags } : {
    ...config,
    grace: flags.grace ?? config?.grace,
    timeZone: flags.timeZone ?? config?.timeZone,
  };
  const policy: RetentionPolicy = {
    grace: parseDuration(String(src.grace ?? DEFAULT_GRACE), "--grace"),
    timeZone: src.timeZone === undefined ? undefined : String(src.timeZone),
  };
  for (const [key, flag] of countFlags) {
    const v = src[key];
    if (v === undefined) continue;
    const n = Number(v);
    if (!/^\d+$/.test(String(v).trim())) {
      throw new UsageError(`invalid ${flag} "${v}": expected a whole number, 0 or more`);
    }
    policy[key] = n;
  }
  if (src.keepWithin !== undefined) {
    policy.keepWithin = parseDuration(String(src.keepWithin), "--keep-within");
  }
  if (!hasAnyRule(policy)) {
    throw new UsageError(
      'refusing to prune without a keep rule: give --keep-last, --keep-daily, ... or --keep-within, or a "prune" policy in the config file',
    );
  }
  return policy;
}

/** Adds the keep flags to a command. */
export function withKeepFlags<C extends Command<unknown[], Record<string, unknown>>>(cmd: C): C {
  cmd.option("--keep-last <n>", "keep the n newest complete sets of each group")
    .option("--keep-hourly <n>", "keep the newest set of each of the last n hours with a set")
    .option("--keep-daily <n>", "keep the newest set of each of the last n days with a set")
    .option("--keep-weekly <n>", "keep the newest set of each of the last n ISO weeks")
    .option("--keep-monthly <n>", "keep the newest set of each of the last n months")
    .option("--keep-yearly <n>", "keep the newest set of each of the last n years")
    .option(
      "--keep-within <duration>",
      'keep every set taken within this time before the group\'s newest one ("30d", "2w", "1y6m")',
    )
    .option(
      "--grace <duration>",
      `keep unfinished (incomplete, partial, failed) sets this long (default ${DEFAULT_GRACE})`,
    )
    .option("--time-zone <name>", "IANA time zone of the day/week/month buckets (default: system)");
  return cmd;
}

export function pruneCommand(cli: CliEnv, setExit: (code: number) => void) {
  const cmd = new Command("prune")
    .description(
      "remove backup sets that the retention policy does not keep (each group on its own)",
    )
    .option(
      "--group <name...>",
      'only these groups (the GROUP column of "list"; * matches any text)',
    );
  withKeepFlags(cmd as unknown as Command<unknown[], Record<string, unknown>>);
  cmd.action(async (opts, sub) => {
    const ctx = await makeContext(sub.optsWithGlobals() as GlobalOptions, {}, cli);
    const policy = resolvePolicy(opts as KeepFlags, ctx.settings.prunePolicy);
    const result = await prune({
      repo: ctx.repo,
      policy,
      groups: opts.group ?? [],
      dryRun: ctx.dryRun,
      reporter: ctx.reporter,
      signal: ctx.signal,
    });
    printPrune(result, ctx);
    setExit(pruneExit(result));
  });
  return cmd;
}

export function pruneExit(r: PruneResult): number {
  return r.status === "partial"
    ? ExitCode.partial
    : r.status === "failed"
    ? ExitCode.failure
    : ExitCode.ok;
}

export function printPrune(r: PruneResult, ctx: Context): void {
  if (ctx.json) {
    writeOut(JSON.stringify({ type: "summary", operation: "prune", ...r }) + "\n");
    return;
  }
  const rows = [["ID", "GROUP", "STATUS", "ACTION", "REASONS"]];
  for (const d of r.decisions) {
    const action = d.keep
      ? "keep"
      : d.removed
      ? "removed"
      : d.error
      ? "REMOVE FAILED"
      : r.status === "dry-run"
      ? "would remove"
      : "remove";
    rows.push([d.id, d.group, d.status, action, d.error ?? d.reasons.join(", ")]);
  }
  const removed = r.decisions.filter((d) => d.removed).length;
  const toRemove = r.decisions.filter((d) => !d.keep).length;
  const lines: string[] = [];
  if (!ctx.quiet || r.status !== "complete") {
    if (r.decisions.length) lines.push(table(rows));
    lines.push(
      r.status === "dry-run"
        ? `dry run: ${toRemove} of ${r.decisions.length} set(s) would be removed; nothing was changed`
        : `prune: removed ${removed} of ${r.decisions.length} set(s)${
          toRemove > removed ? `, ${toRemove - removed} could not be removed` : ""
        }`,
    );
  }
  for (const s of r.leftAlone) lines.push(`left alone ${s.id}: ${s.problem}`);
  if (lines.length) writeOut(lines.join("\n") + "\n");
}
