import { Command } from "@commander-js/extra-typings";
import { status } from "../ops/status.ts";
import { type CliEnv, type GlobalOptions, makeContext } from "./context.ts";
import { formatBytes, table } from "./format.ts";
import { writeOut } from "./reporters.ts";
import { ExitCode } from "../errors.ts";

export function statusCommand(cli: CliEnv, setExit: (code: number) => void) {
  return new Command("status")
    .description(
      "show the effective settings, the server, its databases, the tools and the repository",
    )
    .action(async (_opts, cmd) => {
      const ctx = await makeContext(cmd.optsWithGlobals() as GlobalOptions, {}, cli);
      await ctx.target.init();
      const r = await status(ctx.settings, ctx.target, ctx.repo);
      // A server that cannot be reached, or a repository that cannot be read, is a failure.
      if (!r.connection.ok || r.repository.error) setExit(ExitCode.failure);
      if (ctx.json) {
        writeOut(JSON.stringify(r, null, 2) + "\n");
        return;
      }
      const lines: string[] = [];
      lines.push("Settings:");
      lines.push(table(
        Object.entries(r.settings).map(([k, v]) => [
          `  ${k}`,
          typeof v.value === "object" ? JSON.stringify(v.value) : String(v.value),
          `(${v.source})`,
        ]),
      ));
      const c = r.connection;
      lines.push("");
      lines.push(
        c.ok
          ? `Connection: ok, ${c.transport} ${c.endpoint} as ${c.user}, TLS ${
            c.tls ? "on" : "off"
          }, ${c.auth}`
          : `Connection: FAILED: ${c.error}`,
      );
      if (r.server) {
        lines.push(
          `Server: PostgreSQL ${r.server.version}${r.server.superuser ? " (superuser)" : ""}`,
        );
      }
      if (r.databases) {
        lines.push("Databases:");
        lines.push(table(r.databases.map((d) => [
          `  ${d.name}`,
          formatBytes(d.sizeBytes),
          d.encoding,
          `owner ${d.owner}`,
          d.template ? "template" : "",
        ])));
      }
      lines.push("Tools:");
      lines.push(table(r.tools.map((t) => [
        `  ${t.name}`,
        t.path ? `${t.path} (${t.version})` : `missing: ${t.error}`,
        t.path ? (t.matchesServer ? "matches server" : "newer than server") : "",
      ])));
      lines.push(
        `Repository: ${r.repository.location} (${
          r.repository.error
            ? `cannot be read: ${r.repository.error}`
            : r.repository.exists
            ? `${r.repository.sets} set(s)${
              r.repository.freeBytes === undefined
                ? ""
                : `, ${formatBytes(r.repository.freeBytes)} free`
            }`
            : "does not exist yet"
        })`,
      );
      for (const w of r.warnings) lines.push(`warning: ${w}`);
      writeOut(lines.join("\n") + "\n");
    });
}
