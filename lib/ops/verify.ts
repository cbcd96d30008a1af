/**
 * `verify`: every file of a set exists with the recorded size and sha256; `--deep` also
 * decompresses each file (checking the raw sha256) and lets pg_restore read the archive's
 * table of contents. Returns a report; problems are values, not exceptions.
 */
import { DbBackupError, errorMessage } from "../errors.ts";
import { ChecksumStream } from "../pipeline/checksum.ts";
import { feedChild, spawn } from "../process/run.ts";
import { findTool, type PgTool } from "../engine/pg/tools.ts";
import { type FileRecord, type Manifest, manifestFiles } from "../repo/manifest.ts";
import type { Repository } from "../repo/repository.ts";
import { withSharedLock } from "../repo/lock.ts";
import { mapPool } from "./_pool.ts";
import { snapshotCount } from "./list.ts";
import type { Reporter } from "./progress.ts";

export interface FileCheck {
  path: string;
  ok: boolean;
  problem?: string;
}

export interface VerifyReport {
  setId: string;
  status: Manifest["status"];
  deep: boolean;
  ok: boolean;
  /** Native engine: snapshots the data spans (more than 1 after a resumed backup). */
  snapshots?: number;
  files: FileCheck[];
  note?: string;
}

export interface VerifyOptions {
  repo: Repository;
  ref: string;
  deep: boolean;
  jobs: number;
  pgBin?: string;
  reporter: Reporter;
  signal?: AbortSignal;
}

export async function verify(opts: VerifyOptions): Promise<VerifyReport> {
  return await withSharedLock(
    opts.repo.storage,
    "verify",
    (message) => opts.reporter.event({ type: "warning", message }),
    () => verifyLocked(opts),
  );
}

async function verifyLocked(opts: VerifyOptions): Promise<VerifyReport> {
  const id = await opts.repo.resolveId(opts.ref);
  const stored = await opts.repo.readStoredManifest(id);
  if (stored.sealed && !opts.deep && (await opts.repo.openers()).length === 0) {
    // Without a key, an encrypted set's stored bytes can still be checked: decryption would
    // authenticate the contents as well (--deep with a key).
    const checks = await mapPool(
      stored.manifest.storedFiles,
      opts.jobs,
      (f) => checkStored(opts.repo, id, f),
    );
    return {
      setId: id,
      status: stored.summary.status,
      deep: false,
      ok: checks.every((c) => c.ok),
      snapshots: stored.summary.snapshots,
      files: checks,
      note:
        "the set is encrypted: stored bytes checked; give its key and --deep to check the contents",
    };
  }
  const manifest = await opts.repo.readManifest(id);
  const files = manifestFiles(manifest);
  let pgRestore: PgTool | undefined;
  if (opts.deep && files.some((f) => f.content.startsWith("pg_dump-custom"))) {
    pgRestore = await findTool(
      "pg_restore",
      Math.floor(manifest.server.versionNum / 10000),
      opts.pgBin,
    );
  }
  const checks = await mapPool(files, opts.jobs, async (file) => {
    opts.reporter.event({ type: "step", part: file.path, message: `verifying ${file.path}` });
    const check = opts.deep
      ? await deepCheck(opts.repo, id, file, pgRestore, opts.signal)
      : await checkStored(opts.repo, id, file);
    opts.reporter.event({
      type: "part",
      part: file.path,
      status: check.ok ? "ok" : "failed",
      bytes: file.bytes,
      elapsedMs: 0,
      error: check.problem,
    });
    return check;
  });
  return {
    setId: id,
    status: manifest.status,
    deep: opts.deep,
    ok: checks.every((c) => c.ok),
    snapshots: snapshotCount(manifest),
    files: checks,
  };
}

/** A failed check when the file is missing or has another size than recorded. */
type StoredFile = Pick<FileRecord, "path" | "bytes" | "sha256">;

async function checkPresence(
  repo: Repository,
  id: string,
  file: StoredFile,
): Promise<FileCheck | undefined> {
  const path = `${id}/${file.path}`;
  const info = await repo.storage.stat(path);
  if (!info) return { path: file.path, ok: false, problem: `file ${path} is missing` };
  if (info.size !== file.bytes) {
    return {
      path: file.path,
      ok: false,
      problem: `file ${path} has ${info.size} bytes, the manifest says ${file.bytes}`,
    };
  }
  return undefined;
}

/** Size and sha256 of the stored bytes, read once. */
export async function checkStored(
  repo: Repository,
  id: string,
  file: StoredFile,
): Promise<FileCheck> {
  const missing = await checkPresence(repo, id, file);
  if (missing) return missing;
  const path = `${id}/${file.path}`;
  const sum = new ChecksumStream();
  await (await repo.storage.read(path)).pipeThrough(sum).pipeTo(new WritableStream());
  const d = await sum.digest;
  if (d.sha256 !== file.sha256) {
    return {
      path: file.path,
      ok: false,
      problem: `file ${path} has sha256 ${d.sha256}, the manifest says ${file.sha256}`,
    };
  }
  return { path: file.path, ok: true };
}

async function deepCheck(
  repo: Repository,
  id: string,
  file: FileRecord,
  pgRestore: PgTool | undefined,
  signal?: AbortSignal,
): Promise<FileCheck> {
  // Only presence and size first: openFile checks the stored and raw sha256 as it reads, so
  // the file is read once, not twice.
  const missing = await checkPresence(repo, id, file);
  if (missing) return missing;
  try {
    const data = await repo.openFile(id, file);
    if (file.content.startsWith("pg_dump-custom") && pgRestore) {
      const child = spawn(pgRestore.path, ["--list"], {
        describe: `pg_restore --list of ${id}/${file.path}`,
        stdin: "piped",
        signal,
      });
      // An empty database lists no entries; the header proves pg_restore parsed the archive.
      let header = false;
      const reading = new Response(child.stdout).text().then((t) => {
        header = /^;\s+Format: CUSTOM/m.test(t);
      });
      // pg_restore --list stops reading after the table of contents; the rest of the data
      // is still read to the end so both checksums are checked.
      await Promise.all([feedChild(child, data), child.status, reading]);
      if (!header) {
        throw new DbBackupError(
          "verification",
          `pg_restore could not read the archive header of ${id}/${file.path}`,
        );
      }
    } else {
      await data.pipeTo(new WritableStream());
    }
    return { path: file.path, ok: true };
  } catch (err) {
    return { path: file.path, ok: false, problem: errorMessage(err) };
  }
}
