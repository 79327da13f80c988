// Copyright 2026 the Valise authors. Apache-2.0 license.
// WorkerService/Run: the request from a RunSpec, the events as they stream, their collection.
import { create } from "@bufbuild/protobuf";
import { type RunRequest, RunRequestSchema, WorkerService } from "@valise/protocol";
import { ValiseClientError } from "./error.ts";
import type { RunEvent, RunResult, RunSpec } from "./run.ts";
import type { SessionCore } from "./_core.ts";
import { serverStream } from "./_server_stream.ts";
import { decodeAll } from "./_decode.ts";
import { fromWire, isPrematureClose, RUN_SEEN } from "./_run_events.ts";
import { interactiveEvents, streamedStdin } from "./_run_interactive.ts";

/**
 * Runs Python in the session, yielding its events. Retried when its node fails while none of
 * its output was delivered: a `started` alone does not stop a retry (the program died with its
 * node; the next node starts it again and a second `started` follows), its first stdout, stderr
 * or exit does. A streamed stdin or a control makes it a RunInteractive call.
 *
 * @param core The session.
 * @param spec The target and options.
 * @returns The events, ending with `exited`.
 * @throws {TypeError} For a bad spec (before anything is sent).
 */
export function runEvents(
  core: SessionCore,
  spec: RunSpec,
): AsyncGenerator<RunEvent, void, undefined> {
  const stream = streamedStdin(spec.stdin);
  if (stream !== undefined || spec.control !== undefined) {
    return interactiveEvents(core, spec, runRequest(core, spec, stream === undefined), stream);
  }
  // Checked now, before anything is sent; built again per attempt, with the server-side id
  // learned by then.
  runRequest(core, spec, true);
  return core.retry.stream("Run", async function* (call, node) {
    let exited = false;
    try {
      const req = runRequest(core, spec, true);
      // Past Connect's transport: a warm run is a few milliseconds (see _server_stream.ts).
      for await (
        const wire of serverStream(node.direct, WorkerService.method.run, req, spec.signal)
      ) {
        const ev = fromWire(wire);
        if (ev?.kind === "exited") exited = true;
        if (ev === undefined) continue;
        if (ev.kind !== "started") call.seen = true;
        yield ev;
      }
    } catch (e) {
      if (exited && isPrematureClose(e)) return;
      throw ValiseClientError.from(e);
    }
  }, { signal: spec.signal, seenWhat: RUN_SEEN });
}

/**
 * Gathers a run's events into its output and outcome.
 *
 * @param events The run's events.
 * @returns Output (decoded), exit code, signal, limits hit, interpreter, duration.
 */
export async function collectRun(events: AsyncIterable<RunEvent>): Promise<RunResult> {
  const out: Uint8Array[] = [];
  const err: Uint8Array[] = [];
  const result: RunResult = {
    stdout: "",
    stderr: "",
    exitCode: -1,
    signal: "",
    timedOut: false,
    outputTruncated: false,
    interpreter: "",
    durationMs: 0,
  };
  for await (const ev of events) {
    if (ev.kind === "stdout") out.push(ev.data);
    else if (ev.kind === "stderr") err.push(ev.data);
    else if (ev.kind === "started") result.interpreter = ev.interpreter;
    else {
      result.exitCode = ev.exitCode;
      result.signal = ev.signal;
      result.timedOut = ev.timedOut;
      result.outputTruncated = ev.outputTruncated;
      result.durationMs = ev.durationMs;
    }
  }
  result.stdout = decodeAll(out);
  result.stderr = decodeAll(err);
  return result;
}

function runRequest(core: SessionCore, spec: RunSpec, withStdin: boolean): RunRequest {
  const s = spec as unknown as Record<string, unknown>;
  const targets = (["code", "module", "script"] as const).filter((k) => s[k] !== undefined);
  const repl = s.repl ?? false;
  if (typeof repl !== "boolean") throw new TypeError("Cannot run: repl must be a boolean");
  if (targets.length > 1 || (targets.length === 0 && !repl)) {
    throw new TypeError(
      `Cannot run: give exactly one of code, module or script, or repl: true (got ${
        targets.join(", ") || "none"
      })`,
    );
  }
  const k = targets[0];
  const value = k === undefined ? undefined : s[k];
  if (k !== undefined && typeof value !== "string") {
    throw new TypeError(`Cannot run: ${k} must be a string`);
  }
  const timeoutMs = spec.timeoutMs ?? 0;
  if (!Number.isInteger(timeoutMs) || timeoutMs < 0 || timeoutMs > 0xffffffff) {
    throw new RangeError(`Cannot run: timeoutMs ${timeoutMs} is not a non-negative integer`);
  }
  const stdin = !withStdin
    ? new Uint8Array(0)
    : typeof spec.stdin === "string"
    ? new TextEncoder().encode(spec.stdin)
    : spec.stdin instanceof Uint8Array
    ? spec.stdin
    : new Uint8Array(0);
  return create(RunRequestSchema, {
    sessionId: core.sessionId,
    userContext: core.userContext,
    ...core.observed(),
    ...(k === undefined ? {} : { target: { case: k, value: value as string } }),
    args: spec.args ?? [],
    stdin,
    timeoutMs,
    repl,
  });
}
