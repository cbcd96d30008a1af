/**
 * The V8 flags (lib/v8_flags.ts) reach every way of starting dbbackup that is not TypeScript:
 * the release binaries and `deno task dbbackup`. (The tests and the benchmark import them.)
 */
import { strict as assert } from "node:assert";
import { V8_FLAGS, V8_FLAGS_ARG } from "../lib/v8_flags.ts";

const root = new URL("../", import.meta.url);

Deno.test("v8 flags: release binaries and deno task dbbackup are built with lib/v8_flags.ts", async () => {
  assert.ok(V8_FLAGS.length > 0);
  const release = await Deno.readTextFile(new URL(".github/workflows/release.yml", root));
  const compiles = release.split("\n").filter((line) => /^\s*deno compile\b/.test(line));
  assert.ok(compiles.length > 0, "release.yml runs no deno compile");
  for (const line of compiles) {
    assert.ok(line.split(/\s+/).includes(V8_FLAGS_ARG), `release.yml: ${line.trim()}`);
  }
  const task = JSON.parse(await Deno.readTextFile(new URL("deno.json", root))).tasks.dbbackup;
  assert.deepEqual(task.split(" "), ["deno", "run", "-A", V8_FLAGS_ARG, "main.ts"]);
});
