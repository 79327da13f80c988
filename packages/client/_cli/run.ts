// Copyright 2026 the Valise authors. Apache-2.0 license.
import { resolve } from "node:path";
import type { RunSpec, RunTarget } from "../run.ts";
import { parseCommand, UsageError, wholeNumber } from "./args.ts";
import { type Context, interruptible, writeAll } from "./context.ts";
import { help } from "./help.ts";
import { RUN } from "./specs.ts";
import { withSession } from "./state.ts";

/** Signal numbers, for the exit code 128+N of a program a signal killed. */
const SIGNALS: Record<string, number> = {
  SIGHUP: 1,
  SIGINT: 2,
  SIGQUIT: 3,
  SIGILL: 4,
  SIGABRT: 6,
  SIGFPE: 8,
  SIGKILL: 9,
  SIGSEGV: 11,
  SIGPIPE: 13,
  SIGALRM: 14,
  SIGTERM: 15,
  SIGXCPU: 24,
  SIGXFSZ: 25,
};

/**
 * `valise run [--stdin FILE] [--timeout-ms N] (-c CODE | -m MODULE | SCRIPT) [ARGS...]`: the
 * words after the target are the program's.
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
  if (stop?.value === undefined) {
    throw new UsageError("run needs -c CODE, -m MODULE or SCRIPT", "run");
  }
  const target: RunTarget = stop.by === "c"
    ? { code: stop.value }
    : stop.by === "m"
    ? { module: stop.value }
    : { script: stop.value };
  let stdin: Uint8Array | undefined;
  if (values.stdin === "-") {
    stdin = new Uint8Array(await new Response(Deno.stdin.readable).arrayBuffer());
  } else if (values.stdin !== undefined) {
    stdin = await Deno.readFile(resolve(ctx.cwd, values.stdin));
  }
  return await interruptible((signal) =>
    withSession(ctx, async (session) => {
      const spec: RunSpec = {
        ...target,
        args: stop.rest,
        timeoutMs,
        signal,
        ...(stdin ? { stdin } : {}),
      };
      let code = 1;
      // With --json the program's output becomes text lines; a decoder per stream keeps a
      // character split between two pieces whole.
      const decoders = { stdout: new TextDecoder(), stderr: new TextDecoder() };
      for await (const ev of session.run(spec)) {
        if (ctx.globals.json && (ev.kind === "stdout" || ev.kind === "stderr")) {
          const text = decoders[ev.kind].decode(ev.data, { stream: true });
          if (text !== "") ctx.emit({ type: ev.kind, text });
        } else if (ev.kind === "stdout") await writeAll(Deno.stdout, ev.data);
        else if (ev.kind === "stderr") await writeAll(Deno.stderr, ev.data);
        else if (ev.kind === "exited") {
          if (ev.outputTruncated) ctx.notice("valise: output was truncated by the server's limit");
          if (ev.timedOut) {
            ctx.notice("valise: the run hit its time limit and was killed");
            code = 124;
          } else if (ev.signal !== "") {
            code = 128 + (SIGNALS[ev.signal] ?? 0);
          } else {
            code = ev.exitCode;
          }
          if (ctx.globals.json) {
            for (const kind of ["stdout", "stderr"] as const) {
              const text = decoders[kind].decode();
              if (text !== "") ctx.emit({ type: kind, text });
            }
            ctx.emit({
              type: "exit",
              exitCode: code,
              programExitCode: ev.exitCode,
              signal: ev.signal === "" ? null : ev.signal,
              timedOut: ev.timedOut,
              outputTruncated: ev.outputTruncated,
            });
          }
        }
      }
      return code;
    })
  );
}
