/**
 * Durations for retention: `--keep-within 30d` and the grace period of unfinished sets.
 *
 * Written like restic's: numbers with units, largest unit first, each unit at most once:
 * `y` years, `m` months, `w` weeks, `d` days, `h` hours, e.g. "1y6m", "2w", "30d", "36h".
 * `m` is months, as in restic, never minutes; there is no unit smaller than the hour.
 *
 * A duration is kept as calendar fields, not milliseconds, because months and years have no
 * fixed length. `subtractDuration` steps back on the UTC calendar, so the result does not
 * depend on the machine's time zone: a day is always 24 hours, and a month before March 31
 * is February 28 (29 in a leap year), the day being clamped to the end of the shorter month.
 */

import { UsageError } from "../errors.ts";

/** A parsed duration: whole, non-negative calendar fields, at least one of them above zero. */
export interface Duration {
  readonly years: number;
  readonly months: number;
  readonly weeks: number;
  readonly days: number;
  readonly hours: number;
}

const units = [
  ["y", "years"],
  ["m", "months"],
  ["w", "weeks"],
  ["d", "days"],
  ["h", "hours"],
] as const;

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
/** Longer durations are refused: dates that far back are outside what a Date can hold. */
const MAX_YEARS = 10_000;

const examples = `e.g. "30d", "2w", "1y6m" or "12h" (y years, m months, w weeks, d days, h hours)`;

/**
 * Parses a duration such as "30d", "2w", "1y6m" or "12h". `name` is what the value is for
 * (a flag such as "--keep-within"), used in the error message.
 */
export function parseDuration(text: string, name = "duration"): Duration {
  const s = text.trim();
  const m = s.match(/^(?:(\d+)y)?(?:(\d+)m)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?$/);
  if (!m || s === "") {
    if (/^(\d+[ymwdh])+$/.test(s)) {
      throw new UsageError(
        `invalid ${name} "${text}": write each unit once, largest first, e.g. "1y6m" or "1d12h"`,
      );
    }
    throw new UsageError(`invalid ${name} "${text}": use numbers with units, ${examples}`);
  }
  const [years, months, weeks, days, hours] = m.slice(1).map((v) => Number(v ?? 0));
  const d: Duration = { years, months, weeks, days, hours };
  if (years + months + weeks + days + hours === 0) {
    throw new UsageError(`invalid ${name} "${text}": it must be longer than zero, e.g. "7d"`);
  }
  if (approximateDays(d) > MAX_YEARS * 366) {
    throw new UsageError(`invalid ${name} "${text}": longer than ${MAX_YEARS} years`);
  }
  return Object.freeze(d);
}

/** The short form of a duration, as it would be written: "1y6m", "2w", "36h". */
export function formatDuration(d: Duration): string {
  const text = units.filter(([, field]) => d[field] > 0).map(([unit, field]) =>
    `${d[field]}${unit}`
  )
    .join("");
  return text || "0h";
}

/**
 * The instant `d` before `date`: years and months on the UTC calendar (the day clamped to the
 * end of a shorter month), then weeks and days as 24 hours each, then hours.
 */
export function subtractDuration(date: Date, d: Duration): Date {
  const monthIndex = date.getUTCFullYear() * 12 + date.getUTCMonth() - d.years * 12 - d.months;
  const year = Math.floor(monthIndex / 12);
  const month = monthIndex - year * 12;
  const out = new Date(date.getTime());
  // setUTCFullYear, unlike Date.UTC, does not map the years 0-99 to 1900-1999.
  out.setUTCFullYear(year, month, Math.min(date.getUTCDate(), daysInMonth(year, month)));
  return new Date(out.getTime() - (d.weeks * 7 + d.days) * DAY - d.hours * HOUR);
}

/** Days in a month (0-based) of a year, on the proleptic Gregorian calendar. */
function daysInMonth(year: number, month: number): number {
  const d = new Date(0);
  d.setUTCFullYear(year, month + 1, 0);
  return d.getUTCDate();
}

/** An upper bound of the length in days, for the sanity limit only. */
function approximateDays(d: Duration): number {
  return d.years * 366 + d.months * 31 + d.weeks * 7 + d.days + d.hours / 24;
}
