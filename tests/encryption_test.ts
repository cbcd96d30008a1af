/**
 * Encrypted sets end to end: every kind of key holder restores identical data, rekey adds a
 * holder without rewriting data, wrong or missing keys are refused with exit code 5 before
 * anything is written, and damaged files are caught and named.
 */
import { strict as assert } from "node:assert";
import { assertSameSnapshot, snapshotDatabase } from "./helpers/compare.ts";
import { dbbackup, loadAwkward, pgEnv, setDirs, summaryOf, tempRepo } from "./helpers/cli.ts";
import { type PgServer, quoteLiteral, withTwoPg } from "./helpers/pg_server.ts";

const DB = "secret shop";

interface Keys {
  dir: string;
  keyFile: string;
  otherKeyFile: string;
  identity: string;
  recipient: string;
  passphraseFile: string;
}

async function makeKeys(): Promise<Keys> {
  const dir = await Deno.makeTempDir({ prefix: "dbbackup-test-keys-" });
  const k: Keys = {
    dir,
    keyFile: `${dir}/k1.key`,
    otherKeyFile: `${dir}/k2.key`,
    identity: `${dir}/id`,
    recipient: `${dir}/id.pub`,
    passphraseFile: `${dir}/pass`,
  };
  for (const f of [k.keyFile, k.otherKeyFile]) {
    const r = await dbbackup(["key", "generate", "--out", f]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await Deno.stat(f)).mode! & 0o777, 0o600);
    assert.equal((await Deno.readFile(f)).length, 32);
  }
  const id = await dbbackup(["key", "identity", "--out", k.identity]);
  assert.equal(id.code, 0, id.stderr);
  assert.equal((await Deno.stat(k.identity)).mode! & 0o777, 0o600);
  assert.match(await Deno.readTextFile(k.recipient), /^dbbackup-recipient-v1:/m);
  // Never overwritten.
  const again = await dbbackup(["key", "generate", "--out", k.keyFile]);
  assert.equal(again.code, 1);
  assert.match(again.stderr, /refusing to overwrite/);
  await Deno.writeTextFile(k.passphraseFile, "correct horse battery staple\n", { mode: 0o600 });
  return k;
}

async function dbExists(pg: PgServer, name: string): Promise<boolean> {
  return (await pg.psql(`SELECT count(*) FROM pg_database WHERE datname = ${quoteLiteral(name)}`))
    .trim() === "1";
}

for (const engine of ["pg_dump", "native"] as const) {
  Deno.test(`encrypted backup (${engine}) restores with a passphrase, a key file, an identity and a rekeyed key`, async (t) => {
    await withTwoPg(async (a, b) => {
      const repo = await tempRepo();
      const keys = await makeKeys();
      try {
        await loadAwkward(a, DB);
        // The dataset's objects belong to its roles: they must exist where it is restored.
        await b.psql(await Deno.readTextFile(new URL("fixtures/roles.sql", import.meta.url)));
        const before = await snapshotDatabase(a, DB);
        const backup = await dbbackup([
          "--repo",
          repo,
          "--json",
          "--key-file",
          keys.keyFile,
          "backup",
          "single",
          DB,
          "--engine",
          engine,
          ...(engine === "native" ? ["--chunk-size", "16k"] : []),
          "--encrypt",
          "--recipient",
          keys.recipient,
        ], { env: pgEnv(a, { DBBACKUP_PASSPHRASE: "correct horse battery staple" }) });
        assert.equal(backup.code, 0, backup.stderr);
        const id: string = summaryOf(backup).setId;

        await t.step(
          "the stored set shows no table names, row data or plaintext checksums",
          async () => {
            const text = await Deno.readTextFile(`${repo}/${id}/manifest.json`);
            const m = JSON.parse(text);
            assert.equal(typeof m.sealed, "string");
            assert.equal(m.encryption.slots.length, 3);
            assert.deepEqual(
              m.encryption.slots.map((s: { type: string }) => s.type).sort(),
              ["keyfile", "passphrase", "recipient"],
            );
            assert.ok(
              !/rawCrc32|rawSha256|rawBytes/.test(text),
              "no plaintext checksums in the clear",
            );
            for (const table of Object.keys(before.tables)) {
              const name = table.split(".").at(-1)!.replaceAll('"', "");
              assert.ok(!text.includes(name), `table name ${name} appears in the manifest`);
            }
            assert.ok(m.storedFiles.length >= 1);
            for (const f of m.storedFiles) {
              assert.ok(f.path.endsWith(".enc"), f.path);
              const head = (await Deno.readFile(`${repo}/${id}/${f.path}`)).subarray(0, 8);
              assert.equal(new TextDecoder().decode(head), "DBBKENC1");
            }
            const list = await dbbackup(["--repo", repo, "list"]);
            assert.equal(list.code, 0, list.stderr);
            assert.match(list.stdout, /complete.*encrypted/);
            const verify = await dbbackup(["--repo", repo, "verify", id]);
            assert.equal(verify.code, 0, verify.stderr);
            assert.match(verify.stdout, /encrypted: stored bytes checked/);
          },
        );

        await t.step(
          "no key, a wrong passphrase or another key file: exit 5, nothing created",
          async () => {
            const attempts: [string, string[], Record<string, string>][] = [
              ["no key", [], {}],
              ["wrong passphrase", [], { DBBACKUP_PASSPHRASE: "wrong" }],
              ["other key file", ["--key-file", keys.otherKeyFile], {}],
              ["recipient is not an identity", ["--identity", keys.recipient], {}],
            ];
            for (const [what, flags, env] of attempts) {
              const r = await dbbackup([
                "--repo",
                repo,
                ...flags,
                "restore",
                "single",
                id,
                "--target",
                "nope",
                "--create",
              ], { env: pgEnv(b, env) });
              assert.equal(r.code, 5, `${what}: ${r.stderr}`);
              assert.match(r.stderr, /encrypted|key|identity|recipient/, what);
              assert.equal(await dbExists(b, "nope"), false, what);
            }
            const deep = await dbbackup(["--repo", repo, "verify", "--deep", id]);
            assert.equal(deep.code, 5, deep.stderr);
          },
        );

        const restoreWith = async (target: string, flags: string[], env = {}) => {
          const r = await dbbackup([
            "--repo",
            repo,
            ...flags,
            "restore",
            "single",
            id,
            "--target",
            target,
            "--create",
          ], { env: pgEnv(b, env) });
          assert.equal(r.code, 0, `${target}: ${r.stderr}`);
          assertSameSnapshot(await snapshotDatabase(b, target), before, `restore ${target}`);
          return r.stderr;
        };

        await t.step("each key holder restores identical data", async () => {
          await restoreWith("by passphrase", ["--passphrase-file", keys.passphraseFile]);
          // Two jobs: pg_restore still streams (a parallel one would need a plaintext file).
          const stderr = await restoreWith("by key file", ["-j", "2", "--key-file", keys.keyFile]);
          assert.match(stderr, /pg_restore runs with one job: .* this set is encrypted/);
          await restoreWith("by identity", ["--identity", keys.identity]);
        });

        await t.step(
          "export-sql decrypts as it streams; psql alone restores the script",
          async () => {
            const noKey = await dbbackup(["--repo", repo, "export-sql", id]);
            assert.equal(noKey.code, 5, noKey.stderr);
            const script = `${keys.dir}/export.sql`;
            const e = await dbbackup([
              "--repo",
              repo,
              "--key-file",
              keys.keyFile,
              "export-sql",
              id,
              "--output",
              script,
            ]);
            assert.equal(e.code, 0, e.stderr);
            await b.createDatabase("by export");
            await b.psql(await Deno.readTextFile(script), { db: "by export" });
            assertSameSnapshot(await snapshotDatabase(b, "by export"), before, "export-sql");
          },
        );

        await t.step(
          "rekey adds a key file; the new key alone restores; data untouched",
          async () => {
            const files = await listFiles(`${repo}/${id}`);
            const refused = await dbbackup([
              "--repo",
              repo,
              "--key-file",
              keys.otherKeyFile,
              "key",
              "rekey",
              id,
              "--new-key-file",
              keys.otherKeyFile,
            ]);
            assert.equal(refused.code, 5, refused.stderr);
            assert.deepEqual(
              await listFiles(`${repo}/${id}`),
              files,
              "a refused rekey wrote nothing",
            );

            const rekey = await dbbackup([
              "--repo",
              repo,
              "--identity",
              keys.identity,
              "key",
              "rekey",
              id,
              "--new-key-file",
              keys.otherKeyFile,
            ]);
            assert.equal(rekey.code, 0, rekey.stderr);
            assert.match(rekey.stdout, /added key file/);
            const after = await listFiles(`${repo}/${id}`);
            for (const f of files) {
              assert.ok(after.includes(f), `${f} still there`);
            }
            assert.equal(after.length, files.length + 1, "one new key slot file");
            await restoreWith("by new key", ["--key-file", keys.otherKeyFile]);
            const deep = await dbbackup([
              "--repo",
              repo,
              "--key-file",
              keys.otherKeyFile,
              "verify",
              "--deep",
              id,
            ]);
            assert.equal(deep.code, 0, deep.stderr);
          },
        );
      } finally {
        await Deno.remove(repo, { recursive: true });
        await Deno.remove(keys.dir, { recursive: true });
      }
    });
  });
}

Deno.test("encrypted native set: a flipped byte, a truncated file and two swapped chunks are each named", async () => {
  await withTwoPg(async (a, b) => {
    const repo = await tempRepo();
    const keys = await makeKeys();
    try {
      await a.createDatabase("shop");
      await a.psql(
        `CREATE TABLE items (id int PRIMARY KEY, label text);
         INSERT INTO items SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 20000) g;`,
        { db: "shop" },
      );
      const backup = await dbbackup([
        "--repo",
        repo,
        "--json",
        "--key-file",
        keys.keyFile,
        "backup",
        "single",
        "shop",
        "--engine",
        "native",
        "--chunk-size",
        "256k",
        "--encrypt",
      ], { env: pgEnv(a) });
      assert.equal(backup.code, 0, backup.stderr);
      const id: string = summaryOf(backup).setId;
      const m = JSON.parse(await Deno.readTextFile(`${repo}/${id}/manifest.json`));
      const chunks: string[] = m.storedFiles.map((f: { path: string }) => f.path).filter((
        p: string,
      ) => p.includes(".copy"));
      assert.ok(chunks.length >= 3, `several chunks: ${chunks.join(", ")}`);
      const [c1, c2, c3] = chunks.map((p) => `${repo}/${id}/${p}`);
      const originals = await Promise.all([c1, c2, c3].map((p) => Deno.readFile(p)));

      const damages: [string, () => Promise<void>, string[]][] = [
        ["flipped byte", async () => {
          const bytes = new Uint8Array(originals[0]);
          bytes[bytes.length >> 1] ^= 0x01;
          await Deno.writeFile(c1, bytes);
        }, [chunks[0]]],
        ["truncated", async () => {
          await Deno.writeFile(c2, originals[1].subarray(0, originals[1].length - 100));
        }, [chunks[1]]],
        ["swapped", async () => {
          await Deno.writeFile(c1, originals[2]);
          await Deno.writeFile(c3, originals[0]);
        }, [chunks[0], chunks[2]]],
      ];
      for (const [what, damage, named] of damages) {
        await damage();
        try {
          const verify = await dbbackup(["--repo", repo, "verify", id]);
          assert.equal(verify.code, 4, `${what}: ${verify.stdout}${verify.stderr}`);
          for (const n of named) assert.ok(verify.stdout.includes(n), `${what}: names ${n}`);
          const restore = await dbbackup([
            "--repo",
            repo,
            "--key-file",
            keys.keyFile,
            "restore",
            "single",
            id,
            "--create",
          ], { env: pgEnv(b) });
          assert.equal(restore.code, 4, `${what}: ${restore.stderr}`);
          assert.ok(restore.stderr.includes(named[0]), `${what}: ${restore.stderr}`);
          assert.equal(await dbExists(b, "shop"), false, `${what}: nothing restored`);
        } finally {
          await Promise.all([c1, c2, c3].map((p, i) => Deno.writeFile(p, originals[i])));
        }
      }
      const ok = await dbbackup([
        "--repo",
        repo,
        "--key-file",
        keys.keyFile,
        "restore",
        "single",
        id,
        "--create",
      ], { env: pgEnv(b) });
      assert.equal(ok.code, 0, ok.stderr);
      assert.equal((await b.psql("SELECT count(*) FROM items", { db: "shop" })).trim(), "20000");
    } finally {
      await Deno.remove(repo, { recursive: true });
      await Deno.remove(keys.dir, { recursive: true });
    }
  });
});

Deno.test("--encrypt without a key holder, or with a key file others can read, is refused before a set exists", async () => {
  await withTwoPg(async (a) => {
    const repo = await tempRepo();
    const keys = await makeKeys();
    try {
      await a.createDatabase("shop");
      const none = await dbbackup(["--repo", repo, "backup", "single", "shop", "--encrypt"], {
        env: pgEnv(a),
      });
      assert.equal(none.code, 2, none.stderr);
      assert.match(none.stderr, /--encrypt needs a key holder/);
      await Deno.chmod(keys.keyFile, 0o644);
      const open = await dbbackup([
        "--repo",
        repo,
        "--key-file",
        keys.keyFile,
        "backup",
        "single",
        "shop",
        "--encrypt",
      ], { env: pgEnv(a) });
      assert.equal(open.code, 5, open.stderr);
      assert.match(open.stderr, /readable by others/);
      assert.deepEqual(await setDirs(repo), []);
    } finally {
      await Deno.remove(repo, { recursive: true });
      await Deno.remove(keys.dir, { recursive: true });
    }
  });
});

async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string, prefix: string) => {
    for await (const e of Deno.readDir(d)) {
      if (e.isDirectory) await walk(`${d}/${e.name}`, `${prefix}${e.name}/`);
      else out.push(`${prefix}${e.name}`);
    }
  };
  await walk(dir, "");
  return out.sort();
}
