/**
 * Local filesystem storage: files 0600, folders 0700, every file written to a temporary name,
 * fsynced, then published with link(2) so an existing file is never replaced, and the folder
 * fsynced after.
 */
import { DbBackupError } from "../errors.ts";
import { run } from "../process/run.ts";
import { checkRange, emptyStream, sliceStream } from "./_range.ts";
import type {
  DirEntry,
  FileInfo,
  ReadOptions,
  Storage,
  StorageFeatures,
  WriteOptions,
} from "./storage.ts";

/** `.<name>.tmp-<8 hex>`: what write() creates before publishing `<name>`. */
const TEMPORARY_NAME = /^\..+\.tmp-[0-9a-f]{8}$/;

export class LocalStorage implements Storage {
  readonly features: StorageFeatures = { atomicPublish: true, directories: true };
  readonly root: string;

  constructor(root: string) {
    this.root = root.replace(/\/+$/, "") || "/";
  }

  get location(): string {
    return this.root;
  }

  #abs(path: string): string {
    if (path.split("/").some((p) => p === "..")) {
      throw new DbBackupError("io", `invalid path "${path}" in repository ${this.root}`);
    }
    return path === "" ? this.root : `${this.root}/${path}`;
  }

  async stat(path: string): Promise<FileInfo | undefined> {
    try {
      const st = await Deno.stat(this.#abs(path));
      return { path, size: st.size, mtime: st.mtime ?? undefined, isDirectory: st.isDirectory };
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) return undefined;
      throw ioError(`cannot read ${this.#abs(path)}`, err);
    }
  }

  async list(dir: string): Promise<DirEntry[]> {
    const entries: DirEntry[] = [];
    try {
      for await (const e of Deno.readDir(this.#abs(dir))) {
        entries.push({ name: e.name, isDirectory: e.isDirectory });
      }
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) return [];
      throw ioError(`cannot list ${this.#abs(dir)}`, err);
    }
    return entries.sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
  }

  async read(path: string, options: ReadOptions = {}): Promise<ReadableStream<Uint8Array>> {
    const { offset, length } = checkRange(options, this.#abs(path));
    let file: Deno.FsFile;
    try {
      file = await Deno.open(this.#abs(path), { read: true });
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) {
        throw new DbBackupError("not_found", `file ${this.#abs(path)} is missing`);
      }
      throw ioError(`cannot open ${this.#abs(path)}`, err);
    }
    if (offset === 0 && length === undefined) return file.readable;
    try {
      if (length === 0) {
        file.close();
        return emptyStream();
      }
      // Seeking past the end is allowed: the stream is then empty.
      if (offset > 0) await file.seek(offset, Deno.SeekMode.Start);
    } catch (err) {
      file.close();
      throw ioError(`cannot read ${this.#abs(path)} at byte ${offset}`, err);
    }
    return sliceStream(file.readable, 0, length);
  }

  async write(
    path: string,
    data: ReadableStream<Uint8Array>,
    options: WriteOptions = {},
  ): Promise<void> {
    const final = this.#abs(path);
    const slash = final.lastIndexOf("/");
    const dir = final.slice(0, slash) || "/";
    const tmp = `${dir}/.${final.slice(slash + 1)}.tmp-${crypto.randomUUID().slice(0, 8)}`;
    let file: Deno.FsFile;
    try {
      file = await Deno.open(tmp, { write: true, createNew: true, mode: 0o600 });
    } catch (err) {
      await data.cancel().catch(() => {});
      throw ioError(`cannot create ${tmp}`, err);
    }
    let published = false;
    try {
      // Plain awaited writes, not file.writable: its write promises can settle before the
      // bytes reach the file, and fsync must come after all of them.
      try {
        for await (const chunk of data) {
          if (options.signal?.aborted) throw options.signal.reason;
          for (let at = 0; at < chunk.byteLength;) at += await file.write(chunk.subarray(at));
        }
        await file.sync();
      } finally {
        file.close();
      }
      await options.ready;
      try {
        await Deno.link(tmp, final);
      } catch (err) {
        if (err instanceof Deno.errors.AlreadyExists) {
          throw new DbBackupError("exists", `refusing to overwrite existing file ${final}`);
        }
        throw ioError(`cannot publish ${final}`, err);
      }
      published = true;
      await Deno.remove(tmp);
      await syncDirectory(dir);
    } finally {
      if (!published) await Deno.remove(tmp).catch(() => {});
    }
  }

  async createDirectory(path: string): Promise<void> {
    const abs = this.#abs(path);
    try {
      await Deno.mkdir(abs, { mode: 0o700 });
      // mkdir's mode is filtered by the umask: set it exactly.
      await Deno.chmod(abs, 0o700);
    } catch (err) {
      if (err instanceof Deno.errors.AlreadyExists) {
        throw new DbBackupError("exists", `${abs} already exists`);
      }
      if (err instanceof Deno.errors.NotFound) {
        throw new DbBackupError("not_found", `cannot create ${abs}: parent folder is missing`);
      }
      throw ioError(`cannot create ${abs}`, err);
    }
    const parent = abs.slice(0, abs.lastIndexOf("/")) || "/";
    await syncDirectory(parent);
  }

  async remove(path: string): Promise<void> {
    try {
      await Deno.remove(this.#abs(path), { recursive: true });
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) return;
      throw ioError(`cannot remove ${this.#abs(path)}`, err);
    }
  }

  async removeTemporaries(dir: string): Promise<number> {
    let removed = 0;
    for (const e of await this.list(dir)) {
      const path = dir === "" ? e.name : `${dir}/${e.name}`;
      if (e.isDirectory) removed += await this.removeTemporaries(path);
      else if (TEMPORARY_NAME.test(e.name)) {
        await this.remove(path);
        removed++;
      }
    }
    return removed;
  }

  async freeSpace(): Promise<number | undefined> {
    // Deno has no statfs; df -Pk prints POSIX-format columns we can parse.
    try {
      const out = await run("df", ["-Pk", this.root], { describe: `df of ${this.root}` });
      const fields = out.stdout.trim().split("\n").at(-1)?.split(/\s+/) ?? [];
      const kib = Number(fields[3]);
      return Number.isFinite(kib) ? kib * 1024 : undefined;
    } catch {
      return undefined;
    }
  }
}

/** Creates the repository root (0700) if it does not exist yet. */
export async function ensureLocalRoot(root: string): Promise<void> {
  try {
    await Deno.mkdir(root, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw ioError(`cannot create repository folder ${root}`, err);
  }
}

async function syncDirectory(dir: string): Promise<void> {
  if (Deno.build.os === "windows") return;
  const f = await Deno.open(dir, { read: true });
  try {
    await f.sync();
  } finally {
    f.close();
  }
}

function ioError(what: string, err: unknown): DbBackupError {
  const reason = err instanceof Error ? err.message : String(err);
  return new DbBackupError("io", `${what}: ${reason}`, { cause: err });
}
