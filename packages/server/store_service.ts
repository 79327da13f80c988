// Copyright 2026 the Valise authors. Apache-2.0 license.
import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  AttachArtifactsResponseSchema,
  HasBlobsResponseSchema,
  type StoreService,
} from "@valise/protocol";
import type { SessionStore } from "@valise/session-store";
import { SessionError } from "@valise/session-store";
import { toConnectError } from "./errors.ts";
import { bindSession } from "./spark_service.ts";

const SHA256_HEX = /^[0-9a-f]{64}$/;

/**
 * Valise's content-addressed fast path (`valise.v1.StoreService`): ask which digests the
 * server holds, and add artifacts to a session by digest without sending their bytes.
 *
 * @param ctx The session store to serve.
 * @returns The service implementation.
 */
export function createStoreService(
  ctx: { readonly store: SessionStore },
): ServiceImpl<typeof StoreService> {
  const { store } = ctx;
  return {
    async hasBlobs(req) {
      try {
        const session = await bindSession(store, req);
        const present: string[] = [];
        for (const d of req.sha256) {
          if (SHA256_HEX.test(d) && await store.blobs.has(d)) present.push(d);
        }
        return create(HasBlobsResponseSchema, {
          present,
          serverSideSessionId: session.serverSideSessionId,
        });
      } catch (e) {
        throw toConnectError(e);
      }
    },
    async attachArtifacts(req) {
      try {
        const session = await bindSession(store, req);
        const done = session.hold();
        try {
          const attached: string[] = [];
          for (const a of req.artifacts) {
            if (!SHA256_HEX.test(a.sha256)) {
              throw new SessionError(
                "INVALID_ARTIFACT_NAME",
                `Cannot attach ${a.name}: "${a.sha256}" is not a lowercase sha256 hex digest.`,
              );
            }
            await session.attach(a.name, a.sha256);
            attached.push(a.name);
          }
          return create(AttachArtifactsResponseSchema, {
            sessionId: req.sessionId,
            serverSideSessionId: session.serverSideSessionId,
            attached,
          });
        } finally {
          done();
        }
      } catch (e) {
        throw toConnectError(e);
      }
    },
  };
}
