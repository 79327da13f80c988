// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The one error class of `@valise/archive`.
 *
 * @module
 */

/**
 * Stable codes of {@linkcode UnpackError}. Servers map them to their own status codes.
 *
 * - `PATH_ESCAPE`: an entry name has a `..` component.
 * - `ABSOLUTE_PATH`: an entry name is absolute (`/x`, `\x`, `C:x`).
 * - `BAD_NAME`: an entry name is empty where it must not be, not UTF-8, holds NUL, control
 *   characters or `\`, or is too long or too deep.
 * - `LINK_ESCAPE`: a symlink or hardlink points outside the destination (or at the
 *   destination itself, or at an absolute path that is not an allowed interpreter link).
 * - `BAD_LINK`: a hardlink to something that is not a regular file unpacked earlier, a
 *   symlink loop, or an empty link target.
 * - `THROUGH_LINK`: an entry would be created through a symlink of the archive.
 * - `CONFLICT`: an entry would replace a directory by a non-directory or the reverse, or put
 *   something below a regular file.
 * - `SPECIAL_FILE`: device, FIFO or socket entry.
 * - `QUOTA_BYTES`: too many bytes in total or in one entry.
 * - `QUOTA_ENTRIES`: too many entries.
 * - `QUOTA_RATIO`: decompressed bytes per compressed byte above the limit (a bomb).
 * - `QUOTA_DISK`: free disk space below the reserve, or the disk filled up.
 * - `CORRUPT`: malformed archive (checksum, truncation, sizes or CRC-32 that do not match,
 *   local header disagreeing with the central directory).
 * - `OVERLAP`: zip entries share bytes with each other or with the central directory.
 * - `ENCRYPTED`: encrypted zip entry.
 * - `UNSUPPORTED`: format or entry type this package does not unpack (sparse files, zip
 *   methods other than stored/deflate/zstd, unknown containers).
 * - `DEST_EXISTS`: the destination exists already.
 * - `POST_UNPACK`: `bin/conda-unpack` failed or could not run.
 * - `ABORTED`: the `signal` was aborted.
 * - `IO`: a file system error (the `cause` says which).
 */
export type UnpackErrorCode =
  | "PATH_ESCAPE"
  | "ABSOLUTE_PATH"
  | "BAD_NAME"
  | "LINK_ESCAPE"
  | "BAD_LINK"
  | "THROUGH_LINK"
  | "CONFLICT"
  | "SPECIAL_FILE"
  | "QUOTA_BYTES"
  | "QUOTA_ENTRIES"
  | "QUOTA_RATIO"
  | "QUOTA_DISK"
  | "CORRUPT"
  | "OVERLAP"
  | "ENCRYPTED"
  | "UNSUPPORTED"
  | "DEST_EXISTS"
  | "POST_UNPACK"
  | "ABORTED"
  | "IO";

/** Options of the {@linkcode UnpackError} constructor. */
export interface UnpackErrorOptions {
  /**
   * Name of the archive entry at fault, as written in the archive.
   * @default {undefined}
   */
  entry?: string;
  /**
   * The underlying error.
   * @default {undefined}
   */
  cause?: unknown;
}

const BRAND = Symbol.for("valise.archive.UnpackError");

/**
 * A domain failure of {@linkcode detect} or {@linkcode unpack}: the archive is unsafe, too big,
 * corrupt or unsupported, or the destination cannot take it.
 *
 * @example Check the code
 * ```ts
 * import { UnpackError, isUnpackError } from "@valise/archive";
 * import assert from "node:assert/strict";
 * const err = new UnpackError("PATH_ESCAPE", "Cannot unpack entry: name leaves the destination", {
 *   entry: "../x",
 * });
 * assert.ok(isUnpackError(err));
 * assert.equal(err.code, "PATH_ESCAPE");
 * assert.equal(err.entry, "../x");
 * ```
 */
export class UnpackError extends Error {
  /** Always `"UnpackError"`. */
  override name = "UnpackError";
  /** Stable code, see {@linkcode UnpackErrorCode}. */
  readonly code: UnpackErrorCode;
  /** The entry name at fault, when there is one. */
  readonly entry: string | undefined;

  /**
   * Creates the error.
   *
   * @param code Stable code.
   * @param message A `Cannot <action>: <state>` message naming the values involved.
   * @param options Entry name and cause.
   */
  constructor(code: UnpackErrorCode, message: string, options: UnpackErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.entry = options.entry;
    Object.defineProperty(this, BRAND, { value: true });
  }

  /** Also true for errors of another copy of this package. */
  static override [Symbol.hasInstance](value: unknown): boolean {
    return isUnpackError(value);
  }
}

/**
 * Tells whether `value` is an {@linkcode UnpackError}, also one from another copy of this
 * package.
 *
 * @param value Anything thrown.
 * @returns `true` for an `UnpackError`.
 */
export function isUnpackError(value: unknown): value is UnpackError {
  return typeof value === "object" && value !== null &&
    (value as Record<symbol, unknown>)[BRAND] === true;
}
