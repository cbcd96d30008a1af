/**
 * Reads the PostgreSQL password file (~/.pgpass) the way libpq does.
 *
 * Format, one entry a line: `hostname:port:database:username:password`. The behaviour follows
 * libpq's passwordFromFile() and pwdfMatchesString() (src/interfaces/libpq/fe-connect.c):
 *
 * - A line is a comment only when `#` is its very first character; blank lines are skipped.
 *   Trailing `\r` and `\n` are stripped, so CRLF files work.
 * - A backslash makes the next character literal, whatever it is: `\:` is a colon, `\\` a
 *   backslash (and `\x` is `x`). A backslash at the very end of the password stays literal.
 * - A field is a wildcard only when its raw text is exactly `*`; an escaped `\*` is a literal
 *   star.
 * - Lines that do not reach a 4th unescaped colon are ignored, as libpq ignores them.
 * - The password is the text after the 4th unescaped colon up to the next unescaped colon or
 *   the end of the line: libpq stops de-escaping at an unescaped colon, so `h:p:d:u:a:b` gives
 *   the password `a`, the same one psql and pg_dump would use. Write `a\:b` for `a:b`.
 * - Matching compares strings exactly (no case folding, no port normalisation: `05432` is
 *   not `5432`), and the first matching line wins.
 *
 * Passwords are never put into warnings or errors.
 */

export interface PgpassEntry {
  host: string;
  port: string;
  database: string;
  user: string;
  password: string;
  /** 1-based line number in the file, for diagnostics. */
  line: number;
}

/** The connection a password is looked up for. */
export interface PgpassTarget {
  /** Host name, IP address, unix socket directory, or "" for the default socket. */
  host: string;
  port: number | string;
  database: string;
  user: string;
}

type MatchField = "host" | "port" | "database" | "user";
const MATCH_FIELDS: readonly MatchField[] = ["host", "port", "database", "user"];

/** libpq's DefaultHost: what an empty host or the default socket directory is looked up as. */
const DEFAULT_HOST = "localhost";
/** libpq's DEF_PGPORT_STR: what an empty port is looked up as. */
const DEFAULT_PORT = "5432";

/**
 * Fields of parsed entries that were written escaped as `\*`: these are a literal star, not a
 * wildcard. Kept beside the entry so that PgpassEntry stays a plain record of strings; entries
 * built by hand (or copied) treat a `*` field as the wildcard.
 */
const literalStars = new WeakMap<PgpassEntry, Set<MatchField>>();

/** Parses the text of a password file; entries keep file order (first match wins). */
export function parsePgpass(text: string): PgpassEntry[] {
  const entries: PgpassEntry[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i];
    if (raw.startsWith("#")) continue;
    const line = raw.replace(/[\r\n]+$/, "");
    if (line === "") continue;
    const parsed = parseLine(line);
    if (parsed === undefined) continue;
    const [host, port, database, user] = parsed.fields;
    const entry: PgpassEntry = {
      host,
      port,
      database,
      user,
      password: parsed.password,
      line: i + 1,
    };
    if (parsed.literalStars.size > 0) literalStars.set(entry, parsed.literalStars);
    entries.push(entry);
  }
  return entries;
}

interface ParsedLine {
  fields: string[];
  password: string;
  literalStars: Set<MatchField>;
}

/** Splits one line into its four key fields and the password; undefined if it is too short. */
function parseLine(line: string): ParsedLine | undefined {
  const fields: string[] = [];
  const stars = new Set<MatchField>();
  let value = "";
  let escapedStar = false;
  let pos = 0;
  while (fields.length < 4) {
    if (pos >= line.length) return undefined; // fewer than 5 fields: libpq skips the line
    const ch = line[pos];
    if (ch === "\\" && pos + 1 < line.length) {
      value += line[pos + 1];
      if (line[pos + 1] === "*") escapedStar = true;
      pos += 2;
    } else if (ch === ":") {
      if (value === "*" && escapedStar) stars.add(MATCH_FIELDS[fields.length]);
      fields.push(value);
      value = "";
      escapedStar = false;
      pos += 1;
    } else {
      value += ch;
      pos += 1;
    }
  }
  let password = "";
  while (pos < line.length) {
    const ch = line[pos];
    if (ch === ":") break; // libpq ends the password at an unescaped colon
    if (ch === "\\" && pos + 1 < line.length) {
      password += line[pos + 1];
      pos += 2;
    } else {
      password += ch;
      pos += 1;
    }
  }
  return { fields, password, literalStars: stars };
}

/**
 * The password of the first entry matching `target`, or undefined.
 *
 * As libpq: an empty database or user never matches (libpq resolves those defaults before it
 * reads the file, so the caller must pass the resolved names), an empty port is looked up as
 * 5432, and an empty host as `localhost`. A matching entry with an empty password returns "".
 */
export function findPgpassPassword(
  entries: readonly PgpassEntry[],
  target: PgpassTarget,
): string | undefined {
  if (target.database === "" || target.user === "") return undefined;
  const port = String(target.port) === "" ? DEFAULT_PORT : String(target.port);
  const hosts = candidateHosts(target.host);
  for (const entry of entries) {
    const stars = literalStars.get(entry);
    const matches = (field: MatchField, wanted: readonly string[]) =>
      (entry[field] === "*" && !stars?.has(field)) || wanted.includes(entry[field]);
    if (
      matches("host", hosts) &&
      matches("port", [port]) &&
      matches("database", [target.database]) &&
      matches("user", [target.user])
    ) {
      return entry.password;
    }
  }
  return undefined;
}

/**
 * The host names an entry may carry to match the connection host.
 *
 * libpq looks an empty host up as `localhost`, and a unix socket directory as `localhost` only
 * when it is the compiled-in default socket directory (DEFAULT_PGSOCKET_DIR, e.g.
 * /var/run/postgresql on Debian, /tmp upstream); any other directory must match exactly. We
 * cannot know which libpq build the user has, so here every socket directory (a host starting
 * with `/`) matches both `localhost` and the exact directory text (no path canonicalisation,
 * like libpq). Abstract sockets (`@name`) and network hosts match exactly.
 */
function candidateHosts(host: string): string[] {
  if (host === "") return [DEFAULT_HOST];
  if (host.startsWith("/")) return [DEFAULT_HOST, host];
  return [host];
}

/** Result of reading a password file: the entries, or none plus a warning when it is ignored. */
export interface PgpassFile {
  entries: PgpassEntry[];
  /** Why the file was ignored; never contains a password. */
  warning?: string;
}

/**
 * Reads and parses the password file at `path`.
 *
 * A missing file gives no entries and no warning. As libpq, a file that is not a regular file,
 * or (on POSIX) that has any group or world permission bit, is ignored with a warning. Other
 * read failures (e.g. permission denied) are ignored with a warning too; libpq ignores them
 * silently.
 */
export async function readPgpassFile(path: string): Promise<PgpassFile> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound || err instanceof Deno.errors.NotADirectory) {
      return { entries: [] };
    }
    return { entries: [], warning: cannotRead(path, err) };
  }
  if (!info.isFile) {
    return { entries: [], warning: `password file "${path}" is not a plain file` };
  }
  if (Deno.build.os !== "windows" && info.mode !== null && (info.mode & 0o077) !== 0) {
    return {
      entries: [],
      warning: `password file "${path}" has group or world access; ` +
        "permissions should be u=rw (0600) or less",
    };
  }
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return { entries: [] };
    return { entries: [], warning: cannotRead(path, err) };
  }
  return { entries: parsePgpass(text) };
}

/** A warning for an unreadable file: the OS error names the path, never file contents. */
function cannotRead(path: string, err: unknown): string {
  const reason = err instanceof Error ? err.message : String(err);
  return `could not read password file "${path}": ${reason}`;
}

/**
 * Where libpq looks for the password file: PGPASSFILE when set and non-empty, else
 * `$HOME/.pgpass`, on Windows `%APPDATA%\postgresql\pgpass.conf`. Undefined when the home
 * directory is unknown (libpq would then ask the passwd database, which we do not).
 */
export function defaultPgpassPath(
  env: Record<string, string | undefined>,
  os: typeof Deno.build.os = Deno.build.os,
): string | undefined {
  const explicit = env.PGPASSFILE;
  if (explicit !== undefined && explicit !== "") return explicit;
  if (os === "windows") {
    const appData = env.APPDATA;
    if (appData === undefined || appData === "") return undefined;
    return `${appData.replace(/[\\/]+$/, "")}\\postgresql\\pgpass.conf`;
  }
  const home = env.HOME;
  if (home === undefined || home === "") return undefined;
  return `${home.replace(/\/+$/, "")}/.pgpass`;
}
