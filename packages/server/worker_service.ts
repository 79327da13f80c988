// Copyright 2026 the Valise authors. Apache-2.0 license.
import type { ServiceImpl } from "@connectrpc/connect";
import type { Launcher, SessionLimits } from "@valise/launcher";
import type { WorkerService } from "@valise/protocol";
import type { SessionStore } from "@valise/session-store";
import { toConnectError } from "./errors.ts";
import type { Metrics } from "./metrics.ts";
import { bindSession } from "./_bind.ts";
import { type LayerSource, preparedSpec } from "./session_spec.ts";
import { createApplyHandler } from "./_apply_service.ts";
import type { RemoteLanes } from "./_apply_parallel.ts";
import { createRunInteractiveHandler } from "./_run_interactive.ts";
import { runSpecOf, toRunEvent } from "./_run_request.ts";

/**
 * `valise.v1.WorkerService`: runs Python in a session — its working directory, interpreter,
 * `sys.path` and worker environment — streaming output as it is produced (`Run`, and
 * `RunInteractive` with stdin streamed from the client), and applies Python functions to Arrow
 * record batches there (`Apply`, see `apply_service.ts`). Cancelling the call kills the worker.
 *
 * @param ctx The session store, the launcher, the limits, the largest message (Apply's input
 * messages and output batches), Apply's most workers per call and, in a cluster, its workers on
 * other nodes, and the server's pip layers (applied before each run).
 * @returns The service implementation.
 */
export function createWorkerService(
  ctx: {
    readonly store: SessionStore;
    readonly launcher: Launcher;
    readonly limits: SessionLimits;
    readonly metrics?: Metrics;
    readonly maxMessageBytes?: number;
    readonly maxParallelism?: number | undefined;
    readonly remote?: RemoteLanes | undefined;
    readonly log?: ((line: string) => void) | undefined;
    readonly pip?: LayerSource | undefined;
  },
): ServiceImpl<typeof WorkerService> {
  const { store, launcher } = ctx;
  return {
    apply: createApplyHandler(ctx),
    runInteractive: createRunInteractiveHandler(ctx),
    async *run(req, call) {
      let done: (() => void) | undefined;
      const start = performance.now();
      let outcome: "ok" | "error" | "timeout" | "cancelled" = "error";
      try {
        const session = await bindSession(store, req);
        done = session.hold();
        const spec = { ...runSpecOf(req), stdin: req.stdin };
        const prepared = await preparedSpec(session, ctx.limits, ctx.pip);
        const held = done;
        done = () => (prepared.release(), held());
        for await (const ev of launcher.run(prepared.spec, spec, call.signal)) {
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
