/**
 * Backup sets in S3-compatible object storage (a throwaway s3rver): backup, list, verify,
 * restore, prune straight from the bucket, with a dataset big enough for several multipart
 * parts; peak RSS of the backup and the restore is recorded.
 */
import { strict as assert } from "node:assert";
import { assertSameSnapshot, snapshotDatabase } from "./helpers/compare.ts";
import { dbbackup, pgEnv, summaryOf, tempRepo } from "./helpers/cli.ts";
import { withTwoPg } from "./helpers/pg_server.ts";
import { type S3Server, withS3 } from "./helpers/s3_server.ts";

function s3Env(s3: S3Server, extra: Record<string, string> = {}): Record<string, string> {
  return {
    AWS_ACCESS_KEY_ID: s3.accessKeyId,
    AWS_SECRET_ACCESS_KEY: s3.secretAccessKey,
    AWS_REGION: s3.region,
    DBBACKUP_S3_ENDPOINT: s3.endpoint,
    ...extra,
  };
}

/** Runs dbbackup and samples its peak RSS (VmHWM) while it runs. */
async function measured(args: string[], env: Record<string, string>) {
  let pid = 0;
  let peakKiB = 0;
  let running = true;
  const sampler = (async () => {
    while (running) {
      if (pid) {
        try {
          const status = await Deno.readTextFile(`/proc/${pid}/status`);
          const kib = Number(status.match(/^VmHWM:\s+(\d+)/m)?.[1] ?? 0);
          peakKiB = Math.max(peakKiB, kib);
        } catch {
          // Gone already.
        }
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  const r = await dbbackup(args, { env, onStart: (p) => pid = p });
  running = false;
  await sampler;
  return { ...r, peakMiB: Math.round(peakKiB / 1024) };
}

for (const engine of ["pg_dump", "native"] as const) {
  Deno.test(`backup to S3 and restore from it (${engine}), several multipart parts, bounded memory`, async () => {
    await withS3(async (s3) => {
      await withTwoPg(async (a, b) => {
        const local = await tempRepo(); // stays empty: the data never touches local disk
        try {
          await a.createDatabase("shop");
          // ~48 MB of hex text that compresses about 2x: several 8 MiB parts once compressed.
          await a.psql(
            `CREATE TABLE blobs (id int PRIMARY KEY, body text);
             INSERT INTO blobs SELECT g, string_agg(md5((g * 1000 + i)::text), '')
               FROM generate_series(1, 6000) g, generate_series(1, 250) i GROUP BY g;
             CREATE TABLE small AS SELECT g AS id, g * 2 AS v FROM generate_series(1, 1000) g;`,
            { db: "shop" },
          );
          const before = await snapshotDatabase(a, "shop");
          const repo = `s3://${s3.bucket}/nightly`;
          const env = { ...pgEnv(a), ...s3Env(s3), TMPDIR: local };

          const backup = await measured([
            "--repo",
            repo,
            "--json",
            "backup",
            "single",
            "shop",
            "--engine",
            engine,
            ...(engine === "native" ? ["--chunk-size", "24MB"] : []),
          ], env);
          assert.equal(backup.code, 0, backup.stderr);
          const summary = summaryOf(backup);
          const id: string = summary.setId;
          const stored = summary.databases[0].bytes;
          assert.ok(stored > 2 * 8 * 1024 * 1024, `stored ${stored} bytes: more than two parts`);
          console.log(
            `  ${engine}: backup to S3 ${
              (stored / 1048576).toFixed(1)
            } MiB stored, peak RSS ${backup.peakMiB} MiB`,
          );
          assert.ok(backup.peakMiB < 200, `backup peak RSS ${backup.peakMiB} MiB`);

          const list = await dbbackup(["--repo", repo, "list"], { env: s3Env(s3) });
          assert.equal(list.code, 0, list.stderr);
          assert.match(list.stdout, new RegExp(`${id}.*complete`));
          const verify = await dbbackup(["--repo", repo, "verify", "--deep", id], {
            env: s3Env(s3),
          });
          assert.equal(verify.code, 0, verify.stdout + verify.stderr);

          const restore = await measured(
            ["--repo", repo, "-j", "2", "restore", "single", id, "--create"],
            { ...pgEnv(b), ...s3Env(s3), TMPDIR: local },
          );
          assert.equal(restore.code, 0, restore.stderr);
          console.log(`  ${engine}: restore from S3 peak RSS ${restore.peakMiB} MiB`);
          assert.ok(restore.peakMiB < 200, `restore peak RSS ${restore.peakMiB} MiB`);
          assertSameSnapshot(await snapshotDatabase(b, "shop"), before, "restore from S3");
          if (engine === "pg_dump") {
            assert.match(restore.stderr, /pg_restore runs with one job: .* in object storage/);
          }
          const leftovers = [];
          for await (const e of Deno.readDir(local)) leftovers.push(e.name);
          assert.deepEqual(leftovers, [], "nothing was spooled to local disk");

          // Nothing is ever overwritten: a second backup is a new set; prune removes the first.
          await new Promise((r) => setTimeout(r, 1100));
          const second = await dbbackup(
            ["--repo", repo, "--json", "backup", "single", "shop", "--engine", engine],
            { env },
          );
          assert.equal(second.code, 0, second.stderr);
          const prune = await dbbackup(["--repo", repo, "--json", "prune", "--keep-last", "1"], {
            env: s3Env(s3),
          });
          assert.equal(prune.code, 0, prune.stderr);
          const pruned = summaryOf(prune);
          assert.deepEqual(
            pruned.decisions.filter((d: { removed: boolean }) => d.removed).map((
              d: { id: string },
            ) => d.id),
            [id],
          );
          const after = await dbbackup(["--repo", repo, "--json", "list"], { env: s3Env(s3) });
          assert.deepEqual(
            JSON.parse(after.stdout).map((s: { id: string }) => s.id),
            [summaryOf(second).setId],
          );
        } finally {
          await Deno.remove(local, { recursive: true });
        }
      });
    });
  });
}

Deno.test("S3 repository: missing or wrong credentials fail clearly and write nothing", async () => {
  await withS3(async (s3) => {
    const repo = `s3://${s3.bucket}/x`;
    const none = await dbbackup(["--repo", repo, "list"], {
      env: { DBBACKUP_S3_ENDPOINT: s3.endpoint },
    });
    assert.equal(none.code, 2, none.stderr);
    assert.match(none.stderr, /needs S3 credentials: set AWS_ACCESS_KEY_ID/);
    const wrong = await dbbackup(["--repo", repo, "list"], {
      env: s3Env(s3, { AWS_ACCESS_KEY_ID: "NOT-A-KEY", AWS_SECRET_ACCESS_KEY: "not-the-secret" }),
    });
    assert.equal(wrong.code, 1, wrong.stderr);
    assert.match(wrong.stderr, /AWS_SECRET_ACCESS_KEY|credentials|signature/i);
    assert.ok(!wrong.stderr.includes("not-the-secret"), "the secret is never printed");
    const missingBucket = await dbbackup(["--repo", "s3://no-such-bucket/x", "list"], {
      env: s3Env(s3),
    });
    assert.equal(missingBucket.code, 1, missingBucket.stderr);
    assert.match(missingBucket.stderr, /no-such-bucket/);
  });
});

Deno.test("an encrypted native set in S3 restores with its key file; the bucket holds no plaintext manifest", async () => {
  await withS3(async (s3) => {
    await withTwoPg(async (a, b) => {
      const keys = await Deno.makeTempDir({ prefix: "dbbackup-test-keys-" });
      try {
        const key = `${keys}/k`;
        assert.equal((await dbbackup(["key", "generate", "--out", key])).code, 0);
        await a.createDatabase("vault");
        await a.psql(
          `CREATE TABLE secrets (id int PRIMARY KEY, body text);
           INSERT INTO secrets SELECT g, md5(g::text) FROM generate_series(1, 50000) g;`,
          { db: "vault" },
        );
        const before = await snapshotDatabase(a, "vault");
        const repo = `s3://${s3.bucket}/enc`;
        const backup = await dbbackup([
          "--repo",
          repo,
          "--json",
          "--key-file",
          key,
          "backup",
          "single",
          "vault",
          "--engine",
          "native",
          "--chunk-size",
          "256k",
          "--encrypt",
        ], { env: { ...pgEnv(a), ...s3Env(s3) } });
        assert.equal(backup.code, 0, backup.stderr);
        const id = summaryOf(backup).setId;
        const noKey = await dbbackup(["--repo", repo, "restore", "single", id, "--create"], {
          env: { ...pgEnv(b), ...s3Env(s3) },
        });
        assert.equal(noKey.code, 5, noKey.stderr);
        const restore = await dbbackup(
          ["--repo", repo, "--key-file", key, "restore", "single", id, "--create"],
          { env: { ...pgEnv(b), ...s3Env(s3) } },
        );
        assert.equal(restore.code, 0, restore.stderr);
        assertSameSnapshot(await snapshotDatabase(b, "vault"), before, "encrypted restore from S3");
        // status reaches the server but not the bucket: it says so and exits 1.
        const status = await dbbackup(["--repo", repo, "status"], {
          env: { ...pgEnv(a), ...s3Env(s3, { AWS_ACCESS_KEY_ID: "NOT-A-KEY" }) },
        });
        assert.equal(status.code, 1, status.stdout + status.stderr);
        assert.match(status.stdout, /Repository: s3:\/\/\S+ \(cannot be read: /);
        const verify = await dbbackup(["--repo", repo, "verify", id], { env: s3Env(s3) });
        assert.equal(verify.code, 0, verify.stdout + verify.stderr);
        assert.match(verify.stdout, /encrypted: stored bytes checked/);
      } finally {
        await Deno.remove(keys, { recursive: true });
      }
    });
  });
});
