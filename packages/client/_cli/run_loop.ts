// Copyright 2026 the Valise authors. Apache-2.0 license.
// A run as the terminal sees it: its output on stdout and stderr as it comes, its exit code as
// the shell expects it, and Ctrl-C: it cancels a run whose stdin was sent whole, and interrupts
// one whose stdin is streamed (Python raises KeyboardInterrupt) unless the run did not react to
// the previous Ctrl-C, which then cancels it; Ctrl-\ (SIGQUIT) cancels it at once.
import { RunControl } from "../run_control.ts";
import type { RunSpec } from "../run.ts";
import type { Session } from "../session.ts";
import { type Context, writeAll } from "./context.ts";

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

/** How a command runs its program. */
export interface RunLoopOptions {
  /** Ctrl-C interrupts the program (a control is attached) instead of cancelling the run. */
  interrupts: boolean;
  /** Called once the program started, with the interpreter that runs it. */
  onStarted?: (interpreter: string) => void;
}

/**
 * Runs a program in the session, its output to this process's stdout and stderr.
 *
 * @param ctx The command's context.
 * @param session The session.
 * @param spec What to run, with its stdin.
 * @param options Whether Ctrl-C interrupts, what to say when it started.
 * @returns The program's exit code (124: time limit, 128+N: signal N; cancelled: 130 by Ctrl-C,
 *   131 by Ctrl-\).
 */
export async function runLoop(
  ctx: Context,
  session: Session,
  spec: RunSpec,
  options: RunLoopOptions,
): Promise<number> {
  const cancel = new AbortController();
  const control = options.interrupts ? new RunControl() : undefined;
  // An interrupt the program has not answered yet (by any output): a second Ctrl-C then
  // cancels the run, as a stuck program would otherwise keep the terminal.
  let unanswered = false;
  let cancelledBy = 130;
  const onSignal = () => {
    if (control && !unanswered && control.interrupt()) unanswered = true;
    else cancel.abort();
  };
  const onQuit = () => {
    cancelledBy = 131;
    cancel.abort();
  };
  Deno.addSignalListener("SIGINT", onSignal);
  if (control) Deno.addSignalListener("SIGQUIT", onQuit);
  try {
    let code = 1;
    const events = session.run({
      ...spec,
      signal: cancel.signal,
      ...(control ? { control } : {}),
    });
    // With --json the program's output becomes text lines; a decoder per stream keeps a
    // character split between two pieces whole.
    const decoders = { stdout: new TextDecoder(), stderr: new TextDecoder() };
    for await (const ev of events) {
      if (ev.kind === "started") options.onStarted?.(ev.interpreter);
      else if (ev.kind === "stdout" || ev.kind === "stderr") {
        unanswered = false;
        if (ctx.globals.json) {
          const text = decoders[ev.kind].decode(ev.data, { stream: true });
          if (text !== "") ctx.emit({ type: ev.kind, text });
        } else await writeAll(ev.kind === "stdout" ? Deno.stdout : Deno.stderr, ev.data);
      } else {
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
  } catch (e) {
    if (cancel.signal.aborted) {
      if (control) ctx.notice("valise: cancelled; the worker was stopped");
      return cancelledBy;
    }
    throw e;
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
    if (control) Deno.removeSignalListener("SIGQUIT", onQuit);
  }
}
