/**
 * restoreDatabaseNative called directly, past the CLI's up-front verification: a chunk that
 * fails its checksum while it streams into the server ends its COPY with CopyFail and the whole
 * table's transaction (its intact first chunk included) rolls back, and no session is left
 * behind. The same call with nothing damaged restores the table exactly, so the harness works.
 *
 * And restore() into a database it creates, which checks the files while it restores: a damaged
 * file found after the restore has begun stops it and drops the new database again.
 */
import { strict as assert } from "node:assert";
import { DbBackupError } from "../lib/errors.ts";
import { resolveSettings } from "../lib/config/settings.ts";
import { PgTarget } from "../lib/engine/pg/connect.ts";
import { restoreDatabaseNative } from "../lib/engine/pg/native_restore.ts";
import { restore } from "../lib/ops/restore.ts";
import { findTool } from "../lib/engine/pg/tools.ts";
import type { ProgressEvent } from "../lib/ops/progress.ts";
import type { DatabaseRecord, FileRecord, TableRecord } from "../lib/repo/manifest.ts";
import { Repository } from "../lib/repo/repository.ts";
import { LocalStorage } from "../lib/storage/local.ts";
import type { ReadOptions } from "../lib/storage/storage.ts";
import { assertSameSnapshot, snapshotDatabase } from "./helpers/compare.ts";
import { dbbackup, loadWide, nativeBackupArgs, pgEnv, setDirs, tempRepo } from "./helpers/cli.ts";
import {
  cleanEnv,
  type PgServer,
  queryValue as q,
  quoteIdent,
  quoteLiteral,
  withPg,
  withTwoPg,
} from "./helpers/pg_server.ts";
import { waitFor, within } from "./helpers/wait.ts";

/** Rows of `wide` (about 350 bytes each): about 4.5 MB of heap, several 1 MB chunks. */
const ROWS = 12_000;

/** How long one restore may take here before it counts as hung. */
const RESTORE_LIMIT_MS = 60_000;

/**
 * `backup single <db>` through the native engine, one job, 1 MB chunks, uncompressed: a chunk
 * reaches the restore in several pieces, so most of a damaged one is in the server's COPY
 * before its checksum fails at its end (a chunk that fits one piece is held back whole), and a
 * flipped byte stays one flipped byte instead of decompressing to garbage that the server may
 * reject first.
 */
function nativeArgs(repo: string, db: string): string[] {
  return nativeBackupArgs(repo, db, "1m", ["--compression", "none"]);
}

/**
 * `wide` with ROWS rows in database "big" on `pg` (and what `extraSql` adds), backed up natively
 * into `repoDir`: the set's ID.
 */
async function backedUpWide(pg: PgServer, repoDir: string, extraSql?: string): Promise<string> {
  await loadWide(pg, "big", ROWS);
  if (extraSql) await pg.psql(extraSql, { db: "big" });
  const backup = await dbbackup(nativeArgs(repoDir, "big"), { env: pgEnv(pg), limitMs: 60_000 });
  assert.equal(backup.code, 0, backup.stderr);
  const [setId] = await setDirs(repoDir);
  return setId;
}

/** An empty database as restore's "create" action makes it (template0). */
async function createEmpty(pg: PgServer, db: string): Promise<void> {
  await pg.psql(`CREATE DATABASE ${quoteIdent(db)} TEMPLATE template0`);
}

/** dbbackup's sessions (application_name 'dbbackup') connected to `db`. */
function dbbackupSessions(pg: PgServer, db: string): Promise<string> {
  return q(
    pg,
    `SELECT count(*) FROM pg_stat_activity
      WHERE datname = ${quoteLiteral(db)} AND application_name = 'dbbackup'`,
  );
}

/** Waits (10 s at most) until no session of dbbackup is connected to `db`. */
async function sessionsEnded(pg: PgServer, db: string, what: string): Promise<void> {
  await waitFor(
    `${what}'s sessions to end`,
    async () => (await dbbackupSessions(pg, db)) === "0",
    10_000,
  );
}

/** What happened to each file a restore read: opened, read to its end, or failed. */
interface FileLog {
  opened: number;
  /** Bytes handed to the reader. */
  bytes: number;
  ended: boolean;
  error?: unknown;
}

/**
 * The repository restore reads, recording what becomes of every file it opens; the streams
 * themselves (checksums, held-back last piece) are the real ones, passed on unchanged.
 */
class RecordingRepository extends Repository {
  readonly files = new Map<string, FileLog>();
  /** File paths in the order they were opened. */
  readonly order: string[] = [];

  override async openFile(id: string, file: FileRecord): Promise<ReadableStream<Uint8Array>> {
    const stream = await super.openFile(id, file);
    const log = this.files.get(file.path) ?? { opened: 0, bytes: 0, ended: false };
    log.opened++;
    this.files.set(file.path, log);
    this.order.push(file.path);
    const reader = stream.getReader();
    return new ReadableStream<Uint8Array>({
      async pull(controller) {
        try {
          const { done, value } = await reader.read();
          if (done) {
            log.ended = true;
            controller.close();
          } else {
            log.bytes += value.byteLength;
            controller.enqueue(value);
          }
        } catch (err) {
          log.error = err;
          throw err;
        }
      },
      cancel(reason) {
        return reader.cancel(reason);
      },
    }, { highWaterMark: 0 });
  }
}

/** What restore.ts hands restoreDatabaseNative, built for the test server `pg`. */
interface Harness {
  target: PgTarget;
  repo: RecordingRepository;
  setId: string;
  record: DatabaseRecord;
  /** restoreDatabaseNative into `database`, from `other` (default: the recording repository). */
  restore(
    database: string,
    other?: { repo?: Repository; signal?: AbortSignal },
  ): Promise<ProgressEvent[]>;
}

async function harness(pg: PgServer, repoDir: string, setId: string): Promise<Harness> {
  const env = cleanEnv(pgEnv(pg));
  const settings = await resolveSettings(
    { host: pg.socketDir, port: String(pg.port), user: pg.superuser, repo: repoDir },
    env,
  );
  const target = new PgTarget(settings, env);
  await target.init();
  const repo = new RecordingRepository(new LocalStorage(repoDir));
  const manifest = await repo.readManifest(setId);
  assert.equal(manifest.engine, "native");
  assert.equal(manifest.databases.length, 1);
  const record = manifest.databases[0];
  const major = Math.floor(manifest.server.versionNum / 10000);
  const pgRestore = await findTool("pg_restore", major, pg.binDir);
  const psql = await findTool("psql", major, pg.binDir);
  return {
    target,
    repo,
    setId,
    record,
    async restore(database: string, other: { repo?: Repository; signal?: AbortSignal } = {}) {
      const events: ProgressEvent[] = [];
      repo.files.clear();
      repo.order.length = 0;
      await within(
        RESTORE_LIMIT_MS,
        `restoreDatabaseNative into "${database}"`,
        restoreDatabaseNative({
          target,
          repo: other.repo ?? repo,
          setId,
          record,
          database,
          createFromArchive: false,
          dropFirst: false,
          jobs: 2,
          spool: true,
          pgRestore,
          psql,
          reporter: { event: (e) => events.push(e) },
          signal: other.signal,
        }),
      );
      return events;
    },
  };
}

Deno.test("native restore: a chunk failing its checksum mid-stream rolls its whole table back", async () => {
  await withTwoPg(async (a, b) => {
    const repoDir = await tempRepo();
    try {
      const setId = await backedUpWide(a, repoDir);
      const before = await snapshotDatabase(a, "big");
      assert.equal(before.tables["public.wide"].rows, ROWS);
      const h = await harness(b, repoDir, setId);
      const wide: TableRecord | undefined = h.record.native?.tables.find((t) =>
        t.schema === "public" && t.name === "wide"
      );
      assert.ok(wide, "wide is copied as chunks, not inside the schema archive");
      assert.ok(wide.chunks.length >= 3, `wide is split (${wide.chunks.length} chunks)`);
      assert.ok(wide.chunks[0].rows > 0, "the first chunk holds rows");
      assert.equal(wide.chunks.reduce((n, c) => n + c.rows, 0), ROWS, "chunk rows add up");

      // 1. Nothing damaged: the direct call restores the database exactly.
      await createEmpty(b, "big");
      const events = await h.restore("big");
      assert.ok(
        events.some((e) => e.type === "step" && /^copying \d+ chunk\(s\)/.test(e.message)),
        `the chunks went through COPY: ${JSON.stringify(events)}`,
      );
      const restored = await snapshotDatabase(b, "big");
      assert.equal(restored.tables["public.wide"].rows, ROWS);
      assert.equal(restored.tables["public.wide"].md5, before.tables["public.wide"].md5);
      assertSameSnapshot(restored, before, "direct native restore of an intact set");
      await sessionsEnded(b, "big", "the intact restore");

      // 2. One byte flipped in the middle of the second chunk file (by manifest order); the
      // manifest is left as it was. The byte is the first md5 hex letter from the middle on:
      // flipped, it is still valid text for the server, so only the checksum can catch it.
      const victim = wide.chunks[1].path;
      const victimRecord = h.record.files.find((f) => f.path === victim)!;
      assert.equal(victimRecord.compression, "none");
      const path = `${repoDir}/${setId}/${victim}`;
      const bytes = await Deno.readFile(path);
      let at = Math.floor(bytes.length / 2);
      while (!(bytes[at] >= 0x61 && bytes[at] <= 0x66)) at++; // a-f
      assert.ok(at - bytes.length / 2 < 64, `a hex letter near the middle (at ${at})`);
      bytes[at] ^= 0x5a; // a-f become ; < = > ? 9
      await Deno.writeFile(path, bytes);

      await createEmpty(b, "damaged");
      let caught: unknown;
      try {
        await h.restore("damaged");
      } catch (err) {
        caught = err;
      }
      assert.ok(caught !== undefined, "the restore of the damaged set rejects");
      assert.ok(
        caught instanceof DbBackupError,
        `a DbBackupError, got ${caught instanceof Error ? caught.stack : String(caught)}`,
      );
      assert.equal(caught.code, "verification", caught.message);
      assert.ok(
        caught.message.includes(`${setId}/${victim}`),
        `the error names ${victim}: ${caught.message}`,
      );
      for (const c of wide.chunks.filter((c) => c.path !== victim)) {
        assert.ok(!caught.message.includes(c.path), `${c.path} is not blamed: ${caught.message}`);
      }

      // The table exists (pre-data ran) and holds no rows: the intact first chunk was rolled
      // back with the damaged one.
      assert.equal(await q(b, "SELECT count(*) FROM public.wide", "damaged"), "0");
      await waitFor("a rolled-back transaction in the target's statistics", async () =>
        Number(
          await q(
            b,
            "SELECT xact_rollback FROM pg_stat_database WHERE datname = 'damaged'",
          ),
        ) >= 1, 10_000);

      // The chunks were loaded in order: the intact first one was read to its end and went
      // through its COPY, the damaged one failed while it streamed, and none came after it.
      const chunkPaths = wide.chunks.map((c) => c.path);
      const opened = h.repo.order.filter((p) => chunkPaths.includes(p));
      assert.deepEqual(opened, chunkPaths.slice(0, 2), "chunks opened up to the damaged one");
      const first = h.repo.files.get(chunkPaths[0])!;
      assert.ok(first.ended && first.error === undefined, "the first chunk was read to its end");
      const damaged = h.repo.files.get(victim)!;
      assert.ok(!damaged.ended, "the damaged chunk never reached its end");
      assert.ok(
        damaged.bytes > 0 && damaged.bytes < victimRecord.rawBytes,
        `part of the damaged chunk went into its COPY before the check failed ` +
          `(${damaged.bytes} of ${victimRecord.rawBytes} bytes)`,
      );
      assert.ok(
        damaged.error instanceof DbBackupError && damaged.error.code === "verification",
        `the damaged chunk's stream failed its check: ${String(damaged.error)}`,
      );

      // No session of the restore is left running in the target.
      await sessionsEnded(b, "damaged", "the damaged restore");
    } finally {
      await Deno.remove(repoDir, { recursive: true });
    }
  });
});

/**
 * A local repository whose reads of one file wait for `gate` first (both the check's read and
 * the restore's).
 */
class GatedStorage extends LocalStorage {
  constructor(
    dir: string,
    private readonly file: string,
    private readonly gate: () => Promise<void>,
  ) {
    super(dir);
  }

  override async read(path: string, options?: ReadOptions): Promise<ReadableStream<Uint8Array>> {
    if (path.endsWith(`/${this.file}`)) await this.gate();
    return await super.read(path, options);
  }
}

Deno.test("restore into a new database checks the files while it restores: a damaged one found midway drops the database", async () => {
  await withPg(async (pg) => {
    const repoDir = await tempRepo();
    try {
      const setId = await backedUpWide(pg, repoDir);
      const before = await snapshotDatabase(pg, "big");
      const { target, record } = await harness(pg, repoDir, setId);
      const wide = record.native!.tables.find((t) => t.name === "wide")!;
      assert.ok(wide.chunks.length >= 3, `wide is split (${wide.chunks.length} chunks)`);
      const victim = wide.chunks[1].path;

      /**
       * restore() of the set into `database`; reads of the victim chunk wait until the restore
       * has created `database` and its table wide (pre-data ran), which `began` then says.
       */
      const restoreInto = async (database: string) => {
        const seen = { began: false };
        const gate = async () => {
          if (seen.began) return;
          await waitFor(
            `the restore to create ${database}.public.wide`,
            async () =>
              await q(
                  pg,
                  `SELECT count(*) FROM pg_database WHERE datname = ${quoteLiteral(database)}`,
                ) === "1" &&
              await q(pg, "SELECT to_regclass('public.wide') IS NOT NULL", database) === "t",
            30_000,
            50,
          );
          seen.began = true;
        };
        const events: ProgressEvent[] = [];
        const run = restore({
          target,
          repo: new Repository(new GatedStorage(repoDir, victim, gate)),
          ref: setId,
          kind: "single",
          targetName: database,
          create: true,
          clean: false,
          jobs: 2,
          pgBin: pg.binDir,
          dryRun: false,
          reporter: { event: (e) => events.push(e) },
        });
        const outcome = await within(RESTORE_LIMIT_MS, `restore into ${database}`, run).then(
          (result) => ({ result, error: undefined }),
          (error: unknown) => ({ result: undefined, error }),
        );
        return { ...outcome, began: seen.began, events };
      };

      // 1. Intact: the gated read waits for pre-data, then the restore completes exactly.
      const intact = await restoreInto("copy");
      assert.equal(intact.error, undefined, String(intact.error));
      assert.equal(intact.result?.status, "complete");
      assert.ok(intact.began, "the restore had created the database before the gate opened");
      assertSameSnapshot(await snapshotDatabase(pg, "copy"), before, "restored while checked");

      // 2. One byte flipped in the victim chunk: the check finds it after the restore began.
      const path = `${repoDir}/${setId}/${victim}`;
      const bytes = await Deno.readFile(path);
      bytes[Math.floor(bytes.length / 2)] ^= 0x5a;
      await Deno.writeFile(path, bytes);
      const damaged = await restoreInto("fresh");
      assert.ok(damaged.began, "the restore had created the database and its tables");
      const err = damaged.error;
      assert.ok(
        err instanceof DbBackupError,
        `a DbBackupError, got ${err instanceof Error ? err.stack : String(err)}`,
      );
      assert.equal(err.code, "verification", err.message);
      assert.ok(err.message.includes(`${setId}/${victim}`), `names ${victim}: ${err.message}`);
      assert.equal(
        await q(pg, "SELECT count(*) FROM pg_database WHERE datname = 'fresh'"),
        "0",
        "the database the restore created is gone again",
      );
      assert.ok(
        damaged.events.some((e) => e.type === "step" && /^restoring pre-data/.test(e.message)),
        "pre-data had been restored",
      );
    } finally {
      await Deno.remove(repoDir, { recursive: true });
    }
  });
});

/** A repository whose chunk files stop halfway until `release` (or forever). */
class StallingRepository extends Repository {
  stalled = 0;

  override async openFile(id: string, file: FileRecord): Promise<ReadableStream<Uint8Array>> {
    const stream = await super.openFile(id, file);
    if (file.content !== "copy-text") return stream;
    const reader = stream.getReader();
    let sent = 0;
    return new ReadableStream<Uint8Array>({
      pull: async (controller) => {
        if (sent > 0) {
          this.stalled++;
          await new Promise(() => {}); // the rest never comes
        }
        const { done, value } = await reader.read();
        if (done) return controller.close();
        sent += value.byteLength;
        controller.enqueue(value);
      },
      cancel: (reason) => reader.cancel(reason),
    }, { highWaterMark: 0 });
  }
}

Deno.test("native restore: an abort while chunks stream in ends every COPY and rolls back, with nothing left running", async () => {
  await withTwoPg(async (a, b) => {
    const repoDir = await tempRepo();
    try {
      const setId = await backedUpWide(a, repoDir);
      const h = await harness(b, repoDir, setId);
      const repo = new StallingRepository(new LocalStorage(repoDir));
      await createEmpty(b, "stopped");
      const stop = new AbortController();
      const run = h.restore("stopped", { repo, signal: stop.signal });
      run.catch(() => {}); // awaited below
      // Abort once a COPY is under way: its chunk has sent a piece and waits for the rest.
      await waitFor("a chunk to stall mid-COPY", () => Promise.resolve(repo.stalled > 0), 30_000);
      const reason = new Error("stopped by the test");
      stop.abort(reason);
      const outcome = await within(
        20_000,
        "the aborted restore",
        run.then(() => "resolved", (e) => e),
      );
      assert.equal(outcome, reason, "the restore rejects with the abort's reason");
      assert.equal(await q(b, "SELECT count(*) FROM public.wide", "stopped"), "0", "rolled back");
      await sessionsEnded(b, "stopped", "the aborted restore");
    } finally {
      await Deno.remove(repoDir, { recursive: true });
    }
  });
});

/**
 * 800 empty tables pad_1 ... pad_800: pre-data that takes pg_restore a second or more, so a
 * test can see what happens while it runs.
 */
const PAD_TABLES = `DO $$ BEGIN
  FOR i IN 1..800 LOOP EXECUTE format('CREATE TABLE pad_%s (id int)', i); END LOOP;
END $$;`;

Deno.test("native restore: a big table's rows load while the rest of pre-data is restored", async () => {
  await withTwoPg(async (a, b) => {
    const repoDir = await tempRepo();
    try {
      // wide's users (a view that also needs small, a comment, its bigserial's sequence), and
      // 800 tables that have nothing to do with it.
      const setId = await backedUpWide(
        a,
        repoDir,
        `CREATE VIEW wide_small AS SELECT w.id, s.v FROM wide w JOIN small s ON s.k = 'k' || w.n;
         COMMENT ON TABLE wide IS 'the big one';
         ${PAD_TABLES}`,
      );
      const before = await snapshotDatabase(a, "big");
      const h = await harness(b, repoDir, setId);
      const wide = h.record.native!.tables.find((t) => t.name === "wide")!;
      assert.ok(wide.chunks.length >= 3, `wide is split (${wide.chunks.length} chunks)`);

      // What the target holds when the restore first reads wide's rows.
      let seen: { pads: number; view: string; comment: string } | undefined;
      const gated = new Repository(
        new GatedStorage(repoDir, wide.chunks[0].path, async () => {
          seen ??= {
            pads: Number(
              await q(b, "SELECT count(*) FROM pg_class WHERE relname LIKE 'pad\\_%'", "big"),
            ),
            view: await q(b, "SELECT count(*) FROM pg_views WHERE viewname = 'wide_small'", "big"),
            comment: await q(b, "SELECT obj_description('public.wide'::regclass)", "big"),
          };
        }),
      );
      await createEmpty(b, "big");
      const events = await h.restore("big", { repo: gated });
      assert.ok(seen, "the restore read wide's first chunk");
      assert.equal(seen.view, "1", "the view of wide was created before wide's rows");
      assert.equal(seen.comment, "the big one", "so was wide's comment");
      assert.ok(
        seen.pads < 800,
        `wide's rows were read while the other tables were still being created (${seen.pads} ` +
          `of 800 existed): ${JSON.stringify(events.map((e) => e.type === "step" && e.message))}`,
      );
      assertSameSnapshot(await snapshotDatabase(b, "big"), before, "restore with pre-data split");
      await sessionsEnded(b, "big", "the restore");
    } finally {
      await Deno.remove(repoDir, { recursive: true });
    }
  });
});

Deno.test("native restore: when the rest of pre-data fails, the big tables' loads under way stop", async () => {
  await withTwoPg(async (a, b) => {
    const repoDir = await tempRepo();
    try {
      await a.psql("CREATE ROLE lonely");
      // A table unrelated to wide, owned by a role the target does not have, after 800 other
      // tables (pre-data is in name order): it fails once wide's load is under way.
      const setId = await backedUpWide(
        a,
        repoDir,
        `${PAD_TABLES}
         CREATE TABLE unrelated (id int);
         ALTER TABLE unrelated OWNER TO lonely;`,
      );
      const h = await harness(b, repoDir, setId);
      // wide's chunks stop halfway and never go on: only the failure can end its load.
      const repo = new StallingRepository(new LocalStorage(repoDir));
      await createEmpty(b, "big");
      const outcome = await within(
        30_000,
        "the restore whose pre-data fails",
        h.restore("big", { repo }).then(() => "resolved", (e) => e),
      );
      assert.ok(outcome instanceof Error, `the restore rejects, got ${String(outcome)}`);
      assert.match(outcome.message, /the rest of pre-data/);
      assert.match(outcome.message, /lonely/);
      assert.ok(repo.stalled > 0, "wide's load had begun");
      assert.equal(await q(b, "SELECT count(*) FROM public.wide", "big"), "0", "rolled back");
      await sessionsEnded(b, "big", "the failed restore");
    } finally {
      await Deno.remove(repoDir, { recursive: true });
    }
  });
});
