/** Global options -> the objects every command needs: settings, target, repository, reporter. */
import { type FlagValues, resolveSettings, type Settings } from "../config/settings.ts";
import { PgTarget } from "../engine/pg/connect.ts";
import type { Reporter } from "../ops/progress.ts";
import { Repository } from "../repo/repository.ts";
import { LocalStorage } from "../storage/local.ts";
import { makeReporter } from "./reporters.ts";
import { promptPassword } from "./prompt.ts";

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
  return {
    settings,
    target: new PgTarget(settings, cli.env, promptPassword),
    repo: new Repository(new LocalStorage(settings.repo.value)),
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
