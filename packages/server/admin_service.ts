// Copyright 2026 the Valise authors. Apache-2.0 license.
import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  type AdminService,
  ListNodesResponseSchema,
  ListSessionsResponseSchema,
} from "@valise/protocol";
import type { Launcher } from "@valise/launcher";
import type { SessionStore } from "@valise/session-store";
import { sessionStatuses, userStatuses } from "./server_status.ts";
import type { ClusterView } from "./cluster/membership.ts";

/** What the admin service needs. */
export interface AdminServiceContext {
  /** The session store. */
  readonly store: SessionStore;
  /** The launcher (for the running workers of each session). */
  readonly launcher: Launcher;
  /** The cluster's nodes as this node sees them, when it is a cluster's node. */
  readonly cluster?: (() => ClusterView) | undefined;
}

/**
 * `valise.v1.AdminService`: what operators ask the server (the sessions, per user, with their
 * bytes, last activity and running workers; the cluster's nodes). Only requests with an admin token reach it (see
 * {@linkcode adminGate}); without admin tokens the server refuses every call to it.
 *
 * @param ctx The store and the launcher.
 * @returns The service implementation.
 */
export function createAdminService(ctx: AdminServiceContext): ServiceImpl<typeof AdminService> {
  return {
    listSessions(req) {
      const sessions = sessionStatuses(ctx, req.userId);
      return create(ListSessionsResponseSchema, {
        sessions: sessions.map((s) => ({
          userId: s.userId,
          sessionId: s.sessionId,
          serverSideSessionId: s.serverSideSessionId,
          artifacts: s.artifacts.length,
          bytes: BigInt(s.bytes),
          createdAtMs: BigInt(s.createdAt),
          lastActiveMs: BigInt(s.lastActive),
          runningWorkers: s.running,
          interpreter: s.interpreter ?? "",
        })),
        users: userStatuses(sessions).map((u) => ({
          userId: u.userId,
          sessions: u.sessions,
          bytes: BigInt(u.bytes),
          runningWorkers: u.running,
        })),
      });
    },
    listNodes() {
      const view = ctx.cluster?.();
      if (!view) return create(ListNodesResponseSchema, { clustered: false });
      return create(ListNodesResponseSchema, {
        clustered: true,
        nodeId: view.nodeId,
        nodes: view.nodes.map((n) => ({
          nodeId: n.nodeId,
          live: n.live,
          self: n.self,
          heartbeatAgeMs: BigInt(Math.round(n.heartbeatAgeMs)),
          ttlMs: BigInt(n.ttlMs),
          sessions: BigInt(n.record.sessions),
          blobBytes: BigInt(n.record.blobBytes),
          treeBytes: BigInt(n.record.treeBytes),
          inFlight: BigInt(n.record.inFlight),
          version: n.record.version,
          address: n.record.address ?? "",
          host: n.record.host,
          pid: n.record.pid,
          startedAtMs: BigInt(n.record.startedAt),
        })),
        refusedRecords: BigInt(view.stats.refusedRecords),
        idConflicts: BigInt(view.stats.idConflicts),
      });
    },
  };
}
