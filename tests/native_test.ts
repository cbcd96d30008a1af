/**
 * The native engine under stress: consistency while another session writes; tables in many
 * chunks and a damaged chunk; a split table that needs extensions; SIGKILL then --resume (single, cluster, after a server restart,
 * next to a database of a similar name); a worker backend terminated mid-COPY; a resume refused
 * because the tables changed. Plain round trips of the awkward dataset live in roundtrip_test.ts.
 */
import { strict as assert } from "node:assert";
import postgres from "postgres";
import { assertSameSnapshot, snapshotDatabase } from "./helpers/compare.ts";
import {
  type CliOptions,
  type CliResult,
  dbbackup,
  dbbackupKilledWhen,
  exists,
  loadWide,
  lockFiles,
  nativeBackupArgs,
  pgEnv,
  setDirs,
  summaryOf,
  tempRepo,
} from "./helpers/cli.ts";
import {
  type PgServer,
  queryValue as q,
  quoteLiteral,
  withPg,
  withTwoPg,
} from "./helpers/pg_server.ts";
import { waitFor } from "./helpers/wait.ts";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

interface ChunkRec {
  path: string;
  fromPage: number;
  toPage: number | null;
  rows: number;
  snapshot: number;
}
interface TableRec {
  schema: string;
  name: string;
  chunks: ChunkRec[];
}
interface FileRec {
  path: string;
  sha256: string;
}
interface ManifestShape {
  id: string;
  status: string;
  engine: string;
  databases: {
    name: string;
    status: string;
    files: FileRec[];
    native: { snapshots: { id: string; takenAt: string }[]; tables: TableRec[] };
  }[];
}

/** How long one dbbackup run may take here before it counts as hung. */
const RUN_LIMIT_MS = 45_000;

/** `dbbackup args`, failing the test (not stalling the suite) when it runs longer than 45 s. */
function cli(args: string[], options: CliOptions = {}): Promise<CliResult> {
  return dbbackup(args, { limitMs: RUN_LIMIT_MS, ...options });
}

/** A native backup of `db` from `pg` in 256 KiB chunks, which must succeed: its set's id. */
async function backUpNative(pg: PgServer, repo: string, db: string): Promise<string> {
  const backup = await cli(nativeBackupArgs(repo, db, "256k"), { env: pgEnv(pg) });
  assert.equal(backup.code, 0, backup.stderr);
  const [id] = await setDirs(repo);
  return id;
}

/** `restore single <id> --create` with two jobs into `pg`. */
function restoreCreate(pg: PgServer, repo: string, id: string): Promise<CliResult> {
  return cli(["--repo", repo, "-j", "2", "restore", "single", id, "--create"], {
    env: pgEnv(pg),
  });
}

async function readManifest(repo: string, id: string): Promise<ManifestShape> {
  return JSON.parse(await Deno.readTextFile(`${repo}/${id}/manifest.json`));
}

async function databaseExists(pg: PgServer, db: string): Promise<boolean> {
  return await q(pg, `SELECT count(*) FROM pg_database WHERE datname = ${quoteLiteral(db)}`) ===
    "1";
}

/** Published chunk files of a set (temp files start with a dot and do not count). */
async function chunkFiles(repo: string, id: string): Promise<string[]> {
  const out: string[] = [];
  try {
    for await (const e of Deno.readDir(`${repo}/${id}`)) {
      if (e.isFile && /^db-\d{3}-t\d{5}-c\d{4}\.copy(\.zst|\.gz)?(\.enc)?$/.test(e.name)) {
        out.push(e.name);
      }
    }
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  return out.sort();
}

/** The chunk records a running or interrupted native backup keeps in `<set>/state/`. */
async function chunkStates(dir: string): Promise<{ state: string; file: string }[]> {
  const out: { state: string; file: string }[] = [];
  for await (const e of Deno.readDir(`${dir}/state`)) {
    if (!/^db-\d{3}\.t\d{5}-c\d{4}\.json$/.test(e.name)) continue;
    const record = JSON.parse(await Deno.readTextFile(`${dir}/state/${e.name}`));
    out.push({ state: e.name, file: record.file.path });
  }
  return out.sort((x, y) => x.state < y.state ? -1 : 1);
}

/**
 * Restarts a test server in place (same data, port and socket). The helper's interface has no
 * restart, but its server class runs pg_ctl as the right OS user.
 */
async function restart(pg: PgServer): Promise<void> {
  const server = pg as PgServer & {
    asServerUser(program: string, args: string[], describe: string): Promise<void>;
  };
  assert.equal(typeof server.asServerUser, "function");
  await server.asServerUser(
    "pg_ctl",
    ["-D", pg.dataDir, "-w", "-t", "60", "-m", "fast", "-l", `${pg.baseDir}/server.log`, "restart"],
    `pg_ctl restart on port ${pg.port}`,
  );
}

async function sha256(path: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", await Deno.readFile(path));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The last JSON line of a `--json` run: the summary. */
function summary(r: CliResult): { setId: string; status: string } {
  return summaryOf(r);
}

/** Runs a native backup and SIGKILLs it once `chunks` chunk files are published. */
async function backupKilledAfter(
  repo: string,
  args: string[],
  env: Record<string, string>,
  chunks: number,
): Promise<{ id: string; result: CliResult }> {
  const { value: id, result } = await dbbackupKilledWhen(
    args,
    env,
    `${chunks} chunk files`,
    async () => {
      const [set] = await setDirs(repo);
      return set && (await chunkFiles(repo, set)).length >= chunks ? set : undefined;
    },
    cli,
  );
  return { id, result };
}

/** `backup single big` through the native engine, one job, 128 kB chunks. */
const nativeArgs = (repo: string) => nativeBackupArgs(repo, "big", "128k");

// ---------------------------------------------------------------------------------------------
// 1. A consistent snapshot while another session moves money around
// ---------------------------------------------------------------------------------------------

const ACCOUNTS = 50_000;
const INITIAL_BALANCE = 1_000;
const LEDGER_PRELOAD = 100_000;

Deno.test("native backup under concurrent transfers restores one consistent moment", async () => {
  await withTwoPg(async (a, b) => {
    const repo = await tempRepo();
    // The writer: one transaction per transfer, debit, credit and a ledger row.
    const sql = postgres({
      host: a.socketDir,
      port: a.port,
      user: "postgres",
      database: "bank",
      max: 1,
      onnotice: () => {},
    });
    let stop = false;
    let committed = 0;
    let writerError: unknown;
    let writer: Promise<void> = Promise.resolve();
    const written = (n: number) => () => {
      if (writerError) throw new Error(`the writer failed: ${writerError}`);
      return Promise.resolve(committed >= n);
    };
    try {
      await a.createDatabase("bank");
      await a.psql(
        `CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL, n int NOT NULL);
         INSERT INTO accounts SELECT g, ${INITIAL_BALANCE}, 0
           FROM generate_series(1, ${ACCOUNTS}) g;
         CREATE TABLE ledger (id bigserial PRIMARY KEY, a int, b int, amount int, filler text);
         INSERT INTO ledger (a, b, amount, filler)
           SELECT 0, 0, 0, repeat(md5(g::text), 2) FROM generate_series(1, ${LEDGER_PRELOAD}) g;
         VACUUM ANALYZE;`,
        { db: "bank" },
      );
      const total = ACCOUNTS * INITIAL_BALANCE;
      const filler = "f".repeat(64);
      writer = (async () => {
        while (!stop) {
          const from = 1 + Math.floor(Math.random() * ACCOUNTS);
          const to = 1 + (from + Math.floor(Math.random() * (ACCOUNTS - 1))) % ACCOUNTS;
          const x = 1 + Math.floor(Math.random() * 500);
          await sql.begin(async (tx) => {
            await tx`UPDATE accounts SET balance = balance - ${x}, n = n + 1 WHERE id = ${from}`;
            await tx`UPDATE accounts SET balance = balance + ${x}, n = n + 1 WHERE id = ${to}`;
            await tx`INSERT INTO ledger (a, b, amount, filler)
                     VALUES (${from}, ${to}, ${x}, ${filler})`;
          });
          committed++;
        }
      })().catch((err) => {
        writerError = err;
      });

      await waitFor("the writer to get going", written(200));
      const atStart = committed;
      const r = await cli(
        [
          "--repo",
          repo,
          "--json",
          "-j",
          "2",
          "backup",
          "single",
          "bank",
          "--engine",
          "native",
          "--chunk-size",
          "256k",
        ],
        { env: pgEnv(a) },
      );
      const atEnd = committed;
      // Keep writing a little after the backup, so the final state is surely newer.
      await waitFor("more transfers", written(atEnd + 200));
      stop = true;
      await writer;
      assert.equal(writerError, undefined, `the writer failed: ${writerError}`);
      assert.equal(r.code, 0, r.stderr);
      assert.ok(atEnd > atStart, "transfers were committed while the backup ran");

      const id = summary(r).setId;
      const manifest = await readManifest(repo, id);
      const tables = manifest.databases[0].native.tables;
      const split = tables.filter((t) => t.chunks.length > 1).map((t) => t.name).sort();
      assert.deepEqual(split, ["accounts", "ledger"], "both tables span several chunks");
      assert.ok(tables.find((t) => t.name === "ledger")!.chunks.length >= 4);
      assert.equal(manifest.databases[0].native.snapshots.length, 1);

      const finalLedger = Number(await q(a, "SELECT count(*) FROM ledger", "bank"));
      assert.equal(finalLedger, LEDGER_PRELOAD + committed, "every committed transfer is on A");

      const res = await restoreCreate(b, repo, id);
      assert.equal(res.code, 0, res.stderr);

      const [sum, moves] = (await q(b, "SELECT sum(balance), sum(n) FROM accounts", "bank"))
        .split("|").map(Number);
      const [count, maxId] = (await q(b, "SELECT count(*), max(id) FROM ledger", "bank"))
        .split("|").map(Number);
      assert.equal(sum, total, "no money appeared or vanished");
      assert.equal(
        moves,
        2 * (count - LEDGER_PRELOAD),
        "every transfer is both in accounts and ledger",
      );
      assert.equal(maxId, count, "ledger ids have no gaps");
      assert.ok(count >= LEDGER_PRELOAD + atStart, `transfers before the backup are in (${count})`);
      assert.ok(count < finalLedger, `later transfers are not (${count} < ${finalLedger})`);
      assert.equal(
        Number(await q(b, "SELECT count(*) FROM accounts", "bank")),
        ACCOUNTS,
        "every account once",
      );
      // The ledger is append-only: the restored one is exactly A's first `count` rows.
      const rowsMd5 = `SELECT md5(string_agg(l::text, E'\\n' ORDER BY id)) FROM ledger l
                        WHERE id <= ${count}`;
      assert.equal(await q(b, rowsMd5, "bank"), await q(a, rowsMd5, "bank"));
    } finally {
      stop = true;
      await writer;
      await sql.end({ timeout: 5 });
      await Deno.remove(repo, { recursive: true });
    }
  });
});

// ---------------------------------------------------------------------------------------------
// 2. Split tables restore identically; a damaged chunk is named and nothing is restored
// ---------------------------------------------------------------------------------------------

Deno.test("a table in many chunks restores identically, a flipped byte in one chunk is caught", async () => {
  await withTwoPg(async (a, b) => {
    const repo = await tempRepo();
    try {
      await a.createDatabase("shop");
      await a.psql(
        `CREATE TABLE items (
           id int PRIMARY KEY,
           gone text,
           label text,
           data bytea,
           tags text[],
           doc jsonb,
           at timestamptz,
           price numeric(12, 3),
           doubled numeric GENERATED ALWAYS AS (price * 2) STORED
         );
         INSERT INTO items (id, gone, label, data, tags, doc, at, price)
           SELECT g, 'x',
                  CASE g % 6 WHEN 0 THEN NULL WHEN 1 THEN E'tab\\there' WHEN 2 THEN E'line\\nbreak'
                             WHEN 3 THEN E'back\\\\slash \\\\N' WHEN 4 THEN 'ünïcødé ' || g
                             ELSE repeat('w', g % 300) END,
                  decode(md5(g::text), 'hex'),
                  ARRAY['a' || g, NULL, 'q"uote'],
                  jsonb_build_object('g', g, 's', E'\\\\N'),
                  '2020-01-01 00:00:00+00'::timestamptz + g * interval '1 minute',
                  g / 7.0
           FROM generate_series(1, 10000) g;
         ALTER TABLE items DROP COLUMN gone;
         DELETE FROM items WHERE id % 1000 < 150;
         CREATE TABLE notes (id serial PRIMARY KEY, body text);
         INSERT INTO notes (body) SELECT repeat(md5(g::text), 2000) FROM generate_series(1, 5) g;
         -- A line break in a name: psql's one-line \\copy cannot carry it (copied the plain way).
         CREATE TABLE "line
break" ("col
name" text, n int);
         INSERT INTO "line
break" SELECT repeat(md5(g::text), 10), g FROM generate_series(1, 3000) g;
         VACUUM ANALYZE;`,
        { db: "shop" },
      );
      const before = await snapshotDatabase(a, "shop");
      assert.equal(before.tables["public.items"].rows, 8500);

      const r = await cli(
        [
          "--repo",
          repo,
          "--json",
          "-j",
          "2",
          "backup",
          "single",
          "shop",
          "--engine",
          "native",
          "--chunk-size",
          "128k",
        ],
        { env: pgEnv(a) },
      );
      assert.equal(r.code, 0, r.stderr);
      const id = summary(r).setId;
      const manifest = await readManifest(repo, id);
      const items = manifest.databases[0].native.tables.find((t) => t.name === "items")!;
      assert.ok(items.chunks.length >= 5, `items is split (${items.chunks.length} chunks)`);
      assert.equal(items.chunks.reduce((n, c) => n + c.rows, 0), 8500, "chunk row counts add up");
      const broken = manifest.databases[0].native.tables.find((t) => t.name === "line\nbreak")!;
      assert.ok(broken.chunks.length >= 2, `split too (${broken.chunks.length} chunks)`);
      assert.equal(broken.chunks.reduce((n, c) => n + c.rows, 0), 3000, "its rows add up too");
      assert.equal(items.chunks.at(-1)!.toPage, null, "the last chunk is open-ended");

      const ok = await restoreCreate(b, repo, id);
      assert.equal(ok.code, 0, ok.stderr);
      assertSameSnapshot(await snapshotDatabase(b, "shop"), before, "restored from chunks");

      // Flip one byte in the middle of a chunk from the middle of the table.
      const victim = items.chunks[Math.floor(items.chunks.length / 2)].path;
      const bytes = await Deno.readFile(`${repo}/${id}/${victim}`);
      bytes[Math.floor(bytes.length / 2)] ^= 0x5a;
      await Deno.writeFile(`${repo}/${id}/${victim}`, bytes);

      const v = await cli(["--repo", repo, "verify", id]);
      assert.equal(v.code, 4, v.stdout + v.stderr);
      assert.match(v.stdout, /FAILED/);
      assert.ok(v.stdout.includes(victim), `verify names ${victim}:\n${v.stdout}`);
      const otherChunks = items.chunks.map((c) => c.path).filter((p) => p !== victim);
      for (const p of otherChunks) assert.ok(!v.stdout.includes(p), `${p} is not blamed`);

      const bad = await cli(
        ["--repo", repo, "restore", "single", id, "--create", "--target", "t"],
        { env: pgEnv(b) },
      );
      assert.equal(bad.code, 4, bad.stdout + bad.stderr);
      assert.ok(bad.stderr.includes(victim), `restore names ${victim}:\n${bad.stderr}`);
      assert.equal(await databaseExists(b, "t"), false, "the target was not created");
    } finally {
      await Deno.remove(repo, { recursive: true });
    }
  });
});

// ---------------------------------------------------------------------------------------------
// 3. SIGKILL, then --resume continues the same set
// ---------------------------------------------------------------------------------------------

Deno.test("a split table of an extension's type, with an index of an extension's operator class, restores identically", async () => {
  await withTwoPg(async (a, b) => {
    const repo = await tempRepo();
    try {
      // people is big (split into chunks): its part of pre-data comes first and needs citext;
      // its trigram index needs pg_trgm, restored with the rest of pre-data beside its load.
      await a.createDatabase("ext");
      await a.psql(
        `CREATE EXTENSION citext;
         CREATE EXTENSION pg_trgm;
         CREATE TABLE people (id serial PRIMARY KEY, email citext UNIQUE, name text);
         INSERT INTO people (email, name)
           SELECT 'User' || g || '@example.org', md5(g::text) FROM generate_series(1, 20000) g;
         CREATE INDEX people_name_trgm ON people USING gin (name gin_trgm_ops);
         CREATE TABLE other (id int PRIMARY KEY);
         INSERT INTO other SELECT generate_series(1, 10);`,
        { db: "ext" },
      );
      const before = await snapshotDatabase(a, "ext");
      const id = await backUpNative(a, repo, "ext");
      const manifest = await readManifest(repo, id);
      const people = manifest.databases[0].native.tables.find((t) => t.name === "people");
      assert.ok(people && people.chunks.length > 1, "people is split into chunks");
      const res = await restoreCreate(b, repo, id);
      assert.equal(res.code, 0, res.stderr);
      assertSameSnapshot(await snapshotDatabase(b, "ext"), before, "ext after restore");
      assert.equal(
        await q(b, "SELECT count(*) FROM people WHERE email = 'USER7@EXAMPLE.ORG'", "ext"),
        "1",
        "citext compares without case",
      );
    } finally {
      await Deno.remove(repo, { recursive: true });
    }
  });
});

Deno.test("a native backup that row-level security would filter fails instead of losing rows", async () => {
  await withTwoPg(async (a, b) => {
    const repo = await tempRepo();
    try {
      // notes is big (split into chunks, copied by the native engine); reader may read it,
      // but its policy shows reader only a tenth of the rows.
      await a.createDatabase("rls");
      await a.psql(
        `CREATE ROLE reader LOGIN;
         CREATE TABLE notes (id int PRIMARY KEY, author text, body text);
         INSERT INTO notes
           SELECT g, CASE WHEN g % 10 = 0 THEN 'reader' ELSE 'someone' END, md5(g::text)
             FROM generate_series(1, 20000) g;
         ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
         ALTER TABLE notes FORCE ROW LEVEL SECURITY;
         CREATE POLICY own_notes ON notes FOR SELECT USING (author = current_user);
         GRANT SELECT ON notes TO reader;`,
        { db: "rls" },
      );
      const before = await snapshotDatabase(a, "rls");
      const args = nativeBackupArgs(repo, "rls", "256k");

      const filtered = await cli(args, { env: pgEnv(a, { PGUSER: "reader" }) });
      assert.notEqual(filtered.code, 0, "a backup of the rows reader happens to see must fail");
      assert.match(filtered.stderr, /row-level security/);
      assert.doesNotMatch(filtered.stderr, /retrying/, "an SQL error is not retried");
      assert.match(filtered.stderr, /notes/);
      // The server's message, not buried in psql's statuses or libpq's warning about the
      // password file dbbackup points it at.
      assert.doesNotMatch(filtered.stderr, /^(BEGIN|SET)$/m);
      assert.doesNotMatch(filtered.stderr, /password file/);
      for (const id of await setDirs(repo)) {
        assert.notEqual((await readManifest(repo, id).catch(() => undefined))?.status, "complete");
        await Deno.remove(`${repo}/${id}`, { recursive: true });
      }

      // A role that bypasses it (here the superuser) backs up every row, and the restore loads
      // them all although the table's policies are back in place.
      const full = await cli(args, { env: pgEnv(a) });
      assert.equal(full.code, 0, full.stderr);
      const [id] = await setDirs(repo);
      const notes = (await readManifest(repo, id)).databases[0].native.tables
        .find((t) => t.name === "notes");
      assert.ok(notes && notes.chunks.length > 1, "notes is split into chunks");
      assert.equal(notes.chunks.reduce((n, c) => n + c.rows, 0), 20000);
      await b.psql("CREATE ROLE reader LOGIN");
      const res = await restoreCreate(b, repo, id);
      assert.equal(res.code, 0, res.stderr);
      assertSameSnapshot(await snapshotDatabase(b, "rls"), before, "rls after restore");
      assert.equal(
        await q(b, "SELECT relforcerowsecurity FROM pg_class WHERE relname = 'notes'", "rls"),
        "t",
      );
    } finally {
      await Deno.remove(repo, { recursive: true });
    }
  });
});

Deno.test("a row the target rejects after its chunk was sent fails the restore, without hanging", async () => {
  await withTwoPg(async (a, b) => {
    const repo = await tempRepo();
    try {
      // The check reads a setting the target has and the source has not: there, only the very
      // last row breaks it, so the server rejects it after the whole chunk has been sent.
      await a.createDatabase("late");
      await a.psql(
        `CREATE FUNCTION below_limit(v int) RETURNS boolean LANGUAGE sql AS
           $$ SELECT CASE WHEN coalesce(current_setting('dbbackup_test.max_v', true), '') = ''
                          THEN true ELSE v <= current_setting('dbbackup_test.max_v')::int END $$;
         CREATE TABLE readings (id int PRIMARY KEY, v int CHECK (public.below_limit(v)), pad text);
         INSERT INTO readings SELECT g, CASE WHEN g = 20000 THEN 1000 ELSE 1 END, md5(g::text)
           FROM generate_series(1, 20000) g;`,
        { db: "late" },
      );
      const id = await backUpNative(a, repo, "late");
      await b.psql("ALTER ROLE postgres SET dbbackup_test.max_v = '100'");
      const res = await restoreCreate(b, repo, id);
      assert.equal(res.code, 1, res.stderr);
      assert.match(res.stderr, /chunk db-001-t\d{5}-c\d{4}\.copy\.zst of table public\.readings/);
      assert.match(res.stderr, /violates check constraint/);
      assert.equal(await databaseExists(b, "late"), false, "the new database is dropped");
    } finally {
      await Deno.remove(repo, { recursive: true });
    }
  });
});

Deno.test("reg* values and XML restore exactly, whatever search_path and xmloption a role or database sets", async () => {
  await withTwoPg(async (a, b) => {
    const repo = await tempRepo();
    try {
      // The source database's search_path finds s.t by its bare name; the target's finds
      // public.t by the same name, and the target's role reads XML as whole documents only.
      await a.createDatabase("paths");
      await a.psql("ALTER DATABASE paths SET search_path = s, public");
      // Schema a's 300 tables come before s.t in pre-data: refs (big) is loaded beside the
      // rest of pre-data, but its values name s.t and s.mood, which must exist by then.
      await a.psql(
        `CREATE SCHEMA a;
         DO $$ BEGIN
           FOR i IN 1..300 LOOP EXECUTE format('CREATE TABLE a.pad_%s (id int)', i); END LOOP;
         END $$;
         CREATE SCHEMA s;
         CREATE TABLE s.t (x int);
         CREATE TABLE public.t (x int);
         CREATE TYPE s.mood AS ENUM ('calm');
         CREATE TABLE s.refs (id int PRIMARY KEY, r regclass, ty regtype, doc xml, pad text);
         INSERT INTO s.refs SELECT g, 's.t', 's.mood', xmlparse(content 'note <b/> ' || g),
                                   md5(g::text)
           FROM generate_series(1, 20000) g;`,
        { db: "paths" },
      );
      const id = await backUpNative(a, repo, "paths");
      assert.ok(
        (await readManifest(repo, id)).databases[0].native.tables.some((t) => t.name === "refs"),
        "refs is copied natively",
      );
      await b.psql("ALTER ROLE postgres SET search_path = public");
      await b.psql("ALTER ROLE postgres SET xmloption = document");
      const res = await restoreCreate(b, repo, id);
      assert.equal(res.code, 0, res.stderr);
      const named = `SELECT string_agg(DISTINCT n.nspname || '.' || c.relname, ',')
                       FROM s.refs JOIN pg_class c ON c.oid = r
                       JOIN pg_namespace n ON n.oid = c.relnamespace`;
      assert.equal(await q(b, named, "paths"), "s.t");
      // Compared with the source's settings on both sides (a single restore leaves the
      // database's settings behind, and a role's override them).
      await b.psql("ALTER ROLE postgres RESET ALL");
      await b.psql("ALTER DATABASE paths SET search_path = s, public");
      assertSameSnapshot(
        await snapshotDatabase(b, "paths"),
        await snapshotDatabase(a, "paths"),
        "paths after restore",
      );
    } finally {
      await Deno.remove(repo, { recursive: true });
    }
  });
});

Deno.test("in a LATIN1 database, a big table with a non-ASCII name is backed up once and restores identically", async () => {
  await withTwoPg(async (a, b) => {
    const repo = await tempRepo();
    try {
      await a.psql(
        "CREATE DATABASE lat TEMPLATE template0 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C'",
      );
      await a.psql(
        `CREATE TABLE "café" (id int, t text);
         INSERT INTO "café" SELECT g, 'é ß ü ' || g || repeat('x', 50)
           FROM generate_series(1, 20000) g;
         CREATE TABLE plain (id int, t text);
         INSERT INTO plain SELECT g, 'ñ ' || md5(g::text) FROM generate_series(1, 20000) g;`,
        { db: "lat" },
      );
      const before = await snapshotDatabase(a, "lat");
      const id = await backUpNative(a, repo, "lat");
      const native = (await readManifest(repo, id)).databases[0].native.tables.map((t) => t.name);
      assert.deepEqual(native, ["plain"], "café stays in pg_dump's archive, plain is split");
      const res = await restoreCreate(b, repo, id);
      assert.equal(res.code, 0, res.stderr);
      assert.equal(await q(b, `SELECT count(*) FROM "café"`, "lat"), "20000");
      assertSameSnapshot(await snapshotDatabase(b, "lat"), before, "lat after restore");
    } finally {
      await Deno.remove(repo, { recursive: true });
    }
  });
});

Deno.test("an SQL_ASCII database's bytes that are not UTF-8 round trip unchanged, through restore and export-sql", async () => {
  await withTwoPg(async (a, b) => {
    const repo = await tempRepo();
    try {
      const create = "TEMPLATE template0 ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'";
      await a.psql(`CREATE DATABASE sa ${create}`);
      // SQL_ASCII stores bytes as they come: 0xff 0xfe 0x80 is no character in any encoding
      // a conversion would go through.
      await a.psql(
        `CREATE TABLE raw AS SELECT g AS id,
                convert_from('\\xfffe80e9'::bytea, 'SQL_ASCII') || g || repeat('r', 50) AS t
           FROM generate_series(1, 20000) g;`,
        { db: "sa" },
      );
      const bytes =
        "SELECT md5(string_agg(convert_to(t, 'SQL_ASCII')::text, ',' ORDER BY id)) FROM raw";
      const source = await q(a, bytes, "sa");
      assert.match(
        await q(a, "SELECT convert_to(t, 'SQL_ASCII')::text FROM raw WHERE id = 1", "sa"),
        /^\\xfffe80e9/,
      );
      const id = await backUpNative(a, repo, "sa");
      const raw = (await readManifest(repo, id)).databases[0].native.tables.find((t) =>
        t.name === "raw"
      );
      assert.ok(raw && raw.chunks.length > 1, "raw is split into chunks");
      const res = await restoreCreate(b, repo, id);
      assert.equal(res.code, 0, res.stderr);
      assert.equal(await q(b, bytes, "sa"), source);

      const script = `${repo}/sa.sql`;
      const out = await cli(["--repo", repo, "export-sql", id, "--output", script]);
      assert.equal(out.code, 0, out.stderr);
      await b.psql(`CREATE DATABASE sa2 ${create}`);
      await b.psql(await Deno.readFile(script), { db: "sa2" });
      assert.equal(await q(b, bytes, "sa2"), source);
    } finally {
      await Deno.remove(repo, { recursive: true });
    }
  });
});

Deno.test("an EUC_JP database's text round trips byte for byte (no conversion to UTF-8 and back)", async () => {
  await withTwoPg(async (a, b) => {
    const repo = await tempRepo();
    try {
      await a.psql(
        "CREATE DATABASE ej TEMPLATE template0 ENCODING 'EUC_JP' LC_COLLATE 'C' LC_CTYPE 'C'",
      );
      // 0xADF0 (NEC row 13) comes back from UTF-8 as 0xA2E2.
      await a.psql(
        `CREATE TABLE jp AS SELECT g AS id,
                convert_from('\\xadf0a4a2'::bytea, 'EUC_JP') || g || repeat('w', 50) AS t
           FROM generate_series(1, 20000) g;`,
        { db: "ej" },
      );
      const bytes =
        "SELECT md5(string_agg(convert_to(t, 'EUC_JP')::text, ',' ORDER BY id)) FROM jp";
      const source = await q(a, bytes, "ej");
      const id = await backUpNative(a, repo, "ej");
      const manifest = await readManifest(repo, id);
      assert.ok(manifest.databases[0].native.tables.some((t) => t.name === "jp"));
      const res = await restoreCreate(b, repo, id);
      assert.equal(res.code, 0, res.stderr);
      assert.equal(await q(b, bytes, "ej"), source);
    } finally {
      await Deno.remove(repo, { recursive: true });
    }
  });
});

Deno.test("a table rewritten between the backup's snapshot and its lock fails the backup instead of reading as empty", async () => {
  await withPg(async (pg) => {
    const repo = await tempRepo();
    const sql = postgres({
      host: pg.socketDir,
      port: pg.port,
      user: "postgres",
      database: "race",
      max: 2,
      onnotice: () => {},
    });
    try {
      await pg.createDatabase("race");
      await pg.psql(
        `CREATE TABLE acct (id int PRIMARY KEY, balance bigint, pad text);
         INSERT INTO acct SELECT g, 1000, md5(g::text) FROM generate_series(1, 20000) g;`,
        { db: "race" },
      );
      // A reader holds the table; a rewriting ALTER waits for it; the backup takes its
      // snapshot, then waits for its lock behind the ALTER, which commits first.
      const reader = await sql.reserve();
      await reader.unsafe("BEGIN");
      await reader.unsafe("LOCK TABLE acct IN ACCESS SHARE MODE");
      const alter = sql.unsafe("ALTER TABLE acct ADD COLUMN r float DEFAULT random()");
      alter.catch(() => {});
      await waitFor(
        "the ALTER to wait for its lock",
        async () => await q(pg, "SELECT count(*) FROM pg_locks WHERE NOT granted", "race") === "1",
      );
      const backup = cli(nativeBackupArgs(repo, "race", "256k"), { env: pgEnv(pg) });
      await waitFor(
        "the backup to wait for its lock",
        async () => await q(pg, "SELECT count(*) FROM pg_locks WHERE NOT granted", "race") === "2",
      );
      await reader.unsafe("COMMIT");
      reader.release();
      await alter;
      const res = await backup;
      assert.equal(res.code, 1, res.stderr);
      assert.match(res.stderr, /public\.acct .*truncated, rewritten or replaced/);
      for (const id of await setDirs(repo)) {
        assert.notEqual((await readManifest(repo, id).catch(() => undefined))?.status, "complete");
      }
    } finally {
      await sql.end();
      await Deno.remove(repo, { recursive: true });
    }
  });
});

Deno.test("a session waiting to lock a table the backup holds fails the backup instead of hanging it", async () => {
  await withPg(async (pg) => {
    const repo = await tempRepo();
    const sql = postgres({
      host: pg.socketDir,
      port: pg.port,
      user: "postgres",
      database: "big",
      max: 1,
      onnotice: () => {},
    });
    try {
      // big's 70 chunks come first (largest first); t's come last.
      await loadWide(pg, "big", 200_000);
      await pg.psql(
        `CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g;`,
        { db: "big" },
      );
      const backup = cli(nativeBackupArgs(repo, "big", "1m"), { env: pgEnv(pg) });
      const files = async () => {
        const [id] = await setDirs(repo);
        return id ? [...Deno.readDirSync(`${repo}/${id}`)].map((e) => e.name) : [];
      };
      // Once pg_dump has its schema (and let go of its own locks), a TRUNCATE of t waits for
      // the leader's lock; the COPY of t would wait behind it.
      await waitFor(
        "the schema dump",
        async () => (await files()).some((f) => /-schema\.pgdump/.test(f) && !/\.tmp/.test(f)),
      );
      const truncate = sql.unsafe("TRUNCATE t");
      truncate.catch(() => {});
      await waitFor(
        "the TRUNCATE to wait for its lock",
        async () => await q(pg, "SELECT count(*) FROM pg_locks WHERE NOT granted", "big") === "1",
      );
      const tableIndex = (await files()).length; // only for the message below
      const res = await backup;
      assert.equal(res.code, 1, `${res.stderr} (${tableIndex} files when TRUNCATE queued)`);
      assert.match(
        res.stderr,
        /another session is waiting for a lock on table public\.t of "big" that conflicts/,
      );
      for (const id of await setDirs(repo)) {
        assert.notEqual((await readManifest(repo, id).catch(() => undefined))?.status, "complete");
      }
      await truncate;
    } finally {
      await sql.end();
      await Deno.remove(repo, { recursive: true });
    }
  });
});

Deno.test("a native backup killed with SIGKILL is continued by --resume", async () => {
  await withTwoPg(async (a, b) => {
    const repo = await tempRepo();
    try {
      await loadWide(a, "big", 12_000);
      const before = await snapshotDatabase(a, "big");
      const args = nativeArgs(repo);
      const { id } = await backupKilledAfter(repo, args, pgEnv(a), 4);
      const dir = `${repo}/${id}`;
      assert.ok(!(await exists(`${dir}/manifest.json`)), "no manifest");

      // The chunks the killed run recorded (a file published in the instant before the kill
      // may have no record yet).
      const recorded = [];
      for (const c of await chunkStates(dir)) {
        if (await exists(`${dir}/${c.file}`)) recorded.push(c);
      }
      assert.ok(recorded.length >= 3, `recorded chunks: ${JSON.stringify(recorded)}`);
      // One recorded chunk is damaged on disk; another lost its record, as when the kill lands
      // between publishing a file and recording it. Both must be dumped again.
      const [damaged, unrecorded, ...intact] = recorded;
      const bytes = await Deno.readFile(`${dir}/${damaged.file}`);
      bytes[Math.floor(bytes.length / 2)] ^= 0xff;
      await Deno.writeFile(`${dir}/${damaged.file}`, bytes);
      await Deno.remove(`${dir}/state/${unrecorded.state}`);
      const intactSums = new Map<string, string>();
      for (const c of intact) intactSums.set(c.file, await sha256(`${dir}/${c.file}`));

      const list = await cli(["--repo", repo, "list"]);
      assert.equal(list.code, 0, list.stderr);
      assert.match(list.stdout.split("\n").find((l) => l.startsWith(id)) ?? "", /\bincomplete\b/);

      const refused = await cli(["--repo", repo, "restore", "single", id, "--create"], {
        env: pgEnv(b),
      });
      assert.equal(refused.code, 1, refused.stderr);
      assert.match(refused.stderr, /incomplete/);
      assert.equal(await databaseExists(b, "big"), false);

      const wrongEngine = await cli(
        ["--repo", repo, "backup", "single", "big", "--engine", "pg_dump", "--resume"],
        { env: pgEnv(a) },
      );
      assert.equal(wrongEngine.code, 2, wrongEngine.stderr);
      assert.match(wrongEngine.stderr, /--resume needs the native engine/);
      assert.deepEqual(await setDirs(repo), [id], "the refused run created nothing");

      // While another live process holds the set (as a second resume would), resume refuses.
      const heldBy = `${repo}/locks/other.json`;
      await Deno.writeTextFile(
        heldBy,
        JSON.stringify({
          scope: `set:${id}`,
          mode: "exclusive",
          purpose: "backup single --resume",
          hostname: Deno.hostname(),
          pid: Deno.pid,
          createdAt: new Date().toISOString(),
          refreshedAt: new Date().toISOString(),
        }),
      );
      const locked = await cli([...args, "--resume"], { env: pgEnv(a) });
      assert.equal(locked.code, 1, locked.stderr);
      assert.match(
        locked.stderr,
        new RegExp(`backup set ${id} .* is locked by backup single --resume \\(pid ${Deno.pid}`),
      );
      await Deno.remove(heldBy);
      // A temporary file of the killed run is removed by the resume.
      await Deno.writeTextFile(`${dir}/.db-001-big-x.copy.zst.tmp-0badcafe`, "partial");

      const resumed = await cli([...args, "--resume"], { env: pgEnv(a) });
      assert.equal(resumed.code, 0, resumed.stderr);
      const out = resumed.stdout + resumed.stderr;
      assert.ok(out.includes(`resuming the incomplete set ${id}`), out);
      assert.match(out, /removed \d+ unfinished file\(s\) of the interrupted run/);
      const leftovers = [];
      for await (const e of Deno.readDir(dir)) if (e.name.includes(".tmp-")) leftovers.push(e.name);
      assert.deepEqual(leftovers, [], "no temporary files after the resume");
      assert.deepEqual(await lockFiles(repo), [], "the killed run's stale lock is gone");
      assert.match(out, new RegExp(`reused ${intact.length} chunk\\(s\\)`));
      assert.deepEqual(await setDirs(repo), [id], "the same set, no new folder");
      assert.ok(!(await exists(`${dir}/state`)), "the resume records are gone");

      const manifest = await readManifest(repo, id);
      assert.equal(manifest.status, "complete");
      const native = manifest.databases[0].native;
      assert.equal(native.snapshots.length, 2);
      assert.notEqual(native.snapshots[0].id, native.snapshots[1].id);
      const chunks = new Map(native.tables.flatMap((t) => t.chunks).map((c) => [c.path, c]));
      for (const [f, sum] of intactSums) {
        assert.equal(chunks.get(f)?.snapshot, 0, `${f} is reused from the first snapshot`);
        assert.equal(await sha256(`${dir}/${f}`), sum, `${f} was kept as it was`);
      }
      for (const f of [damaged.file, unrecorded.file]) {
        assert.equal(chunks.get(f)?.snapshot, 1, `${f} was dumped again`);
      }
      assert.equal(
        [...chunks.values()].filter((c) => c.snapshot === 0).length,
        intact.length,
        "only the intact recorded chunks come from the first snapshot",
      );

      const listJson = await cli(["--repo", repo, "--json", "list"]);
      assert.equal(listJson.code, 0, listJson.stderr);
      const sets = JSON.parse(listJson.stdout);
      assert.equal(sets.length, 1);
      assert.equal(sets[0].status, "complete");
      assert.equal(sets[0].snapshots, 2);
      const listText = await cli(["--repo", repo, "list"]);
      assert.match(listText.stdout, /complete, spans 2 snapshots/);

      const v = await cli(["--repo", repo, "verify", "--deep", id]);
      assert.equal(v.code, 0, v.stdout + v.stderr);
      assert.match(v.stdout, /note: a resumed backup: its data spans 2 snapshots/);

      const res = await cli(["--repo", repo, "restore", "single", id, "--create"], {
        env: pgEnv(b),
      });
      assert.equal(res.code, 0, res.stderr);
      assert.match(res.stderr, /warning: backup \S+ was resumed: its data spans 2 snapshots/);
      assertSameSnapshot(await snapshotDatabase(b, "big"), before, "restore of the resumed set");
    } finally {
      await Deno.remove(repo, { recursive: true });
    }
  });
});

Deno.test("a resumed native cluster backup dumps the globals again and completes", async () => {
  await withPg(async (a) => {
    const repo = await tempRepo();
    try {
      await loadWide(a, "big", 8_000);
      const args = [
        "--repo",
        repo,
        "-j",
        "1",
        "backup",
        "cluster",
        "--engine",
        "native",
        "--chunk-size",
        "128k",
      ];
      const { id } = await backupKilledAfter(repo, args, pgEnv(a), 2);
      assert.ok(await exists(`${repo}/${id}/globals.sql.zst`), "the killed run wrote the globals");

      const r = await cli([...args, "--resume"], { env: pgEnv(a) });
      assert.equal(r.code, 0, r.stdout + r.stderr);
      assert.deepEqual(await setDirs(repo), [id]);
      const manifest = await readManifest(repo, id) as ManifestShape & {
        globals: { status: string; error?: string };
      };
      assert.equal(manifest.status, "complete");
      assert.equal(manifest.globals.status, "ok", manifest.globals.error);
      assert.deepEqual(manifest.databases.map((d) => [d.name, d.status]).sort(), [
        ["big", "ok"],
        ["postgres", "ok"],
      ]);
      const v = await cli(["--repo", repo, "verify", "--deep", id]);
      assert.equal(v.code, 0, v.stdout + v.stderr);
    } finally {
      await Deno.remove(repo, { recursive: true });
    }
  });
});

Deno.test("a resume after a server restart still counts two snapshots", async () => {
  await withPg(async (a) => {
    const repo = await tempRepo();
    try {
      await loadWide(a, "big", 8_000);
      const args = nativeArgs(repo);
      // Snapshot ids restart with the server: both runs are the first thing after a start, as
      // when the server's restart is what interrupted the backup.
      await restart(a);
      const { id } = await backupKilledAfter(repo, args, pgEnv(a), 2);
      await restart(a);
      const r = await cli([...args, "--resume"], { env: pgEnv(a) });
      assert.equal(r.code, 0, r.stderr);
      const native = (await readManifest(repo, id)).databases[0].native;
      const chunks = native.tables.flatMap((t) => t.chunks);
      assert.ok(chunks.some((c) => c.snapshot === 0) && chunks.some((c) => c.snapshot === 1));
      assert.equal(native.snapshots.length, 2, JSON.stringify(native.snapshots));
      const v = await cli(["--repo", repo, "verify", id]);
      assert.equal(v.code, 0, v.stdout + v.stderr);
      assert.match(v.stdout, /spans 2 snapshots/);
    } finally {
      await Deno.remove(repo, { recursive: true });
    }
  });
});

Deno.test("--resume continues its own database's set, never one of a similar name", async () => {
  await withPg(async (a) => {
    const repo = await tempRepo();
    try {
      await loadWide(a, "shop-2", 8_000);
      await loadWide(a, "shop", 3_000); // the same tables: only the database name differs
      const args = (db: string) => nativeBackupArgs(repo, db, "128k");
      const { id } = await backupKilledAfter(repo, args("shop-2"), pgEnv(a), 2);
      assert.match(id, /-single-shop-2$/);

      // "shop" must not take over the chunks of "shop-2".
      const other = await cli([...args("shop"), "--resume"], { env: pgEnv(a) });
      assert.equal(other.code, 1, other.stderr);
      assert.match(other.stderr, /"shop-2"/);
      assert.ok(!(await exists(`${repo}/${id}/manifest.json`)), "shop-2's set is still open");

      const own = await cli([...args("shop-2"), "--resume"], { env: pgEnv(a) });
      assert.equal(own.code, 0, own.stderr);
      assert.match(own.stderr, new RegExp(`resuming the incomplete set ${id}`));
      assert.deepEqual(await setDirs(repo), [id]);
      const manifest = await readManifest(repo, id);
      assert.equal(manifest.databases[0].name, "shop-2");
      assert.equal(manifest.databases[0].native.snapshots.length, 2);
      const rows = manifest.databases[0].native.tables.find((t) => t.name === "wide")!.chunks
        .reduce((n, c) => n + c.rows, 0);
      assert.equal(rows, 8_000);
    } finally {
      await Deno.remove(repo, { recursive: true });
    }
  });
});

// ---------------------------------------------------------------------------------------------
// 4. A worker backend terminated mid-COPY: the chunk is retried
// ---------------------------------------------------------------------------------------------

Deno.test("a chunk whose backend is terminated mid-COPY is retried from the same snapshot", async () => {
  await withTwoPg(async (a, b) => {
    const repo = await tempRepo();
    // psql takes tens of milliseconds to start; a COPY of a chunk may last less: poll from here.
    const watcher = postgres({
      host: a.socketDir,
      port: a.port,
      user: "postgres",
      database: "postgres",
      max: 1,
      onnotice: () => {},
    });
    try {
      await loadWide(a, "big", 10_000);
      const before = await snapshotDatabase(a, "big");
      let finished = false;
      const running = cli(
        [
          "--repo",
          repo,
          "-j",
          "2",
          "backup",
          "single",
          "big",
          "--engine",
          "native",
          "--chunk-size",
          "256k",
        ],
        { env: pgEnv(a) },
      );
      running.then(() => finished = true, () => finished = true);
      // Find and terminate in one statement: a COPY of a chunk of wide that is still running
      // (pg_dump's COPY of small, for the schema archive's data section, runs as 'dbbackup' too).
      const killed = await waitFor(
        "a COPY of dbbackup to terminate",
        async () => {
          if (finished) throw new Error("the backup ended before a COPY could be terminated");
          const rows = await watcher<{ pid: number }[]>`
          SELECT pid FROM pg_stat_activity
           WHERE application_name = 'dbbackup' AND state = 'active' AND query LIKE 'COPY%'
             AND query LIKE '%wide%' AND pg_terminate_backend(pid)
           LIMIT 1`;
          return rows[0]?.pid;
        },
        30_000,
        1,
      );
      assert.ok(killed > 0);
      const r = await running;
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /warning: retrying chunk \d+ of table public\.wide/);
      const [id] = await setDirs(repo);
      const manifest = await readManifest(repo, id);
      assert.equal(manifest.status, "complete");
      assert.equal(manifest.databases[0].native.snapshots.length, 1, "one snapshot throughout");

      const res = await restoreCreate(b, repo, id);
      assert.equal(res.code, 0, res.stderr);
      assertSameSnapshot(await snapshotDatabase(b, "big"), before, "restore after a retried chunk");
    } finally {
      await watcher.end({ timeout: 5 });
      await Deno.remove(repo, { recursive: true });
    }
  });
});

// ---------------------------------------------------------------------------------------------
// 5. --resume refuses when the tables changed
// ---------------------------------------------------------------------------------------------

Deno.test("--resume refuses to continue when a table changed since the interruption", async () => {
  await withPg(async (a) => {
    const repo = await tempRepo();
    try {
      await loadWide(a, "big", 8_000);
      const args = nativeArgs(repo);
      const { id } = await backupKilledAfter(repo, args, pgEnv(a), 1);
      await a.psql("ALTER TABLE wide ADD COLUMN extra int DEFAULT 7", { db: "big" });

      const r = await cli([...args, "--resume"], { env: pgEnv(a) });
      assert.notEqual(r.code, 0, r.stdout + r.stderr);
      assert.match(r.stderr, /tables or columns changed/);
      assert.deepEqual(await setDirs(repo), [id], "no new set");
      assert.ok(
        !(await Deno.stat(`${repo}/${id}/manifest.json`).catch(() => null)),
        "the set is still incomplete",
      );
    } finally {
      await Deno.remove(repo, { recursive: true });
    }
  });
});

Deno.test("an encrypted native backup killed with SIGKILL is continued by --resume with its key", async () => {
  await withTwoPg(async (a, b) => {
    const repo = await tempRepo();
    try {
      await loadWide(a, "big", 12_000);
      const before = await snapshotDatabase(a, "big");
      const key = `${repo}.key`;
      assert.equal((await cli(["key", "generate", "--out", key])).code, 0);
      const args = [...nativeArgs(repo), "--encrypt", "--key-file", key];
      const { id } = await backupKilledAfter(repo, args, pgEnv(a), 4);
      const dir = `${repo}/${id}`;
      // A chunk published in the instant before the kill, before its (sealed) record: the
      // resume must remove the encrypted leftover before it writes that chunk again.
      const records = [];
      for await (const e of Deno.readDir(`${dir}/state`)) {
        if (/^db-\d{3}\.t\d{5}-c\d{4}\.json$/.test(e.name)) records.push(e.name);
      }
      assert.ok(records.length >= 2, `chunk records: ${records.join(", ")}`);
      const lost = records.sort()[0];
      assert.ok(!/rawCrc32|rawSha256/.test(await Deno.readTextFile(`${dir}/state/${lost}`)));
      await Deno.remove(`${dir}/state/${lost}`);

      const noKey = await cli(nativeArgs(repo).concat("--resume"), { env: pgEnv(a) });
      assert.equal(noKey.code, 5, noKey.stderr);
      assert.match(noKey.stderr, /cannot resume .* it is encrypted/);

      const resumed = await cli([...args, "--resume"], { env: pgEnv(a) });
      assert.equal(resumed.code, 0, resumed.stderr);
      assert.deepEqual(await setDirs(repo), [id], "the same set");
      const res = await cli(
        ["--repo", repo, "--key-file", key, "restore", "single", id, "--create"],
        { env: pgEnv(b) },
      );
      assert.equal(res.code, 0, res.stderr);
      assertSameSnapshot(await snapshotDatabase(b, "big"), before, "restore of the resumed set");
    } finally {
      await Deno.remove(repo, { recursive: true });
      await Deno.remove(`${repo}.key`).catch(() => {});
    }
  });
});

Deno.test("a native restore killed with SIGKILL mid-table leaves no rows of that table behind", async () => {
  await withTwoPg(async (a, b) => {
    const repo = await tempRepo();
    try {
      await loadWide(a, "big", 120_000);
      const backup = await cli(nativeArgs(repo), { env: pgEnv(a) });
      assert.equal(backup.code, 0, backup.stderr);
      const [id] = await setDirs(repo);
      let pid = 0;
      const running = cli(["--repo", repo, "-j", "1", "restore", "single", id, "--create"], {
        env: pgEnv(b),
        onStart: (p) => pid = p,
      });
      // Killed while its connection is loading rows of "wide" into the target.
      const copying = () =>
        q(
          b,
          `SELECT count(*) FROM pg_stat_activity
            WHERE datname = 'big' AND query ILIKE 'COPY%wide%FROM stdin%' AND state = 'active'`,
        );
      await waitFor("a COPY into wide", async () => (await copying()) !== "0", 30_000);
      Deno.kill(pid, "SIGKILL");
      const killed = await running;
      assert.equal(killed.code, 137, killed.stderr);
      // The connection breaks before COMMIT: the server rolls the table's transaction back.
      await waitFor("the loading session to end", async () =>
        (await q(
          b,
          `SELECT count(*) FROM pg_stat_activity WHERE datname = 'big' AND application_name = 'dbbackup'`,
        )) === "0", 30_000);
      assert.equal(await q(b, "SELECT count(*) FROM wide", "big"), "0", "no partial rows");
    } finally {
      await Deno.remove(repo, { recursive: true });
    }
  });
});

Deno.test("a database with standard_conforming_strings off and a column name ending in a backslash backs up and restores identically", async () => {
  await withTwoPg(async (a, b) => {
    const repo = await tempRepo();
    try {
      await a.createDatabase("scs");
      await a.psql(
        `CREATE TABLE "odd\\" ("col\\" text, id int);
         INSERT INTO "odd\\" SELECT 'v\\' || g || repeat('x', 40), g FROM generate_series(1, 20000) g;`,
        { db: "scs" },
      );
      // (Before the setting: the schema dump the snapshot compares shows it in its header.)
      const before = await snapshotDatabase(a, "scs");
      await a.psql("ALTER DATABASE scs SET standard_conforming_strings = off");
      const id = await backUpNative(a, repo, "scs");
      const odd = (await readManifest(repo, id)).databases[0].native.tables.find((t) =>
        t.name === "odd\\"
      );
      assert.ok(odd && odd.chunks.length > 1, "odd\\ is split into chunks");
      const res = await restoreCreate(b, repo, id);
      assert.equal(res.code, 0, res.stderr);
      assertSameSnapshot(await snapshotDatabase(b, "scs"), before, "scs after restore");
    } finally {
      await Deno.remove(repo, { recursive: true });
    }
  });
});

Deno.test("--resume refuses a set whose interrupted run read another server", async () => {
  await withTwoPg(async (a, b) => {
    const repo = await tempRepo();
    try {
      // The same database and tables on both servers (the same oids, too).
      await loadWide(a, "shop", 8_000);
      await loadWide(b, "shop", 8_000);
      const args = nativeBackupArgs(repo, "shop", "128k");
      const { id } = await backupKilledAfter(repo, args, pgEnv(a), 2);
      const other = await cli([...args, "--resume"], { env: pgEnv(b) });
      assert.equal(other.code, 1, other.stderr);
      assert.match(other.stderr, /the interrupted run read another server/);
      assert.ok(!(await exists(`${repo}/${id}/manifest.json`)), "the set is still open");
      const own = await cli([...args, "--resume"], { env: pgEnv(a) });
      assert.equal(own.code, 0, own.stderr);
    } finally {
      await Deno.remove(repo, { recursive: true });
    }
  });
});
