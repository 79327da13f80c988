// Copyright 2026 the Valise authors. Apache-2.0 license.
// WorkerService/Run: the request from a RunSpec, the events as they stream, their collection.
import { create } from "@bufbuild/protobuf";
import { type RunRequest, RunRequestSchema } from "@valise/protocol";
import { ValiseClientError } from "./error.ts";
import type { RunEvent, RunResult, RunSpec } from "./run.ts";
import { callOptions, type SessionCore } from "./_core.ts";
import { decodeAll } from "./_decode.ts";

/**
 * Runs Python in the session, yielding its events; retried (UNAVAILABLE) only before the first.
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
  const req = runRequest(core, spec);
  return core.retry.stream(async function* (call) {
    let exited = false;
    try {
      for await (const ev of core.workers.run(req, callOptions(spec.signal))) {
        call.seen = true;
        const e = ev.event;
        switch (e.case) {
          case "started":
            yield {
              kind: "started",
              pid: e.value.pid,
              interpreter: e.value.interpreter,
              cwd: e.value.cwd,
            };
            break;
          case "stdout":
          case "stderr":
            yield { kind: e.case, data: e.value };
            break;
          case "exited":
            exited = true;
            yield {
              kind: "exited",
              exitCode: e.value.exitCode,
              signal: e.value.signal,
              durationMs: Number(e.value.durationMs),
              timedOut: e.value.timedOut,
              outputTruncated: e.value.outputTruncated,
            };
            break;
        }
      }
    } catch (e) {
      // The run is over once `exited` arrived: Deno's node:http2 can still report the stream
      // closing under it as "Premature close", which is not the run's failure.
      if (exited && /premature close/i.test(String((e as Error)?.message ?? e))) return;
      throw ValiseClientError.from(e);
    }
  });
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

function runRequest(core: SessionCore, spec: RunSpec): RunRequest {
  const targets = (["code", "module", "script"] as const).filter((k) =>
    (spec as unknown as Record<string, unknown>)[k] !== undefined
  );
  if (targets.length !== 1) {
    throw new TypeError(
      `Cannot run: give exactly one of code, module or script (got ${
        targets.join(", ") || "none"
      })`,
    );
  }
  const k = targets[0]!;
  const value = (spec as unknown as Record<string, unknown>)[k];
  if (typeof value !== "string") throw new TypeError(`Cannot run: ${k} must be a string`);
  const timeoutMs = spec.timeoutMs ?? 0;
  if (!Number.isInteger(timeoutMs) || timeoutMs < 0 || timeoutMs > 0xffffffff) {
    throw new RangeError(`Cannot run: timeoutMs ${timeoutMs} is not a non-negative integer`);
  }
  const stdin = typeof spec.stdin === "string"
    ? new TextEncoder().encode(spec.stdin)
    : spec.stdin ?? new Uint8Array(0);
  return create(RunRequestSchema, {
    sessionId: core.sessionId,
    userContext: core.userContext,
    ...core.observed(),
    target: { case: k, value },
    args: spec.args ?? [],
    stdin,
    timeoutMs,
  });
}
