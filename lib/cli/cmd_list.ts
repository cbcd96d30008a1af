import { Command } from "@commander-js/extra-typings";
import { list } from "../ops/list.ts";
import { type CliEnv, type GlobalOptions, makeContext } from "./context.ts";
import { formatBytes, table } from "./format.ts";
import { writeOut } from "./reporters.ts";

export function listCommand(cli: CliEnv) {
  return new Command("list")
    .description("list the backup sets in the repository, oldest first")
    .action(async (_opts, cmd) => {
      const ctx = await makeContext(cmd.optsWithGlobals() as GlobalOptions, {}, cli);
      const sets = await list(ctx.repo);
      if (ctx.json) {
        writeOut(JSON.stringify(sets, null, 2) + "\n");
        return;
      }
      if (sets.length === 0) {
        writeOut(`no backup sets in ${ctx.repo.location}\n`);
        return;
      }
      const rows = [["ID", "GROUP", "ENGINE", "STATUS", "SIZE", "DATABASES"]];
      for (const s of sets) {
        rows.push([
          s.id,
          s.group,
          s.engine ?? "-",
          [
            s.status,
            ...(s.snapshots && s.snapshots > 1 ? [`spans ${s.snapshots} snapshots`] : []),
            ...(s.encrypted ? ["encrypted"] : []),
          ].join(", "),
          formatBytes(s.bytes),
          s.problem ??
            s.databases.map((d) => d.status === "ok" ? d.name : `${d.name} (FAILED)`).join(", "),
        ]);
      }
      writeOut(table(rows) + "\n");
    });
}
