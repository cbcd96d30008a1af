import { Command } from "@commander-js/extra-typings";
import { DbBackupError } from "../errors.ts";
import { exportSql } from "../ops/export_sql.ts";
import { type CliEnv, type GlobalOptions, makeContext } from "./context.ts";

export function exportSqlCommand(cli: CliEnv) {
  return new Command("export-sql")
    .description("write one database of a backup set as a plain SQL script for psql")
    .argument("<backup>", 'backup set id, a unique prefix of one, or "latest"')
    .option("--database <name>", "which database of the set (needed when it holds several)")
    .option("-o, --output <file>", "write to this new file (0600) instead of stdout")
    .action(async (ref, opts, cmd) => {
      const ctx = await makeContext(cmd.optsWithGlobals() as GlobalOptions, {}, cli);
      // A file is written under a temporary name and published with link(2) only when the
      // whole script is in: a run that dies halfway never leaves a usable-looking script.
      let file: Deno.FsFile | undefined;
      let temp: string | undefined;
      if (opts.output) {
        if (await exists(opts.output)) {
          throw new DbBackupError("exists", `cannot create ${opts.output}: it already exists`);
        }
        const slash = opts.output.lastIndexOf("/");
        temp = `${opts.output.slice(0, slash + 1)}.${opts.output.slice(slash + 1)}.tmp-${
          crypto.randomUUID().slice(0, 8)
        }`;
        try {
          file = await Deno.open(temp, { write: true, createNew: true, mode: 0o600 });
        } catch (err) {
          throw new DbBackupError("io", `cannot create ${opts.output}: ${String(err)}`);
        }
      }
      // Our own sink for the file: every write is awaited, so fsync and close see all of it.
      const sink = file;
      const output = sink
        ? new WritableStream<Uint8Array>({
          async write(chunk) {
            for (let at = 0; at < chunk.byteLength;) at += await sink.write(chunk.subarray(at));
          },
        })
        : Deno.stdout.writable;
      try {
        await exportSql({
          repo: ctx.repo,
          ref,
          database: opts.database,
          output,
          pgBin: ctx.settings.pgBin?.value,
          signal: ctx.signal,
          warn: (message) => ctx.reporter.event({ type: "warning", message }),
        });
        if (file && temp && opts.output) {
          await file.sync();
          try {
            await Deno.link(temp, opts.output);
          } catch (err) {
            throw new DbBackupError(
              err instanceof Deno.errors.AlreadyExists ? "exists" : "io",
              `cannot create ${opts.output}: ${
                err instanceof Deno.errors.AlreadyExists ? "it already exists" : String(err)
              }`,
            );
          }
        }
      } finally {
        file?.close();
        if (temp) await Deno.remove(temp).catch(() => {});
      }
    });
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw new DbBackupError("io", `cannot check ${path}: ${String(err)}`);
  }
}
