// Copyright 2026 the Valise authors. Apache-2.0 license.
import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import type { Launcher, RunSpec, SessionLimits } from "@valise/launcher";
import { type RunEvent, RunEventSchema, type WorkerService } from "@valise/protocol";
import type { SessionStore } from "@valise/session-store";
import { toConnectError } from "./errors.ts";
import type { Metrics } from "./metrics.ts";
import { bindSession } from "./_bind.ts";
import { sessionSpec } from "./session_spec.ts";
import { createApplyHandler } from "./_apply_service.ts";

/**
 * `valise.v1.WorkerService`: runs Python in a session — its working directory, interpreter,
 * `sys.path` and worker environment — streaming output as it is produced (`Run`), and applies
 * Python functions to Arrow record batches there (`Apply`, see `apply_service.ts`).
 * Cancelling the call kills the worker.
 *
 * @param ctx The session store, the launcher, the limits, and the largest message (Apply's input
 * messages and output batches).
 * @returns The service implementation.
 */
export function createWorkerService(
  ctx: {
    readonly store: SessionStore;
    readonly launcher: Launcher;
    readonly limits: SessionLimits;
    readonly metrics?: Metrics;
    readonly maxMessageBytes?: number;
  },
): ServiceImpl<typeof WorkerService> {
  const { store, launcher } = ctx;
  return {
    apply: createApplyHandler(ctx),
    async *run(req, call) {
      let done: (() => void) | undefined;
      const start = performance.now();
      let outcome: "ok" | "error" | "timeout" | "cancelled" = "error";
      try {
        const session = await bindSession(store, req);
        done = session.hold();
        const t = req.target;
        if (t.case === undefined) {
          throw new TypeError("Cannot run: the request names no code, module or script");
        }
        const rest = { args: req.args, stdin: req.stdin, timeoutMs: req.timeoutMs };
        const spec: RunSpec = t.case === "code"
          ? { code: t.value, ...rest }
          : t.case === "module"
          ? { module: t.value, ...rest }
          : { script: t.value, ...rest };
        for await (const ev of launcher.run(sessionSpec(session, ctx.limits), spec, call.signal)) {
          if (ev.kind === "exited") {
            outcome = ev.timedOut ? "timeout" : call.signal.aborted ? "cancelled" : "ok";
          }
          yield toRunEvent(ev);
        }
      } catch (e) {
        throw toConnectError(e, { badRequest: "INVALID_RUN_REQUEST" });
      } finally {
        done?.();
        if (call.signal.aborted && outcome === "error") outcome = "cancelled";
        ctx.metrics?.run(outcome, (performance.now() - start) / 1000);
      }
    },
  };
}

function toRunEvent(ev: import("@valise/launcher").RunEvent): RunEvent {
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
