import { strict as assert } from "node:assert";
import { globMatch, selectDatabases } from "./select.ts";

Deno.test("globMatch matches whole names with * and ?", () => {
  const cases: [string, string, boolean][] = [
    ["shop", "shop", true],
    ["shop", "shop2", false],
    ["shop*", "shop2", true],
    ["*_test", "app_test", true],
    ["*_test", "app_test_x", false],
    ["db?", "db1", true],
    ["db?", "db10", false],
    ["a.b", "axb", false],
    ["Ärger*", 'Ärger "db"', true],
    ["*", "", true],
  ];
  for (const [pattern, name, want] of cases) {
    assert.equal(globMatch(pattern, name), want, `${pattern} ~ ${name}`);
  }
});

Deno.test("selectDatabases skips the server's templates and unconnectable databases, then applies filters", () => {
  const dbs = [
    { name: "postgres", isTemplate: false, allowConnections: true },
    { name: "template0", isTemplate: true, allowConnections: false },
    { name: "template1", isTemplate: true, allowConnections: true },
    { name: "shop", isTemplate: false, allowConnections: true },
    { name: "shop_test", isTemplate: false, allowConnections: true },
    { name: "closed", isTemplate: false, allowConnections: false },
    { name: "shop_template", isTemplate: true, allowConnections: true },
  ];
  assert.deepEqual(selectDatabases(dbs, [], []).selected, [
    "postgres",
    "shop",
    "shop_test",
    "shop_template",
  ]);
  assert.deepEqual(selectDatabases(dbs, ["shop*"], []).selected, [
    "shop",
    "shop_test",
    "shop_template",
  ]);
  assert.deepEqual(selectDatabases(dbs, ["shop*"], ["*_te*"]).selected, ["shop"]);
  const sel = selectDatabases(dbs, [], ["postgres"]);
  assert.deepEqual(sel.skipped.find((s) => s.name === "postgres")?.reason, "matched by --exclude");
  assert.deepEqual(
    sel.skipped.find((s) => s.name === "closed")?.reason,
    "does not allow connections",
  );
});
