// Copyright 2026 the Valise authors. Apache-2.0 license.
import { resolve } from "node:path";
import type { RunSpec, RunTarget } from "../run.ts";
import { parseCommand, UsageError, wholeNumber } from "./args.ts";
import type { Context } from "./context.ts";
import { help } from "./help.ts";
import { consoleNotice } from "./python.ts";
import { runLoop } from "./run_loop.ts";
import { RUN } from "./specs.ts";
import { withSession } from "./state.ts";

/**
 * `valise run [-i] [--stdin FILE] [--timeout-ms N] (-c CODE | -m MODULE | SCRIPT) [ARGS...]`:
 * the words after the target are the program's. `--stdin -` streams this process's stdin to
 * the program as it comes; `-i` runs Python's console after the target (or alone), on this
 * terminal.
 *
 * @param args The words after `run`.
 * @param ctx The context.
 * @returns The program's exit code (124: time limit, 128+N: signal N, 130: Ctrl-C).
 */
export async function run(args: string[], ctx: Context): Promise<number> {
  const { values, stop } = parseCommand(args, ctx.globals, RUN);
  const timeoutMs = values["timeout-ms"] === undefined
    ? 0
    : wholeNumber(values["timeout-ms"], "--timeout-ms", "run");
  if (stop?.value === undefined && stop?.by === "--") {
    throw new UsageError("-- needs a SCRIPT after it", "run");
  }
  if (ctx.globals.help) return help("run");
  const repl = values.interactive === true;
  if (stop?.value === undefined && !repl) {
    throw new UsageError("run needs -c CODE, -m MODULE or SCRIPT (or -i)", "run");
  }
  const target: RunTarget = stop?.value === undefined
    ? { repl: true }
    : stop.by === "c"
    ? { code: stop.value }
    : stop.by === "m"
    ? { module: stop.value }
    : { script: stop.value };
  // A file is sent whole; this process's stdin is streamed as it comes (the console's is).
  let stdin: RunSpec["stdin"];
  if (values.stdin !== undefined && values.stdin !== "-") {
    stdin = await Deno.readFile(resolve(ctx.cwd, values.stdin));
  } else if (values.stdin === "-" || repl) {
    stdin = Deno.stdin.readable;
  }
  const streamed = stdin instanceof ReadableStream;
  return await withSession(ctx, (session) =>
    runLoop(ctx, session, {
      ...target,
      args: stop?.rest ?? [],
      timeoutMs,
      ...(repl ? { repl } : {}),
      ...(stdin !== undefined ? { stdin } : {}),
    }, {
      interrupts: streamed || repl,
      ...(repl ? { onStarted: consoleNotice(ctx, session) } : {}),
    }));
}
