/**
 * X25519 identities (private) and recipients (public) and their one-line text forms.
 *
 * ```
 * recipient file:  dbbackup-recipient-v1:<base64url of the 32-byte public key>
 * identity file:   # comment lines, then
 *                  DBBACKUP-IDENTITY-V1:<base64url of the 32-byte private key>
 * ```
 *
 * Backups are encrypted to a recipient; restoring needs the matching identity.
 */
import { Buffer } from "node:buffer";
import {
  createPrivateKey,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  type KeyObject,
} from "node:crypto";
import { DbBackupError } from "../errors.ts";
import { checkKeyLength, fromBase64, shortId, toBase64Url } from "./_aead.ts";

export const RECIPIENT_PREFIX = "dbbackup-recipient-v1:";
export const IDENTITY_PREFIX = "DBBACKUP-IDENTITY-V1:";

export interface Recipient {
  publicKey: Uint8Array;
  /** 16 hex digits naming the key pair in slots and messages. */
  fingerprint: string;
}

export interface Identity extends Recipient {
  privateKey: Uint8Array;
}

// DER wrappers that turn raw X25519 keys into the PKCS#8 / SPKI forms node:crypto imports.
const PKCS8_PREFIX = Buffer.from("302e020100300506032b656e04220420", "hex");
const SPKI_PREFIX = Buffer.from("302a300506032b656e032100", "hex");

/** A new key pair: the identity file's text (keep it secret) and the recipient line. */
export function generateIdentity(now: Date = new Date()): {
  identityText: string;
  recipientText: string;
} {
  const { privateKey } = generateKeyPairSync("x25519");
  const identity = identityFromPrivateKey(rawPrivateKey(privateKey));
  const recipientText = formatRecipient(identity.publicKey);
  const identityText = [
    `# created ${now.toISOString()} by dbbackup; keep this file secret`,
    `# recipient: ${recipientText}`,
    `${IDENTITY_PREFIX}${toBase64Url(identity.privateKey)}`,
    "",
  ].join("\n");
  return { identityText, recipientText: `${recipientText}\n` };
}

/** The one-line text form of a public key. */
export function formatRecipient(publicKey: Uint8Array): string {
  checkKeyLength(publicKey, "a recipient public key");
  return `${RECIPIENT_PREFIX}${toBase64Url(publicKey)}`;
}

/** The short fingerprint of a public key, as shown in slot listings. */
export function recipientFingerprint(publicKey: Uint8Array): string {
  return shortId("dbbackup recipient id", publicKey);
}

/**
 * Parses a recipient: one `dbbackup-recipient-v1:` line, blank and `#` lines ignored.
 * `source` names where it came from ("recipients.txt", "--recipient") for messages.
 */
export function parseRecipient(text: string, source: string): Recipient {
  const lines = meaningfulLines(text);
  if (lines.some((l) => l.startsWith(IDENTITY_PREFIX))) {
    throw keyError(
      `${source} holds a private identity, not a recipient; give the recipient line ` +
        `(${RECIPIENT_PREFIX}...) from the identity file's comments instead`,
    );
  }
  if (lines.length !== 1) {
    throw keyError(
      `${source} must hold exactly one ${RECIPIENT_PREFIX}... line, found ${lines.length} lines`,
    );
  }
  const publicKey = decodeKey(lines[0], RECIPIENT_PREFIX);
  if (!publicKey) {
    throw keyError(
      `${source} is not a dbbackup recipient: expected ${RECIPIENT_PREFIX} followed by 43 ` +
        "base64url characters",
    );
  }
  return { publicKey, fingerprint: recipientFingerprint(publicKey) };
}

/** Parses an identity file: one `DBBACKUP-IDENTITY-V1:` line, blank and `#` lines ignored. */
export function parseIdentity(text: string, source: string): Identity {
  const lines = meaningfulLines(text);
  if (lines.length === 1 && lines[0].startsWith(RECIPIENT_PREFIX)) {
    throw keyError(
      `${source} is a recipient (public key); restoring needs the identity file it came from`,
    );
  }
  const found = lines.filter((l) => l.startsWith(IDENTITY_PREFIX));
  if (found.length !== 1 || lines.length !== 1) {
    throw keyError(
      `${source} is not a dbbackup identity file: expected one ${IDENTITY_PREFIX}... line`,
    );
  }
  const privateKey = decodeKey(found[0], IDENTITY_PREFIX);
  if (!privateKey) {
    throw keyError(
      `${source} has a damaged identity line: expected ${IDENTITY_PREFIX} followed by 43 ` +
        "base64url characters",
    );
  }
  return identityFromPrivateKey(privateKey);
}

/** The identity (with its public key) for a raw 32-byte X25519 private key. */
export function identityFromPrivateKey(privateKey: Uint8Array): Identity {
  checkKeyLength(privateKey, "an identity private key");
  const publicKey = rawPublicKey(createPublicKey(privateKeyObject(privateKey)));
  return { privateKey, publicKey, fingerprint: recipientFingerprint(publicKey) };
}

/** A fresh ephemeral key pair, raw. */
export function ephemeralKeyPair(): { privateKey: Uint8Array; publicKey: Uint8Array } {
  const pair = generateKeyPairSync("x25519");
  return { privateKey: rawPrivateKey(pair.privateKey), publicKey: rawPublicKey(pair.publicKey) };
}

/**
 * X25519(privateKey, publicKey); undefined for a public key that gives no shared secret (a
 * low-order point, which OpenSSL refuses).
 */
export function sharedSecret(
  privateKey: Uint8Array,
  publicKey: Uint8Array,
): Uint8Array | undefined {
  try {
    return new Uint8Array(diffieHellman({
      privateKey: privateKeyObject(privateKey),
      publicKey: createPublicKey({
        key: Buffer.concat([SPKI_PREFIX, publicKey]),
        format: "der",
        type: "spki",
      }),
    }));
  } catch {
    return undefined;
  }
}

function privateKeyObject(raw: Uint8Array): KeyObject {
  return createPrivateKey({
    key: Buffer.concat([PKCS8_PREFIX, raw]),
    format: "der",
    type: "pkcs8",
  });
}

function rawPrivateKey(key: KeyObject): Uint8Array {
  const jwk = key.export({ format: "jwk" });
  return fromBase64(jwk.d!, true)!;
}

function rawPublicKey(key: KeyObject): Uint8Array {
  const jwk = key.export({ format: "jwk" });
  return fromBase64(jwk.x!, true)!;
}

function meaningfulLines(text: string): string[] {
  return text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l !== "" && !l.startsWith("#"));
}

function decodeKey(line: string, prefix: string): Uint8Array | undefined {
  if (!line.startsWith(prefix)) return undefined;
  const key = fromBase64(line.slice(prefix.length), true);
  return key?.byteLength === 32 ? key : undefined;
}

function keyError(message: string): DbBackupError {
  return new DbBackupError("key", message);
}
