import assert from "node:assert/strict";
import { probeLargeWrites, spawn } from "./run.ts";
import { within } from "../../tests/helpers/wait.ts";

/** Everything a child wrote to stdout, as text, once it exited. */
async function output(child: ReturnType<typeof spawn>): Promise<string> {
  const [text] = await Promise.all([new Response(child.stdout).text(), child.status]);
  return text;
}

const ENV = "/usr/bin/env";
/** What `env --version` prints by itself: the probe compares stdbuf's run against it. */
const envVersion = () =>
  new TextDecoder().decode(new Deno.Command(ENV, { args: ["--version"] }).outputSync().stdout);
// coreutils' stdbuf is part of every Linux this runs on (CI included); elsewhere it may not be.
const linux = Deno.build.os === "linux";

Deno.test({
  name: "largeWrites runs a probed program under stdbuf with a 1 MiB stdout buffer",
  ignore: !linux,
  async fn() {
    assert.equal(await probeLargeWrites(ENV, envVersion()), true);
    // env prints its environment: stdbuf's settings show that it ran in between.
    const buffered = await output(
      spawn(ENV, [], { describe: "env", env: { A: "1" }, clearEnv: true, largeWrites: true }),
    );
    assert.match(buffered, /^_STDBUF_O=1048576$/m);
    assert.match(buffered, /^LD_PRELOAD=.*libstdbuf/m);
    assert.match(buffered, /^A=1$/m);
    // Without the option, the same program runs as it is.
    const plain = await output(
      spawn(ENV, [], { describe: "env", env: { A: "1" }, clearEnv: true }),
    );
    assert.equal(plain.trim(), "A=1");
  },
});

Deno.test("a program that does not run under stdbuf is started as it is", async () => {
  const missing = "/nonexistent/pg_dump";
  assert.equal(await probeLargeWrites(missing, "pg_dump (PostgreSQL) 15.0\n"), false);
  // largeWrites is ignored for it: the error names the program itself, not stdbuf.
  assert.throws(
    () => spawn(missing, [], { describe: "pg_dump", largeWrites: true }),
    /cannot start pg_dump: \/nonexistent\/pg_dump: program not found/,
  );
});

Deno.test({
  name: "errors of a child run under stdbuf name the program, not stdbuf",
  ignore: !linux,
  async fn() {
    assert.equal(await probeLargeWrites(ENV, envVersion()), true);
    const child = spawn(ENV, ["false"], { describe: "env false", largeWrites: true });
    await child.stdout.cancel();
    await assert.rejects(child.status, /env false failed: \/usr\/bin\/env exited with code 1/);
  },
});

Deno.test({
  name: "children's stdin and stdout pipes hold 1 MiB, not 64 KiB",
  ignore: !linux,
  async fn() {
    const bytes = 768 * 1024;
    // A child writing 768 KiB finishes before anything reads its stdout: with a 64 KiB pipe it
    // would wait for a reader, forever.
    const writer = spawn("head", ["-c", String(bytes), "/dev/zero"], { describe: "head" });
    await within(10_000, "head exits with its output unread", writer.status);
    const out = new Uint8Array(await new Response(writer.stdout).arrayBuffer());
    assert.equal(out.length, bytes);
    assert.ok(out.every((b) => b === 0));

    // 768 KiB written to a child that does not read yet: the write completes at once.
    const reader = spawn("sh", ["-c", "sleep 2; wc -c"], { describe: "wc", stdin: "piped" });
    const w = reader.stdin.getWriter();
    await within(1_500, "a 768 KiB write into a child not reading", w.write(new Uint8Array(bytes)));
    await w.close();
    const [count] = await Promise.all([new Response(reader.stdout).text(), reader.status]);
    assert.equal(count.trim(), String(bytes));
  },
});
