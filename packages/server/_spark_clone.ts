// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * `SparkConnectService/CloneSession` (Spark 4.1+): a new session with the source's artifacts
 * (by reference: the same blobs and trees, nothing copied) and config. Kept apart from
 * `spark_service.ts` so that the handlers of other Spark methods merge without conflict.
 *
 * @module
 */
import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { CloneSessionResponseSchema, type SparkConnectService } from "@valise/protocol";
import type { SessionStore } from "@valise/session-store";
import { userIdOf } from "./_bind.ts";
import { toConnectError } from "./errors.ts";

/**
 * The CloneSession handler.
 *
 * @param store The session store.
 * @param log Where a clone is logged.
 * @returns The handler, to spread into the service implementation.
 */
export function createCloneHandler(
  store: SessionStore,
  log?: (line: string) => void,
): Pick<ServiceImpl<typeof SparkConnectService>, "cloneSession"> {
  return {
    async cloneSession(req) {
      try {
        const { source, clone } = await store.clone(
          {
            userId: userIdOf(req.userContext),
            sessionId: req.sessionId,
            clientObservedServerSideSessionId: req.clientObservedServerSideSessionId,
          },
          req.newSessionId,
        );
        log?.(
          `session ${source.sessionId} cloned to ${clone.sessionId} ` +
            `(${clone.artifacts().length} artifact(s) shared by reference)`,
        );
        return create(CloneSessionResponseSchema, {
          sessionId: req.sessionId,
          serverSideSessionId: source.serverSideSessionId,
          newSessionId: clone.sessionId,
          newServerSideSessionId: clone.serverSideSessionId,
        });
      } catch (e) {
        throw toConnectError(e);
      }
    },
  };
}
