import { strict as assert } from "node:assert";
import { ChecksumStream } from "./checksum.ts";

const enc = new TextEncoder();

async function digestOf(chunks: Uint8Array[]) {
  const sum = new ChecksumStream();
  const passed = new Uint8Array(
    await new Response(ReadableStream.from(chunks).pipeThrough(sum)).arrayBuffer(),
  );
  return { digest: await sum.digest, passed };
}

Deno.test("ChecksumStream: sha256 and byte count of known inputs", async (t) => {
  const cases: { name: string; chunks: Uint8Array[]; sha256: string; bytes: number }[] = [
    {
      name: "empty",
      chunks: [],
      sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
      bytes: 0,
    },
    {
      name: '"abc"',
      chunks: [enc.encode("abc")],
      sha256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
      bytes: 3,
    },
    {
      name: "the NIST two-block message, split into odd chunks",
      chunks: [
        enc.encode("abcdbcdecdefdefgefghfghig"),
        enc.encode(""),
        enc.encode("hijhijkijkljklmklmnlmnomnopnopq"),
      ],
      sha256: "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
      bytes: 56,
    },
    {
      name: "one million 'a' in 1000-byte chunks",
      chunks: Array.from({ length: 1000 }, () => new Uint8Array(1000).fill(0x61)),
      sha256: "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
      bytes: 1_000_000,
    },
  ];
  for (const c of cases) {
    await t.step(c.name, async () => {
      const { digest, passed } = await digestOf(c.chunks);
      assert.deepEqual(digest, { sha256: c.sha256, bytes: c.bytes });
      // The bytes pass through unchanged.
      const all = new Uint8Array(await new Blob(c.chunks as BlobPart[]).arrayBuffer());
      assert.deepEqual(passed, all);
    });
  }
});

Deno.test("ChecksumStream: binary bytes, including zero and 0xff, are counted exactly", async () => {
  const data = new Uint8Array(256 * 3);
  for (let i = 0; i < data.length; i++) data[i] = i & 0xff;
  const { digest } = await digestOf([
    data.subarray(0, 1),
    data.subarray(1, 500),
    data.subarray(500),
  ]);
  assert.equal(digest.bytes, 768);
  const expected = new Uint8Array(await crypto.subtle.digest("SHA-256", data));
  assert.equal(digest.sha256, [...expected].map((b) => b.toString(16).padStart(2, "0")).join(""));
});

Deno.test("ChecksumStream: digest rejects when the stream is cancelled", async () => {
  const sum = new ChecksumStream();
  const reader = sum.readable.getReader();
  await reader.cancel(new Error("consumer gave up"));
  await assert.rejects(sum.digest, /consumer gave up/);
});

Deno.test("ChecksumStream: digest does not resolve before the end of the stream", async () => {
  const sum = new ChecksumStream();
  const writer = sum.writable.getWriter();
  const reader = sum.readable.getReader();
  let settled = false;
  sum.digest.then(() => settled = true, () => settled = true);
  // Not awaited: the write completes only once the chunk is read (backpressure).
  const written = writer.write(enc.encode("part"));
  assert.deepEqual((await reader.read()).value, enc.encode("part"));
  await written;
  await new Promise((r) => setTimeout(r, 10));
  assert.equal(settled, false);
  const closed = writer.close();
  assert.equal((await reader.read()).done, true);
  await closed;
  assert.equal((await sum.digest).bytes, 4);
});
