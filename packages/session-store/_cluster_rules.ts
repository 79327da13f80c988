// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The rules a node applies to the cluster's records: its quotas over every node's sessions, and
 * how a use is written into a record. Pure functions of what the index and this node hold.
 *
 * @module
 */
import { SessionError } from "./errors.ts";
import type { RecordIndex, RecordSummary, SharedSession } from "./registry.ts";
import type { Quotas, Session } from "./session.ts";

/**
 * Refuses a new session when the cluster holds as many as a user, or all users, may have.
 *
 * @throws {SessionError} `QUOTA_EXCEEDED` (`SESSIONS`, `USER_SESSIONS`).
 */
export function checkSharedQuota(records: RecordIndex, quotas: Quotas, userId: string): void {
  const all = records.count();
  if (all >= quotas.maxSessions) {
    throw new SessionError(
      "QUOTA_EXCEEDED",
      `Cannot create a session: the cluster holds ${all} sessions, the most it keeps is ` +
        `${quotas.maxSessions}. Release sessions you no longer use.`,
      { reason: "SESSIONS" },
    );
  }
  const mine = records.count(userId);
  if (mine >= quotas.maxSessionsPerUser) {
    throw new SessionError(
      "QUOTA_EXCEEDED",
      `Cannot create a session for user ${JSON.stringify(userId)}: they hold ${mine} ` +
        `sessions in the cluster, the most one user may hold is ${quotas.maxSessionsPerUser}. ` +
        "Release sessions you no longer use (spark.stop()).",
      { reason: "USER_SESSIONS" },
    );
  }
}

/**
 * Bytes a user's sessions hold over the cluster: every open record of theirs but `except`, one
 * this node holds a copy of counted as the larger of the two, none as more than `cap` (one
 * session's quota: no record, whoever wrote it, takes more of a user's quota than a session
 * could); then this node's sessions of theirs the records do not name.
 *
 * @param records The user's open records.
 * @param local This node's sessions of the user (without `except`).
 */
export function clusterUserBytes(
  records: readonly RecordSummary[],
  local: readonly Session[],
  options: { except: string | undefined; cap: number },
): number {
  let n = 0;
  const copies = new Map(local.map((s) => [s.sessionId, s]));
  for (const r of records) {
    if (r.sessionId === options.except) continue;
    const recorded = Math.min(r.bytes, options.cap);
    const s = copies.get(r.sessionId);
    copies.delete(r.sessionId);
    const same = s !== undefined && s.serverSideSessionId === r.serverSideSessionId;
    n += same ? Math.max(s.bytes(), recorded) : recorded;
  }
  for (const s of copies.values()) n += s.bytes();
  return n;
}

/**
 * The change that records a use at `at` in the incarnation `seen`: the record as it is when it
 * was closed or re-created meanwhile (so a close folded in by a repair is written again, never
 * undone), `seen` again if it vanished.
 */
export function recordingUse(
  seen: SharedSession,
  at: number,
): (cur: SharedSession | undefined) => SharedSession {
  return (cur) => {
    if (!cur) return { ...seen, usedAt: at };
    if (cur.closed || cur.serverSideSessionId !== seen.serverSideSessionId) return cur;
    return { ...cur, usedAt: Math.max(cur.usedAt ?? 0, at) };
  };
}
