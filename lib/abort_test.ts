import assert from "node:assert/strict";
import { stopOnFailure } from "./abort.ts";

Deno.test("stopOnFailure aborts with the task's error when it fails, not when it succeeds", async () => {
  const failure = new Error("the check failed");
  const failed = stopOnFailure(Promise.reject(failure));
  await assert.rejects(failed.task, (err) => err === failure);
  assert.equal(failed.signal.aborted, true);
  assert.equal(failed.signal.reason, failure);

  const ok = stopOnFailure(Promise.resolve(7));
  assert.equal(await ok.task, 7);
  assert.equal(ok.signal.aborted, false);
});

Deno.test("stopOnFailure's signal follows the outer one, with its reason", async () => {
  const outer = new AbortController();
  let finish!: () => void;
  const watched = stopOnFailure(new Promise<void>((resolve) => finish = resolve), outer.signal);
  assert.equal(watched.signal.aborted, false);
  const reason = new Error("Ctrl-C");
  outer.abort(reason);
  assert.equal(watched.signal.aborted, true);
  assert.equal(watched.signal.reason, reason);
  finish();
  await watched.task;
});
