// Copyright 2026 the Valise authors. Apache-2.0 license.
import { createHash } from "node:crypto";
import type { ArtifactKindFlags } from "./artifact_path.ts";

/** One progress report of an upload. */
export interface ArtifactProgress {
  /** The artifact name. */
  readonly name: string;
  /**
   * `hash`: its digest is being computed; `upload`: bytes are being sent; `attached`: the
   * server already held the bytes, none were sent; `done`: the server committed it.
   */
  readonly phase: "hash" | "upload" | "attached" | "done";
  /**
   * Bytes of this artifact sent so far on the current attempt (0 when attached); in the `hash`
   * phase, the bytes hashed so far: its first report has 0, its last `totalBytes`.
   */
  readonly bytesSent: number;
  /** The artifact's size. */
  readonly totalBytes: number;
  /** Average send rate of the current attempt, in bytes per second (0 before any bytes). */
  readonly bytesPerSecond: number;
}

/** The `progress` event a {@linkcode Session} dispatches during uploads. */
export class ArtifactProgressEvent extends Event {
  /** The report. */
  readonly progress: ArtifactProgress;
  /**
   * Creates the event.
   *
   * @param progress The report.
   */
  constructor(progress: ArtifactProgress) {
    super("progress");
    this.progress = progress;
  }
}

/** Options of {@linkcode Session.addArtifacts}. */
export interface AddArtifactsOptions extends ArtifactKindFlags {
  /**
   * Receives progress reports (the session also dispatches them as `progress` events).
   * @default {undefined}
   */
  onProgress?: (progress: ArtifactProgress) => void;
  /**
   * Told of each artifact as soon as the server has committed it (uploaded or attached), so a
   * caller can report the ones added before a later one fails.
   * @default {undefined}
   */
  onAdded?: (artifact: AddedArtifact) => void;
  /**
   * Directory relative paths are resolved against.
   * @default {Deno.cwd()}
   */
  cwd?: string;
  /**
   * Ask the server for the bytes it already holds and attach those without sending them.
   * @default {true}
   */
  fastPath?: boolean;
  /**
   * Cancels the uploads.
   * @default {undefined}
   */
  signal?: AbortSignal;
}

/** One added artifact. */
export interface AddedArtifact {
  /** The artifact name. */
  readonly name: string;
  /** The local file. */
  readonly path: string;
  /** Its size in bytes. */
  readonly size: number;
  /** Its sha256, lowercase hex. */
  readonly sha256: string;
  /** Whether its bytes were sent (false: the server held them and attached them). */
  readonly uploaded: boolean;
}

/**
 * Computes a file's sha256 by streaming it.
 *
 * @param path The file.
 * @param signal Cancels the read.
 * @param onBytes Told the bytes hashed so far, after each piece.
 * @returns The digest, lowercase hex.
 */
export async function sha256File(
  path: string,
  signal?: AbortSignal,
  onBytes?: (bytes: number) => void,
): Promise<string> {
  const h = createHash("sha256");
  using f = await Deno.open(path);
  let bytes = 0;
  for await (const piece of f.readable) {
    signal?.throwIfAborted();
    h.update(piece);
    bytes += piece.length;
    onBytes?.(bytes);
  }
  return h.digest("hex");
}
