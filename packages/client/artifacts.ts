// Copyright 2026 the Valise authors. Apache-2.0 license.

/** One artifact of a session, as {@linkcode Session.list} reports it. */
export interface ArtifactEntry {
  /** The name as it was added, e.g. `archives/env.tar.gz#environment`: what `remove` takes. */
  name: string;
  /** The prefix's meaning: `pyfiles`, `archives`, `files`, `jars`, `cache`, `classes`, `other`. */
  kind: string;
  /** Bytes. */
  size: number;
  /** sha256 of the bytes, lowercase hex. */
  sha256: string;
  /** For `archives/…#alias`: the directory it unpacks to. */
  alias: string | undefined;
  /** How the session's working directory shows it (`./view`), if it does. */
  view: string | undefined;
  /** For an unpacked archive: bytes and entries of the shared tree it unpacked to. */
  tree: { bytes: number; entries: number } | undefined;
  /** What the server's environment checks warned of when it was added (none: `[]`). */
  warnings: string[];
  /** When it was added. */
  addedAt: Date;
}

/** What {@linkcode Session.remove} removed. */
export interface RemovedArtifacts {
  /** The artifacts removed, in the order asked. */
  removed: ArtifactEntry[];
  /** Bytes given back to the session's and its user's quotas. */
  freedBytes: number;
  /**
   * Runs and uploads of the session that were in progress: the working directory keeps
   * showing the removed artifacts until they have ended; runs started later do not keep them.
   */
  inProgress: number;
}
