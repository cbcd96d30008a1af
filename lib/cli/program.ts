/** The command tree and runCli(): argv in, exit code out. Only main.ts exits. */
import { Command, CommanderError, Option } from "@commander-js/extra-typings";
import { DbBackupError, ExitCode, InterruptedError, UsageError } from "../errors.ts";
import { VERSION } from "../version.ts";
import { backupCommand } from "./cmd_backup.ts";
import { exportSqlCommand } from "./cmd_export_sql.ts";
import { listCommand } from "./cmd_list.ts";
import { pruneCommand } from "./cmd_prune.ts";
import { keyCommand } from "./cmd_key.ts";
import { restoreCommand } from "./cmd_restore.ts";
import { statusCommand } from "./cmd_status.ts";
import { verifyCommand } from "./cmd_verify.ts";
import { type CliEnv, collect } from "./context.ts";

const EXIT_CODES = `
Exit codes:
  0    success
  1    failure (nothing usable was produced, or the restore failed)
  2    bad usage (unknown option, invalid value, missing confirmation)
  3    partial (some parts failed, the others are fine and recorded; or the backup is
       complete and its --prune failed)
  4    verification failed (a file is missing, truncated or does not match its checksum)
  5    key error (no key given, or none opens the encrypted set; nothing was written)
  130  interrupted (SIGINT or SIGTERM; nothing incomplete is left looking complete)

Connection settings follow libpq: flags, then PGHOST, PGPORT, PGUSER, PGPASSWORD, PGPASSFILE,
PGSSLMODE, PGSSLROOTCERT, then the config file, then defaults. There is no --password flag: use
PGPASSWORD, a password file (~/.pgpass, 0600), or type it when asked on a terminal.`;

export function buildProgram(cli: CliEnv, setExit: (code: number) => void) {
  const program = new Command("dbbackup")
    .description("Backup and restore for PostgreSQL that a 3 a.m. restore can trust.")
    .version(VERSION, "-V, --version")
    .exitOverride()
    .showSuggestionAfterError(true)
    .addOption(new Option("-H, --host <host>", "server host or unix socket directory (PGHOST)"))
    .addOption(new Option("-p, --port <port>", "server port (PGPORT)"))
    .addOption(new Option("-U, --user <user>", "user name (PGUSER)"))
    .addOption(
      new Option("--db-type <type>", "database type").choices([
        "postgres",
        "postgresql",
        "mysql",
        "mariadb",
      ]),
    )
    .addOption(
      new Option(
        "--repo <dir|s3://bucket/prefix>",
        "repository of backup sets: a folder, or S3-compatible object storage (DBBACKUP_REPO)",
      ),
    )
    .addOption(
      new Option(
        "--s3-endpoint <url>",
        "S3 endpoint, e.g. https://minio.lan:9000 (AWS_ENDPOINT_URL)",
      ),
    )
    .addOption(new Option("--s3-region <name>", "S3 region (AWS_REGION; default us-east-1)"))
    .addOption(
      new Option(
        "--s3-path-style",
        "address buckets as <endpoint>/<bucket> (default with --s3-endpoint)",
      ),
    )
    .addOption(
      new Option(
        "--config <file>",
        "config file (JSON); default ~/.config/dbbackup/config.json, then /etc/dbbackup/config.json",
      ),
    )
    .addOption(new Option("-j, --jobs <n>", "databases/jobs in parallel (default 2)"))
    .addOption(
      new Option("--pg-bin <dir>", "folder with pg_dump/pg_restore/psql (DBBACKUP_PG_BIN)"),
    )
    .addOption(
      new Option(
        "--passphrase-file <file>",
        "file (0600) whose first line is the passphrase of encrypted sets (or DBBACKUP_PASSPHRASE)",
      ),
    )
    .addOption(
      new Option(
        "--key-file <file>",
        "key file (0600, 32 bytes) that opens encrypted sets (repeatable)",
      )
        .argParser(collect),
    )
    .addOption(
      new Option(
        "--identity <file>",
        "identity file (0600) that opens sets encrypted for it (repeatable)",
      )
        .argParser(collect),
    )
    .option("--json", "machine-readable output: JSON events and a summary object")
    .option("-q, --quiet", "print only warnings, errors and failures")
    .option("--no-progress", "no progress display")
    .option("-y, --yes", "answer yes to confirmations (needed for --clean without a terminal)")
    .option("--dry-run", "print what would be done and change nothing")
    .addHelpText("after", EXIT_CODES);
  program.addCommand(statusCommand(cli, setExit));
  program.addCommand(backupCommand(cli, setExit));
  program.addCommand(restoreCommand(cli, setExit));
  program.addCommand(listCommand(cli));
  program.addCommand(verifyCommand(cli, setExit));
  program.addCommand(exportSqlCommand(cli));
  program.addCommand(pruneCommand(cli, setExit));
  program.addCommand(keyCommand(cli));
  // Subcommands added with addCommand do not inherit these settings: apply them to all.
  const apply = (cmd: Command<unknown[], Record<string, unknown>, Record<string, unknown>>) => {
    cmd.exitOverride();
    cmd.showSuggestionAfterError(true);
    cmd.configureOutput({ outputError: (text, write) => write(`dbbackup: ${text}`) });
    for (const sub of cmd.commands) apply(sub as typeof cmd);
  };
  apply(program as unknown as Command<unknown[], Record<string, unknown>, Record<string, unknown>>);
  return program;
}

/** Runs the CLI; returns the exit code. Writes errors to stderr; never throws. */
export async function runCli(argv: string[], cli: CliEnv): Promise<number> {
  let exitCode: number = ExitCode.ok;
  const program = buildProgram(cli, (code) => exitCode = Math.max(exitCode, code));
  try {
    await program.parseAsync(argv, { from: "user" });
    if (cli.signal.aborted) return ExitCode.interrupted;
    return exitCode;
  } catch (err) {
    if (err instanceof CommanderError) {
      if (
        err.code === "commander.helpDisplayed" || err.code === "commander.version" ||
        err.code === "commander.help"
      ) return ExitCode.ok;
      // commander already printed its message.
      return ExitCode.usage;
    }
    if (cli.signal.aborted && !(err instanceof DbBackupError && err.code !== "interrupted")) {
      printError(err instanceof InterruptedError ? err.message : "interrupted");
      return ExitCode.interrupted;
    }
    if (err instanceof UsageError) {
      printError(`${err.message}\n(see dbbackup --help)`);
      return ExitCode.usage;
    }
    if (err instanceof DbBackupError) {
      printError(err.message);
      return err.exitCode;
    }
    printError(`unexpected error: ${err instanceof Error ? err.message : String(err)}`);
    if (cli.env.DBBACKUP_DEBUG && err instanceof Error) console.error(err.stack);
    return ExitCode.failure;
  }
}

function printError(message: string): void {
  Deno.stderr.writeSync(new TextEncoder().encode(`dbbackup: error: ${message}\n`));
}
