// Copyright 2026 the Valise authors. Apache-2.0 license.
import type { Session } from "../session.ts";
import { parseCommand, wholeNumber } from "./args.ts";
import type { Context } from "./context.ts";
import { help } from "./help.ts";
import { runLoop } from "./run_loop.ts";
import { withSession } from "./state.ts";

/**
 * `valise python [--timeout-ms N] [-- ARGS...]`: Python's interactive console in the session
 * (its interpreter, working directory and artifacts) on this terminal, as `pyspark` gives a
 * shell. Ctrl-D ends it, Ctrl-C interrupts the statement that runs (twice, when the first one
 * got no answer: ends the run).
 *
 * @param args The words after `python`.
 * @param ctx The context.
 * @returns The console's exit code (that of `exit(n)`; 130 when cancelled).
 */
export async function python(args: string[], ctx: Context): Promise<number> {
  const { values, stop } = parseCommand(args, ctx.globals, {
    command: "python",
    options: { "timeout-ms": { type: "string" } },
    positionals: "stop",
  });
  if (ctx.globals.help) return help("python");
  const timeoutMs = values["timeout-ms"] === undefined
    ? 0
    : wholeNumber(values["timeout-ms"], "--timeout-ms", "python");
  // sys.argv[1:], as after `python -`; a plain word is one too.
  const argv = stop === undefined
    ? []
    : stop.value === undefined
    ? stop.rest
    : [stop.value, ...stop.rest];
  return await withSession(ctx, (session) =>
    runLoop(ctx, session, {
      repl: true,
      args: argv,
      timeoutMs,
      stdin: Deno.stdin.readable,
    }, { interrupts: true, onStarted: consoleNotice(ctx, session) }));
}

/**
 * The line that opens a console: where it runs, and the keys that end and interrupt it.
 *
 * @param ctx The command's context (for `--quiet`).
 * @param session The session.
 * @returns What to call once the console's process started.
 */
export function consoleNotice(ctx: Context, session: Session): (interpreter: string) => void {
  return (interpreter) =>
    ctx.notice(
      `valise: Python console in session ${session.sessionId} (${interpreter}); ` +
        "Ctrl-D ends it, Ctrl-C interrupts",
    );
}
