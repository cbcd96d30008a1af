import { Command } from "@commander-js/extra-typings";
import { ExitCode } from "../errors.ts";
import { verify } from "../ops/verify.ts";
import { type CliEnv, type GlobalOptions, makeContext } from "./context.ts";
import { writeOut } from "./reporters.ts";

export function verifyCommand(cli: CliEnv, setExit: (code: number) => void) {
  return new Command("verify")
    .description("check a backup set's files against its manifest")
    .argument("<backup>", 'backup set id, a unique prefix of one, or "latest"')
    .option("--deep", "also decompress every file and let pg_restore read each archive")
    .action(async (ref, opts, cmd) => {
      const ctx = await makeContext(cmd.optsWithGlobals() as GlobalOptions, {}, cli);
      const report = await verify({
        repo: ctx.repo,
        ref,
        deep: opts.deep ?? false,
        jobs: ctx.settings.jobs.value,
        pgBin: ctx.settings.pgBin?.value,
        reporter: ctx.reporter,
        signal: ctx.signal,
      });
      if (!report.ok) setExit(ExitCode.verification);
      if (ctx.json) {
        writeOut(JSON.stringify({ type: "summary", operation: "verify", ...report }) + "\n");
        return;
      }
      const bad = report.files.filter((f) => !f.ok);
      if (ctx.quiet && bad.length === 0) return;
      const lines = [
        `verify${report.deep ? " --deep" : ""} ${report.setId}: ${
          report.ok ? "ok" : "FAILED"
        } (${report.files.length} file(s), set status ${report.status})`,
        ...bad.map((f) => `  ${f.path}: ${f.problem}`),
        ...(report.note ? [`  note: ${report.note}`] : []),
        ...(report.snapshots && report.snapshots > 1
          ? [
            `  note: a resumed backup: its data spans ${report.snapshots} snapshots (a table written to between the runs can have rows missing or twice)`,
          ]
          : []),
      ];
      writeOut(lines.join("\n") + "\n");
    });
}
