// Copyright 2026 the Valise authors. Apache-2.0 license.
import type { ArtifactKind } from "@valise/protocol";
import { writeFileAtomic } from "./_fs.ts";

/** One committed artifact of a session, as recorded in its manifest. */
export interface ArtifactRecord {
  /** The artifact's identity in the session: normalised path, plus `#alias` for archives. */
  readonly key: string;
  /** The name as the client first sent it. */
  readonly name: string;
  /** Normalised relative path (no alias). */
  readonly path: string;
  /** The prefix's meaning. */
  readonly kind: ArtifactKind | "other";
  /** The directory an archive unpacks to, if an alias was given. */
  readonly alias?: string;
  /** The single path segment under which workers see it, if they do. */
  readonly view?: string;
  /** For an unpacked archive: the key of the shared tree its view links to. */
  readonly tree?: string;
  /** sha256 of the bytes, lowercase hex. */
  readonly sha256: string;
  /** Size in bytes. */
  readonly size: number;
  /** For an unpacked archive: bytes of its tree, counted against the session's quotas. */
  readonly treeBytes?: number;
  /** For an unpacked archive: entries (files, directories, links) of its tree. */
  readonly treeEntries?: number;
  /** Problems the environment checks found but were not sure of (or the session let pass). */
  readonly warnings?: string[];
  /** When it was committed (ms since the epoch). */
  readonly addedAt: number;
}

/** A distribution a pip layer holds. */
export interface LayerDistribution {
  /** Its name, normalized (PEP 503). */
  readonly name: string;
  /** Its version. */
  readonly version: string;
}

/**
 * The pip layer a session's workers see: a shared, read-only directory of installed packages in
 * the store's layers, built for the session's requirement set and interpreter. The session's
 * config (`spark.valise.pip.requirements`) is what the session asked for; this record is which
 * layer answers it on this node.
 */
export interface PipLayerRecord {
  /** The layer's key in the store's layers (`<sha256>-pip`). */
  readonly key: string;
  /** The requirement set it was built for: canonical lines, one each. */
  readonly requirements: string;
  /** What the installer put there. */
  readonly distributions: readonly LayerDistribution[];
  /** Bytes of its files, counted against the session's and its user's quotas. */
  readonly bytes: number;
  /** Its entries (files, directories, links), counted against the session's file quota. */
  readonly entries: number;
  /** When the session started using it (ms since the epoch). */
  readonly usedAt: number;
}

/** The durable description of a session: everything needed to restore it after a restart. */
export interface SessionManifest {
  /** Format version. */
  version: 1;
  /** The client's user id (may be empty). */
  userId: string;
  /** The client's session id. */
  sessionId: string;
  /** The id the server gave the session; stable across restarts. */
  serverSideSessionId: string;
  /** When the session was created (ms since the epoch). */
  createdAt: number;
  /** Committed artifacts by key. */
  artifacts: Record<string, ArtifactRecord>;
  /** Explicitly set config values. */
  config: Record<string, string>;
  /**
   * The host uid and gid the session's workers run as, when the store gives each session its
   * own (the server runs as root).
   */
  worker?: { uid: number; gid: number };
  /** The pip layer its workers see, when its requirement set has one on this node. */
  pip?: PipLayerRecord;
}

/** Reads a manifest; `undefined` when there is none. */
export async function readManifest(path: string): Promise<SessionManifest | undefined> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
  const m = JSON.parse(text) as SessionManifest;
  if (m.version !== 1 || typeof m.sessionId !== "string") {
    throw new SyntaxError(`Cannot read session manifest ${path}: unknown format`);
  }
  return m;
}

/** Writes a manifest atomically (temp file, fsync, rename), so a crash leaves old or new. */
export function writeManifest(path: string, manifest: SessionManifest): Promise<void> {
  return writeFileAtomic(path, JSON.stringify(manifest, null, 1));
}
