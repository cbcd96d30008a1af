/**
 * The data key of a backup set and the key slots that wrap it (an envelope, as in LUKS).
 *
 * One random 32-byte data key encrypts every file of a set. Each key slot in the manifest
 * wraps that key with ChaCha20-Poly1305 under a key derived from one holder: a passphrase
 * (scrypt), a key file (32 raw random bytes) or a recipient public key (X25519). Any one
 * matching holder opens the set. A slot's AAD binds "dbbackup key slot v1", its type, its
 * public fields and the set id, so a slot copied into another set's manifest does not open.
 * Each slot's wrapping key is used once (fresh salt or ephemeral key), so the nonce is zero.
 */
import { randomBytes, scrypt } from "node:crypto";
import { DbBackupError } from "../errors.ts";
import {
  checkKeyLength,
  concat,
  fromBase64,
  hkdf,
  KEY_BYTES,
  NONCE_BYTES,
  open,
  seal,
  shortId,
  TAG_BYTES,
  toBase64,
} from "./_aead.ts";
import {
  ephemeralKeyPair,
  IDENTITY_PREFIX,
  identityFromPrivateKey,
  RECIPIENT_PREFIX,
  recipientFingerprint,
  sharedSecret,
} from "./identity.ts";

export interface ScryptParams {
  /** CPU/memory cost, a power of two. */
  N: number;
  r: number;
  p: number;
}

/** ~0.4 s and 128 MiB on one core. */
export const DEFAULT_SCRYPT: Readonly<ScryptParams> = Object.freeze({ N: 2 ** 17, r: 8, p: 1 });

export interface PassphraseSlot {
  type: "passphrase";
  kdf: "scrypt";
  N: number;
  r: number;
  p: number;
  /** base64 */
  salt: string;
  /** base64 of the sealed data key (32 bytes + 16-byte tag) */
  wrapped: string;
}

export interface KeyFileSlot {
  type: "keyfile";
  /** 16 hex digits: which key file opens this slot (see keyFileId). */
  keyId: string;
  salt: string;
  wrapped: string;
}

export interface RecipientSlot {
  type: "recipient";
  /** 16 hex digits: the recipient's fingerprint (see recipientFingerprint). */
  keyId: string;
  /** base64 of the ephemeral X25519 public key. */
  ephemeral: string;
  wrapped: string;
}

/** A JSON-serialisable entry of the manifest's key slot list. */
export type KeySlot = PassphraseSlot | KeyFileSlot | RecipientSlot;

/** Who a new slot is for (backup). */
export type KeyHolder =
  | { kind: "passphrase"; passphrase: string; params?: ScryptParams }
  | { kind: "keyfile"; key: Uint8Array }
  | { kind: "recipient"; publicKey: Uint8Array };

/** What the user gave to open a set (restore, verify). */
export type KeyOpener =
  | { kind: "passphrase"; passphrase: string }
  | { kind: "keyfile"; key: Uint8Array }
  | { kind: "identity"; privateKey: Uint8Array };

/** A slot without its sealed key: what the AAD binds. */
type SlotFields =
  | Omit<PassphraseSlot, "wrapped">
  | Omit<KeyFileSlot, "wrapped">
  | Omit<RecipientSlot, "wrapped">;

const SLOT_LABEL = "dbbackup key slot v1";
const SALT_BYTES = 32;
const WRAPPED_BYTES = KEY_BYTES + TAG_BYTES;
const ZERO_NONCE = new Uint8Array(NONCE_BYTES);
const MAX_SCRYPT_MEMORY = 1024 * 1024 * 1024;
/** N * r * p above this is over 16 times the default work. */
const MAX_SCRYPT_WORK = 2 ** 24;

/** A new random data key for a backup set. */
export function generateDataKey(): Uint8Array {
  return new Uint8Array(randomBytes(KEY_BYTES));
}

/** The contents of a new key file: 32 raw random bytes. */
export function generateKeyFileBytes(): Uint8Array {
  return new Uint8Array(randomBytes(KEY_BYTES));
}

/** The short public id of a key file, recorded in its slots. */
export function keyFileId(key: Uint8Array): string {
  return shortId("dbbackup key id", key);
}

/**
 * The key in a key file's bytes; `source` names it for messages (`key file "/etc/k.key"`).
 * Rejects anything but exactly 32 bytes.
 */
export function parseKeyFile(bytes: Uint8Array, source: string): Uint8Array {
  if (bytes.byteLength === KEY_BYTES) return new Uint8Array(bytes);
  const text = new TextDecoder().decode(bytes.subarray(0, 200));
  const hint = text.includes(IDENTITY_PREFIX)
    ? "; it looks like an identity file: give it with --identity"
    : text.includes(RECIPIENT_PREFIX)
    ? "; it looks like a recipient (public key), which cannot open a backup"
    : /^[\x20-\x7e\s]+$/.test(text)
    ? "; it looks like text, but key files are raw random bytes"
    : "";
  throw new DbBackupError(
    "key",
    `${source} must hold exactly ${KEY_BYTES} raw bytes, it holds ${bytes.byteLength}${hint}`,
  );
}

/** Checks scrypt parameters against the bounds a manifest may ask for; a problem or undefined. */
export function scryptParamsProblem(params: ScryptParams): string | undefined {
  const { N, r, p } = params;
  const shown = `scrypt N=${N} r=${r} p=${p}`;
  if (![N, r, p].every(Number.isSafeInteger) || N < 2 || (N & (N - 1)) !== 0) {
    return `${shown}: N must be a power of two and r, p whole numbers`;
  }
  if (N > 2 ** 20 || r < 1 || r > 32 || p < 1 || p > 16) {
    return `${shown} is out of bounds (N <= 2^20, r 1-32, p 1-16)`;
  }
  if (128 * N * r > MAX_SCRYPT_MEMORY || N * r * p > MAX_SCRYPT_WORK) {
    return `${shown} asks for too much memory or time`;
  }
  return undefined;
}

/** A new slot wrapping `dataKey` for one holder, bound to `setId`. */
export async function wrapKey(
  dataKey: Uint8Array,
  setId: string,
  holder: KeyHolder,
): Promise<KeySlot> {
  checkKeyLength(dataKey, "the data key");
  const salt = randomBytes(SALT_BYTES);
  switch (holder.kind) {
    case "passphrase": {
      if (holder.passphrase === "") throw new DbBackupError("key", "the passphrase is empty");
      const { N, r, p } = holder.params ?? DEFAULT_SCRYPT;
      const problem = scryptParamsProblem({ N, r, p });
      if (problem) throw new RangeError(problem);
      const fields = { type: "passphrase", kdf: "scrypt", N, r, p, salt: toBase64(salt) } as const;
      const key = await scryptKey(holder.passphrase, salt, { N, r, p });
      return { ...fields, wrapped: wrap(key, setId, fields, dataKey) };
    }
    case "keyfile": {
      checkKeyLength(holder.key, "a key file key");
      const fields = {
        type: "keyfile",
        keyId: keyFileId(holder.key),
        salt: toBase64(salt),
      } as const;
      const key = keyFileWrappingKey(holder.key, salt);
      return { ...fields, wrapped: wrap(key, setId, fields, dataKey) };
    }
    case "recipient": {
      checkKeyLength(holder.publicKey, "a recipient public key");
      const eph = ephemeralKeyPair();
      const key = recipientWrappingKey(
        eph.privateKey,
        holder.publicKey,
        eph.publicKey,
        holder.publicKey,
      );
      if (!key) {
        throw new DbBackupError(
          "key",
          "the recipient public key is not usable (a low-order point)",
        );
      }
      const fields = {
        type: "recipient",
        keyId: recipientFingerprint(holder.publicKey),
        ephemeral: toBase64(eph.publicKey),
      } as const;
      return { ...fields, wrapped: wrap(key, setId, fields, dataKey) };
    }
  }
}

/**
 * The data key of set `setId`, opened by the first opener that matches a slot. Cheap
 * openers (key files, identities) are tried before passphrases (one scrypt per slot).
 * Slots that are damaged or of an unknown type are skipped and named in the error.
 */
export async function unwrapKey(
  slots: readonly unknown[],
  setId: string,
  openers: readonly KeyOpener[],
): Promise<Uint8Array> {
  if (openers.length === 0) {
    throw new DbBackupError(
      "key",
      `backup ${setId} is encrypted: give DBBACKUP_PASSPHRASE, --passphrase-file, --key-file or --identity`,
    );
  }
  const usable = slots.filter((s): s is KeySlot => keySlotProblem(s) === undefined);
  const cheapFirst = [...openers].sort((a, b) =>
    Number(a.kind === "passphrase") - Number(b.kind === "passphrase")
  );
  const mismatched: string[] = [];
  for (const opener of cheapFirst) {
    for (const slot of usable) {
      const key = await tryOpen(slot, setId, opener);
      if (key) return key;
      if (key === null) mismatched.push(describeSlot(slot));
    }
  }
  const given = openers.map(describeOpener).join(", ");
  const openable = slots.length === 0
    ? "nothing (the manifest has no key slots)"
    : slots.map(describeSlot).join(", ");
  const moved = mismatched.length === 0 ? "" : ` (${mismatched.join(", ")} has the ` +
    "matching key id but does not open: damaged, or copied from another set)";
  throw new DbBackupError(
    "key",
    `cannot open backup ${setId}: no key slot opens with the given ${given}${moved}; ` +
      `this set can be opened by: ${openable}`,
  );
}

/** What a slot needs, for listings and messages: `passphrase`, `key file <id>`, ... */
export function describeSlot(slot: unknown): string {
  const problem = keySlotProblem(slot);
  if (problem) return `an unusable slot (${problem})`;
  const s = slot as KeySlot;
  switch (s.type) {
    case "passphrase":
      return "passphrase";
    case "keyfile":
      return `key file ${s.keyId}`;
    case "recipient":
      return `recipient ${s.keyId}`;
  }
}

/**
 * Why a value read from a manifest is not a usable key slot, or undefined when it is. Checks
 * shape, encodings and scrypt bounds, so nothing expensive runs on a tampered manifest.
 */
export function keySlotProblem(value: unknown): string | undefined {
  if (typeof value !== "object" || value === null) return "not an object";
  const s = value as Record<string, unknown>;
  if (!isBase64Of(s.wrapped, WRAPPED_BYTES)) return `${String(s.type)} slot: bad "wrapped"`;
  switch (s.type) {
    case "passphrase": {
      if (s.kdf !== "scrypt") return `passphrase slot: unknown kdf ${JSON.stringify(s.kdf)}`;
      if (!isBase64Of(s.salt, SALT_BYTES)) return 'passphrase slot: bad "salt"';
      const params = { N: s.N, r: s.r, p: s.p } as ScryptParams;
      return scryptParamsProblem(params);
    }
    case "keyfile":
      if (!isKeyId(s.keyId)) return 'key file slot: bad "keyId"';
      if (!isBase64Of(s.salt, SALT_BYTES)) return 'key file slot: bad "salt"';
      return undefined;
    case "recipient":
      if (!isKeyId(s.keyId)) return 'recipient slot: bad "keyId"';
      if (!isBase64Of(s.ephemeral, KEY_BYTES)) return 'recipient slot: bad "ephemeral"';
      return undefined;
    default:
      return `unknown slot type ${JSON.stringify(s.type)}`;
  }
}

/**
 * The data key if `opener` opens `slot`; undefined when it does not apply or the passphrase
 * is wrong; null when the key id matches but the slot does not open (damaged or moved).
 */
async function tryOpen(
  slot: KeySlot,
  setId: string,
  opener: KeyOpener,
): Promise<Uint8Array | undefined | null> {
  const { wrapped, ...fields } = slot;
  const sealed = fromBase64(wrapped)!;
  if (slot.type === "passphrase" && opener.kind === "passphrase") {
    const key = await scryptKey(opener.passphrase, fromBase64(slot.salt)!, slot);
    return unwrap(key, setId, fields, sealed);
  }
  if (slot.type === "keyfile" && opener.kind === "keyfile") {
    if (opener.key.byteLength !== KEY_BYTES || keyFileId(opener.key) !== slot.keyId) return;
    return unwrap(keyFileWrappingKey(opener.key, fromBase64(slot.salt)!), setId, fields, sealed) ??
      null;
  }
  if (slot.type === "recipient" && opener.kind === "identity") {
    if (opener.privateKey.byteLength !== KEY_BYTES) return;
    const identity = identityFromPrivateKey(opener.privateKey);
    if (identity.fingerprint !== slot.keyId) return;
    const ephemeral = fromBase64(slot.ephemeral)!;
    const key = recipientWrappingKey(opener.privateKey, ephemeral, ephemeral, identity.publicKey);
    return (key && unwrap(key, setId, fields, sealed)) ?? null;
  }
}

function describeOpener(opener: KeyOpener): string {
  switch (opener.kind) {
    case "passphrase":
      return "passphrase";
    case "keyfile":
      return opener.key.byteLength === KEY_BYTES ? `key file ${keyFileId(opener.key)}` : "key file";
    case "identity":
      return opener.privateKey.byteLength === KEY_BYTES
        ? `identity for recipient ${identityFromPrivateKey(opener.privateKey).fingerprint}`
        : "identity";
  }
}

/** The AAD of a slot: label, type, set id and every public field, in a fixed order. */
function slotAad(setId: string, fields: SlotFields): Uint8Array {
  const parts: unknown[] = [SLOT_LABEL, fields.type, setId];
  switch (fields.type) {
    case "passphrase":
      parts.push(fields.kdf, fields.N, fields.r, fields.p, fields.salt);
      break;
    case "keyfile":
      parts.push(fields.keyId, fields.salt);
      break;
    case "recipient":
      parts.push(fields.keyId, fields.ephemeral);
      break;
  }
  return new TextEncoder().encode(JSON.stringify(parts));
}

function wrap(
  key: Uint8Array,
  setId: string,
  fields: SlotFields,
  dataKey: Uint8Array,
): string {
  return toBase64(seal(key, ZERO_NONCE, slotAad(setId, fields), dataKey));
}

function unwrap(
  key: Uint8Array,
  setId: string,
  fields: SlotFields,
  sealed: Uint8Array,
): Uint8Array | undefined {
  const dataKey = open(key, ZERO_NONCE, slotAad(setId, fields), sealed);
  return dataKey && new Uint8Array(dataKey);
}

function scryptKey(
  passphrase: string,
  salt: Uint8Array,
  params: ScryptParams,
): Promise<Uint8Array> {
  const { N, r, p } = params;
  // OpenSSL needs 128 * r * (N + p + 2) bytes; a little headroom on top.
  const maxmem = 128 * r * (N + p + 2) + 1024 * 1024;
  return new Promise((resolve, reject) => {
    scrypt(passphrase.normalize("NFC"), salt, KEY_BYTES, { N, r, p, maxmem }, (err, key) => {
      if (err) reject(err);
      else resolve(new Uint8Array(key));
    });
  });
}

function keyFileWrappingKey(key: Uint8Array, salt: Uint8Array): Uint8Array {
  return hkdf(key, salt, `${SLOT_LABEL} keyfile`);
}

/** HKDF over the X25519 shared secret, salted with both public keys (ephemeral first). */
function recipientWrappingKey(
  privateKey: Uint8Array,
  peerPublic: Uint8Array,
  ephemeralPublic: Uint8Array,
  recipientPublic: Uint8Array,
): Uint8Array | undefined {
  const shared = sharedSecret(privateKey, peerPublic);
  if (!shared || shared.every((b) => b === 0)) return undefined;
  return hkdf(shared, concat(ephemeralPublic, recipientPublic), `${SLOT_LABEL} recipient`);
}

function isBase64Of(value: unknown, bytes: number): boolean {
  return typeof value === "string" && fromBase64(value)?.byteLength === bytes;
}

function isKeyId(value: unknown): boolean {
  return typeof value === "string" && /^[0-9a-f]{16}$/.test(value);
}
