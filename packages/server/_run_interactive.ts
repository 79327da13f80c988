// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * `valise.v1.WorkerService/RunInteractive`: a run whose stdin the client streams as it is typed
 * (or produced), with interrupts, e.g. Python's console for `valise python`. Stdin is
 * backpressured end to end (see {@linkcode StdinFeed}), stdout is flow-controlled by what the
 * client takes, and the wall-clock limit is the interactive one.
 *
 * @module
 */
import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import { type Launcher, RunControl, type SessionLimits } from "@valise/launcher";
import type { RunEvent, RunInput } from "@valise/protocol";
import type { SessionStore } from "@valise/session-store";
import { bindSession } from "./_bind.ts";
import { runSpecOf, toRunEvent } from "./_run_request.ts";
import { StdinFeed } from "./_stdin_feed.ts";
import { ServerError, toConnectError } from "./errors.ts";
import type { Metrics } from "./metrics.ts";
import { type LayerSource, preparedSpec } from "./session_spec.ts";

/**
 * How long the server waits, once the run has exited, for the client to end its request
 * stream. Ending the response first would fail an honest client's last writes ("Premature
 * close"); a client that never ends it is cut off then.
 */
export const AFTER_EXIT_GRACE_MS = 10_000;

/** What the RunInteractive handler needs. */
export interface RunInteractiveContext {
  /** The session store. */
  readonly store: SessionStore;
  /** The launcher that runs the program. */
  readonly launcher: Launcher;
  /** The server's worker limits, which session overrides may only lower. */
  readonly limits: SessionLimits;
  /** Counters for `/metrics`. */
  readonly metrics?: Metrics | undefined;
  /**
   * The server's pip layers, applied before the program starts.
   * @default {undefined} none
   */
  readonly pip?: LayerSource | undefined;
}

/** The RunInteractive method of `valise.v1.WorkerService`. */
export type RunInteractiveHandler = (
  requests: AsyncIterable<RunInput>,
  call: HandlerContext,
) => AsyncGenerator<RunEvent, void, undefined>;

function invalid(message: string): ServerError {
  return new ServerError("INVALID_RUN_REQUEST", message);
}

/** The next message; one over the method's cap is refused with what to do about it. */
async function nextInput(it: AsyncIterator<RunInput>): Promise<IteratorResult<RunInput>> {
  try {
    return await it.next();
  } catch (e) {
    if (e instanceof ConnectError && e.code === Code.ResourceExhausted) {
      throw new ServerError(
        "RUN_MESSAGE_TOO_LARGE",
        `Cannot read a RunInteractive message: ${e.rawMessage}; send stdin in smaller ` +
          "pieces (the Valise client sends 64 KiB each)",
        { cause: e },
      );
    }
    throw e;
  }
}

/**
 * Reads the client's messages after `start` until it ends its stream: stdin into the feed (one
 * message at a time, as the program takes them), interrupts to the run, the end of stdin.
 */
async function readInputs(
  it: AsyncIterator<RunInput>,
  feed: StdinFeed,
  control: RunControl,
  run: { exited: boolean },
): Promise<void> {
  let closed = false;
  while (true) {
    const r = await nextInput(it);
    if (r.done) {
      feed.end();
      return;
    }
    const m = r.value.input;
    switch (m.case) {
      case "stdin":
        // Once the run is over the client may still be sending: that is dropped.
        if (closed && !run.exited) {
          throw invalid("Cannot write to stdin: the client closed it (close_stdin) before");
        }
        await feed.put(m.value);
        break;
      case "closeStdin":
        closed = true;
        feed.end();
        break;
      case "interrupt":
        control.interrupt();
        break;
      case "start":
        throw invalid("Cannot run: `start` may only be the first message of RunInteractive");
      default:
        throw invalid("Cannot read a RunInteractive message: it sets none of its fields");
    }
  }
}

/**
 * Creates the `WorkerService/RunInteractive` handler: binds the session from the `start`
 * message, runs its target (or Python's console, with `repl`) with the session's interactive
 * time limit, feeds it the client's stdin as the program reads it, and streams its events.
 * Cancelling the call kills the worker.
 *
 * @param ctx The session store, the launcher and the limits.
 * @returns The handler.
 */
export function createRunInteractiveHandler(ctx: RunInteractiveContext): RunInteractiveHandler {
  return async function* runInteractive(requests, call) {
    const it = requests[Symbol.asyncIterator]();
    const abort = new AbortController();
    const onAbort = () => abort.abort(call.signal.reason);
    call.signal.addEventListener("abort", onAbort, { once: true });
    const feed = new StdinFeed();
    let release: (() => void) | undefined;
    const started = performance.now();
    let outcome: "ok" | "error" | "timeout" | "cancelled" = "error";
    let inputFailure: { error: unknown } | undefined;
    let reading: Promise<void> | undefined;
    const run = { exited: false };
    try {
      const first = await nextInput(it);
      if (first.done || first.value.input.case !== "start") {
        throw invalid("Cannot run: the first message of RunInteractive must be `start`");
      }
      const req = first.value.input.value;
      const session = await bindSession(ctx.store, req);
      release = session.hold();
      const spec = runSpecOf(req);
      const control = new RunControl();
      // The start message's own stdin comes first; nothing else is read before it is taken.
      reading = feed.put(req.stdin).then(() => readInputs(it, feed, control, run)).catch((e) => {
        // A cancelled call ends the request stream with an error: not the client's fault.
        if (!call.signal.aborted) inputFailure = { error: e };
        // Killed before its stdin ends: a program reading to the end must not finish on a
        // stream that failed.
        abort.abort();
        feed.close();
      });
      const prepared = await preparedSpec(session, ctx.limits, ctx.pip);
      const held = release;
      release = () => (prepared.release(), held());
      const events = ctx.launcher.run(prepared.spec, {
        ...spec,
        stdin: feed,
        streamStdout: true,
        interactive: true,
        control,
      }, abort.signal);
      for await (const ev of events) {
        if (ev.kind === "exited") {
          run.exited = true;
          feed.close();
          outcome = ev.timedOut ? "timeout" : abort.signal.aborted ? "cancelled" : "ok";
        }
        yield toRunEvent(ev);
      }
      run.exited = true;
      feed.close();
      await endOfRequests(reading);
      if (inputFailure) {
        outcome = "error";
        throw inputFailure.error;
      }
    } catch (e) {
      // A bad message kills the run: what it was is the failure, not the cancelled run.
      throw toConnectError(inputFailure ? inputFailure.error : e, {
        badRequest: "INVALID_RUN_REQUEST",
      });
    } finally {
      feed.close();
      call.signal.removeEventListener("abort", onAbort);
      abort.abort();
      release?.();
      if (call.signal.aborted && outcome === "error") outcome = "cancelled";
      ctx.metrics?.run(outcome, (performance.now() - started) / 1000);
      // A reader still waiting for a client that never ended its stream stops with the call.
      if (reading) it.return?.()?.catch(() => {});
    }
  };
}

/** Waits for the client to end its request stream, at most {@linkcode AFTER_EXIT_GRACE_MS}. */
async function endOfRequests(reading: Promise<void>): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await Promise.race([
      reading,
      new Promise<void>((resolve) => timer = setTimeout(resolve, AFTER_EXIT_GRACE_MS)),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
