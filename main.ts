/**
 * dbbackup's entry point: argv -> runCli() -> exit code. The only place that exits.
 * SIGINT/SIGTERM abort the run: children we started are stopped, temporary files removed.
 */
import { runCli } from "./lib/cli/program.ts";
import { ExitCode } from "./lib/errors.ts";
import { killAllChildren } from "./lib/process/run.ts";

const controller = new AbortController();
let signals = 0;
const onSignal = () => {
  signals++;
  controller.abort(new Error("interrupted"));
  if (signals > 1) {
    // A second signal: stop now, children first.
    killAllChildren("SIGKILL");
    Deno.exit(ExitCode.interrupted);
  }
};
Deno.addSignalListener("SIGINT", onSignal);
if (Deno.build.os !== "windows") Deno.addSignalListener("SIGTERM", onSignal);

const code = await runCli(Deno.args, { env: Deno.env.toObject(), signal: controller.signal });
Deno.exit(code);
