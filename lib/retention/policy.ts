/**
 * Which backup sets `dbbackup prune` keeps: pure, tested with tables of cases.
 *
 * The rules follow restic's `forget`. Sets are grouped by what they back up and each group is
 * pruned on its own. Within a group, only complete sets dated no later than `now` count for
 * the rules, newest first:
 *
 * - keep-last N keeps the N newest.
 * - keep-hourly/daily/weekly/monthly/yearly N walks newest to oldest and keeps the newest set
 *   of each hour/day/ISO week/month/year that has a set, until N of them are kept; an hour or
 *   day without a set does not use up a slot. Buckets are read on the wall clock of
 *   `timeZone`: on a day when clocks go back, the repeated hour is one hourly bucket.
 * - keep-within D keeps the sets taken at most D before the group's newest complete set (not
 *   before `now`), so a group whose backups stopped is not emptied by the passing of time.
 *
 * A set is kept when any rule keeps it, and its reasons list every rule that does. Besides:
 *
 * - The newest complete set of a group is always kept.
 * - A partial, failed or incomplete set never counts for a rule; it is kept while it is not
 *   older than the grace period (before `now`: it may be a backup still running), removed after.
 * - A set dated after `now` (clock skew), or whose time is not a valid date, is kept and
 *   counts for no rule.
 * - A policy without any keep rule is refused, so a missing flag never deletes everything.
 *
 * Decisions come out grouped by group name (in code-unit order), newest set first in each
 * group, ties broken by id: the same sets in any order give the same decisions.
 */

import { UsageError } from "../errors.ts";
import { type Duration, formatDuration, subtractDuration } from "./duration.ts";

export type RetentionStatus = "complete" | "partial" | "failed" | "incomplete";

/** What the policy needs to know about one backup set. */
export interface RetentionSet {
  id: string;
  /** What the set backs up; each group is pruned on its own. */
  group: string;
  time: Date;
  status: RetentionStatus;
}

export interface RetentionPolicy {
  keepLast?: number;
  keepHourly?: number;
  keepDaily?: number;
  keepWeekly?: number;
  keepMonthly?: number;
  keepYearly?: number;
  /** Keep the sets at most this long before the group's newest complete set. */
  keepWithin?: Duration;
  /** How long a partial, failed or incomplete set is kept (it may still be running). */
  grace: Duration;
  /** IANA time zone the calendar buckets are read in; the system's when not given. */
  timeZone?: string;
}

/** What happens to one set, and why. */
export interface Decision {
  id: string;
  group: string;
  keep: boolean;
  /** Every rule that keeps the set; when it is removed, the one reason why. */
  reasons: string[];
}

export type BucketKind = "hourly" | "daily" | "weekly" | "monthly" | "yearly";

type CountField =
  | "keepLast"
  | "keepHourly"
  | "keepDaily"
  | "keepWeekly"
  | "keepMonthly"
  | "keepYearly";

const countFlags: Record<CountField, string> = {
  keepLast: "--keep-last",
  keepHourly: "--keep-hourly",
  keepDaily: "--keep-daily",
  keepWeekly: "--keep-weekly",
  keepMonthly: "--keep-monthly",
  keepYearly: "--keep-yearly",
};

const bucketRules: readonly { kind: BucketKind; field: CountField }[] = [
  { kind: "hourly", field: "keepHourly" },
  { kind: "daily", field: "keepDaily" },
  { kind: "weekly", field: "keepWeekly" },
  { kind: "monthly", field: "keepMonthly" },
  { kind: "yearly", field: "keepYearly" },
];

/** Whether the policy has at least one rule that keeps sets. */
export function hasAnyRule(policy: RetentionPolicy): boolean {
  const counts = (Object.keys(countFlags) as CountField[]).some((f) => (policy[f] ?? 0) > 0);
  return counts || policy.keepWithin !== undefined;
}

/** Decides, for every set, whether prune keeps or removes it; see the module comment. */
export function applyPolicy(
  sets: readonly RetentionSet[],
  policy: RetentionPolicy,
  now: Date,
): Decision[] {
  checkPolicy(policy);
  if (Number.isNaN(now.getTime())) throw new RangeError("applyPolicy: `now` is an invalid date");
  const timeZone = policy.timeZone ?? systemTimeZone();
  const format = wallClock(timeZone);
  const groups = new Map<string, RetentionSet[]>();
  for (const s of sets) {
    const list = groups.get(s.group);
    if (list) list.push(s);
    else groups.set(s.group, [s]);
  }
  return [...groups.keys()].sort(compareText).flatMap((group) =>
    decideGroup(groups.get(group)!, policy, now, format)
  );
}

/** The calendar bucket of an instant in a time zone, e.g. "2026-W47" for weekly. */
export function bucketKey(kind: BucketKind, time: Date, timeZone: string): string {
  return keyOf(kind, wallClock(timeZone)(time));
}

/** The IANA name of the system's time zone. */
export function systemTimeZone(): string {
  return new Intl.DateTimeFormat().resolvedOptions().timeZone;
}

function checkPolicy(policy: RetentionPolicy): void {
  for (const [field, flag] of Object.entries(countFlags) as [CountField, string][]) {
    const n = policy[field];
    if (n !== undefined && !(Number.isSafeInteger(n) && n >= 0)) {
      throw new UsageError(`${flag} must be a whole number, 0 or more; got ${n}`);
    }
  }
  if (!hasAnyRule(policy)) {
    throw new UsageError(
      "refusing to prune without a keep rule: give at least one of --keep-last, " +
        "--keep-hourly, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly or " +
        "--keep-within, e.g. --keep-daily 7",
    );
  }
}

function decideGroup(
  sets: RetentionSet[],
  policy: RetentionPolicy,
  now: Date,
  format: (d: Date) => WallClock,
): Decision[] {
  const sorted = [...sets].sort(newestFirst);
  const keepReasons = new Map<RetentionSet, string[]>(sorted.map((s) => [s, []]));
  const removeReason = new Map<RetentionSet, string>();
  const grace = formatDuration(policy.grace);
  const graceStart = subtractDuration(now, policy.grace).getTime();
  const counted: RetentionSet[] = [];
  for (const s of sorted) {
    const t = s.time.getTime();
    if (Number.isNaN(t)) {
      keepReasons.get(s)!.push("time unknown");
    } else if (t > now.getTime()) {
      keepReasons.get(s)!.push("in the future");
    } else if (s.status !== "complete") {
      if (t >= graceStart) keepReasons.get(s)!.push(`${s.status}, younger than grace ${grace}`);
      else removeReason.set(s, `${s.status}, older than grace ${grace}`);
    } else {
      counted.push(s);
    }
  }

  const keep = (s: RetentionSet, reason: string) => keepReasons.get(s)!.push(reason);
  if (policy.keepLast) {
    for (const s of counted.slice(0, policy.keepLast)) keep(s, `last ${policy.keepLast}`);
  }
  for (const { kind, field } of bucketRules) {
    const wanted = policy[field] ?? 0;
    let last: string | undefined;
    let kept = 0;
    for (const s of counted) {
      if (kept >= wanted) break;
      const key = keyOf(kind, format(s.time));
      if (key === last) continue;
      last = key;
      kept++;
      keep(s, `${kind} ${key}`);
    }
  }
  if (policy.keepWithin && counted.length > 0) {
    const start = subtractDuration(counted[0].time, policy.keepWithin).getTime();
    const reason = `within ${formatDuration(policy.keepWithin)}`;
    for (const s of counted) if (s.time.getTime() >= start) keep(s, reason);
  }
  if (counted.length > 0) keep(counted[0], "newest complete set of its group");

  return sorted.map((s) => {
    const reasons = keepReasons.get(s)!;
    const removed = reasons.length === 0;
    return {
      id: s.id,
      group: s.group,
      keep: !removed,
      reasons: removed ? [removeReason.get(s) ?? "not kept by any rule"] : reasons,
    };
  });
}

/** Newest first; ties (and unknown times, last) ordered by id, descending like the times. */
function newestFirst(a: RetentionSet, b: RetentionSet): number {
  const ta = a.time.getTime();
  const tb = b.time.getTime();
  if (ta !== tb && !(Number.isNaN(ta) && Number.isNaN(tb))) {
    if (Number.isNaN(ta)) return 1;
    if (Number.isNaN(tb)) return -1;
    return tb - ta;
  }
  return compareText(b.id, a.id);
}

function compareText(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** The date and hour on the wall clock of a time zone. */
interface WallClock {
  year: number;
  month: number;
  day: number;
  hour: number;
}

const wallClocks = new Map<string, (d: Date) => WallClock>();

/** A reader of wall-clock time in `timeZone`; UsageError for a name Intl does not know. */
function wallClock(timeZone: string): (d: Date) => WallClock {
  const cached = wallClocks.get(timeZone);
  if (cached) return cached;
  let fmt: Intl.DateTimeFormat;
  try {
    fmt = new Intl.DateTimeFormat("en-US", {
      timeZone,
      calendar: "gregory",
      numberingSystem: "latn",
      year: "numeric",
      month: "numeric",
      day: "numeric",
      hour: "numeric",
      hourCycle: "h23",
    });
  } catch {
    throw new UsageError(
      `unknown time zone "${timeZone}": use an IANA name such as "Europe/Berlin" or "UTC"`,
    );
  }
  const read = (d: Date): WallClock => {
    const parts: Record<string, string> = {};
    for (const p of fmt.formatToParts(d)) parts[p.type] = p.value;
    return {
      year: Number(parts.year),
      month: Number(parts.month),
      day: Number(parts.day),
      hour: Number(parts.hour),
    };
  };
  wallClocks.set(timeZone, read);
  return read;
}

function keyOf(kind: BucketKind, w: WallClock): string {
  const ymd = `${w.year}-${pad(w.month)}-${pad(w.day)}`;
  switch (kind) {
    case "hourly":
      return `${ymd}T${pad(w.hour)}`;
    case "daily":
      return ymd;
    case "weekly": {
      const { year, week } = isoWeek(w.year, w.month, w.day);
      return `${year}-W${pad(week)}`;
    }
    case "monthly":
      return `${w.year}-${pad(w.month)}`;
    case "yearly":
      return `${w.year}`;
  }
}

/** ISO 8601 week-numbering year and week of a calendar date (month 1-12). */
export function isoWeek(year: number, month: number, day: number): { year: number; week: number } {
  const date = new Date(0);
  date.setUTCFullYear(year, month - 1, day);
  const weekday = (date.getUTCDay() + 6) % 7; // Monday 0 ... Sunday 6
  // The week belongs to the year of its Thursday.
  const thursday = new Date(date.getTime() + (3 - weekday) * 86_400_000);
  const jan1 = new Date(0);
  jan1.setUTCFullYear(thursday.getUTCFullYear(), 0, 1);
  const dayOfYear = Math.round((thursday.getTime() - jan1.getTime()) / 86_400_000);
  return { year: thursday.getUTCFullYear(), week: Math.floor(dayOfYear / 7) + 1 };
}

function pad(n: number): string {
  return String(n).padStart(2, "0");
}
