// Copyright 2026 the Valise authors. Apache-2.0 license.
// SessionService: the session's artifacts, listed and removed.
import type { SessionArtifact } from "@valise/protocol";
import type { ArtifactEntry, RemovedArtifacts } from "./artifacts.ts";
import type { SessionCore } from "./_core.ts";

/**
 * Lists the session's artifacts, by name. An unknown session has none (and is not created).
 *
 * @param core The session.
 * @returns The artifacts.
 */
export async function listArtifacts(core: SessionCore): Promise<ArtifactEntry[]> {
  const res = await core.retry.call("ListArtifacts", (node) =>
    node.sessions.listArtifacts({
      sessionId: core.sessionId,
      userContext: core.userContext,
      ...core.observed(),
    }));
  core.verify(res);
  return res.artifacts.map(toEntry);
}

/**
 * Removes artifacts from the session, all or none.
 *
 * @param core The session.
 * @param names Names as {@linkcode listArtifacts} gives them.
 * @returns What was removed.
 * @throws {TypeError} When no name is given (before anything is sent).
 */
export async function removeArtifacts(
  core: SessionCore,
  names: readonly string[],
): Promise<RemovedArtifacts> {
  if (names.length === 0) throw new TypeError("Cannot remove artifacts: no name given");
  // A removal repeated after it was done fails with ARTIFACT_NOT_FOUND: it is sent again only
  // when it never reached a node.
  const res = await core.retry.call("RemoveArtifacts", (node) =>
    node.sessions.removeArtifacts({
      sessionId: core.sessionId,
      userContext: core.userContext,
      ...core.observed(),
      names: [...names],
    }), { idempotent: false });
  core.verify(res);
  return {
    removed: res.removed.map(toEntry),
    freedBytes: Number(res.freedBytes),
    inProgress: res.inProgress,
  };
}

function toEntry(a: SessionArtifact): ArtifactEntry {
  return {
    name: a.name,
    kind: a.kind,
    size: Number(a.size),
    sha256: a.sha256,
    alias: a.alias || undefined,
    view: a.view || undefined,
    warnings: [...a.warnings],
    tree: a.kind === "archives" && a.treeEntries > 0n
      ? { bytes: Number(a.treeBytes), entries: Number(a.treeEntries) }
      : undefined,
    addedAt: new Date(Number(a.addedAtMs)),
  };
}
