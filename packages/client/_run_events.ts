// Copyright 2026 the Valise authors. Apache-2.0 license.
// A run's events as the wire carries them and as the client yields them, for Run and
// RunInteractive alike.
import type { RunEvent as WireRunEvent } from "@valise/protocol";
import type { RunEvent } from "./run.ts";

/** What a run that is not retried had delivered, for its error. */
export const RUN_SEEN = "the run's output (stdout, stderr or its exit)";

/**
 * Whether a call failed only because its HTTP/2 stream closed under it: once `exited` arrived,
 * Deno's node:http2 can still report that as "Premature close", which is not the run's failure.
 *
 * @param e What the call threw.
 * @returns `true` for that.
 */
export function isPrematureClose(e: unknown): boolean {
  return /premature close/i.test(String((e as Error)?.message ?? e));
}

/**
 * A wire event as the client's {@linkcode RunEvent}.
 *
 * @param wire The event received.
 * @returns The event, or `undefined` for one this client does not know.
 */
export function fromWire(wire: WireRunEvent): RunEvent | undefined {
  const e = wire.event;
  switch (e.case) {
    case "started":
      return {
        kind: "started",
        pid: e.value.pid,
        interpreter: e.value.interpreter,
        cwd: e.value.cwd,
      };
    case "stdout":
    case "stderr":
      return { kind: e.case, data: e.value };
    case "exited":
      return {
        kind: "exited",
        exitCode: e.value.exitCode,
        signal: e.value.signal,
        durationMs: Number(e.value.durationMs),
        timedOut: e.value.timedOut,
        outputTruncated: e.value.outputTruncated,
      };
    default:
      return undefined;
  }
}
