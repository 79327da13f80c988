// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * What a `RunRequest` asks the launcher for, and what the launcher's events become on the wire:
 * shared by `Run` and `RunInteractive`.
 *
 * @module
 */
import { create } from "@bufbuild/protobuf";
import type { RunEvent as LaunchEvent, RunSpec } from "@valise/launcher";
import { type RunEvent, RunEventSchema, type RunRequest } from "@valise/protocol";
import { ServerError } from "./errors.ts";

/**
 * The launcher's request for a `RunRequest`: its target, arguments, time limit and `repl`.
 *
 * @param req The request.
 * @returns The run, without stdin.
 * @throws {ServerError} `INVALID_RUN_REQUEST` when it names nothing to run and no console.
 */
export function runSpecOf(req: RunRequest): RunSpec {
  const t = req.target;
  const rest = { args: req.args, timeoutMs: req.timeoutMs, ...(req.repl ? { repl: true } : {}) };
  switch (t.case) {
    case "code":
      return { code: t.value, ...rest };
    case "module":
      return { module: t.value, ...rest };
    case "script":
      return { script: t.value, ...rest };
    default:
      if (req.repl) return { ...rest, repl: true };
      throw new ServerError(
        "INVALID_RUN_REQUEST",
        "Cannot run: the request names no code, module or script; set one, or set repl for " +
          "Python's console alone",
      );
  }
}

/**
 * A launcher event as a `valise.v1.RunEvent`.
 *
 * @param ev The launcher's event.
 * @returns The wire event.
 */
export function toRunEvent(ev: LaunchEvent): RunEvent {
  switch (ev.kind) {
    case "started":
      return create(RunEventSchema, {
        event: {
          case: "started",
          value: { pid: ev.pid, interpreter: ev.interpreter, cwd: ev.cwd },
        },
      });
    case "stdout":
    case "stderr":
      return create(RunEventSchema, { event: { case: ev.kind, value: ev.data } });
    case "exited":
      return create(RunEventSchema, {
        event: {
          case: "exited",
          value: {
            exitCode: ev.exitCode,
            signal: ev.signal,
            durationMs: BigInt(Math.round(ev.durationMs)),
            timedOut: ev.timedOut,
            outputTruncated: ev.outputTruncated,
          },
        },
      });
  }
}
