/**
 * Connections to PostgreSQL: postgres.js pools for catalog queries, and the environment that
 * pg_dump, pg_restore and psql children get. The password reaches children only through
 * PGPASSWORD in their environment, never argv.
 */
import postgres from "postgres";
import { readFileSync } from "node:fs";
import { DbBackupError, errorMessage } from "../../errors.ts";
import { Secret } from "../../config/secret.ts";
import { type Env, lookupPassword, type Settings } from "../../config/settings.ts";

export type Sql = postgres.Sql;

/** Asks for a password on the terminal; undefined when it cannot ask. */
export type PasswordPrompt = (question: string) => Promise<string | undefined>;

/** One server endpoint with its credentials, resolved once per command. */
export class PgTarget {
  readonly settings: Settings;
  #password?: Secret;
  #passwordSource?: string;
  #passwordRequested = false;
  /** The server asked for a password and there was none to give. */
  #passwordMissing = false;
  readonly warnings: string[] = [];
  readonly #env: Env;
  readonly #prompt?: PasswordPrompt;

  constructor(settings: Settings, env: Env, prompt?: PasswordPrompt) {
    this.settings = settings;
    this.#env = env;
    this.#prompt = prompt;
  }

  /** "/run/postgresql:5432" or "db.example.com:5432", for messages. */
  get endpoint(): string {
    return `${this.settings.host.value}:${this.settings.port.value}`;
  }

  get isSocket(): boolean {
    return this.settings.host.value.startsWith("/");
  }

  get user(): string {
    return this.settings.user.value;
  }

  /** Whether the server asked for a password on any connection so far. */
  get passwordRequested(): boolean {
    return this.#passwordRequested;
  }

  get passwordSource(): string | undefined {
    return this.#passwordSource;
  }

  /** Looks the password up (env, then password file) before the first connection. */
  async init(database = "postgres"): Promise<void> {
    const found = await lookupPassword(this.settings, database, this.#env);
    this.#password = found.password;
    this.#passwordSource = found.source;
    this.warnings.push(...found.warnings);
  }

  /**
   * postgres.js's `pass` callback. It must not reject: postgres.js does not handle that
   * rejection, which then ends the process as an unhandled one. Without a password it sends an
   * empty one, which the server refuses (28P01), and explain() says that none was given.
   */
  async #passwordFor(): Promise<string> {
    this.#passwordRequested = true;
    if (this.#password) return this.#password.reveal();
    const typed = await this.#prompt?.(`Password for user ${this.user} at ${this.endpoint}: `)
      .catch(() => undefined);
    if (typed === undefined) {
      this.#passwordMissing = true;
      return "";
    }
    this.#password = new Secret(typed);
    this.#passwordSource = "prompt";
    return typed;
  }

  /**
   * A small pool to `database`; always `await sql.end()` when done. `onclose` is called
   * whenever one of its connections closes, also when the server ended it.
   */
  connect(database: string, max = 2, onclose?: () => void): Sql {
    const s = this.settings;
    return postgres({
      host: s.host.value,
      port: s.port.value,
      user: s.user.value,
      database,
      pass: () => this.#passwordFor(),
      ssl: sslOption(s),
      max,
      connect_timeout: 15,
      idle_timeout: 30,
      prepare: false,
      onnotice: () => {},
      onclose,
      // As strings: postgres.js leaves out of its startup message every parameter whose value is
      // falsy, so statement_timeout: 0 or default_transaction_read_only: false never reached the
      // server, and a role's or database's own setting held.
      connection: { application_name: "dbbackup", ...SESSION_SETTINGS } as Record<string, string>,
      // Not fetch_types: false: with it, sql.reserve() never resolves (postgres.js 3.4.9).
    });
  }

  /** Runs `fn` with a pool, mapping connection failures to clear errors. */
  async withSql<T>(database: string, action: string, fn: (sql: Sql) => Promise<T>): Promise<T> {
    const sql = this.connect(database);
    try {
      return await fn(sql);
    } catch (err) {
      throw this.explain(err, action, database);
    } finally {
      await sql.end({ timeout: 5 }).catch(() => {});
    }
  }

  /** Turns a driver error into a DbBackupError naming the action, database and endpoint. */
  explain(err: unknown, action: string, database: string): Error {
    if (err instanceof DbBackupError) {
      return new DbBackupError(err.code, `${action}: ${err.message}`);
    }
    const e = err as { code?: string; message?: string };
    const where = `at ${this.endpoint}`;
    if (this.#passwordMissing && (e.code === "28P01" || e.code === "28000")) {
      return new DbBackupError(
        "auth",
        `${action}: the server ${where} asks for a password for user "${this.user}" and none was given: set PGPASSWORD or add an entry to the password file`,
      );
    }
    switch (e.code) {
      case "ECONNREFUSED":
        return new DbBackupError("connection", `${action}: connection refused ${where}`);
      case "ENOENT":
        return new DbBackupError("connection", `${action}: no server socket ${where}`);
      case "ENOTFOUND":
      case "EAI_AGAIN":
        return new DbBackupError(
          "connection",
          `${action}: host "${this.settings.host.value}" not found`,
        );
      case "CONNECT_TIMEOUT":
      case "ETIMEDOUT":
        return new DbBackupError("connection", `${action}: connection timed out ${where}`);
      case "28P01":
      case "28000":
        return new DbBackupError(
          "auth",
          `${action}: authentication failed for user "${this.user}" ${where}: ${e.message}`,
        );
      case "3D000":
        return new DbBackupError(
          "not_found",
          `${action}: database "${database}" does not exist ${where}`,
        );
    }
    return new DbBackupError("connection", `${action}: ${errorMessage(err)} (${where})`);
  }

  /** Environment for pg_dump/pg_restore/psql: our resolved settings, nothing inherited. */
  childEnv(): Record<string, string> {
    const s = this.settings;
    const env: Record<string, string> = {};
    for (const key of ["PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR"]) {
      const v = this.#env[key];
      if (v !== undefined) env[key] = v;
    }
    env.PGHOST = s.host.value;
    env.PGPORT = String(s.port.value);
    env.PGUSER = s.user.value;
    env.PGSSLMODE = s.sslmode.value;
    env.PGAPPNAME = "dbbackup";
    env.PGCONNECT_TIMEOUT = "15";
    if (s.sslrootcert) env.PGSSLROOTCERT = s.sslrootcert.value;
    // The password was looked up or typed once; children get it only here.
    if (this.#password) env.PGPASSWORD = this.#password.reveal();
    // Make sure no password file is consulted behind our back: a path under /dev/null can never
    // exist (with /dev/null itself, libpq warns on stderr that it is "not a plain file", and
    // that line ended up in every message about a failed child).
    env.PGPASSFILE = "/dev/null/none";
    // pg_dump and pg_restore pin the rest themselves, but not these (see SESSION_SETTINGS).
    env.PGOPTIONS = pgOptions(
      Object.fromEntries(CHILD_SETTINGS.map((name) => [name, SESSION_SETTINGS[name]])),
    );
    return env;
  }
}

/**
 * The server settings every session of the native engine and every catalog query runs with,
 * whatever a role or database sets (`ALTER ROLE/DATABASE ... SET`), as pg_dump and pg_restore pin
 * them for their own sessions:
 * - text COPY output depends on DateStyle, IntervalStyle and extra_float_digits, and XML input
 *   on xmloption (a role's `xmloption = document` rejected the fragments a table held);
 * - no server-side timeout may end a long COPY, the wait for a lock, or the leader's idle
 *   transaction that holds the snapshot;
 * - with row_security off, a query that a row-level security policy would filter fails instead
 *   of silently reading or guarding fewer rows;
 * - a database whose sessions default to read-only comes back with that setting before the rest
 *   is restored, and every restore session after it failed with "cannot execute CREATE TABLE in
 *   a read-only transaction";
 * - reg* values (regclass, regprocedure, ...) are written and read relative to search_path:
 *   pg_catalog alone (as pg_dump's empty one), so that a schema a role or database puts first
 *   cannot take a name over (`lower(text)` was read back as `app.lower(text)`), and catalog
 *   queries find the catalog's own functions;
 * - with array_nulls off, an unquoted NULL array element is read as the string "NULL";
 * - money is written and read in lc_monetary's format: in another locale `$ 12,34` was read back
 *   by a target in C as 1234;
 * - string literals (quoteLiteral) are written for standard_conforming_strings on, and psql's
 *   \copy reads a quoted name by the server's setting (off: a name ending in a backslash broke
 *   the command).
 */
export const SESSION_SETTINGS: Readonly<Record<string, string>> = {
  DateStyle: "ISO",
  IntervalStyle: "postgres",
  extra_float_digits: "3",
  xmloption: "content",
  statement_timeout: "0",
  lock_timeout: "0",
  idle_in_transaction_session_timeout: "0",
  row_security: "off",
  default_transaction_read_only: "off",
  search_path: "pg_catalog",
  array_nulls: "on",
  lc_monetary: "C",
  standard_conforming_strings: "on",
};

/** Those of SESSION_SETTINGS that pg_dump and pg_restore do not pin for their own sessions. */
const CHILD_SETTINGS = ["default_transaction_read_only", "array_nulls", "lc_monetary"] as const;

/** `settings` as libpq's PGOPTIONS ("-c name=value ..."; no value here holds a space). */
export function pgOptions(settings: Readonly<Record<string, string>>): string {
  return Object.entries(settings).map(([k, v]) => `-c ${k}=${v}`).join(" ");
}

function sslOption(s: Settings): postgres.Options<Record<string, never>>["ssl"] {
  switch (s.sslmode.value) {
    case "disable":
      return false;
    case "allow":
    case "prefer":
      return s.host.value.startsWith("/") ? false : "prefer";
    case "require":
      return "require";
    case "verify-ca":
    case "verify-full": {
      if (!s.sslrootcert) return "verify-full";
      const ca = readFileSync(s.sslrootcert.value, "utf8");
      return s.sslmode.value === "verify-full"
        ? { ca, rejectUnauthorized: true }
        : { ca, rejectUnauthorized: true, checkServerIdentity: () => undefined };
    }
  }
}

/** A libpq connection string holding only the database name, safely quoted. */
export function dbnameConninfo(database: string): string {
  return `dbname='${database.replace(/\\/g, "\\\\").replace(/'/g, "\\'")}'`;
}

/** Quotes an SQL identifier. */
export function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

/** Quotes an SQL string literal (standard_conforming_strings on). */
export function quoteLiteral(value: string): string {
  return `'${value.replace(/'/g, "''")}'`;
}
