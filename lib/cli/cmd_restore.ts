import { Command } from "@commander-js/extra-typings";
import { ExitCode, UsageError } from "../errors.ts";
import {
  restore,
  type RestoreOptions,
  type RestorePlan,
  type RestoreResult,
} from "../ops/restore.ts";
import {
  type CliEnv,
  collect,
  type Context,
  type GlobalOptions,
  initTarget,
  makeContext,
} from "./context.ts";
import { formatBytes } from "./format.ts";
import { confirm } from "./prompt.ts";
import { writeOut } from "./reporters.ts";

export function restoreCommand(cli: CliEnv, setExit: (code: number) => void) {
  const cmd = new Command("restore").description("restore a backup set into a server");

  cmd.command("single")
    .description("restore one database of a backup set")
    .argument("<backup>", 'backup set id, a unique prefix of one, or "latest"')
    .option("--database <name>", "which database of the set (needed when it holds several)")
    .option("--target <name>", "restore into this database (default: the original name)")
    .option("--create", "create the target database when it does not exist")
    .option("--clean", "replace the objects of a non-empty target (asks, or needs --yes)")
    .option(
      "--table <name>",
      'only this table ("schema.table" or "table"), with its indexes, constraints, triggers and sequences (repeatable)',
      collect,
      [] as string[],
    )
    .option(
      "--schema <name>",
      "only the tables of this schema (repeatable)",
      collect,
      [] as string[],
    )
    .action(async (ref, opts, sub) => {
      await run(sub.optsWithGlobals() as GlobalOptions, opts.target ?? opts.database, {
        ref,
        kind: "single",
        database: opts.database,
        targetName: opts.target,
        create: opts.create ?? false,
        clean: opts.clean ?? false,
        tables: opts.table,
        schemas: opts.schema,
      });
    });

  cmd.command("cluster")
    .description("restore globals, then every database of a cluster backup set")
    .argument("<backup>", 'backup set id, a unique prefix of one, or "latest"')
    .option(
      "--clean",
      "drop and recreate databases that exist and are not empty (asks, or needs --yes)",
    )
    .action(async (ref, opts, sub) => {
      await run(sub.optsWithGlobals() as GlobalOptions, undefined, {
        ref,
        kind: "cluster",
        create: true,
        clean: opts.clean ?? false,
      });
    });

  /** Both subcommands: settings, then one restore() call, then the summary and exit code. */
  async function run(
    globals: GlobalOptions,
    database: string | undefined,
    what: Pick<
      RestoreOptions,
      "ref" | "kind" | "database" | "targetName" | "create" | "clean" | "tables" | "schemas"
    >,
  ): Promise<void> {
    const ctx = await makeContext(globals, {}, cli);
    await initTarget(ctx, database ?? "postgres");
    const result = await restore({
      ...what,
      target: ctx.target,
      repo: ctx.repo,
      jobs: ctx.settings.jobs.value,
      pgBin: ctx.settings.pgBin?.value,
      dryRun: ctx.dryRun,
      reporter: ctx.reporter,
      signal: ctx.signal,
      confirmDestructive: (_plan, items) => confirmOrRefuse(ctx, items),
    });
    print(result, ctx);
    setExit(exitFor(result));
  }
  return cmd;
}

async function confirmOrRefuse(ctx: Context, what: string[]): Promise<void> {
  if (ctx.yes) return;
  const question = `This will ${what.join(", ")}. Continue?`;
  if (!Deno.stdin.isTerminal()) {
    throw new UsageError(`refusing to ${what.join(", ")} without confirmation: add --yes`);
  }
  if (!await Promise.resolve(confirm(question))) {
    throw new UsageError("restore cancelled: nothing was changed");
  }
}

function exitFor(r: RestoreResult): number {
  switch (r.status) {
    case "complete":
    case "dry-run":
      return ExitCode.ok;
    case "partial":
      return ExitCode.partial;
    case "failed":
      return ExitCode.failure;
  }
}

function describePlan(p: RestorePlan): string[] {
  const lines = [`restore plan for ${p.setId} (${p.setStatus}) into ${p.endpoint}:`];
  if (p.globals) lines.push("  globals: roles and tablespaces (existing ones are kept)");
  for (const d of p.databases) {
    lines.push(
      `  "${d.source}" -> "${d.target}": ${d.action} (${formatBytes(d.file.rawBytes)} archive)`,
    );
    if (d.selection) {
      lines.push(
        `    tables: ${d.selection.tables.map((t) => `${t.schema}.${t.name}`).join(", ")}`,
      );
    }
  }
  for (const s of p.skipped) lines.push(`  skip "${s.name}": ${s.reason}`);
  return lines;
}

function print(r: RestoreResult, ctx: Context): void {
  if (ctx.json) {
    writeOut(
      JSON.stringify({
        type: "summary",
        operation: `restore ${r.plan.kind}`,
        setId: r.plan.setId,
        status: r.status,
        plan: r.plan.databases.map((d) => ({
          source: d.source,
          target: d.target,
          action: d.action,
        })),
        parts: r.parts,
        skipped: r.plan.skipped,
      }) + "\n",
    );
    return;
  }
  if (r.status === "dry-run") {
    writeOut(["dry run: nothing will be changed", ...describePlan(r.plan)].join("\n") + "\n");
    return;
  }
  if (ctx.quiet && r.status === "complete") return;
  const lines = [`restore of ${r.plan.setId}: ${r.status}`];
  for (const p of r.parts) {
    lines.push(`  ${p.part}: ${p.status}${p.error ? ` (${p.error})` : ""}`);
  }
  for (const s of r.plan.skipped) lines.push(`  skipped "${s.name}": ${s.reason}`);
  writeOut(lines.join("\n") + "\n");
}
