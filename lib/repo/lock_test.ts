import { strict as assert } from "node:assert";
import { DbBackupError } from "../errors.ts";
import { LocalStorage } from "../storage/local.ts";
import type { Storage } from "../storage/storage.ts";
import {
  acquireLock,
  LOCK_DIR,
  type LockInfo,
  readLocks,
  STALE_AFTER_MS,
  withSharedLock,
} from "./lock.ts";

async function withRepo(fn: (storage: LocalStorage) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "dbbackup-lock-" });
  try {
    await fn(new LocalStorage(dir));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** A lock file as another process (or host) would have left it. */
async function plant(storage: LocalStorage, info: Partial<LockInfo>): Promise<void> {
  const full: LockInfo = {
    scope: "repo",
    mode: "exclusive",
    purpose: "prune",
    hostname: Deno.hostname(),
    pid: 4_000_000,
    createdAt: "2026-11-27T03:00:00.000Z",
    refreshedAt: new Date().toISOString(),
    ...info,
  };
  if (!await storage.stat(LOCK_DIR)) await storage.createDirectory(LOCK_DIR);
  await storage.write(
    `${LOCK_DIR}/planted-${crypto.randomUUID()}.json`,
    ReadableStream.from([new TextEncoder().encode(JSON.stringify(full))]),
  );
}

/** Awaits a rejection with a "locked"-style DbBackupError containing `text`; returns it. */
async function rejects(fn: () => Promise<unknown>, text: string): Promise<DbBackupError> {
  try {
    await fn();
  } catch (err) {
    assert.ok(err instanceof DbBackupError, String(err));
    assert.ok(err.message.includes(text), err.message);
    return err;
  }
  throw new Error(`expected a rejection containing "${text}"`);
}

const alive = () => true;
const opts = { refresh: false, isAlive: alive };

Deno.test("shared locks coexist; exclusive conflicts with either, and is free after release", async () => {
  await withRepo(async (storage) => {
    const a = await acquireLock(storage, "repo", "shared", "backup single", opts);
    const b = await acquireLock(storage, "repo", "shared", "backup cluster", opts);
    const err = await rejects(
      () => acquireLock(storage, "repo", "exclusive", "prune", opts),
      "is locked by backup",
    );
    assert.equal(err.code, "locked");
    assert.ok(err.message.includes("is locked by backup"), err.message);
    assert.ok(err.message.includes(`pid ${Deno.pid}`), err.message);
    // The refused attempt left no file behind.
    assert.deepEqual((await readLocks(storage)).length, 2);
    await a.release();
    await b.release();
    const p = await acquireLock(storage, "repo", "exclusive", "prune", opts);
    await rejects(
      () => acquireLock(storage, "repo", "shared", "backup single", opts),
      "locked by prune",
    );
    await rejects(
      () => acquireLock(storage, "repo", "exclusive", "prune", opts),
      "locked by prune",
    );
    await p.release();
    await p.release(); // twice is harmless
    assert.deepEqual(await readLocks(storage), []);
  });
});

Deno.test("locks of different scopes do not conflict", async () => {
  await withRepo(async (storage) => {
    const a = await acquireLock(storage, "set:20261127T030000Z-single-a", "exclusive", "x", opts);
    const b = await acquireLock(storage, "set:20261127T030000Z-single-b", "exclusive", "y", opts);
    const err = await rejects(
      () => acquireLock(storage, "set:20261127T030000Z-single-a", "exclusive", "resume", opts),
      "is locked by x",
    );
    assert.ok(err.message.startsWith("backup set 20261127T030000Z-single-a"), err.message);
    await a.release();
    await b.release();
  });
});

Deno.test("a lock of a dead process on this host is stale and removed", async () => {
  await withRepo(async (storage) => {
    await plant(storage, { pid: 4_000_001 });
    const dead = (pid: number) => pid !== 4_000_001;
    const held = await acquireLock(storage, "repo", "exclusive", "prune", {
      refresh: false,
      isAlive: dead,
    });
    assert.deepEqual((await readLocks(storage)).map((l) => l.info.pid), [Deno.pid]);
    await held.release();
  });
});

Deno.test("another host's lock holds until it is not refreshed for the stale period", async () => {
  await withRepo(async (storage) => {
    await plant(storage, { hostname: "elsewhere.example", refreshedAt: new Date().toISOString() });
    await rejects(
      () => acquireLock(storage, "repo", "exclusive", "prune", opts),
      "on elsewhere.example",
    );
    const later = () => new Date(Date.now() + STALE_AFTER_MS + 60_000);
    const held = await acquireLock(storage, "repo", "exclusive", "prune", {
      ...opts,
      now: later,
    });
    // Another host's stale lock is ignored but not removed: that host may come back.
    assert.deepEqual((await readLocks(storage)).length, 2);
    await held.release();
  });
});

Deno.test("any acquirer removes this host's dead locks, of any scope and mode", async () => {
  await withRepo(async (storage) => {
    await plant(storage, { pid: 4_000_002, scope: "repo", mode: "shared" });
    await plant(storage, { pid: 4_000_003, scope: "set:20261127T030000Z-single-a" });
    const dead = (pid: number) => pid < 4_000_000;
    const held = await acquireLock(storage, "repo", "shared", "backup", {
      refresh: false,
      isAlive: dead,
    });
    assert.deepEqual((await readLocks(storage)).map((l) => l.info.pid), [Deno.pid]);
    await held.release();
  });
});

Deno.test("readers hold the repository shared, or read without a lock where they cannot write", async () => {
  await withRepo(async (storage) => {
    const prune = await acquireLock(storage, "repo", "exclusive", "prune", opts);
    await rejects(
      () => withSharedLock(storage, "restore", () => {}, () => Promise.resolve(1)),
      "locked by prune",
    );
    await prune.release();
    const seen = [] as string[];
    const got = await withSharedLock(storage, "restore", (m) => seen.push(m), async () => {
      assert.deepEqual((await readLocks(storage)).map((l) => l.info.purpose), ["restore"]);
      return 42;
    });
    assert.equal(got, 42);
    assert.equal(seen.length, 0);
    assert.deepEqual(await readLocks(storage), [], "released afterwards");

    // A repository this process cannot write to: read anyway, with a warning.
    const readOnly: Storage = {
      location: storage.location,
      features: storage.features,
      stat: (p) => storage.stat(p),
      list: (d) => storage.list(d),
      read: (p) => storage.read(p),
      write: () => Promise.reject(new DbBackupError("io", "read-only file system")),
      createDirectory: () => Promise.reject(new DbBackupError("io", "read-only file system")),
      remove: () => Promise.reject(new DbBackupError("io", "read-only file system")),
      freeSpace: () => storage.freeSpace(),
    };
    const result = await withSharedLock(
      readOnly,
      "verify",
      (m) => seen.push(m),
      () => Promise.resolve("read"),
    );
    assert.equal(result, "read");
    assert.equal(seen.length, 1);
    assert.match(seen[0], /without a lock \(read-only file system\)/);
  });
});
