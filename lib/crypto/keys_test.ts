import { strict as assert } from "node:assert";
import { DbBackupError } from "../errors.ts";
import { generateIdentity, parseIdentity, parseRecipient } from "./identity.ts";
import {
  DEFAULT_SCRYPT,
  describeSlot,
  generateDataKey,
  generateKeyFileBytes,
  keyFileId,
  type KeyHolder,
  type KeyOpener,
  type KeySlot,
  keySlotProblem,
  parseKeyFile,
  unwrapKey,
  wrapKey,
} from "./keys.ts";

const setId = "20261127T030000Z-single-shop";
/** Cheap scrypt for tests; the default costs ~0.4 s per try. */
const fast = { N: 2 ** 10, r: 8, p: 1 };

async function assertKeyError(promise: Promise<unknown>, pattern: RegExp): Promise<DbBackupError> {
  let caught: unknown;
  try {
    await promise;
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof DbBackupError, `expected a DbBackupError, got ${caught}`);
  assert.equal(caught.code, "key");
  assert.equal(caught.exitCode, 5);
  assert.match(caught.message, pattern);
  return caught;
}

/** A slot as the manifest gives it back: through JSON. */
function viaJson(slot: KeySlot): unknown {
  return JSON.parse(JSON.stringify(slot));
}

function holders() {
  const identity = generateIdentity();
  const keyFile = generateKeyFileBytes();
  const recipient = parseRecipient(identity.recipientText, "recipient file");
  const wrap: KeyHolder[] = [
    { kind: "passphrase", passphrase: "correct horse", params: fast },
    { kind: "keyfile", key: keyFile },
    { kind: "recipient", publicKey: recipient.publicKey },
  ];
  const open: KeyOpener[] = [
    { kind: "passphrase", passphrase: "correct horse" },
    { kind: "keyfile", key: keyFile },
    { kind: "identity", privateKey: parseIdentity(identity.identityText, "identity").privateKey },
  ];
  return { wrap, open, keyFile, recipient };
}

Deno.test("data keys and key files are 32 fresh random bytes", () => {
  assert.equal(generateDataKey().byteLength, 32);
  assert.notDeepEqual(generateDataKey(), generateDataKey());
  assert.equal(generateKeyFileBytes().byteLength, 32);
  assert.match(keyFileId(generateKeyFileBytes()), /^[0-9a-f]{16}$/);
});

Deno.test("each kind of holder wraps the data key and opens it again from JSON", async () => {
  const dataKey = generateDataKey();
  const { wrap, open } = holders();
  for (const [i, holder] of wrap.entries()) {
    const slot = viaJson(await wrapKey(dataKey, setId, holder));
    assert.equal(keySlotProblem(slot), undefined);
    assert.deepEqual(await unwrapKey([slot], setId, [open[i]]), dataKey);
  }
});

Deno.test("a set with several slots opens with any one holder", async () => {
  const dataKey = generateDataKey();
  const { wrap, open } = holders();
  const slots = await Promise.all(wrap.map((h) => wrapKey(dataKey, setId, h)));
  for (const opener of open) assert.deepEqual(await unwrapKey(slots, setId, [opener]), dataKey);
  // A wrong opener next to a right one does no harm.
  const wrongKey: KeyOpener = { kind: "keyfile", key: generateKeyFileBytes() };
  assert.deepEqual(await unwrapKey(slots, setId, [wrongKey, open[0]]), dataKey);
});

Deno.test("the default passphrase cost is scrypt N=2^17 r=8 p=1, recorded in the slot", async () => {
  const dataKey = generateDataKey();
  const slot = await wrapKey(dataKey, setId, { kind: "passphrase", passphrase: "pw" });
  assert.deepEqual(
    { type: slot.type, N: (slot as { N: number }).N, r: (slot as { r: number }).r },
    { type: "passphrase", N: DEFAULT_SCRYPT.N, r: DEFAULT_SCRYPT.r },
  );
  assert.deepEqual(
    await unwrapKey([viaJson(slot)], setId, [{ kind: "passphrase", passphrase: "pw" }]),
    dataKey,
  );
});

Deno.test("the wrong passphrase, key file or identity is a key error that says what would open the set", async () => {
  const dataKey = generateDataKey();
  const { wrap, keyFile, recipient } = holders();
  const slots = await Promise.all(wrap.map((h) => wrapKey(dataKey, setId, h)));
  const otherKey = generateKeyFileBytes();
  const otherIdentity = parseIdentity(generateIdentity().identityText, "identity");
  const opensWith = new RegExp(
    `this set can be opened by: passphrase, key file ${
      keyFileId(keyFile)
    }, recipient ${recipient.fingerprint}$`,
  );
  await assertKeyError(
    unwrapKey(slots, setId, [{ kind: "passphrase", passphrase: "Correct horse" }]),
    /no key slot opens with the given passphrase;/,
  );
  await assertKeyError(unwrapKey(slots, setId, [{ kind: "keyfile", key: otherKey }]), opensWith);
  await assertKeyError(
    unwrapKey(slots, setId, [{ kind: "keyfile", key: otherKey }]),
    new RegExp(`given key file ${keyFileId(otherKey)};`),
  );
  await assertKeyError(
    unwrapKey(slots, setId, [{ kind: "identity", privateKey: otherIdentity.privateKey }]),
    new RegExp(`given identity for recipient ${otherIdentity.fingerprint};`),
  );
});

Deno.test("no holder at all asks for one", async () => {
  const slot = await wrapKey(generateDataKey(), setId, {
    kind: "keyfile",
    key: generateKeyFileBytes(),
  });
  await assertKeyError(
    unwrapKey([slot], setId, []),
    /^backup 20261127T030000Z-single-shop is encrypted: give DBBACKUP_PASSPHRASE, --passphrase-file, --key-file or --identity$/,
  );
});

Deno.test("a slot copied into another set does not open", async () => {
  const dataKey = generateDataKey();
  const { wrap, open } = holders();
  const other = "20261128T030000Z-single-shop";
  for (const [i, holder] of wrap.entries()) {
    const slot = await wrapKey(dataKey, setId, holder);
    await assertKeyError(
      unwrapKey([slot], other, [open[i]]),
      /cannot open backup 20261128T030000Z-single-shop/,
    );
  }
  const slot = await wrapKey(dataKey, setId, wrap[1]);
  await assertKeyError(unwrapKey([slot], other, [open[1]]), /copied from another set/);
});

Deno.test("a slot with any field changed does not open", async () => {
  const dataKey = generateDataKey();
  const { wrap, open } = holders();
  for (const [i, holder] of wrap.entries()) {
    const slot = await wrapKey(dataKey, setId, holder) as unknown as Record<string, unknown>;
    for (const field of Object.keys(slot).filter((f) => f !== "type")) {
      const bad = { ...slot };
      if (typeof bad[field] === "number") bad[field] = (bad[field] as number) * 2;
      else if (field === "kdf") bad[field] = "argon2id";
      else if (field === "keyId") bad[field] = "0123456789abcdef";
      else {
        const bytes = atob(bad[field] as string);
        bad[field] = btoa(String.fromCharCode(bytes.charCodeAt(0) ^ 1) + bytes.slice(1));
      }
      await assert.rejects(
        unwrapKey([bad], setId, [open[i]]),
        (err: unknown) => err instanceof DbBackupError && err.code === "key",
        `${slot.type} slot opened with "${field}" changed`,
      );
    }
  }
});

Deno.test("scrypt parameters out of bounds are refused before any work", async (t) => {
  const dataKey = generateDataKey();
  const slot = await wrapKey(dataKey, setId, {
    kind: "passphrase",
    passphrase: "pw",
    params: fast,
  });
  const opener: KeyOpener = { kind: "passphrase", passphrase: "pw" };
  const cases: [string, Record<string, number>, RegExp][] = [
    ["N too large", { N: 2 ** 30 }, /out of bounds/],
    ["N not a power of two", { N: 1000 }, /power of two/],
    ["r zero", { r: 0 }, /out of bounds/],
    ["p too large", { p: 1000 }, /out of bounds/],
    ["too much work", { N: 2 ** 20, r: 16, p: 16 }, /too much memory or time/],
    ["fractional", { r: 1.5 }, /whole numbers/],
  ];
  for (const [name, change, pattern] of cases) {
    await t.step(name, async () => {
      const bad = { ...slot, ...change };
      assert.match(keySlotProblem(bad) ?? "", pattern);
      const started = performance.now();
      await assertKeyError(unwrapKey([bad], setId, [opener]), /an unusable slot \(scrypt N=/);
      assert.ok(performance.now() - started < 1000, "the refused slot still ran scrypt");
      await assert.rejects(
        wrapKey(dataKey, setId, {
          kind: "passphrase",
          passphrase: "pw",
          params: { ...fast, ...change },
        }),
        RangeError,
      );
    });
  }
});

Deno.test("damaged or unknown slots are described, not trusted", () => {
  assert.equal(keySlotProblem(null), "not an object");
  assert.match(
    keySlotProblem({ type: "tpm", wrapped: btoa("x".repeat(48)) }) ?? "",
    /unknown slot type "tpm"/,
  );
  assert.match(
    keySlotProblem({ type: "keyfile", keyId: "x", salt: "", wrapped: "" }) ?? "",
    /bad "wrapped"/,
  );
  assert.match(describeSlot({ type: "keyfile" }), /^an unusable slot/);
});

Deno.test("describeSlot names the holder and never a secret", async () => {
  const dataKey = generateDataKey();
  const { wrap, keyFile, recipient } = holders();
  const slots = await Promise.all(wrap.map((h) => wrapKey(dataKey, setId, h)));
  assert.deepEqual(slots.map(describeSlot), [
    "passphrase",
    `key file ${keyFileId(keyFile)}`,
    `recipient ${recipient.fingerprint}`,
  ]);
  const text = JSON.stringify(slots);
  assert.ok(!text.includes("correct horse"));
  assert.ok(!text.includes(btoa(String.fromCharCode(...dataKey))));
  assert.ok(!text.includes(btoa(String.fromCharCode(...keyFile))));
});

Deno.test("a key file must be exactly 32 bytes", () => {
  const key = generateKeyFileBytes();
  assert.deepEqual(parseKeyFile(key, 'key file "k"'), key);
  const cases: [Uint8Array, RegExp][] = [
    [new Uint8Array(0), /key file "k" must hold exactly 32 raw bytes, it holds 0$/],
    [new Uint8Array(31), /it holds 31$/],
    [new Uint8Array(33).fill(0xff), /it holds 33$/],
    [
      new TextEncoder().encode(btoa(String.fromCharCode(...key)) + "\n"),
      /it holds 45; it looks like text/,
    ],
    [new TextEncoder().encode(generateIdentity().identityText), /looks like an identity file/],
  ];
  for (const [bytes, pattern] of cases) {
    assert.throws(() => parseKeyFile(bytes, 'key file "k"'), (err: unknown) => {
      assert.ok(err instanceof DbBackupError);
      assert.equal(err.code, "key");
      assert.match(err.message, pattern);
      return true;
    });
  }
});

Deno.test("a low-order recipient key is refused", async () => {
  await assertKeyError(
    wrapKey(generateDataKey(), setId, { kind: "recipient", publicKey: new Uint8Array(32) }),
    /not usable/,
  );
});
