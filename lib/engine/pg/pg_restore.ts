/** pg_restore and psql as children fed from a verified, decompressing stream. */
import { DbBackupError } from "../../errors.ts";
import { type ChildHandle, feedChild, spawn } from "../../process/run.ts";
import { dbnameConninfo, type PgTarget } from "./connect.ts";
import type { PgTool } from "./tools.ts";
import { writeDataOffsets } from "./archive_offsets.ts";

export interface ArchiveRestoreOptions {
  /** The database pg_restore connects to (with `create`, the maintenance database). */
  database: string;
  jobs: number;
  /** Drop the archive's objects before recreating them (pg_restore --clean --if-exists). */
  clean: boolean;
  /** Let pg_restore create the database named in the archive (pg_restore --create). */
  create: boolean;
  signal?: AbortSignal;
  /** Restore only this section of the archive. */
  section?: "pre-data" | "data" | "post-data";
  /** Where a parallel restore may spool the archive (it needs a seekable file). */
  tempDir?: string;
  /** pg_restore -L: restore only the entries of this list file (see withListFile). */
  listFile?: string;
  /**
   * Whether the decompressed archive may be spooled to a local temp file so pg_restore can run
   * `jobs` workers (default true). Without it, one streaming pg_restore: used for encrypted
   * sets (no plaintext on disk) and object storage (no local disk for the data).
   */
  spool?: boolean;
  /**
   * Everything in one transaction (pg_restore --single-transaction, one streaming job): a
   * failure, or a stream that fails its checksum at its end, leaves nothing behind. Only for a
   * bounded number of entries: every object the transaction creates or changes keeps a lock
   * until it ends, and the server's lock table (max_locks_per_transaction times the number of
   * connections) runs out after a few thousand; a schema of 3,000 tables failed so. Without it,
   * pg_restore commits entry by entry, as it does by default.
   */
  singleTransaction?: boolean;
  describe: string;
}

/**
 * Restores a custom-format archive. With one job (or one transaction, or no spooling) the
 * stream goes straight into pg_restore's stdin. With more jobs pg_restore needs a file: the
 * archive is spooled to a private 0600 temp file.
 */
export async function restoreArchive(
  tool: PgTool,
  target: PgTarget,
  input: ReadableStream<Uint8Array>,
  options: ArchiveRestoreOptions,
): Promise<void> {
  const args = ["--exit-on-error", "--no-password", "--dbname", dbnameConninfo(options.database)];
  if (options.clean) args.push("--clean", "--if-exists");
  if (options.create) args.push("--create");
  if (options.section) args.push(`--section=${options.section}`);
  if (options.listFile) args.push("--use-list", options.listFile);
  if (options.jobs <= 1 || options.spool === false || options.singleTransaction) {
    if (options.singleTransaction && !options.create) args.push("--single-transaction");
    const child = spawn(tool.path, args, {
      describe: options.describe,
      env: target.childEnv(),
      clearEnv: true,
      stdin: "piped",
      stdout: "null",
      signal: options.signal,
    });
    await feedAndWait(child, input);
    return;
  }
  const dir = await Deno.makeTempDir({ dir: options.tempDir, prefix: "dbbackup-restore-" });
  try {
    const path = `${dir}/archive.pgdump`;
    const file = await Deno.open(path, { write: true, createNew: true, mode: 0o600 });
    await input.pipeTo(file.writable, { signal: options.signal });
    // Without data offsets (pg_dump wrote to a pipe) every worker would read through the file
    // to find its table's data. Should the scan fail, pg_restore still finds it that way.
    await writeDataOffsets(path).catch(() => 0);
    const child = spawn(tool.path, [...args, `--jobs=${options.jobs}`, path], {
      describe: options.describe,
      env: target.childEnv(),
      clearEnv: true,
      stdout: "null",
      signal: options.signal,
    });
    await child.status;
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** Writes a pg_restore -L list to a private temp file for the duration of `fn`. */
export async function withListFile<T>(list: string, fn: (path: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "dbbackup-list-" });
  try {
    const path = `${dir}/restore.list`;
    await Deno.writeTextFile(path, list, { createNew: true, mode: 0o600 });
    return await fn(path);
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/**
 * Runs a globals script (pg_dumpall --globals-only) through psql. Objects that already exist
 * (SQLSTATE 42710, e.g. the role running the restore) are not an error; any other error is.
 * Returns the tolerated messages.
 */
export async function restoreGlobalsScript(
  psql: PgTool,
  target: PgTarget,
  input: ReadableStream<Uint8Array>,
  signal?: AbortSignal,
): Promise<string[]> {
  const errors: string[] = [];
  let pending = "";
  const child = spawn(psql.path, [
    "--no-psqlrc",
    "--quiet",
    "--no-password",
    "--set",
    "ON_ERROR_STOP=0",
    "--set",
    "VERBOSITY=verbose",
    "--dbname",
    dbnameConninfo("postgres"),
  ], {
    describe: `restore of globals (roles, tablespaces) at ${target.endpoint}`,
    env: target.childEnv(),
    clearEnv: true,
    stdin: "piped",
    stdout: "null",
    signal,
    onStderr(text) {
      pending += text;
      const lines = pending.split("\n");
      pending = lines.pop() ?? "";
      for (const line of lines) if (/ERROR:/.test(line)) errors.push(line.trim());
    },
  });
  await feedAndWait(child, input);
  if (/ERROR:/.test(pending)) errors.push(pending.trim());
  const tolerated = errors.filter((e) => /ERROR:\s+42710:/.test(e));
  const fatal = errors.filter((e) => !/ERROR:\s+42710:/.test(e));
  if (fatal.length > 0) {
    throw new DbBackupError(
      "restore_failed",
      `restore of globals at ${target.endpoint} failed: ${fatal.slice(0, 5).join("; ")}`,
    );
  }
  return tolerated;
}

/** Feeds the child and awaits it; the input's own error (a checksum) explains more. */
async function feedAndWait(child: ChildHandle, input: ReadableStream<Uint8Array>): Promise<void> {
  const [fed, exited] = await Promise.allSettled([feedChild(child, input), child.status]);
  if (fed.status === "rejected") throw fed.reason;
  if (exited.status === "rejected") throw exited.reason;
}

/**
 * pg_restore's SQL for a section of the archive (as a script, `--file=-`), limited to a list:
 * a stream that errors when pg_restore fails or `input` does not verify.
 */
export function archiveScript(
  tool: PgTool,
  target: PgTarget,
  input: ReadableStream<Uint8Array>,
  options: {
    section: "pre-data" | "data" | "post-data";
    listFile: string;
    clean: boolean;
    describe: string;
    signal?: AbortSignal;
  },
): ReadableStream<Uint8Array> {
  const args = [
    `--section=${options.section}`,
    "--use-list",
    options.listFile,
    ...(options.clean ? ["--clean", "--if-exists"] : []),
    "--file=-",
  ];
  const child = spawn(tool.path, args, {
    describe: options.describe,
    env: target.childEnv(),
    clearEnv: true,
    stdin: "piped",
    stdout: "piped",
    signal: options.signal,
  });
  const fed = feedChild(child, input);
  // Awaited when stdout ends; until then a failure must not count as unhandled.
  fed.catch(() => {});
  child.status.catch(() => {});
  // Reading stdout to its end, then the feeding and the exit status decide.
  const reader = child.stdout.getReader();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const { done, value } = await reader.read();
      if (!done) return controller.enqueue(value);
      await Promise.all([fed, child.status]);
      controller.close();
    },
    async cancel(reason) {
      child.kill("SIGKILL");
      await reader.cancel(reason).catch(() => {});
      await fed.catch(() => {});
    },
  }, { highWaterMark: 0 });
}
