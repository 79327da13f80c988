// Copyright 2026 the Valise authors. Apache-2.0 license.
import { basename, isAbsolute, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** Which kind of artifact `addArtifacts` adds, as PySpark's flags say. */
export interface ArtifactKindFlags {
  /**
   * A Python file or a zip/egg/jar package on the workers' `sys.path` (`pyfiles/`).
   * @default {false}
   */
  pyfile?: boolean;
  /**
   * An archive unpacked in the session directory, under its `#alias` (`archives/`).
   * @default {false}
   */
  archive?: boolean;
  /**
   * A plain file in the session directory (`files/`).
   * @default {false}
   */
  file?: boolean;
}

/** A local file and the artifact name it is added under. */
export interface LocalArtifact {
  /** The artifact name on the wire, e.g. `archives/env.tar.gz#environment`. */
  readonly name: string;
  /** The absolute local path. */
  readonly path: string;
}

/** Archive endings PySpark accepts with `archive=True`. */
export const PYSPARK_ARCHIVE_EXTENSIONS: readonly string[] = [
  ".zip",
  ".jar",
  ".tar.gz",
  ".tgz",
  ".tar",
];

/** Archive endings Valise accepts with `archive: true`: PySpark's and what the server unpacks. */
export const ARCHIVE_EXTENSIONS: readonly string[] = [
  ...PYSPARK_ARCHIVE_EXTENSIONS,
  ".tar.zst",
  ".tar.xz",
  ".tar.bz2",
];

/**
 * Maps one `addArtifacts` argument to its artifact name with PySpark's rules
 * (`pyspark/sql/connect/client/artifact.py`): `.py`/`.zip`/`.egg`/`.jar` with `pyfile` go to
 * `pyfiles/<basename>`; archives with `archive` go to `archives/<basename>[#alias]`; anything
 * with `file` goes to `files/<basename>`; a `.jar` without flags goes to `jars/<basename>`.
 * Paths may be relative (to `cwd`) or `file:` URLs.
 *
 * @example
 * ```ts
 * import { resolveArtifact } from "@valise/client";
 * import { equal } from "node:assert/strict";
 *
 * const a = resolveArtifact("env.tar.gz#environment", { archive: true }, "/data");
 * equal(a.name, "archives/env.tar.gz#environment");
 * equal(a.path, "/data/env.tar.gz");
 * ```
 *
 * @param pathOrUri A local path, `path#alias` for archives, or a `file:` URL.
 * @param flags At most one of `pyfile`, `archive`, `file`.
 * @param cwd What relative paths are resolved against.
 * @returns The artifact name and the absolute local path.
 * @throws {TypeError} For more than one flag, a `#` outside an archive alias, an unsupported
 *   scheme or an unsupported file type.
 */
export function resolveArtifact(
  pathOrUri: string,
  flags: ArtifactKindFlags = {},
  cwd: string = Deno.cwd(),
): LocalArtifact {
  const { pyfile = false, archive = false, file = false } = flags;
  if ([pyfile, archive, file].filter(Boolean).length > 1) {
    throw new TypeError(
      "[INVALID_MULTIPLE_ARGUMENT_CONDITIONS] 'pyfile', 'archive' and/or 'file' cannot be True together.",
    );
  }
  if (pathOrUri === "") throw new TypeError("Cannot add an artifact: the path is empty");
  let localPath: string;
  let fragment = "";
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]+):/.exec(pathOrUri)?.[1];
  if (scheme !== undefined && !/^[A-Za-z]:[\\/]/.test(pathOrUri)) {
    if (scheme.toLowerCase() !== "file") {
      throw new TypeError(`Cannot add ${pathOrUri}: unsupported scheme "${scheme}"`);
    }
    const url = new URL(pathOrUri);
    fragment = decodeURIComponent(url.hash.slice(1));
    url.hash = "";
    localPath = fileURLToPath(url);
  } else {
    const hash = pathOrUri.indexOf("#");
    localPath = hash < 0 ? pathOrUri : pathOrUri.slice(0, hash);
    fragment = hash < 0 ? "" : pathOrUri.slice(hash + 1);
  }
  if (localPath === "") throw new TypeError(`Cannot add ${pathOrUri}: the path is empty`);
  localPath = isAbsolute(localPath) ? resolve(localPath) : resolve(cwd, localPath);
  const name = basename(localPath);
  if (fragment !== "" && !archive) {
    throw new TypeError(
      `Cannot add ${pathOrUri}: '#' is only allowed to give an archive an alias (archive: true)`,
    );
  }
  if (archive && (localPath.includes("#") || fragment.includes("#"))) {
    throw new TypeError("'#' in the path is not supported for adding an archive.");
  }
  if (
    archive && fragment !== "" && (fragment === "." || fragment === ".." || /[/\\]/.test(fragment))
  ) {
    throw new TypeError(`Cannot add ${pathOrUri}: the alias "${fragment}" is not a directory name`);
  }
  if (pyfile && [".py", ".zip", ".egg", ".jar"].some((e) => name.endsWith(e))) {
    return { name: `pyfiles/${name}`, path: localPath };
  }
  if (archive && ARCHIVE_EXTENSIONS.some((e) => name.endsWith(e))) {
    return { name: `archives/${name}${fragment === "" ? "" : `#${fragment}`}`, path: localPath };
  }
  if (file) return { name: `files/${name}`, path: localPath };
  if (!pyfile && !archive && name.endsWith(".jar")) {
    return { name: `jars/${name}`, path: localPath };
  }
  const expected = pyfile
    ? ".py, .zip, .egg or .jar with pyfile"
    : archive
    ? `${ARCHIVE_EXTENSIONS.join(", ")} with archive`
    : "a flag (pyfile, archive or file), or a .jar";
  throw new TypeError(`Unsupported file format: ${localPath} (expected ${expected})`);
}
