/** Global options -> the objects every command needs: settings, target, repository, reporter. */
import { type FlagValues, resolveSettings, type Settings } from "../config/settings.ts";
import { PgTarget } from "../engine/pg/connect.ts";
import type { Reporter } from "../ops/progress.ts";
import { Repository } from "../repo/repository.ts";
import { LocalStorage } from "../storage/local.ts";
import { S3Storage } from "../storage/s3.ts";
import type { Storage } from "../storage/storage.ts";
import { DbBackupError } from "../errors.ts";
import { makeReporter } from "./reporters.ts";
import { loadOpeners } from "./keys.ts";
import { promptPassword } from "./prompt.ts";

/** Repeatable options: each use adds a value (variadic options would swallow the command). */
export const collect = (value: string, previous: string[] = []): string[] => [...previous, value];

/** The options every command accepts (defined on the root command). */
export interface GlobalOptions extends Omit<FlagValues, "compression"> {
  json?: boolean;
  quiet?: boolean;
  progress?: boolean;
  yes?: boolean;
  dryRun?: boolean;
}

export interface Context {
  settings: Settings;
  env: Record<string, string | undefined>;
  target: PgTarget;
  repo: Repository;
  reporter: Reporter;
  json: boolean;
  quiet: boolean;
  yes: boolean;
  dryRun: boolean;
  signal: AbortSignal;
}

export interface CliEnv {
  env: Record<string, string | undefined>;
  signal: AbortSignal;
}

export async function makeContext(
  globals: GlobalOptions,
  extraFlags: Partial<FlagValues>,
  cli: CliEnv,
): Promise<Context> {
  const settings = await resolveSettings({ ...globals, ...extraFlags }, cli.env);
  const json = globals.json ?? false;
  const quiet = globals.quiet ?? false;
  // Key files and identities are read when a set must be opened, not by every command.
  const openers = () => loadOpeners({ ...settings.keys, env: cli.env });
  return {
    settings,
    env: cli.env,
    target: new PgTarget(settings, cli.env, promptPassword),
    repo: new Repository(openStorage(settings, cli.env), openers),
    reporter: makeReporter({ json, quiet, progress: globals.progress ?? true }),
    json,
    quiet,
    yes: globals.yes ?? false,
    dryRun: globals.dryRun ?? false,
    signal: cli.signal,
  };
}

/** Resolves the password for `database` and reports why a password file was ignored, if it was. */
export async function initTarget(ctx: Context, database?: string): Promise<void> {
  await ctx.target.init(database);
  for (const message of ctx.target.warnings) ctx.reporter.event({ type: "warning", message });
}

/** The repository's storage: S3 for "s3://bucket/prefix", else a local folder. */
export function openStorage(settings: Settings, env: Record<string, string | undefined>): Storage {
  const repo = settings.repo.value;
  if (!repo.startsWith("s3://")) return new LocalStorage(repo);
  const s3 = settings.s3;
  const accessKeyId = env.AWS_ACCESS_KEY_ID || s3.accessKeyId;
  const secretAccessKey = env.AWS_SECRET_ACCESS_KEY || s3.secretAccessKey?.reveal();
  if (!accessKeyId || !secretAccessKey) {
    throw new DbBackupError(
      "config",
      `the repository ${repo} needs S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "s3AccessKeyId" and "s3SecretAccessKey" in a 0600 config file)`,
    );
  }
  const sessionToken = env.AWS_SESSION_TOKEN || undefined;
  return new S3Storage(repo, {
    credentials: { accessKeyId, secretAccessKey, ...(sessionToken ? { sessionToken } : {}) },
    endpoint: s3.endpoint?.value,
    region: s3.region?.value,
    pathStyle: s3.pathStyle,
  });
}
