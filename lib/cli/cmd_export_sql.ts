import { Command } from "@commander-js/extra-typings";
import { DbBackupError } from "../errors.ts";
import { exportSql } from "../ops/export_sql.ts";
import { LocalStorage } from "../storage/local.ts";
import { type CliEnv, type GlobalOptions, makeContext } from "./context.ts";

export function exportSqlCommand(cli: CliEnv) {
  return new Command("export-sql")
    .description("write one database of a backup set as a plain SQL script for psql")
    .argument("<backup>", 'backup set id, a unique prefix of one, or "latest"')
    .option("--database <name>", "which database of the set (needed when it holds several)")
    .option("-o, --output <file>", "write to this new file (0600) instead of stdout")
    .action(async (ref, opts, cmd) => {
      const ctx = await makeContext(cmd.optsWithGlobals() as GlobalOptions, {}, cli);
      const run = (output: WritableStream<Uint8Array>) =>
        exportSql({
          repo: ctx.repo,
          ref,
          database: opts.database,
          output,
          pgBin: ctx.settings.pgBin?.value,
          signal: ctx.signal,
          warn: (message) => ctx.reporter.event({ type: "warning", message }),
        });
      if (!opts.output) {
        await run(Deno.stdout.writable);
        return;
      }
      // The file is written as backup files are (temporary name, fsync, link(2), 0600): a run
      // that fails or dies halfway never leaves a usable-looking script, and nothing existing
      // is replaced.
      const slash = opts.output.lastIndexOf("/");
      const folder = new LocalStorage(slash < 0 ? "." : opts.output.slice(0, slash) || "/");
      const name = opts.output.slice(slash + 1);
      if (await folder.stat(name)) {
        throw new DbBackupError("exists", `cannot create ${opts.output}: it already exists`);
      }
      const pipe = new TransformStream<Uint8Array, Uint8Array>();
      const writing = folder.write(name, pipe.readable);
      try {
        await run(pipe.writable);
      } catch (err) {
        await pipe.writable.abort(err).catch(() => {});
        await writing.catch(() => {});
        throw err;
      }
      await pipe.writable.close();
      await writing;
    });
}
