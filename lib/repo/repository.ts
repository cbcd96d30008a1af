/**
 * A repository of backup sets on some storage. A set is a folder named by its id; it is
 * complete only once its manifest exists, and the manifest is always written last.
 */
import { DbBackupError, errorMessage } from "../errors.ts";
import { ChecksumStream, Crc32Stream } from "../pipeline/checksum.ts";
import {
  type Compression,
  compressionSuffix,
  compressStream,
  decompressStream,
} from "../pipeline/compress.ts";
import type { Storage } from "../storage/storage.ts";
import {
  decryptStream,
  encryptStream,
  type KeyHolder,
  type KeyOpener,
  type KeySlot,
  openBytes,
  sealBytes,
  unwrapKey,
  wrapKey,
} from "../crypto/mod.ts";
import { generateDataKey } from "../crypto/keys.ts";
import {
  decodeBase64,
  encodeBase64,
  type EncryptionRecord,
  type FileRecord,
  type Manifest,
  MANIFEST_FILE,
  type ManifestSummary,
  parseManifest,
  parseStoredManifest,
  type PartStatus,
  sealedManifestJson,
  type SetStatus,
  type StoredManifest,
} from "./manifest.ts";
import { isSetId, setId } from "./set_id.ts";

/** Folder of a set holding resume records while the backup runs. */
export const STATE_DIR = "state";
/** Folder of a set holding key slots added after the backup (`key rekey`). */
export const KEYS_DIR = "keys";
/** Suffix of encrypted files. */
export const ENCRYPTED_SUFFIX = ".enc";
const ENCRYPTION_STATE = "encryption";

export type ListedStatus = SetStatus | "incomplete" | "invalid";

export interface ListedSet {
  id: string;
  status: ListedStatus;
  /** Readable without a key, also for encrypted sets. */
  summary?: ManifestSummary;
  /** Why a set is invalid. */
  problem?: string;
}

export class Repository {
  /** Data keys of encrypted sets opened so far, by set id. */
  readonly #dataKeys = new Map<string, Uint8Array>();

  #openers?: Promise<readonly KeyOpener[]>;

  /**
   * `openers`: what may open encrypted sets (passphrase, key files, identities); given as a
   * function, it is called the first time a set must be opened, not before.
   */
  constructor(
    readonly storage: Storage,
    private readonly openersSource:
      | readonly KeyOpener[]
      | (() => Promise<readonly KeyOpener[]>) = [],
  ) {}

  /** What may open encrypted sets, read (key files, identities) on first use. */
  openers(): Promise<readonly KeyOpener[]> {
    const source = this.openersSource;
    return this.#openers ??= typeof source === "function" ? source() : Promise.resolve(source);
  }

  get location(): string {
    return this.storage.location;
  }

  /** Claims a new, empty set folder; never reuses an existing one. */
  async createSet(kind: string, label: string, when: Date = new Date()): Promise<SetWriter> {
    const base = setId(when, kind, label);
    for (let n = 0; n < 100; n++) {
      const id = n === 0 ? base : `${base}-${n}`;
      try {
        await this.storage.createDirectory(id);
        return new SetWriter(this.storage, id);
      } catch (err) {
        if (err instanceof DbBackupError && err.code === "exists") continue;
        throw err;
      }
    }
    throw new DbBackupError("exists", `cannot create a new backup set named ${base}*`);
  }

  /** Continues writing an existing incomplete set (a resumed backup). */
  async reopenSet(id: string): Promise<SetWriter> {
    if (await this.storage.stat(`${id}/${MANIFEST_FILE}`)) {
      throw new DbBackupError(
        "refused",
        `backup set ${id} is complete; there is nothing to resume`,
      );
    }
    if (!await this.storage.stat(id)) {
      throw new DbBackupError("not_found", `backup set ${id} does not exist in ${this.location}`);
    }
    return new SetWriter(this.storage, id);
  }

  /** Every set folder, oldest first, with its status; folders that are not sets are ignored. */
  async listSets(): Promise<ListedSet[]> {
    const sets: ListedSet[] = [];
    for (const entry of await this.storage.list("")) {
      if (!entry.isDirectory || !isSetId(entry.name)) continue;
      sets.push(await this.#describe(entry.name));
    }
    return sets;
  }

  async #describe(id: string): Promise<ListedSet> {
    try {
      const { summary } = await this.readStoredManifest(id);
      return { id, status: summary.status, summary };
    } catch (err) {
      if (err instanceof DbBackupError && err.code === "incomplete") {
        return { id, status: "incomplete" };
      }
      return { id, status: "invalid", problem: errorMessage(err) };
    }
  }

  /**
   * Reads a set's full manifest; a set without one is incomplete and refused. An encrypted
   * set's manifest is unsealed with the repository's openers ("key" error when none fits).
   */
  async readManifest(id: string): Promise<Manifest> {
    const stored = await this.readStoredManifest(id);
    if (!stored.sealed) return stored.manifest;
    const dataKey = await this.dataKey(id, stored.manifest.encryption.slots);
    const where = `${this.location}/${id}/${MANIFEST_FILE}`;
    const sealed = decodeBase64(stored.manifest.sealed);
    const text = new TextDecoder().decode(
      openBytes(dataKey, { setId: id, path: MANIFEST_FILE }, sealed),
    );
    const manifest = parseManifest(text, where);
    if (manifest.id !== id) {
      throw new DbBackupError(
        "verification",
        `manifest of ${id} names another set (${manifest.id})`,
      );
    }
    return manifest;
  }

  /**
   * The data key of an encrypted set, opened with the repository's openers from the
   * manifest's slots or the slots `key rekey` added.
   */
  async dataKey(id: string, manifestSlots: readonly KeySlot[]): Promise<Uint8Array> {
    const cached = this.#dataKeys.get(id);
    if (cached) return cached;
    const slots: unknown[] = [...manifestSlots, ...await this.addedSlots(id)];
    const key = await unwrapKey(slots, id, await this.openers());
    this.#dataKeys.set(id, key);
    return key;
  }

  /** Key slots added to a set after its backup (`key rekey`). */
  async addedSlots(id: string): Promise<unknown[]> {
    const slots: unknown[] = [];
    for (const e of await this.storage.list(`${id}/${KEYS_DIR}`)) {
      if (e.isDirectory || !e.name.endsWith(".json")) continue;
      const path = `${id}/${KEYS_DIR}/${e.name}`;
      try {
        const data = JSON.parse(await new Response(await this.storage.read(path)).text());
        if (Array.isArray(data?.slots)) slots.push(...data.slots);
      } catch (err) {
        throw new DbBackupError(
          "verification",
          `key file ${path} is unreadable: ${errorMessage(err)}`,
        );
      }
    }
    return slots;
  }

  /** Adds key slots to an encrypted set without rewriting anything (`key rekey`). */
  async addSlots(id: string, slots: KeySlot[]): Promise<string> {
    if (!await this.storage.stat(`${id}/${KEYS_DIR}`)) {
      await this.storage.createDirectory(`${id}/${KEYS_DIR}`).catch((err) => {
        if (!(err instanceof DbBackupError && err.code === "exists")) throw err;
      });
    }
    const path = `${id}/${KEYS_DIR}/${new Date().toISOString().replace(/[-:.]/g, "")}-${
      crypto.randomUUID().slice(0, 8)
    }.json`;
    const bytes = new TextEncoder().encode(JSON.stringify({ slots }, null, 2) + "\n");
    await this.storage.write(path, ReadableStream.from([bytes]));
    return path;
  }

  /** The manifest as stored: full, or an encrypted set's public part. */
  async readStoredManifest(id: string): Promise<StoredManifest> {
    if (!isSetId(id)) {
      throw new DbBackupError("not_found", `backup set "${id}" is not a valid set id`);
    }
    const dir = await this.storage.stat(id);
    if (!dir) {
      throw new DbBackupError("not_found", `backup set ${id} does not exist in ${this.location}`);
    }
    const path = `${id}/${MANIFEST_FILE}`;
    if (!await this.storage.stat(path)) {
      throw new DbBackupError(
        "incomplete",
        `backup set ${id} is incomplete: it has no ${MANIFEST_FILE} (the backup was interrupted or is still running)`,
      );
    }
    const text = await new Response(await this.storage.read(path)).text();
    const stored = parseStoredManifest(text, `${this.location}/${path}`);
    if (stored.manifest.id !== id) {
      throw new DbBackupError(
        "verification",
        `manifest of ${id} names another set (${stored.manifest.id})`,
      );
    }
    return stored;
  }

  /** Resolves "latest" or an id prefix to exactly one set id. */
  async resolveId(ref: string): Promise<string> {
    const ids = (await this.storage.list("")).filter((e) => e.isDirectory && isSetId(e.name))
      .map((e) => e.name);
    if (ref === "latest") {
      const complete = (await this.listSets()).filter((s) => s.status === "complete");
      const last = complete.at(-1);
      if (!last) {
        throw new DbBackupError("not_found", `no complete backup set in ${this.location}`);
      }
      return last.id;
    }
    if (ids.includes(ref)) return ref;
    const matches = ids.filter((id) => id.startsWith(ref));
    if (matches.length === 1) return matches[0];
    if (matches.length > 1) {
      throw new DbBackupError(
        "not_found",
        `backup "${ref}" is ambiguous in ${this.location}: ${matches.join(", ")}`,
      );
    }
    throw new DbBackupError("not_found", `backup "${ref}" not found in ${this.location}`);
  }

  /**
   * Opens a stored file for reading: the stream yields the decompressed data and errors at
   * its end when the stored or the raw bytes do not match the manifest, naming the file.
   */
  async openFile(id: string, file: FileRecord): Promise<ReadableStream<Uint8Array>> {
    const stored = new ChecksumStream();
    const raw = file.rawCrc32 !== undefined ? new Crc32Stream() : new ChecksumStream();
    const name = `${id}/${file.path}`;
    // Bytes beyond the recorded size never reach the decompressor: trailing garbage after a
    // zstd frame makes Deno's node:zlib throw an uncaught error and stall the stream.
    let source = (await this.storage.read(name)).pipeThrough(sizeLimit(file.bytes, name))
      .pipeThrough(stored);
    if (file.encrypted) {
      const key = this.#dataKeys.get(id);
      if (!key) {
        throw new DbBackupError("key", `file ${name} is encrypted and the set's key is not open`);
      }
      source = source.pipeThrough(decryptStream(key, { setId: id, path: file.path }));
    }
    // The last chunk is held back until both checksums are verified, so a consumer never
    // sees the complete data of a file that does not match its manifest.
    let held: Uint8Array | undefined;
    const check = new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, controller) {
        if (held) controller.enqueue(held);
        held = chunk;
      },
      async flush(controller) {
        const s = await stored.digest;
        if (s.bytes !== file.bytes || s.sha256 !== file.sha256) {
          throw new DbBackupError(
            "verification",
            `file ${name} does not match the manifest (${s.bytes} bytes, sha256 ${
              s.sha256.slice(0, 12)
            }…; expected ${file.bytes} bytes, ${file.sha256.slice(0, 12)}…)`,
          );
        }
        const r: { bytes: number; crc32?: string; sha256?: string } = await raw.digest;
        const matches = file.rawCrc32 !== undefined
          ? r.crc32 === file.rawCrc32
          : r.sha256 === file.rawSha256;
        if (r.bytes !== file.rawBytes || !matches) {
          throw new DbBackupError(
            "verification",
            `file ${name} decompresses to data that does not match the manifest`,
          );
        }
        if (held) controller.enqueue(held);
      },
    });
    return namingErrors(
      source.pipeThrough(decompressStream(file.compression)).pipeThrough(raw).pipeThrough(check),
      name,
    );
  }
}

export interface WriteFileOptions {
  compression: Compression;
  content: string;
  /** Awaited before the file is published (e.g. the exit status of the process producing it). */
  ready?: Promise<unknown>;
  signal?: AbortSignal;
}

/** Writes the files of one new set, then its manifest. */
export class SetWriter {
  #stateDir?: Promise<void>;
  #encryption?: { dataKey: Uint8Array; record: EncryptionRecord };
  constructor(private readonly storage: Storage, readonly id: string) {}

  get encrypted(): boolean {
    return this.#encryption !== undefined;
  }

  /**
   * Encrypts everything this set stores from now on with a new data key, wrapped for each
   * holder. The slots are recorded at once, so a resumed backup can open the same key.
   */
  async encryptFor(holders: readonly KeyHolder[]): Promise<void> {
    if (holders.length === 0) throw new Error("encryptFor: no key holder");
    const dataKey = generateDataKey();
    const slots: KeySlot[] = [];
    for (const h of holders) slots.push(await wrapKey(dataKey, this.id, h));
    const record: EncryptionRecord = { format: "dbbkenc1", cipher: "chacha20-poly1305", slots };
    await this.#writeStateBytes(ENCRYPTION_STATE, JSON.stringify(record));
    this.#encryption = { dataKey, record };
  }

  /**
   * For a resumed set: opens the data key the interrupted run recorded. Returns false when
   * that run did not encrypt.
   */
  async resumeEncryption(openers: readonly KeyOpener[]): Promise<boolean> {
    const path = `${this.id}/${STATE_DIR}/${ENCRYPTION_STATE}.json`;
    if (!await this.storage.stat(path)) return false;
    const record = JSON.parse(
      await new Response(await this.storage.read(path)).text(),
    ) as EncryptionRecord;
    const dataKey = await unwrapKey(record.slots, this.id, openers);
    this.#encryption = { dataKey, record };
    return true;
  }

  /** Compresses and checksums `data` while writing it to `<set>/<name><suffix>`. */
  async writeFile(
    name: string,
    data: ReadableStream<Uint8Array>,
    options: WriteFileOptions,
  ): Promise<FileRecord> {
    const enc = this.#encryption;
    const path = this.storedPath(name, options.compression);
    const raw = new Crc32Stream();
    const stored = new ChecksumStream();
    let stream = data.pipeThrough(raw).pipeThrough(compressStream(options.compression));
    if (enc) stream = stream.pipeThrough(encryptStream(enc.dataKey, { setId: this.id, path }));
    stream = stream.pipeThrough(stored);
    await this.storage.write(`${this.id}/${path}`, stream, {
      ready: options.ready,
      signal: options.signal,
    });
    const [r, s] = await Promise.all([raw.digest, stored.digest]);
    return {
      path,
      content: options.content,
      compression: options.compression.algorithm,
      bytes: s.bytes,
      sha256: s.sha256,
      rawBytes: r.bytes,
      rawCrc32: r.crc32,
      ...(enc ? { encrypted: true } : {}),
    };
  }

  /** The path writeFile stores `name` under: with the compression and encryption suffixes. */
  storedPath(name: string, compression: Compression): string {
    return `${name}${compressionSuffix(compression.algorithm)}${
      this.#encryption ? ENCRYPTED_SUFFIX : ""
    }`;
  }

  /**
   * Records progress that a resumed backup can trust: `state/<name>.json`, written atomically
   * after the file it describes was published. Removed once the manifest is written.
   */
  async writeState(name: string, value: unknown): Promise<void> {
    const text = JSON.stringify(value) + "\n";
    const enc = this.#encryption;
    await this.#writeStateBytes(
      name,
      enc
        ? JSON.stringify({
          sealed: encodeBase64(
            sealBytes(
              enc.dataKey,
              { setId: this.id, path: `${STATE_DIR}/${name}` },
              new TextEncoder().encode(text),
            ),
          ),
        })
        : text,
    );
  }

  async #writeStateBytes(name: string, text: string): Promise<void> {
    // Databases of a cluster backup write their records at the same time: one creates the
    // folder, and finding it there already is fine.
    this.#stateDir ??= (async () => {
      if (await this.storage.stat(`${this.id}/${STATE_DIR}`)) return;
      await this.storage.createDirectory(`${this.id}/${STATE_DIR}`).catch((err) => {
        if (!(err instanceof DbBackupError && err.code === "exists")) throw err;
      });
    })();
    await this.#stateDir;
    const bytes = new TextEncoder().encode(text);
    await this.storage.write(`${this.id}/${STATE_DIR}/${name}.json`, ReadableStream.from([bytes]));
  }

  /** Every state record whose name starts with `prefix`, by name. */
  async readStates(prefix: string): Promise<Map<string, unknown>> {
    const out = new Map<string, unknown>();
    for (const e of await this.storage.list(`${this.id}/${STATE_DIR}`)) {
      if (!e.name.startsWith(prefix) || !e.name.endsWith(".json")) continue;
      const name = e.name.slice(0, -".json".length);
      if (name === ENCRYPTION_STATE) continue;
      const path = `${this.id}/${STATE_DIR}/${e.name}`;
      let value: unknown;
      try {
        value = JSON.parse(await new Response(await this.storage.read(path)).text());
        const enc = this.#encryption;
        const sealed = (value as { sealed?: unknown } | null)?.sealed;
        if (enc && typeof sealed === "string") {
          value = JSON.parse(
            new TextDecoder().decode(
              openBytes(
                enc.dataKey,
                { setId: this.id, path: `${STATE_DIR}/${name}` },
                decodeBase64(sealed),
              ),
            ),
          );
        }
      } catch (err) {
        const damaged = err instanceof SyntaxError ||
          (err instanceof DbBackupError && err.code === "verification");
        if (!damaged) throw err;
        // A record cut short (an object store that showed a write still in progress when the
        // writer died) or damaged says nothing: it goes, and what it described is done again.
        await this.storage.remove(path);
        continue;
      }
      out.set(name, value);
    }
    return out;
  }

  /** Whether a published file still has the size and sha256 it was recorded with. */
  async fileMatches(file: FileRecord): Promise<boolean> {
    const path = `${this.id}/${file.path}`;
    const info = await this.storage.stat(path);
    if (!info || info.size !== file.bytes) return false;
    const sum = new ChecksumStream();
    await (await this.storage.read(path)).pipeThrough(sum).pipeTo(new WritableStream());
    return (await sum.digest).sha256 === file.sha256;
  }

  /** Drops one progress record (a resumed backup redoing the file it described). */
  async removeState(name: string): Promise<void> {
    await this.storage.remove(`${this.id}/${STATE_DIR}/${name}.json`);
  }

  /** Removes a published file (a resumed backup replacing one that no longer verifies). */
  async removeFile(path: string): Promise<void> {
    await this.storage.remove(`${this.id}/${path}`);
  }

  /**
   * Removes what an interrupted writer left unpublished in this set (temporary files of a
   * killed run). Returns how many; 0 on storage that publishes without temporaries.
   */
  async removeTemporaries(): Promise<number> {
    return await this.storage.removeTemporaries?.(this.id) ?? 0;
  }

  /** Drops the progress records once the manifest makes them redundant. */
  async removeStates(): Promise<void> {
    await this.storage.remove(`${this.id}/${STATE_DIR}`);
  }

  /** Publishes the manifest: the set is complete from this moment on. */
  async writeManifest(manifest: Manifest): Promise<void> {
    const enc = this.#encryption;
    let text = JSON.stringify(manifest, null, 2) + "\n";
    if (enc) {
      const full: Manifest = { ...manifest, encryption: enc.record };
      const sealed = sealBytes(
        enc.dataKey,
        { setId: this.id, path: MANIFEST_FILE },
        new TextEncoder().encode(JSON.stringify(full)),
      );
      text = sealedManifestJson(full, sealed);
    }
    const bytes = new TextEncoder().encode(text);
    await this.storage.write(`${this.id}/${MANIFEST_FILE}`, ReadableStream.from([bytes]));
  }

  /** Removes whatever this writer created (after an interruption or total failure). */
  async discard(): Promise<void> {
    await this.storage.remove(this.id);
  }
}

/** Passes at most `limit` bytes; errors as soon as more arrive. */
function sizeLimit(limit: number, name: string): TransformStream<Uint8Array, Uint8Array> {
  let seen = 0;
  return new TransformStream({
    transform(chunk, controller) {
      seen += chunk.byteLength;
      if (seen > limit) {
        throw new DbBackupError(
          "verification",
          `file ${name} does not match the manifest (more than the expected ${limit} bytes)`,
        );
      }
      controller.enqueue(chunk);
    },
  });
}

/** The same stream, but any error that is not already a DbBackupError names the file. */
function namingErrors(
  stream: ReadableStream<Uint8Array>,
  name: string,
): ReadableStream<Uint8Array> {
  const reader = stream.getReader();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const { done, value } = await reader.read();
        if (done) controller.close();
        else controller.enqueue(value);
      } catch (err) {
        if (err instanceof DbBackupError) throw err;
        throw new DbBackupError(
          "verification",
          `file ${name} cannot be read: ${errorMessage(err)}`,
          { cause: err },
        );
      }
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
}

/** The overall status of a set from the status of its parts. */
export function overallStatus(parts: PartStatus[]): SetStatus {
  const failed = parts.filter((p) => p === "failed").length;
  if (failed === 0) return "complete";
  return failed === parts.length ? "failed" : "partial";
}
