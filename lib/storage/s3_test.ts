import { strict as assert } from "node:assert";
import {
  type FaultProxy,
  isUploadPart,
  s3ErrorResponse,
  type S3Server,
  startFaultProxy,
  withS3,
} from "../../tests/helpers/s3_server.ts";
import { run } from "../process/run.ts";
import { DbBackupError } from "../errors.ts";
import { MAX_PART_SIZE, MAX_PARTS, MiB, MIN_PART_SIZE, partSizer } from "./_s3_upload.ts";
import {
  chunked,
  controlledStream,
  pseudoRandom,
  sha256,
  storageConformance,
} from "./conformance.ts";
import { parseS3Location, type S3Options, s3OptionsFromEnv, S3Storage } from "./s3.ts";

const enc = new TextEncoder();
const PART = 5 * MiB;

/** A storage on `s3` (or on `endpoint`, e.g. a proxy in front of it) with fast retries. */
function storageOn(s3: S3Server, prefix: string, extra: Partial<S3Options> = {}): S3Storage {
  return new S3Storage(`s3://${s3.bucket}/${prefix}`, {
    endpoint: s3.endpoint,
    region: s3.region,
    credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
    partSize: PART,
    retryDelayMs: 20,
    ...extra,
  });
}

async function readAll(stream: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

async function withProxy<T>(
  s3: S3Server,
  fault: Parameters<typeof startFaultProxy>[1],
  fn: (proxy: FaultProxy) => Promise<T>,
): Promise<T> {
  const proxy = await startFaultProxy(s3.endpoint, fault);
  try {
    return await fn(proxy);
  } finally {
    await proxy.stop();
  }
}

const codeIs = (code: string) => (err: unknown) => {
  assert.ok(err instanceof DbBackupError, `a DbBackupError, got ${err}`);
  assert.equal(err.code, code, err.message);
  return true;
};

Deno.test("S3Storage passes the storage conformance suite on s3rver", async (t) => {
  await withS3(async (s3) => {
    let n = 0;
    await storageConformance(t, {
      // A small page size makes every longer list span several pages.
      fresh: () => Promise.resolve(storageOn(s3, `conformance/${++n}`, { listPageSize: 7 })),
      multipartSize: PART,
      leftovers: () => s3.pendingUploads(),
    });
  });
});

Deno.test("S3Storage: a part answered with 500 once is sent again and the upload succeeds", async () => {
  await withS3(async (s3) => {
    let failedOnce = false;
    await withProxy(s3, (req) => {
      if (!isUploadPart(req) || failedOnce) return undefined;
      failedOnce = true;
      return { respond: s3ErrorResponse(500, "InternalError", "We encountered an internal error") };
    }, async (proxy) => {
      const storage = storageOn(s3, "retry", { endpoint: proxy.endpoint });
      const data = pseudoRandom(12 * MiB, 11);
      await storage.write("db.pgdump", chunked(data, MiB));
      const parts = proxy.requests.filter(isUploadPart).map((r) =>
        r.url.searchParams.get("partNumber")
      );
      assert.equal(parts.length, 4, `3 parts, one of them twice: ${parts}`);
      assert.equal(new Set(parts).size, 3);
      assert.equal(sha256(await readAll(await storage.read("db.pgdump"))), sha256(data));
      assert.deepEqual(await s3.pendingUploads(), []);
    });
  });
});

Deno.test("S3Storage: a part that keeps failing fails the write and aborts the upload", async () => {
  await withS3(async (s3) => {
    await withProxy(
      s3,
      (req) =>
        isUploadPart(req) && req.url.searchParams.get("partNumber") === "2"
          ? { respond: s3ErrorResponse(503, "SlowDown", "Please reduce your request rate") }
          : undefined,
      async (proxy) => {
        const storage = storageOn(s3, "abort", { endpoint: proxy.endpoint, maxAttempts: 3 });
        await assert.rejects(
          storage.write("db.pgdump", chunked(pseudoRandom(12 * MiB, 12), MiB)),
          (err) => {
            codeIs("io")(err);
            assert.match(
              (err as Error).message,
              /cannot upload part 2 of s3:\/\/.*\/abort\/db\.pgdump: S3 answered HTTP 503 SlowDown/,
            );
            return true;
          },
        );
        const part2 = proxy.requests.filter((r) =>
          isUploadPart(r) && r.url.searchParams.get("partNumber") === "2"
        );
        assert.equal(part2.length, 3, "tried maxAttempts times");
        assert.ok(
          proxy.requests.some((r) => r.method === "DELETE" && r.url.searchParams.has("uploadId")),
          "the multipart upload was aborted",
        );
        assert.deepEqual(await s3.pendingUploads(), [], "no parts left on the server");
        assert.equal(await storage.stat("db.pgdump"), undefined);
      },
    );
  });
});

Deno.test("S3Storage: a write whose answer was lost is not taken for an existing file", async () => {
  await withS3(async (s3) => {
    // The first PUT / CompleteMultipartUpload reaches s3rver but its answer is lost; the retry
    // then gets what real S3 answers in that state (s3rver would simply accept it again).
    const seen = new Map<string, number>();
    await withProxy(s3, (req) => {
      const complete = req.method === "POST" && req.url.searchParams.has("uploadId");
      const put = req.method === "PUT" && req.url.search === "" && !req.url.pathname.endsWith("/");
      if (!complete && !put) return undefined;
      const kind = complete ? "complete" : "put";
      const n = (seen.get(kind) ?? 0) + 1;
      seen.set(kind, n);
      if (n === 1) {
        return { lostAnswer: s3ErrorResponse(500, "InternalError", "We encountered an error") };
      }
      return complete
        ? { respond: s3ErrorResponse(404, "NoSuchUpload", "The upload does not exist") }
        : { respond: s3ErrorResponse(412, "PreconditionFailed", "At least one precondition") };
    }, async (proxy) => {
      const storage = storageOn(s3, "lost", { endpoint: proxy.endpoint });
      const small = enc.encode("manifest");
      const big = pseudoRandom(11 * MiB, 16);
      await storage.write("manifest.json", ReadableStream.from([small]));
      await storage.write("db.pgdump", chunked(big, MiB));
      assert.deepEqual(Object.fromEntries(seen), { put: 2, complete: 2 });
      assert.equal(sha256(await readAll(await storage.read("manifest.json"))), sha256(small));
      assert.equal(sha256(await readAll(await storage.read("db.pgdump"))), sha256(big));
    });
  });
});

Deno.test("S3Storage: a download cut mid-stream resumes where it stopped", async () => {
  await withS3(async (s3) => {
    const data = pseudoRandom(3 * MiB + 17, 13);
    await storageOn(s3, "resume").write("f", chunked(data, MiB));
    let cut = 0;
    await withProxy(s3, (req) => {
      if (req.method !== "GET" || req.url.searchParams.has("list-type") || cut >= 2) {
        return undefined;
      }
      cut++;
      return { cutBodyAfter: 1_000_000 };
    }, async (proxy) => {
      const storage = storageOn(s3, "resume", { endpoint: proxy.endpoint });
      assert.equal(sha256(await readAll(await storage.read("f"))), sha256(data));
      const ranges = proxy.requests.filter((r) => r.method === "GET").map((r) => r.range);
      assert.deepEqual(ranges, [null, "bytes=1000000-", "bytes=2000000-"]);
      const slice = await readAll(await storage.read("f", { offset: 10, length: MiB }));
      assert.equal(sha256(slice), sha256(data.subarray(10, 10 + MiB)));
    });
  });
});

Deno.test("S3Storage: the server stopping mid-upload fails the write with a connection error", async () => {
  await withS3(async (s3) => {
    const storage = storageOn(s3, "down", { maxAttempts: 2 });
    const { stream, controller } = controlledStream();
    const writing = storage.write("set/db.pgdump", stream);
    writing.catch(() => {});
    controller.enqueue(pseudoRandom(PART + 1, 14));
    for (let i = 0; (await s3.pendingParts()) === 0; i++) {
      assert.ok(i < 500, "part 1 never reached the server");
      await new Promise((r) => setTimeout(r, 10));
    }
    await s3.halt();
    controller.enqueue(pseudoRandom(2 * PART, 15));
    controller.close();
    await assert.rejects(writing, (err) => {
      codeIs("connection")(err);
      const msg = (err as Error).message;
      assert.ok(msg.includes(s3.endpoint), msg);
      assert.ok(msg.includes(s3.bucket), msg);
      assert.match(msg, /cannot reach S3 at .* to (upload part \d+|complete the upload) of s3:/);
      return true;
    });
    await s3.restart();
    assert.equal(await storage.stat("set/db.pgdump"), undefined, "nothing published");
    assert.deepEqual(await storage.list("set"), []);
    // The abort could not reach the server either: real buckets need a lifecycle rule that
    // drops incomplete multipart uploads.
    assert.equal((await s3.pendingUploads()).length, 1);
  });
});

Deno.test("S3Storage: bad credentials fail with an auth error that names bucket and endpoint", async () => {
  await withS3(async (s3) => {
    const secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEY";
    const storage = new S3Storage(`s3://${s3.bucket}/repo`, {
      endpoint: s3.endpoint,
      credentials: { accessKeyId: "AKIAWRONGWRONGWRONG1", secretAccessKey: secret },
      retryDelayMs: 20,
    });
    const attempts = [
      () => storage.stat("x"),
      () => storage.list(""),
      () => storage.read("x"),
      () => storage.write("x", ReadableStream.from([enc.encode("data")])),
      () => storage.createDirectory("d"),
      () => storage.remove("d"),
    ];
    for (const attempt of attempts) {
      await assert.rejects(attempt(), (err) => {
        codeIs("auth")(err);
        const msg = (err as Error).message;
        assert.ok(msg.includes(`bucket "${s3.bucket}"`), msg);
        assert.ok(msg.includes(s3.endpoint), msg);
        assert.match(msg, /AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN/);
        assert.ok(!msg.includes(secret) && !msg.includes("AKIAWRONG"), msg);
        return true;
      });
    }
    assert.ok(!storage.location.includes(secret));
    assert.ok(!Deno.inspect(storage).includes(secret), "not even when printed");
  });
});

Deno.test("S3Storage: a missing bucket is not_found, a closed port a connection error", async () => {
  await withS3(async (s3) => {
    const missing = new S3Storage("s3://no-such-bucket/x", {
      endpoint: s3.endpoint,
      credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
    });
    for (
      const attempt of [() => missing.list(""), () => missing.stat("a"), () => missing.read("a")]
    ) {
      await assert.rejects(attempt(), (err) => {
        codeIs("not_found")(err);
        assert.match((err as Error).message, /S3 bucket "no-such-bucket" does not exist at http/);
        return true;
      });
    }
  });
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  const closed = new S3Storage("s3://bucket/x", {
    endpoint: `http://127.0.0.1:${port}`,
    credentials: { accessKeyId: "a", secretAccessKey: "b" },
    retryDelayMs: 10,
  });
  await assert.rejects(closed.stat("f"), (err) => {
    codeIs("connection")(err);
    assert.match(
      (err as Error).message,
      /cannot reach S3 at http:\/\/127\.0\.0\.1:\d+ \(bucket "bucket"\) to look up s3:\/\/bucket\/x\/f: .*refused/i,
    );
    return true;
  });
});

Deno.test("S3Storage: list pages through more than 1000 keys", async () => {
  await withS3(async (s3) => {
    const storage = storageOn(s3, "many");
    await storage.createDirectory("set");
    const names = Array.from({ length: 1005 }, (_, i) => `f${String(i).padStart(4, "0")}`);
    for (let i = 0; i < names.length; i += 25) {
      await Promise.all(
        names.slice(i, i + 25).map((n) =>
          storage.write(`set/${n}`, ReadableStream.from([enc.encode(n)]))
        ),
      );
    }
    const listed = await storage.list("set");
    assert.equal(listed.length, 1005);
    assert.deepEqual(listed.map((e) => e.name), names);
    await storage.remove("set");
    assert.deepEqual(await storage.list(""), []);
  });
});

Deno.test("S3Storage: a 100 MB upload and download keep memory bounded", async () => {
  await withS3(async (s3) => {
    const probe = new URL("../../tests/helpers/s3_memory_probe.ts", import.meta.url).pathname;
    const config = new URL("../../deno.json", import.meta.url).pathname;
    const mb = (n: number) => Math.round(n / 1e6);
    // Kept alive: about (parts in flight + 1) x 8 MiB. As is: plus the garbage V8 tolerates.
    for (const [mode, limit] of [["collect", 80e6], ["natural", 160e6]] as const) {
      const out = await run(Deno.execPath(), [
        "run",
        "--quiet",
        "--no-prompt",
        "--cached-only",
        `--config=${config}`,
        "--allow-net=127.0.0.1",
        "--allow-env",
        "--allow-read",
        "--v8-flags=--expose-gc",
        probe,
        s3.endpoint,
        s3.bucket,
        String(100 * 1000 * 1000),
        String(8 * MiB),
        mode,
      ], {
        describe: "S3 memory probe",
        env: { AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey },
      });
      const r = JSON.parse(out.stdout) as {
        baseline: number;
        uploadPeak: number;
        downloadPeak: number;
        written: string;
        read: string;
      };
      assert.equal(r.read, r.written, "the download matches what was uploaded");
      for (
        const [what, peak] of [["upload", r.uploadPeak], ["download", r.downloadPeak]] as const
      ) {
        assert.ok(
          peak - r.baseline < limit,
          `${what} (${mode}): RSS grew ${mb(peak - r.baseline)} MB over ${mb(r.baseline)} MB`,
        );
      }
    }
    assert.deepEqual(await s3.pendingUploads(), []);
  });
});

Deno.test("partSizer keeps every upload within 10,000 parts of 5 MiB to 5 GiB", () => {
  const capacity = (size: (n: number) => number, parts = MAX_PARTS) => {
    let total = 0;
    for (let n = 1; n <= parts; n++) total += size(n);
    return total;
  };
  const TiB = 1024 ** 4;
  const noHint = partSizer(8 * MiB);
  assert.equal(noHint(1), 8 * MiB);
  assert.equal(noHint(1000), 8 * MiB, "small uploads keep small parts");
  assert.equal(noHint(1001), 16 * MiB);
  assert.ok(capacity(noHint) >= 5 * TiB, "8 MiB parts growing reach S3's 5 TiB limit");
  assert.ok(capacity(partSizer(MIN_PART_SIZE)) >= 4.8 * TiB);
  for (
    const [hint, expectedFirst] of [
      [1e6, 8 * MiB],
      [100e9, 11 * MiB],
      [5 * TiB, 583 * MiB],
    ]
  ) {
    const size = partSizer(8 * MiB, hint);
    assert.equal(size(1), expectedFirst, `first part for a ${hint}-byte hint`);
    assert.ok(capacity(size, 9000) >= hint, "the hinted size fits in 9000 parts");
    assert.ok(capacity(size) >= Math.min(20 * hint, 5 * TiB), "room for a hint 20 times too low");
    assert.ok(capacity(size) >= 2.5e12, "room for 2.5 TB whatever the hint");
  }
  for (const size of [noHint, partSizer(MIN_PART_SIZE, 5 * TiB), partSizer(MAX_PART_SIZE)]) {
    for (let n = 1; n <= MAX_PARTS; n++) {
      assert.ok(size(n) >= MIN_PART_SIZE && size(n) <= MAX_PART_SIZE);
      if (n > 1) assert.ok(size(n) >= size(n - 1), "parts never shrink");
    }
  }
});

Deno.test("s3OptionsFromEnv takes credentials and region from the AWS variables", () => {
  assert.deepEqual(
    s3OptionsFromEnv({
      AWS_ACCESS_KEY_ID: "AKID",
      AWS_SECRET_ACCESS_KEY: "SECRET",
      AWS_SESSION_TOKEN: "TOKEN",
      AWS_DEFAULT_REGION: "eu-west-1",
    }),
    {
      credentials: { accessKeyId: "AKID", secretAccessKey: "SECRET", sessionToken: "TOKEN" },
      region: "eu-west-1",
    },
  );
  assert.deepEqual(
    s3OptionsFromEnv({
      AWS_ACCESS_KEY_ID: "AKID",
      AWS_SECRET_ACCESS_KEY: "SECRET",
      AWS_REGION: "eu-central-1",
      AWS_DEFAULT_REGION: "eu-west-1",
    }),
    { credentials: { accessKeyId: "AKID", secretAccessKey: "SECRET" }, region: "eu-central-1" },
  );
  assert.throws(() => s3OptionsFromEnv({ AWS_ACCESS_KEY_ID: "AKID" }), (err) => {
    codeIs("config")(err);
    assert.match((err as Error).message, /AWS_SECRET_ACCESS_KEY is not set/);
    return true;
  });
  assert.throws(
    () => s3OptionsFromEnv({}),
    /AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set/,
  );
});

Deno.test("S3 locations and endpoints are checked and never echo credentials", () => {
  assert.deepEqual(parseS3Location("s3://backups"), { bucket: "backups", prefix: "" });
  assert.deepEqual(parseS3Location("s3://backups/db/prod/"), {
    bucket: "backups",
    prefix: "db/prod",
  });
  const credentials = { accessKeyId: "AKID", secretAccessKey: "SECRET" };
  assert.equal(new S3Storage("s3://backups/db/", { credentials }).location, "s3://backups/db");
  assert.equal(
    new S3Storage("s3://backups", { credentials, region: "eu-west-1" }).endpoint,
    "https://s3.eu-west-1.amazonaws.com",
  );
  for (const bad of ["backups", "s3://", "s3://b", "s3://bucket/a/../b", "file:///x"]) {
    assert.throws(() => parseS3Location(bad), codeIs("config"), bad);
  }
  assert.throws(
    () => new S3Storage("s3://backups", { credentials, endpoint: "http://user:hunter2@host" }),
    (err) => {
      codeIs("config")(err);
      assert.ok(!(err as Error).message.includes("hunter2"));
      return true;
    },
  );
  assert.throws(() => new S3Storage("s3://backups", { credentials, partSize: MiB }), /part size/);
});

Deno.test("S3Storage: a download that stalls is asked for again from where it stopped", async () => {
  await withS3(async (s3) => {
    const data = pseudoRandom(2 * MiB + 5, 21);
    await storageOn(s3, "stall").write("f", chunked(data, MiB));
    let stalled = 0;
    await withProxy(s3, (req) => {
      if (req.method !== "GET" || req.url.searchParams.has("list-type") || stalled >= 1) {
        return undefined;
      }
      stalled++;
      return { stallBodyAfter: 700_000 };
    }, async (proxy) => {
      const storage = storageOn(s3, "stall", { endpoint: proxy.endpoint, idleTimeoutMs: 300 });
      assert.equal(sha256(await readAll(await storage.read("f"))), sha256(data));
      const ranges = proxy.requests.filter((r) => r.method === "GET").map((r) => r.range);
      assert.deepEqual(ranges, [null, "bytes=700000-"]);
    });
  });
});
