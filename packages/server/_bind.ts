// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Which session a request names, with Spark's checks: every service binds through here.
 *
 * @module
 */
import type { UserContext } from "@valise/protocol";
import type { Session, SessionStore } from "@valise/session-store";

/** The user id of a request: Spark keys sessions by `user_context.user_id`, `""` when unset. */
export function userIdOf(ctx: UserContext | undefined): string {
  return ctx?.userId ?? "";
}

/** The session fields every Valise and Spark request carries. */
export interface SessionFields {
  /** The client's session id. */
  readonly sessionId: string;
  /** The client's user context. */
  readonly userContext?: UserContext | undefined;
  /** The server-side session id the client saw before, if any. */
  readonly clientObservedServerSideSessionId?: string | undefined;
}

/**
 * Finds or creates the session a request names, with Spark's checks (id format, closed
 * sessions, a changed server-side id).
 *
 * @param store The session store.
 * @param req The request's session fields.
 * @returns The session.
 */
export function bindSession(store: SessionStore, req: SessionFields): Promise<Session> {
  return store.session({
    userId: userIdOf(req.userContext),
    sessionId: req.sessionId,
    clientObservedServerSideSessionId: req.clientObservedServerSideSessionId,
  });
}

/**
 * The session a request names, with the same checks as {@linkcode bindSession}, without
 * creating it.
 *
 * @param store The session store.
 * @param req The request's session fields.
 * @returns The session, or `undefined` when it does not exist.
 */
export function findSession(
  store: SessionStore,
  req: SessionFields,
): Promise<Session | undefined> {
  return store.existing({
    userId: userIdOf(req.userContext),
    sessionId: req.sessionId,
    clientObservedServerSideSessionId: req.clientObservedServerSideSessionId,
  });
}
