/**
 * Throwaway PostgreSQL servers for integration tests.
 *
 * Each server lives in its own temp dir (data dir, unix socket dir, log file), listens on a free
 * TCP port on 127.0.0.1 only, and is stopped with `pg_ctl -m immediate` and deleted afterwards.
 * Use `withPg` / `withTwoPg` so that cleanup happens even when the test body throws.
 *
 * Every child process goes through lib/process/run.ts with a cleared environment, so the
 * machine's PG* variables (and its own PostgreSQL service) are never involved.
 */
import { run } from "../../lib/process/run.ts";

/** A running throwaway cluster. Local (unix socket) connections use trust auth. */
export interface PgServer {
  readonly binDir: string;
  /** Major version of the server, e.g. 15. */
  readonly major: number;
  /** `SHOW server_version`, e.g. "15.20 (Debian 15.20-0+deb12u1)". */
  readonly version: string;
  /** The temp dir holding everything below; removed by `stop()`. */
  readonly baseDir: string;
  readonly dataDir: string;
  readonly socketDir: string;
  readonly port: number;
  /** The bootstrap superuser, "postgres". */
  readonly superuser: string;
  /** libpq variables for a unix-socket connection as the superuser (trust auth), plus `extra`. */
  env(extra?: Record<string, string>): Record<string, string>;
  /** libpq variables for a TCP connection to 127.0.0.1 with password (SCRAM) auth. */
  tcpEnv(user: string, password: string): Record<string, string>;
  /** Runs SQL through `psql` (stdin, ON_ERROR_STOP); returns unaligned, tuples-only stdout. */
  psql(sql: string | Uint8Array, opts?: { db?: string; user?: string }): Promise<string>;
  /** `CREATE DATABASE` with the name quoted as an identifier. */
  createDatabase(name: string): Promise<void>;
  /** Stops the server and removes its temp dir. Safe to call more than once. */
  stop(): Promise<void>;
  /** The last `lines` lines of the server log, for debugging failures. */
  logTail(lines?: number): Promise<string>;
}

// Identifiers, literals and conninfo strings are quoted by the same helpers dbbackup uses.
export {
  dbnameConninfo as conninfoDbname,
  quoteIdent,
  quoteLiteral,
} from "../../lib/engine/pg/connect.ts";
import { dbnameConninfo as conninfoDbname, quoteIdent } from "../../lib/engine/pg/connect.ts";

/**
 * A minimal environment for client programs (use with `clearEnv: true`): PATH, HOME and a
 * UTF-8 locale, then `vars`. Nothing else from this process leaks in, in particular no PG*.
 */
export function cleanEnv(vars: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {
    PATH: Deno.env.get("PATH") ?? "/usr/local/bin:/usr/bin:/bin",
    LANG: "C.UTF-8",
  };
  const home = Deno.env.get("HOME");
  if (home) env.HOME = home;
  return { ...env, ...vars };
}

/** `DBBACKUP_TEST_PG_BIN`, else the highest-versioned /usr/lib/postgresql/<v>/bin with initdb. */
export async function findPgBinDir(): Promise<string> {
  const fromEnv = Deno.env.get("DBBACKUP_TEST_PG_BIN");
  if (fromEnv) {
    if (!(await isFile(`${fromEnv}/initdb`))) {
      throw new Error(`DBBACKUP_TEST_PG_BIN=${fromEnv} has no initdb`);
    }
    return fromEnv;
  }
  const versions: number[] = [];
  try {
    for await (const entry of Deno.readDir("/usr/lib/postgresql")) {
      if (/^\d+(\.\d+)?$/.test(entry.name)) versions.push(Number(entry.name));
    }
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  versions.sort((a, b) => b - a);
  for (const v of versions) {
    const dir = `/usr/lib/postgresql/${v}/bin`;
    if (await isFile(`${dir}/initdb`)) return dir;
  }
  throw new Error(
    "no PostgreSQL server binaries found: set DBBACKUP_TEST_PG_BIN or install postgresql",
  );
}

/**
 * Starts a fresh cluster, with `settings` (postgresql.conf names and values) over the helper's
 * own. On any failure, whatever was created is stopped and removed.
 */
export async function startPg(settings: Record<string, string> = {}): Promise<PgServer> {
  const binDir = await findPgBinDir();
  const osUser = await serverOsUser();
  const baseDir = await Deno.makeTempDir({ prefix: "dbbackup-test-pg-" });
  const server = new ThrowawayServer(binDir, baseDir, osUser, settings);
  try {
    await server.init();
    return server;
  } catch (err) {
    const log = await server.logTail(30);
    await server.stop().catch(() => {}); // keep the original error
    if (log && err instanceof Error) err.message += `\n--- server log tail ---\n${log}`;
    throw err;
  }
}

/** Runs `fn` with a fresh server and always stops/removes it afterwards. */
export async function withPg<T>(fn: (pg: PgServer) => Promise<T>): Promise<T> {
  const pg = await startPg();
  try {
    return await fn(pg);
  } finally {
    await pg.stop();
  }
}

/** One value from a query on `pg` (psql, unaligned, tuples only), trimmed. */
export async function queryValue(pg: PgServer, sql: string, db?: string): Promise<string> {
  return (await pg.psql(sql, { db })).trim();
}

/**
 * Runs `fn` with two independent fresh servers (started in parallel, the second with
 * `settingsB` over the defaults); always cleans both up.
 */
export async function withTwoPg<T>(
  fn: (a: PgServer, b: PgServer) => Promise<T>,
  settingsB: Record<string, string> = {},
): Promise<T> {
  const started = await Promise.allSettled([startPg(), startPg(settingsB)]);
  const servers = started.flatMap((s) => s.status === "fulfilled" ? [s.value] : []);
  try {
    for (const s of started) if (s.status === "rejected") throw s.reason;
    return await fn(servers[0], servers[1]);
  } finally {
    await Promise.all(servers.map((s) => s.stop()));
  }
}

// ---------------------------------------------------------------------------------------------

/** The OS account the server runs as: null when we are not root (run as ourselves). */
interface OsUser {
  name: string;
  uid: number;
  gid: number;
}

/** initdb/postgres refuse to run as root, so as root we hand everything to `postgres`. */
async function serverOsUser(): Promise<OsUser | null> {
  if (Deno.uid() !== 0) return null;
  for (const name of ["postgres", "nobody"]) {
    try {
      const uid = await run("id", ["-u", name], {
        describe: `id -u ${name}`,
        env: cleanEnv(),
        clearEnv: true,
      });
      const gid = await run("id", ["-g", name], {
        describe: `id -g ${name}`,
        env: cleanEnv(),
        clearEnv: true,
      });
      return { name, uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) };
    } catch {
      // no such user: try the next one
    }
  }
  throw new Error("running as root but neither a 'postgres' nor a 'nobody' user exists");
}

/** Asks the kernel for a free TCP port on 127.0.0.1 (never 5432, the usual system server). */
function freePort(): number {
  for (;;) {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (listener.addr as Deno.NetAddr).port;
    listener.close();
    if (port !== 5432) return port;
  }
}

/** postgresql.conf string value: single quotes, embedded quotes doubled. */
function confString(value: string): string {
  return `'${value.replaceAll("'", "''")}'`;
}

const START_ATTEMPTS = 3;

class ThrowawayServer implements PgServer {
  readonly superuser = "postgres";
  readonly dataDir: string;
  readonly socketDir: string;
  readonly logFile: string;
  port = 0;
  major = 0;
  version = "";
  #started = false;
  #stopped = false;

  constructor(
    readonly binDir: string,
    readonly baseDir: string,
    private readonly osUser: OsUser | null,
    private readonly settings: Record<string, string> = {},
  ) {
    this.dataDir = `${baseDir}/data`;
    this.socketDir = `${baseDir}/sock`;
    this.logFile = `${baseDir}/server.log`;
  }

  /** initdb, configure, start, then read the version. */
  async init(): Promise<void> {
    await Deno.mkdir(this.socketDir);
    if (this.osUser) {
      // The server user must own its dirs; root (us) can still read the log and the socket.
      await Deno.chown(this.baseDir, this.osUser.uid, this.osUser.gid);
      await Deno.chown(this.socketDir, this.osUser.uid, this.osUser.gid);
    }
    await this.initdb();
    await this.startWithFreePort();
    this.version = (await this.psql("SHOW server_version")).trim();
    this.major = Math.floor(Number((await this.psql("SHOW server_version_num")).trim()) / 10000);
  }

  async initdb(): Promise<void> {
    const common = [
      "-D",
      this.dataDir,
      "-U",
      this.superuser,
      "--auth-local=trust",
      "--auth-host=scram-sha-256",
      "-E",
      "UTF8",
      "--no-sync", // throwaway data: skip the final fsync of the new cluster
    ];
    try {
      await this.asServerUser("initdb", [...common, "--locale=C.UTF-8"], "initdb (C.UTF-8)");
    } catch (err) {
      // Some systems lack C.UTF-8; plain C always exists. initdb may leave a partial data dir.
      await Deno.remove(this.dataDir, { recursive: true }).catch(() => {});
      try {
        await this.asServerUser("initdb", [...common, "--locale=C"], "initdb (C)");
      } catch (err2) {
        throw new Error(`initdb failed with C.UTF-8 (${errText(err)}) and with C`, { cause: err2 });
      }
    }
  }

  /** Writes the settings and starts the server, retrying when another process took the port. */
  async startWithFreePort(): Promise<void> {
    for (let attempt = 1;; attempt++) {
      this.port = freePort();
      await this.appendConf({
        port: String(this.port),
        listen_addresses: confString("127.0.0.1"),
        unix_socket_directories: confString(this.socketDir),
        fsync: "off",
        synchronous_commit: "off",
        full_page_writes: "off",
        shared_buffers: "32MB",
        max_connections: "50",
        password_encryption: confString("scram-sha-256"),
        ...this.settings,
      });
      try {
        this.#started = true; // from here on, stop() must try pg_ctl stop
        await this.asServerUser(
          "pg_ctl",
          ["-D", this.dataDir, "-w", "-t", "60", "-l", this.logFile, "start"],
          `pg_ctl start on port ${this.port}`,
        );
        return;
      } catch (err) {
        const log = await this.logTail(20);
        const portTaken = /could not bind|could not create any TCP\/IP sockets/.test(log);
        if (!portTaken || attempt >= START_ATTEMPTS) throw err;
        // Lost the race for the port: the server did not start, try another port.
      }
    }
  }

  /** Appends `key = value` lines; later lines win, so re-appending (e.g. a new port) is fine. */
  async appendConf(settings: Record<string, string>): Promise<void> {
    const lines = Object.entries(settings).map(([k, v]) => `${k} = ${v}`);
    const text = `\n# added by tests/helpers/pg_server.ts\n${lines.join("\n")}\n`;
    await Deno.writeTextFile(`${this.dataDir}/postgresql.conf`, text, { append: true });
  }

  /** Runs a server binary, through `runuser` when we are root. */
  async asServerUser(program: string, args: string[], describe: string): Promise<void> {
    const path = `${this.binDir}/${program}`;
    const options = {
      describe,
      env: cleanEnv(),
      clearEnv: true,
      // The server user may not be allowed into our cwd; its own temp dir is always fine.
      cwd: this.baseDir,
    };
    if (this.osUser) {
      await run("runuser", ["-u", this.osUser.name, "--", path, ...args], options);
    } else {
      await run(path, args, options);
    }
  }

  env(extra: Record<string, string> = {}): Record<string, string> {
    return {
      PGHOST: this.socketDir,
      PGPORT: String(this.port),
      PGUSER: this.superuser,
      PGDATABASE: "postgres",
      ...extra,
    };
  }

  tcpEnv(user: string, password: string): Record<string, string> {
    return {
      PGHOST: "127.0.0.1",
      PGPORT: String(this.port),
      PGUSER: user,
      PGPASSWORD: password,
      PGDATABASE: "postgres",
    };
  }

  /** Runs `sql` (text, or a script's bytes as they are) and returns what psql printed. */
  async psql(sql: string | Uint8Array, opts: { db?: string; user?: string } = {}): Promise<string> {
    const db = opts.db ?? "postgres";
    const user = opts.user ?? this.superuser;
    const out = await run(
      `${this.binDir}/psql`,
      ["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-U", user, "-d", conninfoDbname(db)],
      {
        describe: `psql on database ${JSON.stringify(db)} as ${JSON.stringify(user)}`,
        env: cleanEnv(this.env()),
        clearEnv: true,
        input: sql,
      },
    );
    return out.stdout;
  }

  async createDatabase(name: string): Promise<void> {
    await this.psql(`CREATE DATABASE ${quoteIdent(name)}`);
  }

  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    try {
      if (this.#started) {
        await this.asServerUser(
          "pg_ctl",
          ["-D", this.dataDir, "-m", "immediate", "-w", "stop"],
          `pg_ctl stop on port ${this.port}`,
        ).catch((err) => {
          // Not running (failed start) is fine; anything else is worth a warning.
          if (!/Is server running\?|no server running/i.test(errText(err))) {
            console.warn(`warning: stopping test server failed: ${errText(err)}`);
          }
        });
      }
    } finally {
      await Deno.remove(this.baseDir, { recursive: true }).catch((err) => {
        if (!(err instanceof Deno.errors.NotFound)) throw err;
      });
    }
  }

  async logTail(lines = 40): Promise<string> {
    try {
      const text = await Deno.readTextFile(this.logFile);
      return text.trimEnd().split("\n").slice(-lines).join("\n");
    } catch {
      return "";
    }
  }
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    return false;
  }
}

function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
