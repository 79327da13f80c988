// Copyright 2026 the Valise authors. Apache-2.0 license.
import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { type AdminService, ListSessionsResponseSchema } from "@valise/protocol";
import type { Launcher } from "@valise/launcher";
import type { SessionStore } from "@valise/session-store";
import { sessionStatuses, userStatuses } from "./server_status.ts";

/** What the admin service needs. */
export interface AdminServiceContext {
  /** The session store. */
  readonly store: SessionStore;
  /** The launcher (for the running workers of each session). */
  readonly launcher: Launcher;
}

/**
 * `valise.v1.AdminService`: what operators ask the server (the sessions, per user, with their
 * bytes, last activity and running workers). Only requests with an admin token reach it (see
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
  };
}
