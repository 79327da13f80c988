// Copyright 2026 the Valise authors. Apache-2.0 license.
import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  ListArtifactsResponseSchema,
  RemoveArtifactsResponseSchema,
  type SessionArtifact,
  SessionArtifactSchema,
  type SessionService,
} from "@valise/protocol";
import { type ArtifactRecord, SessionError, type SessionStore } from "@valise/session-store";
import { toConnectError } from "./errors.ts";
import { findSession } from "./_bind.ts";

/** What the session service needs. */
export interface SessionServiceContext {
  /** The session store to serve. */
  readonly store: SessionStore;
}

/**
 * `valise.v1.SessionService`: a session's artifacts, listed (name, kind, size, sha256, alias,
 * view, tree) and removed. Neither call creates a session. A removal takes effect at once for
 * listings, `ArtifactStatus` and quotas; the workers' directory keeps the removed artifacts
 * until the runs in progress at that moment have ended (see `docs/operations.md`).
 *
 * @param ctx The session store to serve.
 * @returns The service implementation.
 */
export function createSessionService(
  ctx: SessionServiceContext,
): ServiceImpl<typeof SessionService> {
  const { store } = ctx;
  return {
    async listArtifacts(req) {
      try {
        const session = await findSession(store, req);
        const records = (session?.artifacts() ?? []).sort((a, b) =>
          a.name < b.name ? -1 : a.name > b.name ? 1 : 0
        );
        return create(ListArtifactsResponseSchema, {
          sessionId: req.sessionId,
          serverSideSessionId: session?.serverSideSessionId ?? "",
          artifacts: records.map(toSessionArtifact),
          totalBytes: BigInt(session?.bytes() ?? 0),
        });
      } catch (e) {
        throw toConnectError(e);
      }
    },
    async removeArtifacts(req) {
      try {
        const session = await findSession(store, req);
        if (!session) {
          throw new SessionError(
            "ARTIFACT_NOT_FOUND",
            `Cannot remove ${req.names.map((n) => JSON.stringify(n)).join(", ")}: session ` +
              `${req.sessionId} does not exist on this server (it holds no artifacts).`,
          );
        }
        const r = await session.remove(req.names);
        // The cache bound holds again at once: what no session uses any more may be evicted.
        await store.collect();
        return create(RemoveArtifactsResponseSchema, {
          sessionId: req.sessionId,
          serverSideSessionId: session.serverSideSessionId,
          removed: r.removed.map(toSessionArtifact),
          freedBytes: BigInt(r.freedBytes),
          inProgress: r.inProgress,
        });
      } catch (e) {
        throw toConnectError(e);
      }
    },
  };
}

function toSessionArtifact(a: ArtifactRecord): SessionArtifact {
  return create(SessionArtifactSchema, {
    name: a.name,
    kind: a.kind,
    size: BigInt(a.size),
    sha256: a.sha256,
    alias: a.alias ?? "",
    view: a.view ?? "",
    treeBytes: BigInt(a.treeBytes ?? 0),
    treeEntries: BigInt(a.treeEntries ?? 0),
    warnings: a.warnings ?? [],
    addedAtMs: BigInt(a.addedAt),
  });
}
