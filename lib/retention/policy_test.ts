import { strict as assert } from "node:assert";
import { UsageError } from "../errors.ts";
import { parseDuration } from "./duration.ts";
import {
  applyPolicy,
  bucketKey,
  type Decision,
  hasAnyRule,
  isoWeek,
  type RetentionPolicy,
  type RetentionSet,
  type RetentionStatus,
  systemTimeZone,
} from "./policy.ts";

/** A policy as the tests write it: durations as text, UTC and a 24h grace unless told. */
type PolicySpec = Omit<RetentionPolicy, "keepWithin" | "grace"> & {
  keepWithin?: string;
  grace?: string;
};

function policy(spec: PolicySpec): RetentionPolicy {
  const { keepWithin, grace, ...rest } = spec;
  return {
    timeZone: "UTC",
    ...rest,
    keepWithin: keepWithin === undefined ? undefined : parseDuration(keepWithin),
    grace: parseDuration(grace ?? "24h"),
  };
}

/** A set whose id is its time, e.g. "2026-11-25T13:00Z". */
function set(time: string, status: RetentionStatus = "complete", group = "shop"): RetentionSet {
  return { id: time, group, time: new Date(time), status };
}

function keptIds(sets: RetentionSet[], spec: PolicySpec, now: string): string[] {
  return applyPolicy(sets, policy(spec), new Date(now)).filter((d) => d.keep).map((d) => d.id);
}

interface Case {
  name: string;
  /** Times of complete sets of one group, newest first (also their ids). */
  times: string[];
  policy: PolicySpec;
  now: string;
  kept: string[];
}

Deno.test("applyPolicy keeps what each rule asks for in one group", async (t) => {
  const cases: Case[] = [
    {
      name: "keep-last 3 keeps the three newest",
      times: [
        "2026-11-30T03:00Z",
        "2026-11-29T03:00Z",
        "2026-11-28T03:00Z",
        "2026-11-27T03:00Z",
        "2026-11-26T03:00Z",
      ],
      policy: { keepLast: 3 },
      now: "2026-12-01T00:00Z",
      kept: ["2026-11-30T03:00Z", "2026-11-29T03:00Z", "2026-11-28T03:00Z"],
    },
    {
      name: "keep-last larger than the group keeps every set",
      times: ["2026-11-30T03:00Z", "2026-11-29T03:00Z"],
      policy: { keepLast: 10 },
      now: "2026-12-01T00:00Z",
      kept: ["2026-11-30T03:00Z", "2026-11-29T03:00Z"],
    },
    {
      name: "keep-daily keeps the newest set of a day with several",
      times: [
        "2026-11-25T23:00Z",
        "2026-11-25T13:00Z",
        "2026-11-25T01:00Z",
        "2026-11-24T09:00Z",
        "2026-11-24T08:00Z",
        "2026-11-23T12:00Z",
      ],
      policy: { keepDaily: 2 },
      now: "2026-12-01T00:00Z",
      kept: ["2026-11-25T23:00Z", "2026-11-24T09:00Z"],
    },
    {
      name: "keep-daily: days without a set do not use up a slot",
      times: [
        "2026-11-25T03:00Z",
        "2026-11-20T03:00Z",
        "2026-11-10T03:00Z",
        "2026-11-01T03:00Z",
        "2026-10-20T03:00Z",
      ],
      policy: { keepDaily: 3 },
      now: "2026-12-01T00:00Z",
      kept: ["2026-11-25T03:00Z", "2026-11-20T03:00Z", "2026-11-10T03:00Z"],
    },
    {
      name: "keep-hourly keeps the newest set of each hour",
      times: [
        "2026-11-25T14:59Z",
        "2026-11-25T14:00Z",
        "2026-11-25T13:30Z",
        "2026-11-25T11:05Z",
        "2026-11-25T11:00Z",
      ],
      policy: { keepHourly: 3 },
      now: "2026-11-25T15:00Z",
      kept: ["2026-11-25T14:59Z", "2026-11-25T13:30Z", "2026-11-25T11:05Z"],
    },
    {
      name: "keep-weekly: ISO week 2026-W53 runs from Monday 2026-12-28 to Sunday 2027-01-03",
      times: [
        "2027-01-04T03:00Z", // Monday, 2027-W01
        "2027-01-03T03:00Z", // Sunday, 2026-W53
        "2027-01-01T03:00Z",
        "2026-12-31T03:00Z",
        "2026-12-28T03:00Z",
        "2026-12-27T03:00Z", // Sunday, 2026-W52
        "2026-12-20T03:00Z", // Sunday, 2026-W51
      ],
      policy: { keepWeekly: 3 },
      now: "2027-01-10T00:00Z",
      kept: ["2027-01-04T03:00Z", "2027-01-03T03:00Z", "2026-12-27T03:00Z"],
    },
    {
      name: "keep-weekly: 2020-12-31 and 2021-01-03 are both in 2020-W53",
      times: [
        "2021-01-04T03:00Z", // 2021-W01
        "2021-01-03T03:00Z", // 2020-W53
        "2020-12-31T03:00Z", // 2020-W53
        "2020-12-27T03:00Z", // 2020-W52
      ],
      policy: { keepWeekly: 3 },
      now: "2021-02-01T00:00Z",
      kept: ["2021-01-04T03:00Z", "2021-01-03T03:00Z", "2020-12-27T03:00Z"],
    },
    {
      name: "keep-monthly skips a month without sets",
      times: [
        "2026-11-30T03:00Z",
        "2026-11-01T03:00Z",
        "2026-10-15T03:00Z",
        "2026-08-01T03:00Z",
        "2026-07-31T03:00Z",
      ],
      policy: { keepMonthly: 3 },
      now: "2026-12-01T00:00Z",
      kept: ["2026-11-30T03:00Z", "2026-10-15T03:00Z", "2026-08-01T03:00Z"],
    },
    {
      name: "keep-yearly keeps the newest set of each year, the last one of 2025 included",
      times: [
        "2026-06-01T03:00Z",
        "2026-01-01T00:30Z",
        "2025-12-31T23:00Z",
        "2025-01-01T03:00Z",
        "2023-05-01T03:00Z",
      ],
      policy: { keepYearly: 3 },
      now: "2026-12-01T00:00Z",
      kept: ["2026-06-01T03:00Z", "2025-12-31T23:00Z", "2023-05-01T03:00Z"],
    },
    {
      name: "keep-within counts back from the newest set, not from now; the bound is kept",
      times: [
        "2026-11-28T12:00Z",
        "2026-11-22T12:00Z",
        "2026-11-21T12:00Z", // exactly 7 days before the newest
        "2026-11-21T11:59Z",
      ],
      policy: { keepWithin: "7d" },
      now: "2026-12-10T00:00Z",
      kept: ["2026-11-28T12:00Z", "2026-11-22T12:00Z", "2026-11-21T12:00Z"],
    },
    {
      name: "keep-within 1m from March 31 reaches back to February 28",
      times: ["2026-03-31T12:00Z", "2026-02-28T12:00Z", "2026-02-28T11:00Z"],
      policy: { keepWithin: "1m" },
      now: "2026-04-01T00:00Z",
      kept: ["2026-03-31T12:00Z", "2026-02-28T12:00Z"],
    },
    {
      name: "rules add up: keep-last 1 and keep-monthly 2",
      times: ["2026-11-30T03:00Z", "2026-11-29T03:00Z", "2026-10-31T03:00Z", "2026-10-30T03:00Z"],
      policy: { keepLast: 1, keepMonthly: 2 },
      now: "2026-12-01T00:00Z",
      kept: ["2026-11-30T03:00Z", "2026-10-31T03:00Z"],
    },
  ];
  for (const c of cases) {
    await t.step(c.name, () => {
      assert.deepEqual(keptIds(c.times.map((time) => set(time)), c.policy, c.now), c.kept);
    });
  }
});

Deno.test("applyPolicy reads calendar buckets in the policy's time zone", async (t) => {
  const cases: Case[] = [
    // 02:00Z on November 27 is 21:00 on November 26 in New York and 11:00 on the 27th in Tokyo.
    ...([
      ["UTC", ["2026-11-27T10:00Z", "2026-11-26T20:00Z"]],
      ["America/New_York", ["2026-11-27T10:00Z", "2026-11-27T02:00Z"]],
      ["Asia/Tokyo", ["2026-11-27T10:00Z"]],
    ] as const).map(([timeZone, kept]): Case => ({
      name: `keep-daily in ${timeZone}`,
      times: ["2026-11-27T10:00Z", "2026-11-27T02:00Z", "2026-11-26T20:00Z"],
      policy: { keepDaily: 3, timeZone },
      now: "2026-12-01T00:00Z",
      kept: [...kept],
    })),
    // Sunday 20:00Z is already Monday (the next ISO week) in Tokyo.
    ...([
      ["UTC", ["2026-11-29T20:00Z"]],
      ["America/New_York", ["2026-11-29T20:00Z"]],
      ["Asia/Tokyo", ["2026-11-29T20:00Z", "2026-11-29T10:00Z"]],
    ] as const).map(([timeZone, kept]): Case => ({
      name: `keep-weekly in ${timeZone}`,
      times: ["2026-11-29T20:00Z", "2026-11-29T10:00Z"],
      policy: { keepWeekly: 2, timeZone },
      now: "2026-12-01T00:00Z",
      kept: [...kept],
    })),
    // Berlin moves to summer time on 2026-03-29: that day lasts 23 hours, 23:00Z to 22:00Z.
    ...([
      ["UTC", ["2026-03-29T22:30Z", "2026-03-28T23:30Z"]],
      ["Europe/Berlin", ["2026-03-29T22:30Z", "2026-03-29T21:30Z"]],
    ] as const).map(([timeZone, kept]): Case => ({
      name: `keep-daily on the day Berlin springs forward, in ${timeZone}`,
      times: ["2026-03-29T22:30Z", "2026-03-29T21:30Z", "2026-03-28T23:30Z"],
      policy: { keepDaily: 3, timeZone },
      now: "2026-04-01T00:00Z",
      kept: [...kept],
    })),
    // Berlin goes back to winter time on 2026-10-25: 02:00-03:00 happens twice (00:00Z-02:00Z)
    // and is one hourly bucket on the wall clock.
    ...([
      ["UTC", ["2026-10-25T02:00Z", "2026-10-25T01:30Z", "2026-10-25T00:30Z"]],
      ["Europe/Berlin", ["2026-10-25T02:00Z", "2026-10-25T01:30Z"]],
    ] as const).map(([timeZone, kept]): Case => ({
      name: `keep-hourly on the day Berlin falls back, in ${timeZone}`,
      times: ["2026-10-25T02:00Z", "2026-10-25T01:30Z", "2026-10-25T00:30Z", "2026-10-25T00:10Z"],
      policy: { keepHourly: 3, timeZone },
      now: "2026-10-26T00:00Z",
      kept: [...kept],
    })),
  ];
  for (const c of cases) {
    await t.step(c.name, () => {
      assert.deepEqual(keptIds(c.times.map((time) => set(time)), c.policy, c.now), c.kept);
    });
  }
});

Deno.test("bucketKey names hours, days, ISO weeks, months and years on the local wall clock", () => {
  const at = new Date("2026-11-27T02:00Z");
  const cases: [Parameters<typeof bucketKey>[0], string, string][] = [
    ["hourly", "UTC", "2026-11-27T02"],
    ["hourly", "America/New_York", "2026-11-26T21"],
    ["daily", "America/New_York", "2026-11-26"],
    ["daily", "Asia/Tokyo", "2026-11-27"],
    ["weekly", "UTC", "2026-W48"],
    ["monthly", "UTC", "2026-11"],
    ["yearly", "UTC", "2026"],
  ];
  for (const [kind, timeZone, want] of cases) {
    assert.equal(bucketKey(kind, at, timeZone), want, `${kind} in ${timeZone}`);
  }
  assert.equal(bucketKey("yearly", new Date("2026-12-31T23:30Z"), "Asia/Tokyo"), "2027");
  assert.equal(bucketKey("hourly", new Date("2026-11-27T00:00Z"), "UTC"), "2026-11-27T00");
});

Deno.test("isoWeek follows ISO 8601 at year boundaries", () => {
  const cases: [string, string][] = [
    ["2026-01-01", "2026-W01"], // Thursday
    ["2026-12-31", "2026-W53"],
    ["2027-01-01", "2026-W53"],
    ["2027-01-03", "2026-W53"],
    ["2027-01-04", "2027-W01"],
    ["2020-12-31", "2020-W53"],
    ["2021-01-03", "2020-W53"],
    ["2025-12-29", "2026-W01"], // Monday of the week holding 2026-01-01
    ["2024-12-30", "2025-W01"],
    ["2023-01-01", "2022-W52"],
    ["2026-11-27", "2026-W48"],
  ];
  for (const [date, want] of cases) {
    const [y, m, d] = date.split("-").map(Number);
    const { year, week } = isoWeek(y, m, d);
    assert.equal(`${year}-W${String(week).padStart(2, "0")}`, want, date);
  }
});

Deno.test("applyPolicy lists every rule that keeps a set, in a fixed order", () => {
  const sets = [
    "2026-11-30T03:00Z", // Monday, 2026-W49
    "2026-11-30T01:00Z",
    "2026-11-29T03:00Z", // Sunday, 2026-W48
    "2026-11-28T03:00Z",
    "2026-11-22T03:00Z",
    "2026-10-31T03:00Z",
  ].map((time) => set(time));
  const got = applyPolicy(
    sets,
    policy({ keepLast: 2, keepDaily: 3, keepWeekly: 2, keepMonthly: 2, keepWithin: "1d" }),
    new Date("2026-12-01T00:00Z"),
  );
  const want: [string, boolean, string[]][] = [
    ["2026-11-30T03:00Z", true, [
      "last 2",
      "daily 2026-11-30",
      "weekly 2026-W49",
      "monthly 2026-11",
      "within 1d",
      "newest complete set of its group",
    ]],
    ["2026-11-30T01:00Z", true, ["last 2", "within 1d"]],
    ["2026-11-29T03:00Z", true, ["daily 2026-11-29", "weekly 2026-W48", "within 1d"]],
    ["2026-11-28T03:00Z", true, ["daily 2026-11-28"]],
    ["2026-11-22T03:00Z", false, ["not kept by any rule"]],
    ["2026-10-31T03:00Z", true, ["monthly 2026-10"]],
  ];
  assert.deepEqual(
    got,
    want.map(([id, keep, reasons]): Decision => ({ id, group: "shop", keep, reasons })),
  );
});

Deno.test("applyPolicy keeps the newest complete set of a group that stopped backing up", () => {
  const sets = ["2026-11-27T12:00Z", "2026-11-27T11:30Z", "2026-11-27T10:00Z"].map((time) =>
    set(time)
  );
  const got = applyPolicy(sets, policy({ keepWithin: "1h" }), new Date("2026-11-30T12:00Z"));
  assert.deepEqual(got.map((d) => [d.id, d.keep, d.reasons]), [
    ["2026-11-27T12:00Z", true, ["within 1h", "newest complete set of its group"]],
    ["2026-11-27T11:30Z", true, ["within 1h"]],
    ["2026-11-27T10:00Z", false, ["not kept by any rule"]],
  ]);
});

Deno.test("applyPolicy prunes each group on its own; groups by name, newest first", () => {
  const sets = [
    set("2026-11-28T03:00Z", "complete", "shop"),
    set("2026-11-20T03:00Z", "complete", "crm"),
    set("2026-11-30T03:00Z", "complete", "shop"),
    set("2026-11-29T03:00Z", "complete", "shop"),
    set("2026-11-19T03:00Z", "complete", "crm"),
  ];
  const got = applyPolicy(sets, policy({ keepLast: 2 }), new Date("2026-12-01T00:00Z"));
  assert.deepEqual(got.map((d) => [d.group, d.id, d.keep]), [
    ["crm", "2026-11-20T03:00Z", true],
    ["crm", "2026-11-19T03:00Z", true],
    ["shop", "2026-11-30T03:00Z", true],
    ["shop", "2026-11-29T03:00Z", true],
    ["shop", "2026-11-28T03:00Z", false],
  ]);
});

Deno.test("applyPolicy keeps unfinished sets during the grace period only, and never counts them", async (t) => {
  const now = "2026-12-01T12:00Z";
  const cases: {
    name: string;
    sets: RetentionSet[];
    policy: PolicySpec;
    want: [string, boolean, string[]][];
  }[] = [
    {
      name: "a running backup newer than the newest complete set is kept",
      sets: [
        set("2026-12-01T10:00Z", "incomplete"),
        set("2026-11-30T12:00Z"),
        set("2026-11-29T12:00Z"),
      ],
      policy: { keepLast: 1 },
      want: [
        ["2026-12-01T10:00Z", true, ["incomplete, younger than grace 24h"]],
        ["2026-11-30T12:00Z", true, ["last 1", "newest complete set of its group"]],
        ["2026-11-29T12:00Z", false, ["not kept by any rule"]],
      ],
    },
    {
      name: "partial and failed sets older than the grace period are removed",
      sets: [
        set("2026-12-01T11:00Z", "partial"),
        set("2026-11-30T12:00Z", "failed"), // exactly 24h old: still kept
        set("2026-11-30T11:59Z", "failed"),
        set("2026-11-30T03:00Z"),
        set("2026-11-20T03:00Z", "partial"),
      ],
      policy: { keepDaily: 7 },
      want: [
        ["2026-12-01T11:00Z", true, ["partial, younger than grace 24h"]],
        ["2026-11-30T12:00Z", true, ["failed, younger than grace 24h"]],
        ["2026-11-30T11:59Z", false, ["failed, older than grace 24h"]],
        ["2026-11-30T03:00Z", true, ["daily 2026-11-30", "newest complete set of its group"]],
        ["2026-11-20T03:00Z", false, ["partial, older than grace 24h"]],
      ],
    },
    {
      name: "a longer grace period keeps old unfinished sets",
      sets: [set("2026-11-30T03:00Z"), set("2026-11-20T03:00Z", "partial")],
      policy: { keepLast: 1, grace: "2w" },
      want: [
        ["2026-11-30T03:00Z", true, ["last 1", "newest complete set of its group"]],
        ["2026-11-20T03:00Z", true, ["partial, younger than grace 2w"]],
      ],
    },
    {
      name: "a group of old failed sets only is emptied",
      sets: [set("2026-11-28T03:00Z", "failed"), set("2026-11-27T03:00Z", "failed")],
      policy: { keepLast: 5 },
      want: [
        ["2026-11-28T03:00Z", false, ["failed, older than grace 24h"]],
        ["2026-11-27T03:00Z", false, ["failed, older than grace 24h"]],
      ],
    },
  ];
  for (const c of cases) {
    await t.step(c.name, () => {
      const got = applyPolicy(c.sets, policy(c.policy), new Date(now));
      assert.deepEqual(got.map((d) => [d.id, d.keep, d.reasons]), c.want);
    });
  }
});

Deno.test("applyPolicy keeps sets dated in the future or undated, and does not count them", () => {
  const sets = [
    set("2026-12-01T13:00Z"),
    set("2026-12-02T00:00Z", "partial"),
    set("2026-12-01T03:00Z"),
    set("2026-11-30T03:00Z"),
    { id: "undated", group: "shop", time: new Date("not a date"), status: "complete" as const },
  ];
  const got = applyPolicy(sets, policy({ keepLast: 1 }), new Date("2026-12-01T12:00Z"));
  assert.deepEqual(got.map((d) => [d.id, d.keep, d.reasons]), [
    ["2026-12-02T00:00Z", true, ["in the future"]],
    ["2026-12-01T13:00Z", true, ["in the future"]],
    ["2026-12-01T03:00Z", true, ["last 1", "newest complete set of its group"]],
    ["2026-11-30T03:00Z", false, ["not kept by any rule"]],
    ["undated", true, ["time unknown"]],
  ]);
});

Deno.test("applyPolicy gives the same decisions for any input order and leaves the input alone", () => {
  const times = [
    "2026-11-30T03:00Z",
    "2026-11-29T03:00Z",
    "2026-11-29T01:00Z",
    "2026-11-01T03:00Z",
  ];
  const sets = times.map((time) => set(time));
  const shuffled = [sets[2], sets[0], sets[3], sets[1]];
  const p = policy({ keepDaily: 2, keepMonthly: 2 });
  const now = new Date("2026-12-01T00:00Z");
  assert.deepEqual(applyPolicy(shuffled, p, now), applyPolicy(sets, p, now));
  assert.deepEqual(shuffled.map((s) => s.id), [times[2], times[0], times[3], times[1]]);
  assert.deepEqual(applyPolicy([], p, now), []);
});

Deno.test("applyPolicy uses the system time zone when the policy names none", () => {
  const sets = ["2026-11-27T10:00Z", "2026-11-27T02:00Z", "2026-11-26T20:00Z"].map((time) =>
    set(time)
  );
  const now = new Date("2026-12-01T00:00Z");
  const { timeZone: _, ...withoutZone } = policy({ keepDaily: 3 });
  assert.deepEqual(
    applyPolicy(sets, withoutZone, now),
    applyPolicy(sets, { ...withoutZone, timeZone: systemTimeZone() }, now),
  );
});

Deno.test("applyPolicy refuses a policy that keeps nothing or is malformed", () => {
  const sets = [set("2026-11-30T03:00Z")];
  const now = new Date("2026-12-01T00:00Z");
  const cases: [PolicySpec, RegExp][] = [
    [
      {},
      /refusing to prune without a keep rule: give at least one of --keep-last, .*--keep-within, e\.g\. --keep-daily 7/,
    ],
    [{ keepLast: 0, keepDaily: 0, keepYearly: 0 }, /refusing to prune without a keep rule/],
    [{ keepDaily: -1 }, /--keep-daily must be a whole number, 0 or more; got -1/],
    [{ keepWeekly: 1.5 }, /--keep-weekly must be a whole number, 0 or more; got 1\.5/],
    [{ keepLast: NaN }, /--keep-last must be a whole number, 0 or more; got NaN/],
    [
      { keepDaily: 7, timeZone: "Mars/Olympus_Mons" },
      /unknown time zone "Mars\/Olympus_Mons": use an IANA name such as "Europe\/Berlin" or "UTC"/,
    ],
  ];
  for (const [spec, message] of cases) {
    assert.throws(() => applyPolicy(sets, policy(spec), now), (err: unknown) => {
      assert.ok(err instanceof UsageError, `${JSON.stringify(spec)} throws UsageError`);
      assert.match(err.message, message);
      return true;
    });
  }
});

Deno.test("hasAnyRule is true when any keep count is above zero or keep-within is set", () => {
  const cases: [PolicySpec, boolean][] = [
    [{}, false],
    [{ keepLast: 0, keepHourly: 0, keepDaily: 0, keepWeekly: 0, keepMonthly: 0 }, false],
    [{ keepLast: 1 }, true],
    [{ keepHourly: 1 }, true],
    [{ keepYearly: 3 }, true],
    [{ keepWithin: "7d" }, true],
  ];
  for (const [spec, want] of cases) {
    assert.equal(hasAnyRule(policy(spec)), want, JSON.stringify(spec));
  }
});
