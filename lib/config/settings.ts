/**
 * Flags + environment + config file + defaults -> one frozen Settings object, each value with
 * the place it came from. Precedence: flag > environment > config file > default.
 */
import { userInfo } from "node:os";
import { DbBackupError, UsageError } from "../errors.ts";
import { type Compression, DEFAULT_COMPRESSION, parseCompression } from "../pipeline/compress.ts";
import { loadConfigFile, type PrunePolicySettings } from "./config_file.ts";
import { defaultPgpassPath, findPgpassPassword, readPgpassFile } from "./pgpass.ts";
import { Secret } from "./secret.ts";

export interface Setting<T> {
  value: T;
  /** "flag --host", "env PGHOST", "config /etc/dbbackup/config.json", "default". */
  source: string;
}

export const SSL_MODES = [
  "disable",
  "allow",
  "prefer",
  "require",
  "verify-ca",
  "verify-full",
] as const;
export type SslMode = typeof SSL_MODES[number];

export interface Settings {
  dbType: Setting<"postgres">;
  host: Setting<string>;
  port: Setting<number>;
  user: Setting<string>;
  sslmode: Setting<SslMode>;
  sslrootcert?: Setting<string>;
  passfile?: Setting<string>;
  repo: Setting<string>;
  jobs: Setting<number>;
  compression: Setting<Compression>;
  pgBin?: Setting<string>;
  /** The config file's retention policy, if it has one. */
  prunePolicy?: PrunePolicySettings;
  /** Object storage, when `repo` is "s3://bucket/prefix". */
  s3: {
    endpoint?: Setting<string>;
    region?: Setting<string>;
    pathStyle?: boolean;
    /** From the config file only (AWS_* variables are read where the storage is opened). */
    accessKeyId?: string;
    secretAccessKey?: Secret;
  };
  /** Key material: flags, else the config file (paths only; secrets stay in those files). */
  keys: {
    encrypt: boolean;
    passphraseFile?: string;
    keyFile: string[];
    identity: string[];
    recipient: string[];
  };
  configFile?: string;
}

/** What the command line gave; undefined means "not given". */
export interface FlagValues {
  host?: string;
  port?: string;
  user?: string;
  dbType?: string;
  repo?: string;
  config?: string;
  jobs?: string;
  compression?: string;
  pgBin?: string;
  passphraseFile?: string;
  keyFile?: string[];
  identity?: string[];
  recipient?: string[];
  encrypt?: boolean;
  s3Endpoint?: string;
  s3Region?: string;
  s3PathStyle?: boolean;
}

export type Env = Record<string, string | undefined>;

/** Resolves every setting; throws a usage/config error naming the bad value and its source. */
export async function resolveSettings(flags: FlagValues, env: Env): Promise<Settings> {
  const file = await loadConfigFile(flags.config, env);
  const cfg = file.settings;
  const cfgSource = `config ${file.path}`;

  function pick<T>(
    flag: string | undefined,
    flagName: string,
    envNames: string[],
    fromConfig: string | number | undefined,
    parse: (text: string, source: string) => T,
  ): Setting<T> | undefined {
    if (flag !== undefined) {
      return { value: parse(flag, `flag ${flagName}`), source: `flag ${flagName}` };
    }
    for (const name of envNames) {
      const v = env[name];
      if (v !== undefined && v !== "") {
        return { value: parse(v, `env ${name}`), source: `env ${name}` };
      }
    }
    if (fromConfig !== undefined) {
      return { value: parse(String(fromConfig), cfgSource), source: cfgSource };
    }
    return undefined;
  }

  const text = (v: string) => v;
  const dbType =
    pick<"postgres">(flags.dbType, "--db-type", ["DBBACKUP_DB_TYPE"], cfg.dbType, parseDbType) ??
      { value: "postgres", source: "default" };
  const port = pick(flags.port, "--port", ["PGPORT"], cfg.port, parsePort) ??
    { value: 5432, source: "default" };
  const host = pick(flags.host, "--host", ["PGHOST"], cfg.host, text) ??
    { value: await defaultHost(port.value), source: "default" };
  const user = pick(flags.user, "--user", ["PGUSER"], cfg.user, text) ??
    { value: osUser(env), source: "default" };
  const sslmode = pick<SslMode>(undefined, "", ["PGSSLMODE"], cfg.sslmode, parseSslMode) ??
    { value: "prefer", source: "default" };
  const sslrootcert = pick(undefined, "", ["PGSSLROOTCERT"], cfg.sslrootcert, text);
  const passfilePath = pick(undefined, "", ["PGPASSFILE"], cfg.passfile, text);
  const defaultPassfile = defaultPgpassPath(env);
  const passfile = passfilePath ??
    (defaultPassfile ? { value: defaultPassfile, source: "default" } : undefined);
  const repo = pick(flags.repo, "--repo", ["DBBACKUP_REPO"], cfg.repo, text) ??
    { value: defaultRepo(env), source: "default" };
  const jobs = pick(flags.jobs, "--jobs", ["DBBACKUP_JOBS"], cfg.jobs, parseJobs) ??
    { value: 2, source: "default" };
  const compression = pick(
    flags.compression,
    "--compression",
    ["DBBACKUP_COMPRESSION"],
    cfg.compression,
    (v) => parseCompression(v),
  ) ?? { value: DEFAULT_COMPRESSION, source: "default" };
  const pgBin = pick(flags.pgBin, "--pg-bin", ["DBBACKUP_PG_BIN"], cfg.pgBin, text);

  return Object.freeze({
    dbType,
    host,
    port,
    user,
    sslmode,
    sslrootcert,
    passfile,
    repo,
    jobs,
    compression,
    pgBin,
    prunePolicy: cfg.prune,
    s3: {
      endpoint: pick(
        flags.s3Endpoint,
        "--s3-endpoint",
        ["DBBACKUP_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"],
        cfg.s3Endpoint,
        text,
      ),
      region: pick(
        flags.s3Region,
        "--s3-region",
        ["AWS_REGION", "AWS_DEFAULT_REGION"],
        cfg.s3Region,
        text,
      ),
      pathStyle: flags.s3PathStyle ?? cfg.s3PathStyle,
      accessKeyId: cfg.s3AccessKeyId,
      secretAccessKey: cfg.s3SecretAccessKey === undefined
        ? undefined
        : new Secret(cfg.s3SecretAccessKey),
    },
    keys: {
      encrypt: flags.encrypt ?? cfg.encrypt ?? false,
      passphraseFile: flags.passphraseFile ?? cfg.passphraseFile,
      keyFile: flags.keyFile?.length ? flags.keyFile : cfg.keyFile ? [cfg.keyFile] : [],
      identity: flags.identity?.length ? flags.identity : cfg.identity ? [cfg.identity] : [],
      recipient: flags.recipient?.length ? flags.recipient : cfg.recipient ? [cfg.recipient] : [],
    },
    configFile: file.path,
  });
}

export interface PasswordLookup {
  password?: Secret;
  source?: string;
  warnings: string[];
}

/** PGPASSWORD, else the password file entry for this connection, else nothing. */
export async function lookupPassword(
  settings: Settings,
  database: string,
  env: Env,
): Promise<PasswordLookup> {
  const fromEnv = env.PGPASSWORD;
  if (fromEnv !== undefined && fromEnv !== "") {
    return { password: new Secret(fromEnv), source: "env PGPASSWORD", warnings: [] };
  }
  if (!settings.passfile) return { warnings: [] };
  const path = settings.passfile.value;
  const { entries, warning } = await readPgpassFile(path);
  const password = findPgpassPassword(entries, {
    host: settings.host.value,
    port: settings.port.value,
    database,
    user: settings.user.value,
  });
  return {
    password: password === undefined ? undefined : new Secret(password),
    source: password === undefined ? undefined : `passfile ${path}`,
    warnings: warning ? [warning] : [],
  };
}

function parseDbType(v: string, source: string): "postgres" {
  const t = v.toLowerCase();
  if (t === "postgres" || t === "postgresql") return "postgres";
  if (t === "mysql" || t === "mariadb") {
    throw new UsageError(`--db-type ${v} (${source}) is not supported yet; use postgres`);
  }
  throw new UsageError(`invalid database type "${v}" (${source}): expected postgres`);
}

function parsePort(v: string, source: string): number {
  const n = Number(v);
  if (!/^\d+$/.test(v.trim()) || n < 1 || n > 65535) {
    throw new UsageError(`invalid port "${v}" (${source}): expected 1-65535`);
  }
  return n;
}

function parseJobs(v: string, source: string): number {
  const n = Number(v);
  if (!/^\d+$/.test(v.trim()) || n < 1 || n > 64) {
    throw new UsageError(`invalid jobs "${v}" (${source}): expected 1-64`);
  }
  return n;
}

function parseSslMode(v: string, source: string): SslMode {
  if ((SSL_MODES as readonly string[]).includes(v)) return v as SslMode;
  throw new UsageError(`invalid sslmode "${v}" (${source}): expected ${SSL_MODES.join(", ")}`);
}

/** libpq's default: the unix socket directory when its socket exists, else localhost. */
async function defaultHost(port: number): Promise<string> {
  for (const dir of ["/var/run/postgresql", "/run/postgresql", "/tmp"]) {
    try {
      await Deno.stat(`${dir}/.s.PGSQL.${port}`);
      return dir;
    } catch {
      // not there
    }
  }
  return "localhost";
}

function osUser(env: Env): string {
  try {
    return userInfo().username;
  } catch {
    return env.USER ?? env.USERNAME ?? "postgres";
  }
}

function defaultRepo(env: Env): string {
  const data = env.XDG_DATA_HOME || (env.HOME ? `${env.HOME}/.local/share` : undefined);
  if (!data) throw new DbBackupError("config", "no repository given: use --repo or DBBACKUP_REPO");
  return `${data}/dbbackup`;
}
