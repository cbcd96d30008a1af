import { strict as assert } from "node:assert";
import { UsageError } from "../errors.ts";
import { type Duration, formatDuration, parseDuration, subtractDuration } from "./duration.ts";

function dur(fields: Partial<Duration>): Duration {
  return { years: 0, months: 0, weeks: 0, days: 0, hours: 0, ...fields };
}

Deno.test("parseDuration reads restic-like units, m being months", () => {
  const cases: [string, Partial<Duration>][] = [
    ["30d", { days: 30 }],
    ["2w", { weeks: 2 }],
    ["1y6m", { years: 1, months: 6 }],
    ["12h", { hours: 12 }],
    ["90m", { months: 90 }],
    ["1y2m3w4d5h", { years: 1, months: 2, weeks: 3, days: 4, hours: 5 }],
    ["0y7d", { days: 7 }],
    ["007d", { days: 7 }],
    [" 24h\n", { hours: 24 }],
  ];
  for (const [text, want] of cases) {
    assert.deepEqual(parseDuration(text), dur(want), JSON.stringify(text));
  }
});

Deno.test("parseDuration refuses empty, zero and malformed durations, naming the value", () => {
  const cases: [string, RegExp][] = [
    ["", /invalid --keep-within "": use numbers with units, e\.g\. "30d"/],
    ["   ", /invalid --keep-within " {3}": use numbers with units/],
    ["7", /"7": use numbers with units/],
    ["d", /"d": use numbers with units/],
    ["7x", /"7x": use numbers with units/],
    ["7D", /"7D": use numbers with units/],
    ["1.5d", /"1\.5d": use numbers with units/],
    ["-1d", /"-1d": use numbers with units/],
    ["1 d", /"1 d": use numbers with units/],
    ["7days", /"7days": use numbers with units/],
    ["0d", /"0d": it must be longer than zero, e\.g\. "7d"/],
    ["0y0m", /"0y0m": it must be longer than zero/],
    ["12h1d", /"12h1d": write each unit once, largest first, e\.g\. "1y6m"/],
    ["1d1d", /"1d1d": write each unit once/],
    ["20000y", /"20000y": longer than 10000 years/],
    ["99999999999999999999h", /longer than 10000 years/],
  ];
  for (const [text, message] of cases) {
    assert.throws(() => parseDuration(text, "--keep-within"), (err: unknown) => {
      assert.ok(err instanceof UsageError, `${JSON.stringify(text)} throws UsageError`);
      assert.match(err.message, message);
      return true;
    });
  }
});

Deno.test("parseDuration names the value 'duration' when not told what it is for", () => {
  assert.throws(() => parseDuration("soon"), /^UsageError: invalid duration "soon"/);
});

Deno.test("formatDuration writes the short form back", () => {
  for (const text of ["30d", "2w", "1y6m", "12h", "1y2m3w4d5h", "90m"]) {
    assert.equal(formatDuration(parseDuration(text)), text);
  }
  assert.equal(formatDuration(parseDuration("0y7d")), "7d");
  assert.equal(formatDuration(dur({})), "0h");
});

Deno.test("subtractDuration steps back on the UTC calendar, clamping month ends", () => {
  const cases: [string, string, string][] = [
    // from, duration, expected
    ["2026-11-27T02:00:00Z", "3h", "2026-11-26T23:00:00Z"],
    ["2026-11-27T02:00:00Z", "1d12h", "2026-11-25T14:00:00Z"],
    ["2026-11-27T02:00:00Z", "2w", "2026-11-13T02:00:00Z"],
    ["2026-01-15T08:30:00Z", "2m", "2025-11-15T08:30:00Z"],
    ["2026-03-31T12:00:00Z", "1m", "2026-02-28T12:00:00Z"],
    ["2024-03-31T12:00:00Z", "1m", "2024-02-29T12:00:00Z"],
    ["2024-02-29T00:00:00Z", "1y", "2023-02-28T00:00:00Z"],
    ["2026-05-31T00:00:00Z", "1y3m", "2025-02-28T00:00:00Z"],
    ["2026-03-01T00:00:00Z", "1m1d", "2026-01-31T00:00:00Z"],
    // Berlin moves its clocks on 2026-03-29; a day is still 24 hours.
    ["2026-03-30T12:00:00+02:00", "1d", "2026-03-29T11:00:00+01:00"],
    // Years 0-99 are not mistaken for 1900-1999.
    ["2026-06-01T00:00:00Z", "1976y", "0050-06-01T00:00:00Z"],
  ];
  for (const [from, text, want] of cases) {
    assert.equal(
      subtractDuration(new Date(from), parseDuration(text)).toISOString(),
      new Date(want).toISOString(),
      `${from} - ${text}`,
    );
  }
});

Deno.test("subtractDuration does not change its input", () => {
  const from = new Date("2026-03-31T12:00:00Z");
  subtractDuration(from, parseDuration("1y1m"));
  assert.equal(from.toISOString(), "2026-03-31T12:00:00.000Z");
});
