// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * What operators see: the sessions (per user, bytes, last activity, running workers), their
 * artifacts, the shared trees and the blob cache with sizes and hit counts, and the recent errors.
 * The admin RPC answers from the cheap part ({@linkcode sessionStatuses}); the status page from
 * all of it ({@linkcode collectStatus}).
 *
 * @module
 */
import type { Launcher } from "@valise/launcher";
import type { SessionStore } from "@valise/session-store";
import type { RecentError, RecentErrors } from "./recent_errors.ts";
import type { ClusterView } from "./cluster/membership.ts";

/** One artifact of a session. */
export interface ArtifactStatus {
  /** Its name, as the client sent it. */
  readonly name: string;
  /** Its kind (`pyfiles`, `archives`, …). */
  readonly kind: string;
  /** Bytes. */
  readonly size: number;
  /** sha256, lowercase hex. */
  readonly sha256: string;
  /** How the workers' directory shows it, if it does. */
  readonly view: string | undefined;
  /** The shared tree it unpacked to, if any. */
  readonly tree: string | undefined;
}

/** One live session. */
export interface SessionStatus {
  /** The client's user id. */
  readonly userId: string;
  /** The client's session id. */
  readonly sessionId: string;
  /** The server's id for it. */
  readonly serverSideSessionId: string;
  /** Its artifacts. */
  readonly artifacts: readonly ArtifactStatus[];
  /** Bytes of its artifacts and unpacked trees, as its quotas count them. */
  readonly bytes: number;
  /** When it was created (ms since the epoch). */
  readonly createdAt: number;
  /** When it was last used (ms since the epoch). */
  readonly lastActive: number;
  /** Runs executing now. */
  readonly running: number;
  /** The interpreter it chose, if any. */
  readonly interpreter: string | undefined;
}

/** The sessions of one user, together. */
export interface UserStatus {
  /** The user id. */
  readonly userId: string;
  /** Live sessions. */
  readonly sessions: number;
  /** Bytes of their artifacts and unpacked trees. */
  readonly bytes: number;
  /** Runs executing now. */
  readonly running: number;
}

/** One shared tree (an unpacked archive). */
export interface TreeStatus {
  /** `<sha256>-<unpack options>`. */
  readonly key: string;
  /** Bytes of its files. */
  readonly bytes: number;
  /** Its entries. */
  readonly entries: number;
  /** Live sessions whose artifacts use it; 0: kept as cache. */
  readonly sessions: number;
  /** Adds since the start that found it already unpacked. */
  readonly hits: number;
}

/** One stored blob. */
export interface BlobStatus {
  /** sha256, lowercase hex. */
  readonly sha256: string;
  /** Bytes. */
  readonly size: number;
  /** Live sessions whose artifacts are it; 0: kept as cache. */
  readonly sessions: number;
  /** Adds since the start that found it already stored. */
  readonly hits: number;
}

/** Everything the status page shows. */
export interface ServerStatus {
  /** When it was collected (ms since the epoch). */
  readonly at: number;
  /** Whether workers run in a bubblewrap sandbox. */
  readonly sandboxed: boolean;
  /** Runs executing, in all. */
  readonly running: number;
  /** Runs waiting for a slot. */
  readonly queued: number;
  /** Warm fork servers. */
  readonly forkServers: number;
  /** Sessions, most recently used first. */
  readonly sessions: readonly SessionStatus[];
  /** Users, by id. */
  readonly users: readonly UserStatus[];
  /** Shared trees, largest first. */
  readonly trees: readonly TreeStatus[];
  /** Stored blobs, most hit first, then largest. */
  readonly blobs: readonly BlobStatus[];
  /** The cache: its budget, and the bytes of blobs and trees no session uses. */
  readonly cache: { readonly budgetBytes: number; readonly unreferencedBytes: number };
  /** Recent failed calls, newest first. */
  readonly errors: readonly RecentError[];
  /** Failed calls since the start. */
  readonly errorsTotal: number;
  /**
   * Warnings of the environment checks recorded with sessions' artifacts (at most 50).
   * @default {[]}
   */
  readonly envWarnings?: readonly EnvWarning[];
  /** The cluster's nodes as this node sees them, when it is a cluster's node. */
  readonly cluster?: ClusterView | undefined;
}

/** A warning the environment checks recorded with an artifact. */
export interface EnvWarning {
  /** The session's id. */
  readonly sessionId: string;
  /** The artifact's name. */
  readonly artifact: string;
  /** The warning. */
  readonly warning: string;
}

/** What the status is collected from. */
export interface StatusSources {
  /** The session store. */
  readonly store: SessionStore;
  /** The launcher. */
  readonly launcher: Launcher;
  /** The recent errors. */
  readonly recentErrors: RecentErrors;
  /** The cluster's nodes, when the server is a cluster's node. */
  readonly cluster?: (() => ClusterView) | undefined;
}

/**
 * The live sessions, most recently used first, without walking the disk.
 *
 * @param sources The store and the launcher.
 * @param userId Only this user's, when given.
 * @returns The sessions.
 */
export function sessionStatuses(
  sources: Pick<StatusSources, "store" | "launcher">,
  userId?: string,
): SessionStatus[] {
  return sources.store.sessions()
    .filter((s) => userId === undefined || s.userId === userId)
    .map((s) => ({
      userId: s.userId,
      sessionId: s.sessionId,
      serverSideSessionId: s.serverSideSessionId,
      artifacts: s.artifacts().map((a) => ({
        name: a.name,
        kind: a.kind,
        size: a.size,
        sha256: a.sha256,
        view: a.view,
        tree: a.tree,
      })),
      bytes: s.bytes(),
      createdAt: s.createdAt,
      lastActive: s.lastAccess,
      running: sources.launcher.runningOf(`${s.userId}\u0000${s.sessionId}`),
      interpreter: s.interpreter() || undefined,
    }))
    .sort((a, b) => b.lastActive - a.lastActive);
}

/**
 * The sessions of each user, summed, by user id.
 *
 * @param sessions The sessions.
 * @returns One entry per user.
 */
export function userStatuses(sessions: readonly SessionStatus[]): UserStatus[] {
  const by = new Map<string, { sessions: number; bytes: number; running: number }>();
  for (const s of sessions) {
    const u = by.get(s.userId) ?? { sessions: 0, bytes: 0, running: 0 };
    u.sessions++;
    u.bytes += s.bytes;
    u.running += s.running;
    by.set(s.userId, u);
  }
  return [...by].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([userId, u]) => ({ userId, ...u }));
}

/**
 * Collects everything the status page shows; reads the sizes of stored blobs and trees.
 *
 * @param sources The store, the launcher and the recent errors.
 * @returns The status.
 */
export async function collectStatus(sources: StatusSources): Promise<ServerStatus> {
  const { store, launcher } = sources;
  const sessions = sessionStatuses(sources);
  const blobUsers = new Map<string, number>();
  const treeUsers = new Map<string, number>();
  for (const s of sessions) {
    for (const d of new Set(s.artifacts.map((a) => a.sha256))) {
      blobUsers.set(d, (blobUsers.get(d) ?? 0) + 1);
    }
    for (const t of new Set(s.artifacts.flatMap((a) => (a.tree ? [a.tree] : [])))) {
      treeUsers.set(t, (treeUsers.get(t) ?? 0) + 1);
    }
  }
  let unreferenced = 0;
  const blobs: BlobStatus[] = [];
  for (const d of await store.blobs.list()) {
    const size = (await Deno.stat(store.blobs.path(d)).catch(() => ({ size: 0 }))).size;
    const users = blobUsers.get(d) ?? 0;
    if (users === 0) unreferenced += size;
    blobs.push({ sha256: d, size, sessions: users, hits: store.hits(`b:${d}`) });
  }
  const trees: TreeStatus[] = [];
  for (const k of await store.trees.list()) {
    const info = await store.trees.info(k).catch(() => ({ bytes: 0, entries: 0 }));
    const users = treeUsers.get(k) ?? 0;
    if (users === 0) unreferenced += info.bytes;
    trees.push({ key: k, ...info, sessions: users, hits: store.hits(`t:${k}`) });
  }
  const stats = launcher.stats();
  return {
    at: Date.now(),
    sandboxed: launcher.sandboxed,
    running: stats.running,
    queued: stats.queued,
    forkServers: stats.forkServers,
    sessions,
    users: userStatuses(sessions),
    trees: trees.sort((a, b) => b.bytes - a.bytes),
    blobs: blobs.sort((a, b) => b.hits - a.hits || b.size - a.size),
    cache: { budgetBytes: store.cacheBytes, unreferencedBytes: unreferenced },
    errors: sources.recentErrors.list().reverse(),
    errorsTotal: sources.recentErrors.total,
    envWarnings: store.sessions().flatMap((s) =>
      s.artifacts().flatMap((a) =>
        (a.warnings ?? []).map((warning) => ({
          sessionId: s.sessionId,
          artifact: a.name,
          warning,
        }))
      )
    ).slice(0, 50),
    ...(sources.cluster ? { cluster: sources.cluster() } : {}),
  };
}
