/**
 * The JSON config file: the same settings as the flags, a key per setting. Passwords are not
 * allowed here: they belong in the environment or a 0600 password file.
 */
import { DbBackupError } from "../errors.ts";

export interface FileSettings {
  host?: string;
  port?: number;
  user?: string;
  dbType?: string;
  repo?: string;
  jobs?: number;
  compression?: string;
  sslmode?: string;
  sslrootcert?: string;
  passfile?: string;
  pgBin?: string;
  /** The retention policy `prune` and `backup --prune` use when no keep flag is given. */
  prune?: PrunePolicySettings;
  /** Encrypt every backup (as --encrypt). */
  encrypt?: boolean;
  passphraseFile?: string;
  keyFile?: string;
  identity?: string;
  recipient?: string;
  /** Object storage (repo "s3://bucket/prefix"). */
  s3Endpoint?: string;
  s3Region?: string;
  s3PathStyle?: boolean;
  /** Credentials; the file must then be private (mode 0600). AWS_* variables win. */
  s3AccessKeyId?: string;
  s3SecretAccessKey?: string;
}

/** The config file's "prune" object: the same names as the flags, in camelCase. */
export interface PrunePolicySettings {
  keepLast?: number;
  keepHourly?: number;
  keepDaily?: number;
  keepWeekly?: number;
  keepMonthly?: number;
  keepYearly?: number;
  keepWithin?: string;
  grace?: string;
  timeZone?: string;
}

const pruneKeys: Record<keyof PrunePolicySettings, "string" | "number"> = {
  keepLast: "number",
  keepHourly: "number",
  keepDaily: "number",
  keepWeekly: "number",
  keepMonthly: "number",
  keepYearly: "number",
  keepWithin: "string",
  grace: "string",
  timeZone: "string",
};

const keys: Record<keyof FileSettings, "string" | "number" | "object" | "boolean"> = {
  host: "string",
  port: "number",
  user: "string",
  dbType: "string",
  repo: "string",
  jobs: "number",
  compression: "string",
  sslmode: "string",
  sslrootcert: "string",
  passfile: "string",
  pgBin: "string",
  prune: "object",
  encrypt: "boolean",
  passphraseFile: "string",
  keyFile: "string",
  identity: "string",
  recipient: "string",
  s3Endpoint: "string",
  s3Region: "string",
  s3PathStyle: "boolean",
  s3AccessKeyId: "string",
  s3SecretAccessKey: "string",
};

/** The config files looked for when --config is not given, first found wins. */
export function defaultConfigPaths(env: Record<string, string | undefined>): string[] {
  const paths: string[] = [];
  const xdg = env.XDG_CONFIG_HOME || (env.HOME ? `${env.HOME}/.config` : undefined);
  if (xdg) paths.push(`${xdg}/dbbackup/config.json`);
  paths.push("/etc/dbbackup/config.json");
  return paths;
}

/** Parses a config file's text; throws a config error naming the file and the key. */
export function parseConfigFile(text: string, path: string): FileSettings {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw new DbBackupError(
      "config",
      `config file ${path} is not valid JSON: ${(err as Error).message}`,
    );
  }
  if (typeof data !== "object" || data === null || Array.isArray(data)) {
    throw new DbBackupError("config", `config file ${path} must hold a JSON object`);
  }
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(data)) {
    if (key === "password" || key === "passphrase") {
      throw new DbBackupError(
        "config",
        `config file ${path}: "${key}" is not allowed here; use PGPASSWORD or a 0600 password file ("passfile")`,
      );
    }
    const type = keys[key as keyof FileSettings];
    if (!type) {
      throw new DbBackupError(
        "config",
        `config file ${path}: unknown key "${key}" (known: ${Object.keys(keys).join(", ")})`,
      );
    }
    const actual = value === null || Array.isArray(value) ? "other" : typeof value;
    if (actual !== type) {
      throw new DbBackupError("config", `config file ${path}: "${key}" must be a ${type}`);
    }
    if (key === "prune") checkKeys(value as Record<string, unknown>, pruneKeys, `${path}: "prune"`);
    out[key] = value;
  }
  return out as FileSettings;
}

function checkKeys(
  obj: Record<string, unknown>,
  known: Record<string, "string" | "number">,
  where: string,
): void {
  for (const [key, value] of Object.entries(obj)) {
    const type = known[key];
    if (!type) {
      throw new DbBackupError(
        "config",
        `config file ${where}: unknown key "${key}" (known: ${Object.keys(known).join(", ")})`,
      );
    }
    const actual = typeof value;
    if (actual !== type) {
      throw new DbBackupError("config", `config file ${where}: "${key}" must be a ${type}`);
    }
  }
}

/** Loads the first config file that exists; `explicit` (from --config) must exist. */
export async function loadConfigFile(
  explicit: string | undefined,
  env: Record<string, string | undefined>,
): Promise<{ path?: string; settings: FileSettings }> {
  const candidates = explicit ? [explicit] : defaultConfigPaths(env);
  for (const path of candidates) {
    let text: string;
    try {
      text = await Deno.readTextFile(path);
    } catch (err) {
      if (err instanceof Deno.errors.NotFound && !explicit) continue;
      if (err instanceof Deno.errors.NotFound) {
        throw new DbBackupError("config", `config file ${path} does not exist`);
      }
      throw new DbBackupError("config", `cannot read config file ${path}: ${err}`);
    }
    const settings = parseConfigFile(text, path);
    if (settings.s3SecretAccessKey !== undefined) {
      const mode = (await Deno.stat(path)).mode;
      if (mode !== null && (mode & 0o077) !== 0) {
        throw new DbBackupError(
          "config",
          `config file ${path} holds "s3SecretAccessKey" but others can read it (mode ${
            (mode & 0o777).toString(8)
          }): run chmod 600 ${path}, or use AWS_SECRET_ACCESS_KEY`,
        );
      }
    }
    return { path, settings };
  }
  return { settings: {} };
}
