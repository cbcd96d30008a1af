import { strict as assert } from "node:assert";
import { randomBytes } from "node:crypto";
import { DbBackupError } from "../errors.ts";
import {
  decryptStream,
  DEFAULT_CHUNK_SIZE,
  encryptedSize,
  encryptStream,
  type FileContext,
  HEADER_BYTES,
  looksEncrypted,
  openBytes,
  sealBytes,
} from "./stream.ts";

const ctx: FileContext = { setId: "20261127T030000Z-single-shop", path: "db/shop/data.dump" };
const key = new Uint8Array(randomBytes(32));
const CS = DEFAULT_CHUNK_SIZE;

/** A deterministic generator of piece sizes, so a failing case can be replayed. */
function pieceSizes(seed: number, max: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    // Mostly small pieces, sometimes single bytes, sometimes several chunks at once.
    const kind = s % 4;
    return kind === 0 ? 1 : kind === 3 ? 1 + (s % (3 * max)) : 1 + (s % 4096);
  };
}

function split(bytes: Uint8Array, next: () => number): Uint8Array[] {
  const pieces: Uint8Array[] = [];
  for (let at = 0; at < bytes.byteLength;) {
    const n = Math.min(next(), bytes.byteLength - at);
    pieces.push(bytes.slice(at, at + n));
    at += n;
  }
  return pieces;
}

async function through(
  pieces: Uint8Array[],
  stream: TransformStream<Uint8Array, Uint8Array>,
): Promise<Uint8Array> {
  const out = await new Response(ReadableStream.from(pieces).pipeThrough(stream)).arrayBuffer();
  return new Uint8Array(out);
}

function random(n: number): Uint8Array {
  return new Uint8Array(randomBytes(n));
}

/** Asserts that `fn` throws a verification error whose message matches `pattern`. */
function assertCorrupt(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof DbBackupError, `not a DbBackupError: ${err}`);
    assert.equal(err.code, "verification");
    assert.match(err.message, pattern);
    assert.match(err.message, /"db\/shop\/data\.dump"/);
    return true;
  });
}

Deno.test("encrypt then decrypt gives the input back at every size and input chunking", async (t) => {
  const sizes = [0, 1, 17, CS - 1, CS, CS + 1, 2 * CS, 3 * CS - 5, 3 * 1024 * 1024 + 7];
  for (const [i, size] of sizes.entries()) {
    await t.step(`${size} bytes`, async () => {
      const plain = random(size);
      const sealed = await through(split(plain, pieceSizes(i + 1, CS)), encryptStream(key, ctx));
      assert.equal(sealed.byteLength, encryptedSize(size));
      assert.ok(looksEncrypted(sealed));
      const back = await through(split(sealed, pieceSizes(i + 100, CS)), decryptStream(key, ctx));
      assert.deepEqual(back, plain);
    });
  }
});

Deno.test("one huge write and byte-by-byte writes both round-trip", async () => {
  const plain = random(5 * 1024 * 1024 + 3);
  const sealed = await through([plain], encryptStream(key, ctx));
  assert.deepEqual(await through([sealed], decryptStream(key, ctx)), plain);

  const small = random(1000);
  const bytewise = (b: Uint8Array) => Array.from(b, (x) => Uint8Array.of(x));
  const sealedSmall = await through(bytewise(small), encryptStream(key, ctx, { chunkSize: 64 }));
  assert.deepEqual(await through(bytewise(sealedSmall), decryptStream(key, ctx)), small);
});

Deno.test("sealBytes and the streams write the same format", async () => {
  const plain = random(3 * CS + 11);
  assert.deepEqual(await through([sealBytes(key, ctx, plain)], decryptStream(key, ctx)), plain);
  assert.deepEqual(openBytes(key, ctx, await through([plain], encryptStream(key, ctx))), plain);
  assert.deepEqual(openBytes(key, ctx, sealBytes(key, ctx, new Uint8Array())), new Uint8Array());
});

Deno.test("the same input encrypts differently each time (a fresh salt per file)", () => {
  const plain = random(100);
  assert.notDeepEqual(sealBytes(key, ctx, plain), sealBytes(key, ctx, plain));
});

Deno.test("output is passed on chunk by chunk, before the input ends", async () => {
  const enc = encryptStream(key, ctx);
  const writer = enc.writable.getWriter();
  const reader = enc.readable.getReader();
  void writer.write(random(4 * CS));
  const header = await reader.read();
  const first = await reader.read();
  assert.equal(header.value?.byteLength, HEADER_BYTES);
  assert.equal(first.value?.byteLength, CS + 16);
  await reader.cancel();

  const sealed = sealBytes(key, ctx, random(4 * CS));
  const dec = decryptStream(key, ctx);
  const dWriter = dec.writable.getWriter();
  const dReader = dec.readable.getReader();
  void dWriter.write(sealed.subarray(0, HEADER_BYTES + 2 * (CS + 16) + 1));
  assert.equal((await dReader.read()).value?.byteLength, CS);
  await dReader.cancel();
});

Deno.test("every flipped byte anywhere in the file is detected", () => {
  const sealed = sealBytes(key, ctx, random(4 * 64 + 10), { chunkSize: 64 });
  for (let i = 0; i < sealed.byteLength; i++) {
    const bad = sealed.slice();
    bad[i] ^= 0x01;
    assert.throws(
      () => openBytes(key, ctx, bad),
      (err: unknown) => err instanceof DbBackupError && err.code === "verification",
      `flipped byte ${i} was not detected`,
    );
  }
});

Deno.test("damage is reported with a message that names the file and the place", async (t) => {
  const chunk = 64 + 16;
  const sealed = sealBytes(key, ctx, random(4 * 64 + 10), { chunkSize: 64 });
  const flip = (at: number) => {
    const bad = sealed.slice();
    bad[at] ^= 0x80;
    return bad;
  };
  const cases: [string, Uint8Array, RegExp][] = [
    ["magic", flip(0), /is not a dbbackup encrypted file/],
    ["version", flip(8), /has format version 129; this dbbackup reads version 1/],
    ["cipher id", flip(9), /unknown cipher id/],
    ["chunk size", flip(10), /damaged header \(chunk size/],
    ["salt", flip(20), /chunk 0 failed authentication \(wrong key, tampered/],
    ["chunk 2 ciphertext", flip(HEADER_BYTES + 2 * chunk + 5), /chunk 2 failed authentication/],
    ["chunk 1 tag", flip(HEADER_BYTES + 2 * chunk - 1), /chunk 1 failed authentication/],
    ["last chunk", flip(sealed.byteLength - 1), /truncated or damaged: its last chunk 4/],
  ];
  for (const [name, bad, pattern] of cases) {
    await t.step(name, () => assertCorrupt(() => openBytes(key, ctx, bad), pattern));
  }
});

Deno.test("a truncated file never decrypts", async (t) => {
  const chunk = 64 + 16;
  const sealed = sealBytes(key, ctx, random(4 * 64 + 10), { chunkSize: 64 });
  const cases: [string, number, RegExp][] = [
    ["empty", 0, /is empty/],
    ["inside the magic", 5, /truncated \(incomplete header\)/],
    ["inside the header", HEADER_BYTES - 1, /truncated \(incomplete header\)/],
    ["right after the header", HEADER_BYTES, /truncated \(chunk 0 is incomplete or missing\)/],
    ["at a chunk boundary", HEADER_BYTES + 2 * chunk, /truncated \(it ends after chunk 1/],
    ["inside a chunk", HEADER_BYTES + 2 * chunk + 30, /truncated or damaged/],
    ["inside a tag", HEADER_BYTES + 2 * chunk + 8, /truncated \(chunk 2 is incomplete/],
    ["one byte short", sealed.byteLength - 1, /truncated or damaged/],
  ];
  for (const [name, length, pattern] of cases) {
    await t.step(
      name,
      () => assertCorrupt(() => openBytes(key, ctx, sealed.slice(0, length)), pattern),
    );
  }
  await t.step("through decryptStream", async () => {
    const cut = sealBytes(key, ctx, random(3 * CS)).slice(0, HEADER_BYTES + 2 * (CS + 16));
    await assert.rejects(through([cut], decryptStream(key, ctx)), /is truncated/);
  });
});

Deno.test("a file whose last chunk is full, cut after a chunk, is truncated", () => {
  const sealed = sealBytes(key, ctx, random(3 * 64), { chunkSize: 64 });
  assert.equal(sealed.byteLength, HEADER_BYTES + 3 * 80);
  assertCorrupt(
    () => openBytes(key, ctx, sealed.slice(0, HEADER_BYTES + 2 * 80)),
    /truncated \(it ends after chunk 1/,
  );
});

Deno.test("swapped chunks fail authentication", () => {
  const chunk = 64 + 16;
  const sealed = sealBytes(key, ctx, random(4 * 64 + 10), { chunkSize: 64 });
  const swapped = sealed.slice();
  const one = HEADER_BYTES + chunk;
  swapped.set(sealed.subarray(one + chunk, one + 2 * chunk), one);
  swapped.set(sealed.subarray(one, one + chunk), one + chunk);
  assertCorrupt(() => openBytes(key, ctx, swapped), /chunk 1 failed authentication/);
});

Deno.test("a file does not decrypt as another path, another set or with another key", () => {
  const sealed = sealBytes(key, ctx, random(1000));
  const wrong: [string, Uint8Array, FileContext][] = [
    ["path", key, { ...ctx, path: "db/shop/other.dump" }],
    ["set id", key, { ...ctx, setId: "20261128T030000Z-single-shop" }],
    ["data key", new Uint8Array(randomBytes(32)), ctx],
  ];
  for (const [what, k, c] of wrong) {
    assert.throws(
      () => openBytes(k, c, sealed),
      (err: unknown) =>
        err instanceof DbBackupError && err.code === "verification" &&
        /chunk 0 failed authentication/.test(err.message),
      `decrypted with another ${what}`,
    );
  }
});

Deno.test("data appended after the last chunk is rejected", () => {
  const partialLast = sealBytes(key, ctx, random(2 * 64 + 10), { chunkSize: 64 });
  assertCorrupt(
    () => openBytes(key, ctx, concat(partialLast, random(7))),
    /truncated or damaged: its last chunk 2/,
  );
  const fullLast = sealBytes(key, ctx, random(2 * 64), { chunkSize: 64 });
  assertCorrupt(
    () => openBytes(key, ctx, concat(fullLast, random(7))),
    /unexpected data after its last chunk 1/,
  );
  const twice = sealBytes(key, ctx, random(10), { chunkSize: 64 });
  assertCorrupt(() => openBytes(key, ctx, concat(twice, twice)), /chunk 0 failed authentication/);
});

Deno.test("error messages carry no key material", () => {
  const sealed = sealBytes(key, ctx, random(100));
  sealed[HEADER_BYTES] ^= 1;
  const hexKey = Array.from(key, (b) => b.toString(16).padStart(2, "0")).join("");
  try {
    openBytes(key, ctx, sealed);
    assert.fail("decrypted damaged data");
  } catch (err) {
    const message = (err as Error).message;
    assert.ok(!message.includes(hexKey) && !message.includes(btoa(String.fromCharCode(...key))));
  }
});

Deno.test("bad arguments are programming errors, not corrupt files", () => {
  assert.throws(() => encryptStream(new Uint8Array(16), ctx), TypeError);
  assert.throws(() => encryptStream(key, { setId: "", path: "x" }), TypeError);
  assert.throws(() => encryptStream(key, ctx, { chunkSize: 10 }), RangeError);
});

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.byteLength + b.byteLength);
  out.set(a);
  out.set(b, a.byteLength);
  return out;
}
