/**
 * Chunked authenticated encryption of one backup file (the STREAM construction, as in age).
 *
 * Layout: a 46-byte header, then chunks of up to `chunkSize` plaintext bytes, each stored as
 * ciphertext + 16-byte Poly1305 tag. Every file ends with exactly one chunk flagged last
 * (empty only when the whole file is), so a file cut at a chunk boundary does not decrypt.
 *
 * ```
 * header  0  8  magic "DBBKENC1"
 *         8  1  format version (1)
 *         9  1  cipher id (1 = ChaCha20-Poly1305)
 *        10  4  plaintext chunk size, big-endian
 *        14 32  random salt
 * subkey  HKDF-SHA256(ikm = data key, salt = header salt, info = "dbbackup v1 file")
 * nonce   3 zero bytes, chunk index as 8 bytes big-endian, 1 if last chunk else 0
 * AAD     header || len32 set id || set id || len32 path || path || index u64 || last u8
 * ```
 *
 * The set id and the path (relative to the set, as written in the manifest) are bound into
 * every chunk: a file copied to another name or another set fails authentication.
 */
import { randomBytes } from "node:crypto";
import { DbBackupError } from "../errors.ts";
import {
  checkKeyLength,
  concat,
  hkdf,
  lengthPrefixed,
  NONCE_BYTES,
  open,
  seal,
  TAG_BYTES,
} from "./_aead.ts";

/** Which file an encrypted stream belongs to; both are bound into every chunk. */
export interface FileContext {
  setId: string;
  /** The file's path inside the backup set, exactly as the manifest records it. */
  path: string;
}

export interface EncryptOptions {
  /** Plaintext bytes per chunk; default 64 KiB. */
  chunkSize?: number;
}

export const DEFAULT_CHUNK_SIZE = 64 * 1024;
export const MIN_CHUNK_SIZE = 64;
export const MAX_CHUNK_SIZE = 16 * 1024 * 1024;
export const FORMAT_VERSION = 1;
export const HEADER_BYTES = 46;

const MAGIC = new TextEncoder().encode("DBBKENC1");
const CIPHER_CHACHA20_POLY1305 = 1;
const SALT_BYTES = 32;
const FILE_INFO = "dbbackup v1 file";

/** Encrypts one file; the output starts with the header. */
export function encryptStream(
  dataKey: Uint8Array,
  ctx: FileContext,
  options: EncryptOptions = {},
): TransformStream<Uint8Array, Uint8Array> {
  const enc = new Encryptor(dataKey, ctx, options.chunkSize ?? DEFAULT_CHUNK_SIZE);
  return new TransformStream({
    start: (controller) => controller.enqueue(enc.header),
    transform: (chunk, controller) => enc.push(chunk, (b) => controller.enqueue(b)),
    flush: (controller) => enc.finish((b) => controller.enqueue(b)),
  });
}

/**
 * Decrypts one file made by encryptStream with the same data key and context. Errors with a
 * DbBackupError "verification" naming the path when anything does not authenticate; no
 * plaintext of a chunk is passed on before its tag has been checked.
 */
export function decryptStream(
  dataKey: Uint8Array,
  ctx: FileContext,
): TransformStream<Uint8Array, Uint8Array> {
  const dec = new Decryptor(dataKey, ctx);
  return new TransformStream({
    transform: (chunk, controller) => dec.push(chunk, (b) => controller.enqueue(b)),
    flush: (controller) => dec.finish((b) => controller.enqueue(b)),
  });
}

/** Encrypts a small blob in memory, in the same format as encryptStream. */
export function sealBytes(
  dataKey: Uint8Array,
  ctx: FileContext,
  bytes: Uint8Array,
  options: EncryptOptions = {},
): Uint8Array {
  const enc = new Encryptor(dataKey, ctx, options.chunkSize ?? DEFAULT_CHUNK_SIZE);
  const out = [enc.header];
  enc.push(bytes, (b) => out.push(b));
  enc.finish((b) => out.push(b));
  return concat(...out);
}

/** Decrypts a blob made by sealBytes (or a whole file made by encryptStream). */
export function openBytes(dataKey: Uint8Array, ctx: FileContext, sealed: Uint8Array): Uint8Array {
  const dec = new Decryptor(dataKey, ctx);
  const out: Uint8Array[] = [];
  dec.push(sealed, (b) => out.push(b));
  dec.finish((b) => out.push(b));
  return concat(...out);
}

/** The stored size of `plainBytes` bytes once encrypted. */
export function encryptedSize(plainBytes: number, chunkSize = DEFAULT_CHUNK_SIZE): number {
  const chunks = Math.max(1, Math.ceil(plainBytes / chunkSize));
  return HEADER_BYTES + plainBytes + chunks * TAG_BYTES;
}

/** Whether bytes start like a dbbackup encrypted file (the magic only; nothing is verified). */
export function looksEncrypted(prefix: Uint8Array): boolean {
  return prefix.byteLength >= MAGIC.byteLength && MAGIC.every((b, i) => prefix[i] === b);
}

function corrupt(path: string, what: string): DbBackupError {
  return new DbBackupError("verification", `encrypted file "${path}" ${what}`);
}

function checkContext(ctx: FileContext): void {
  if (
    !ctx || typeof ctx.setId !== "string" || ctx.setId === "" || typeof ctx.path !== "string" ||
    ctx.path === ""
  ) {
    throw new TypeError("file encryption needs a set id and a path");
  }
}

function checkChunkSize(size: number): boolean {
  return Number.isInteger(size) && size >= MIN_CHUNK_SIZE && size <= MAX_CHUNK_SIZE;
}

/** Seals and opens the chunks of one file: the per-file subkey, nonces and AAD. */
class ChunkCipher {
  readonly #key: Uint8Array;
  readonly #aadPrefix: Uint8Array;
  constructor(dataKey: Uint8Array, header: Uint8Array, ctx: FileContext) {
    this.#key = hkdf(dataKey, header.subarray(14, 14 + SALT_BYTES), FILE_INFO);
    this.#aadPrefix = concat(header, lengthPrefixed(ctx.setId), lengthPrefixed(ctx.path));
  }
  seal(index: number, last: boolean, plain: Uint8Array): Uint8Array {
    return seal(this.#key, nonce(index, last), this.#aad(index, last), plain);
  }
  open(index: number, last: boolean, sealed: Uint8Array): Uint8Array | undefined {
    return open(this.#key, nonce(index, last), this.#aad(index, last), sealed);
  }
  #aad(index: number, last: boolean): Uint8Array {
    const aad = new Uint8Array(this.#aadPrefix.byteLength + 9);
    aad.set(this.#aadPrefix);
    const view = new DataView(aad.buffer, this.#aadPrefix.byteLength);
    view.setBigUint64(0, BigInt(index));
    view.setUint8(8, last ? 1 : 0);
    return aad;
  }
}

function nonce(index: number, last: boolean): Uint8Array {
  const n = new Uint8Array(NONCE_BYTES);
  const view = new DataView(n.buffer);
  view.setBigUint64(3, BigInt(index));
  view.setUint8(11, last ? 1 : 0);
  return n;
}

function makeHeader(chunkSize: number): Uint8Array {
  const header = new Uint8Array(HEADER_BYTES);
  const view = new DataView(header.buffer);
  header.set(MAGIC);
  view.setUint8(8, FORMAT_VERSION);
  view.setUint8(9, CIPHER_CHACHA20_POLY1305);
  view.setUint32(10, chunkSize);
  header.set(randomBytes(SALT_BYTES), 14);
  return header;
}

/**
 * Cuts input into chunks of `size` bytes and hands each full one to `take`, always holding
 * the latest full chunk back until more input shows it was not the last. Input that arrives
 * as whole chunks is passed on without copying.
 */
class Chunker {
  readonly #buf: Uint8Array;
  #fill = 0;
  constructor(readonly size: number) {
    this.#buf = new Uint8Array(size);
  }
  push(input: Uint8Array, take: (chunk: Uint8Array) => void): void {
    let at = 0;
    while (at < input.byteLength) {
      if (this.#fill === this.size) {
        take(this.#buf);
        this.#fill = 0;
      }
      if (this.#fill === 0 && input.byteLength - at > this.size) {
        take(input.subarray(at, at + this.size));
        at += this.size;
        continue;
      }
      const n = Math.min(this.size - this.#fill, input.byteLength - at);
      this.#buf.set(input.subarray(at, at + n), this.#fill);
      this.#fill += n;
      at += n;
    }
  }
  /** The bytes held back: the last chunk, full or not. */
  get rest(): Uint8Array {
    return this.#buf.subarray(0, this.#fill);
  }
}

class Encryptor {
  readonly header: Uint8Array;
  readonly #cipher: ChunkCipher;
  readonly #chunker: Chunker;
  #index = 0;
  constructor(dataKey: Uint8Array, ctx: FileContext, chunkSize: number) {
    checkKeyLength(dataKey, "the data key");
    checkContext(ctx);
    if (!checkChunkSize(chunkSize)) {
      throw new RangeError(`chunk size must be ${MIN_CHUNK_SIZE}-${MAX_CHUNK_SIZE} bytes`);
    }
    this.header = makeHeader(chunkSize);
    this.#cipher = new ChunkCipher(dataKey, this.header, ctx);
    this.#chunker = new Chunker(chunkSize);
  }
  push(input: Uint8Array, emit: (b: Uint8Array) => void): void {
    this.#chunker.push(input, (chunk) => emit(this.#cipher.seal(this.#index++, false, chunk)));
  }
  finish(emit: (b: Uint8Array) => void): void {
    emit(this.#cipher.seal(this.#index++, true, this.#chunker.rest));
  }
}

class Decryptor {
  readonly #dataKey: Uint8Array;
  readonly #ctx: FileContext;
  readonly #header = new Uint8Array(HEADER_BYTES);
  #headerFill = 0;
  #cipher?: ChunkCipher;
  #chunker?: Chunker;
  #index = 0;
  constructor(dataKey: Uint8Array, ctx: FileContext) {
    checkKeyLength(dataKey, "the data key");
    checkContext(ctx);
    this.#dataKey = dataKey;
    this.#ctx = ctx;
  }

  push(input: Uint8Array, emit: (b: Uint8Array) => void): void {
    if (!this.#chunker) {
      const n = Math.min(HEADER_BYTES - this.#headerFill, input.byteLength);
      this.#header.set(input.subarray(0, n), this.#headerFill);
      this.#headerFill += n;
      this.#checkMagic();
      if (this.#headerFill < HEADER_BYTES) return;
      this.#readHeader();
      input = input.subarray(n);
    }
    this.#chunker!.push(input, (chunk) => emit(this.#openChunk(chunk)));
  }

  finish(emit: (b: Uint8Array) => void): void {
    const path = this.#ctx.path;
    if (!this.#chunker) {
      throw corrupt(path, this.#headerFill === 0 ? "is empty" : "is truncated (incomplete header)");
    }
    const rest = this.#chunker.rest;
    if (rest.byteLength < TAG_BYTES) {
      throw corrupt(path, `is truncated (chunk ${this.#index} is incomplete or missing)`);
    }
    const plain = this.#cipher!.open(this.#index, true, rest);
    if (plain) return emit(plain);
    if (
      rest.byteLength === this.#chunker.size && this.#cipher!.open(this.#index, false, rest)
    ) {
      throw corrupt(path, `is truncated (it ends after chunk ${this.#index}, not a last chunk)`);
    }
    throw corrupt(
      path,
      `is truncated or damaged: its last chunk ${this.#index} failed authentication`,
    );
  }

  #openChunk(sealed: Uint8Array): Uint8Array {
    const plain = this.#cipher!.open(this.#index, false, sealed);
    if (plain) {
      this.#index++;
      return plain;
    }
    if (this.#cipher!.open(this.#index, true, sealed)) {
      throw corrupt(this.#ctx.path, `has unexpected data after its last chunk ${this.#index}`);
    }
    throw corrupt(
      this.#ctx.path,
      `chunk ${this.#index} failed authentication (${
        this.#index === 0 ? "wrong key, " : ""
      }tampered, reordered, or from another file/set)`,
    );
  }

  #checkMagic(): void {
    const n = Math.min(this.#headerFill, MAGIC.byteLength);
    for (let i = 0; i < n; i++) {
      if (this.#header[i] !== MAGIC[i]) {
        throw new DbBackupError(
          "verification",
          `file "${this.#ctx.path}" is not a dbbackup encrypted file (no DBBKENC1 header)`,
        );
      }
    }
  }

  #readHeader(): void {
    const view = new DataView(this.#header.buffer);
    const version = view.getUint8(8);
    if (version !== FORMAT_VERSION) {
      throw corrupt(
        this.#ctx.path,
        `has format version ${version}; this dbbackup reads version ${FORMAT_VERSION} (a newer dbbackup wrote it?)`,
      );
    }
    const cipher = view.getUint8(9);
    if (cipher !== CIPHER_CHACHA20_POLY1305) {
      throw corrupt(this.#ctx.path, `uses unknown cipher id ${cipher}`);
    }
    const chunkSize = view.getUint32(10);
    if (!checkChunkSize(chunkSize)) {
      throw corrupt(this.#ctx.path, `has a damaged header (chunk size ${chunkSize})`);
    }
    this.#cipher = new ChunkCipher(this.#dataKey, this.#header, this.#ctx);
    this.#chunker = new Chunker(chunkSize + TAG_BYTES);
  }
}
