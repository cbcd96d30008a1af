import { strict as assert } from "node:assert";
import { compactTimestamp, isSetId, setId, setIdSubject, setIdTime, slug } from "./set_id.ts";

Deno.test("compactTimestamp is UTC, second precision, no separators", () => {
  assert.equal(compactTimestamp(new Date("2026-11-27T03:00:00.000Z")), "20261127T030000Z");
  assert.equal(compactTimestamp(new Date("2026-01-02T23:59:59.999Z")), "20260102T235959Z");
  // A local-time offset in the input is converted to UTC.
  assert.equal(compactTimestamp(new Date("2026-06-01T01:30:00+02:00")), "20260531T233000Z");
});

Deno.test("setId: ids sort by time, whatever the kind and label", () => {
  const times = [
    "2025-12-31T23:59:59Z",
    "2026-01-01T00:00:00Z",
    "2026-01-01T00:00:01Z",
    "2026-02-10T09:08:07Z",
    "2026-10-01T00:00:00Z",
    "2026-11-27T03:00:00Z",
  ].map((t) => new Date(t));
  // Labels chosen so that sorting by label would give another order.
  const labels = ["zzz", "aaa", "Ärger", "0db", "shop", "_x"];
  const kinds = ["single", "cluster"];
  const ids = times.map((t, i) => setId(t, kinds[i % 2], labels[i]));
  const shuffled = [ids[3], ids[0], ids[5], ids[1], ids[4], ids[2]];
  assert.deepEqual([...shuffled].sort(), ids);
  for (const id of ids) assert.ok(isSetId(id), id);
});

Deno.test("setId has the documented shape", () => {
  assert.equal(
    setId(new Date("2026-11-27T03:00:00Z"), "cluster", "db1"),
    "20261127T030000Z-cluster-db1",
  );
  assert.equal(
    setId(new Date("2026-11-27T03:00:00Z"), "single", 'Ärger "db" 1'),
    "20261127T030000Z-single-Arger_db_1",
  );
});

Deno.test("slug makes awkward names file-name safe", async (t) => {
  const cases: [string, string][] = [
    ["shop", "shop"],
    ["my-db_2.old", "my-db_2.old"],
    ['Ärger "db" 1', "Arger_db_1"],
    ["Ünïcödé", "Unicode"],
    ["a/b\\c", "a_b_c"],
    ["../../etc/passwd", "etc_passwd"],
    ["..", "x"],
    [".hidden", "hidden"],
    ["_leading", "leading"],
    ["", "x"],
    ["日本語", "x"],
    ["tab\there\nnewline", "tab_here_newline"],
    ["a:b*c?d", "a_b_c_d"],
    ["-starts-with-dash", "-starts-with-dash"],
  ];
  for (const [input, want] of cases) {
    await t.step(JSON.stringify(input), () => {
      const s = slug(input);
      assert.match(s, /^[A-Za-z0-9._-]{1,40}$/, `slug ${JSON.stringify(s)} is safe`);
      assert.ok(!s.startsWith("."), "no hidden file names");
      assert.ok(!s.includes("/"), "no path separators");
      assert.notEqual(s, "..");
      assert.equal(s, want);
    });
  }
  await t.step("long names are cut to 40 characters", () => {
    assert.equal(slug("x".repeat(100)), "x".repeat(40));
    assert.equal(slug("Ä".repeat(100)), "A".repeat(40));
  });
  await t.step("every slug makes a valid set id", () => {
    for (const [input] of cases) {
      assert.ok(isSetId(setId(new Date(0), "single", input)), input);
    }
  });
});

Deno.test("isSetId accepts ids this tool makes and rejects everything else", async (t) => {
  const good = [
    "20261127T030000Z-single-shop",
    "20261127T030000Z-cluster-db1.example.com",
    "20261127T030000Z-single-Arger_db_1-1",
    "20261127T030000Z-single-x-99",
  ];
  const bad = [
    "",
    "shop",
    "20261127T030000Z",
    "20261127T030000Z-single-",
    "20261127T030000Z-weekly-shop",
    "20261127T030000-single-shop",
    "2026112T030000Z-single-shop",
    "20261127t030000z-single-shop",
    "20261127T030000Z-single-shop/..",
    "20261127T030000Z-single-a b",
    "x20261127T030000Z-single-shop",
    ".20261127T030000Z-single-shop",
    "20261127T030000Z-single-shop\n",
    "lost+found",
  ];
  for (const id of good) await t.step(`good ${JSON.stringify(id)}`, () => assert.ok(isSetId(id)));
  for (const id of bad) {
    await t.step(`bad ${JSON.stringify(id)}`, () => assert.equal(isSetId(id), false));
  }
});

Deno.test("setIdTime and setIdSubject read a set id back", () => {
  const id = setId(new Date("2026-11-27T03:04:05.678Z"), "single", "shop db");
  assert.equal(setIdTime(id)?.toISOString(), "2026-11-27T03:04:05.000Z");
  assert.equal(setIdSubject(id), "single-shop_db");
  assert.equal(setIdTime("20261327T000000Z-single-x"), undefined);
  assert.equal(setIdTime("notes"), undefined);
  assert.equal(setIdSubject("notes"), undefined);
});
