/**
 * The primitives the crypto folder shares: ChaCha20-Poly1305, HKDF-SHA256, short key ids and
 * strict base64. Private to lib/crypto/; everything here is synchronous and pure.
 */
import { Buffer } from "node:buffer";
import { createCipheriv, createDecipheriv, createHash, hkdfSync } from "node:crypto";

export const KEY_BYTES = 32;
export const NONCE_BYTES = 12;
export const TAG_BYTES = 16;

const utf8 = new TextEncoder();

/** Encrypts and authenticates `plaintext`; returns ciphertext followed by the 16-byte tag. */
export function seal(
  key: Uint8Array,
  nonce: Uint8Array,
  aad: Uint8Array,
  plaintext: Uint8Array,
): Uint8Array {
  const cipher = createCipheriv("chacha20-poly1305", key, nonce, { authTagLength: TAG_BYTES });
  cipher.setAAD(aad, { plaintextLength: plaintext.byteLength });
  const out = new Uint8Array(plaintext.byteLength + TAG_BYTES);
  out.set(cipher.update(plaintext));
  cipher.final();
  out.set(cipher.getAuthTag(), plaintext.byteLength);
  return out;
}

/** The plaintext of `sealed` (ciphertext + tag), or undefined when authentication fails. */
export function open(
  key: Uint8Array,
  nonce: Uint8Array,
  aad: Uint8Array,
  sealed: Uint8Array,
): Uint8Array | undefined {
  if (sealed.byteLength < TAG_BYTES) return undefined;
  const n = sealed.byteLength - TAG_BYTES;
  const decipher = createDecipheriv("chacha20-poly1305", key, nonce, {
    authTagLength: TAG_BYTES,
  });
  decipher.setAAD(aad, { plaintextLength: n });
  decipher.setAuthTag(sealed.subarray(n));
  const plain = decipher.update(sealed.subarray(0, n));
  try {
    decipher.final();
  } catch {
    return undefined;
  }
  return new Uint8Array(plain.buffer, plain.byteOffset, plain.byteLength);
}

/** HKDF-SHA256 of `ikm` to `length` bytes. */
export function hkdf(ikm: Uint8Array, salt: Uint8Array, info: string, length = KEY_BYTES) {
  return new Uint8Array(hkdfSync("sha256", ikm, salt, info, length));
}

/** A short public id for a key: the first 8 bytes of SHA-256(label + key), in hex. */
export function shortId(label: string, key: Uint8Array): string {
  return createHash("sha256").update(label).update(key).digest("hex").slice(0, 16);
}

export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

/** UTF-8 bytes of `text`, prefixed with their length (4 bytes, big-endian). */
export function lengthPrefixed(text: string): Uint8Array {
  const bytes = utf8.encode(text);
  const out = new Uint8Array(4 + bytes.byteLength);
  new DataView(out.buffer).setUint32(0, bytes.byteLength);
  out.set(bytes, 4);
  return out;
}

export function toBase64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64");
}

export function toBase64Url(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64url");
}

/**
 * Decodes canonical base64 (padded) or base64url (unpadded); undefined for anything else,
 * including stray characters that Buffer.from would silently skip.
 */
export function fromBase64(text: string, url = false): Uint8Array | undefined {
  const shape = url
    ? /^[A-Za-z0-9_-]*$/
    : /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
  if (!shape.test(text)) return undefined;
  const buf = Buffer.from(text, url ? "base64url" : "base64");
  if (buf.toString(url ? "base64url" : "base64") !== text) return undefined;
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}

export function checkKeyLength(key: Uint8Array, what: string): void {
  if (!(key instanceof Uint8Array) || key.byteLength !== KEY_BYTES) {
    throw new TypeError(`${what} must be ${KEY_BYTES} bytes`);
  }
}
