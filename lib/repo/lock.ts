/**
 * Repository locks: small JSON files under `locks/`, one per holder, so they work on any
 * storage, object stores included (restic's scheme). A holder writes its own file first, then
 * lists the others; on a conflict it removes its file again and fails. Two holders racing both
 * back off, never both proceed.
 *
 * Scopes: "repo" is the whole repository (prune takes it exclusively, a backup shares it until
 * its set is published); "set:<id>" is one set (a backup or resume writing it holds it
 * exclusively). A lock is stale when its process is gone (same host) or when it has not been
 * refreshed for `STALE_AFTER_MS` (another host); stale locks are ignored and, on this host,
 * removed.
 */
import { DbBackupError, errorMessage } from "../errors.ts";
import type { Storage } from "../storage/storage.ts";

export const LOCK_DIR = "locks";
export const REFRESH_EVERY_MS = 5 * 60_000;
export const STALE_AFTER_MS = 30 * 60_000;

export type LockMode = "shared" | "exclusive";

export interface LockInfo {
  scope: string;
  mode: LockMode;
  /** What holds it, for messages: "backup cluster", "prune". */
  purpose: string;
  hostname: string;
  pid: number;
  createdAt: string;
  refreshedAt: string;
}

export interface HeldLock {
  readonly info: LockInfo;
  release(): Promise<void>;
}

export interface LockOptions {
  now?: () => Date;
  /** Whether a process of this host is alive; injectable for tests of stale locks. */
  isAlive?: (pid: number) => boolean;
  /** Keep the lock fresh in the background (default true). */
  refresh?: boolean;
}

/** Takes a lock or throws a "locked" error naming who holds the conflicting one. */
export async function acquireLock(
  storage: Storage,
  scope: string,
  mode: LockMode,
  purpose: string,
  options: LockOptions = {},
): Promise<HeldLock> {
  const now = options.now ?? (() => new Date());
  const isAlive = options.isAlive ?? processAlive;
  const at = now().toISOString();
  const info: LockInfo = {
    scope,
    mode,
    purpose,
    hostname: Deno.hostname(),
    pid: Deno.pid,
    createdAt: at,
    refreshedAt: at,
  };
  if (!await storage.stat(LOCK_DIR)) {
    await storage.createDirectory(LOCK_DIR).catch((err) => {
      if (!(err instanceof DbBackupError && err.code === "exists")) throw err;
    });
  }
  let path = await writeLock(storage, info);
  let conflict: LockInfo | undefined;
  try {
    for (const other of await readLocksSettled(storage)) {
      if (other.path === path) continue;
      // Locks of dead processes on this host go, whatever their scope: nobody else can.
      if (isStale(other.info, now(), isAlive)) {
        if (other.info.hostname === info.hostname) await storage.remove(other.path);
        continue;
      }
      if (other.info.scope !== scope) continue;
      if (mode === "shared" && other.info.mode === "shared") continue;
      conflict ??= other.info;
    }
  } catch (err) {
    await storage.remove(path).catch(() => {});
    throw err;
  }
  if (conflict) {
    await storage.remove(path).catch(() => {});
    throw new DbBackupError(
      "locked",
      `${describeScope(scope, storage)} is locked by ${
        describeLock(conflict)
      }; try again when it has finished`,
    );
  }
  let timer: ReturnType<typeof setInterval> | undefined;
  let refreshing = Promise.resolve();
  if (options.refresh ?? true) {
    const id = setInterval(() => {
      refreshing = refreshing.then(async () => {
        info.refreshedAt = now().toISOString();
        const old = path;
        try {
          path = await writeLock(storage, info);
          await storage.remove(old);
        } catch {
          // The old file stays valid until it goes stale; the next round tries again.
        }
      });
    }, REFRESH_EVERY_MS);
    Deno.unrefTimer(id);
    timer = id;
  }
  let released = false;
  return {
    info,
    async release() {
      if (released) return;
      released = true;
      if (timer !== undefined) clearInterval(timer);
      await refreshing;
      await storage.remove(path);
    },
  };
}

/** Every lock file of the repository that can be read (a file removed meanwhile is skipped). */
export async function readLocks(storage: Storage): Promise<{ path: string; info: LockInfo }[]> {
  return (await readListed(storage)).locks;
}

/**
 * The locks, read again while one vanished between listing and reading: a holder refreshing
 * writes its new file before removing the old one, so a second listing sees the new one.
 */
async function readLocksSettled(storage: Storage): Promise<{ path: string; info: LockInfo }[]> {
  for (let attempt = 0;; attempt++) {
    const { locks, vanished } = await readListed(storage);
    if (vanished === 0 || attempt >= 3) return locks;
  }
}

async function readListed(storage: Storage) {
  const locks: { path: string; info: LockInfo }[] = [];
  let vanished = 0;
  for (const entry of await storage.list(LOCK_DIR)) {
    if (entry.isDirectory || !entry.name.endsWith(".json")) continue;
    const path = `${LOCK_DIR}/${entry.name}`;
    try {
      const info = JSON.parse(await new Response(await storage.read(path)).text()) as LockInfo;
      if (typeof info.scope === "string" && typeof info.mode === "string") {
        locks.push({ path, info });
      }
    } catch (err) {
      if (err instanceof DbBackupError && err.code === "not_found") {
        vanished++;
        continue;
      }
      throw new DbBackupError("io", `cannot read lock ${path}: ${errorMessage(err)}`);
    }
  }
  return { locks, vanished };
}

export function isStale(info: LockInfo, now: Date, isAlive: (pid: number) => boolean): boolean {
  if (info.hostname === Deno.hostname()) return !isAlive(info.pid);
  return now.getTime() - Date.parse(info.refreshedAt) > STALE_AFTER_MS;
}

export function describeLock(info: LockInfo): string {
  return `${info.purpose} (pid ${info.pid} on ${info.hostname}, since ${info.createdAt})`;
}

function describeScope(scope: string, storage: Storage): string {
  return scope.startsWith("set:")
    ? `backup set ${scope.slice(4)} in ${storage.location}`
    : `repository ${storage.location}`;
}

async function writeLock(storage: Storage, info: LockInfo): Promise<string> {
  const name = `${info.scope.replace(/[^A-Za-z0-9._-]/g, "_")}.${info.mode}.${info.pid}.${
    crypto.randomUUID().slice(0, 8)
  }.json`;
  const path = `${LOCK_DIR}/${name}`;
  await storage.write(path, ReadableStream.from([new TextEncoder().encode(JSON.stringify(info))]));
  return path;
}

function processAlive(pid: number): boolean {
  if (pid === Deno.pid) return true;
  // Without /proc (macOS, Windows) a process cannot be looked up this way: count it as alive,
  // so its lock goes stale only by not being refreshed.
  if (Deno.build.os !== "linux") return true;
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch {
    return false;
  }
}

/**
 * Runs `fn` holding the repository shared, so no prune removes the sets it reads meanwhile.
 * A repository this process cannot write to (a read-only mount, read-only credentials) is
 * read without the lock; `warn` says so.
 */
export async function withSharedLock<T>(
  storage: Storage,
  purpose: string,
  warn: (message: string) => void,
  fn: () => Promise<T>,
): Promise<T> {
  let held: HeldLock | undefined;
  try {
    held = await acquireLock(storage, "repo", "shared", purpose);
  } catch (err) {
    if (err instanceof DbBackupError && err.code === "locked") throw err;
    warn(
      `reading ${storage.location} without a lock (${
        errorMessage(err)
      }): a prune running now could remove what is being read`,
    );
  }
  try {
    return await fn();
  } finally {
    await held?.release().catch(() => {});
  }
}
