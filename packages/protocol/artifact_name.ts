// Copyright 2026 the Valise authors. Apache-2.0 license.
// This module is browser compatible.

/** The prefixes PySpark and the Scala client put in front of an artifact's file name. */
export type ArtifactKind = "pyfiles" | "archives" | "files" | "jars" | "cache" | "classes";

/** Every prefix with a meaning of its own; other names are stored as plain files. */
export const ARTIFACT_KINDS: readonly ArtifactKind[] = [
  "pyfiles",
  "archives",
  "files",
  "jars",
  "cache",
  "classes",
];

/** The longest artifact name accepted, in UTF-8 bytes. */
export const MAX_ARTIFACT_NAME_BYTES = 1024;

/** The longest single path segment accepted, in UTF-8 bytes (the usual file-system limit). */
export const MAX_SEGMENT_BYTES = 255;

/** A parsed, validated artifact name. */
export interface ArtifactName {
  /** The name exactly as the client sent it. */
  readonly raw: string;
  /**
   * The normalised relative path under which the artifact is stored: `/` separators, no `.`
   * or `..` segments, no fragment. Always strictly inside the session root.
   */
  readonly path: string;
  /** The prefix's meaning, or `"other"` for names without a known prefix. */
  readonly kind: ArtifactKind | "other";
  /** The path after the prefix (for `"other"`, the whole path). */
  readonly rest: string;
  /** For `archives/…#alias`: the directory name the archive unpacks to. */
  readonly alias?: string;
}

/** Why an artifact name was refused; carried by {@linkcode ArtifactNameError}. */
export type ArtifactNameProblem =
  | "EMPTY"
  | "TOO_LONG"
  | "CONTROL_CHARACTER"
  | "ABSOLUTE"
  | "ESCAPES_ROOT"
  | "NO_FILE_NAME"
  | "BAD_ALIAS"
  | "BAD_CACHE_HASH";

/** An artifact name that cannot be stored safely or does not follow Spark's rules. */
export class ArtifactNameError extends SyntaxError {
  /** What is wrong with the name. */
  readonly problem: ArtifactNameProblem;
  /** The offending name, as sent. */
  readonly artifactName: string;
  override name = "ArtifactNameError";

  /** Creates the error for `artifactName` with a machine-readable `problem`. */
  constructor(artifactName: string, problem: ArtifactNameProblem, detail: string) {
    super(`Cannot accept artifact name ${JSON.stringify(artifactName)}: ${detail}`);
    this.problem = problem;
    this.artifactName = artifactName;
  }
}

const encoder = new TextEncoder();
// deno-lint-ignore no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/;
const SHA256_HEX = /^[0-9a-f]{64}$/;

/**
 * Normalises a relative path the way Spark's artifact manager does: `\` from Windows
 * clients counts as a separator, `.` segments vanish and `..` pops a segment. Throws when
 * the path is absolute or climbs out of the root, so the result always names a place
 * strictly inside it.
 *
 * @param raw The path as the client sent it (without a `#fragment`).
 * @param label The name reported in errors.
 * @returns The normalised path with `/` separators.
 */
export function normalizeRelativePath(raw: string, label: string = raw): string {
  if (raw.length === 0) throw new ArtifactNameError(label, "EMPTY", "the name is empty");
  if (CONTROL.test(raw)) {
    throw new ArtifactNameError(
      label,
      "CONTROL_CHARACTER",
      "the name contains a NUL or control character",
    );
  }
  const slashed = raw.replaceAll("\\", "/");
  if (slashed.startsWith("/") || /^[A-Za-z]:/.test(slashed)) {
    throw new ArtifactNameError(label, "ABSOLUTE", "the name is an absolute path");
  }
  const out: string[] = [];
  for (const segment of slashed.split("/")) {
    if (segment === "" || segment === ".") continue;
    if (segment === "..") {
      if (out.length === 0) {
        throw new ArtifactNameError(
          label,
          "ESCAPES_ROOT",
          "the name climbs out of the session directory with '..'",
        );
      }
      out.pop();
      continue;
    }
    if (encoder.encode(segment).length > MAX_SEGMENT_BYTES) {
      throw new ArtifactNameError(
        label,
        "TOO_LONG",
        `a path segment is longer than ${MAX_SEGMENT_BYTES} bytes`,
      );
    }
    out.push(segment);
  }
  if (out.length === 0) {
    throw new ArtifactNameError(label, "ESCAPES_ROOT", "the name resolves to the session root");
  }
  return out.join("/");
}

/**
 * Parses and validates an artifact name `<prefix>/<path>[#alias]`.
 *
 * Names are checked with Spark's rule (relative, normalising strictly inside the session
 * root) plus limits Spark lacks: no control characters, bounded length. The `#alias`
 * fragment is recognised for `archives/` only, as in Spark; elsewhere `#` is part of the
 * file name.
 *
 * @example Parse an archive with an alias
 * ```ts
 * import { parseArtifactName } from "@valise/protocol";
 * import { equal } from "node:assert/strict";
 *
 * const n = parseArtifactName("archives/env.tar.gz#environment");
 * equal(n.kind, "archives");
 * equal(n.path, "archives/env.tar.gz");
 * equal(n.alias, "environment");
 * ```
 *
 * @param raw The name as the client sent it.
 * @returns The parsed name.
 * @throws {ArtifactNameError} When the name is empty, absolute, escapes, or is malformed.
 */
export function parseArtifactName(raw: string): ArtifactName {
  if (encoder.encode(raw).length > MAX_ARTIFACT_NAME_BYTES) {
    throw new ArtifactNameError(
      raw,
      "TOO_LONG",
      `the name is longer than ${MAX_ARTIFACT_NAME_BYTES} bytes`,
    );
  }
  let pathPart = raw;
  let alias: string | undefined;
  const slashed = raw.replaceAll("\\", "/");
  if (slashed.startsWith("archives/") && raw.includes("#")) {
    const at = raw.indexOf("#");
    pathPart = raw.slice(0, at);
    alias = raw.slice(at + 1);
    if (
      alias === "" || alias === "." || alias === ".." || /[/\\#]/.test(alias) ||
      CONTROL.test(alias) || encoder.encode(alias).length > MAX_SEGMENT_BYTES
    ) {
      throw new ArtifactNameError(
        raw,
        "BAD_ALIAS",
        "the '#alias' must be a single, non-empty directory name",
      );
    }
  }
  const path = normalizeRelativePath(pathPart, raw);
  const slash = path.indexOf("/");
  const head = slash < 0 ? path : path.slice(0, slash);
  const known = (ARTIFACT_KINDS as readonly string[]).includes(head);
  if (!known) return { raw, path, kind: "other", rest: path };
  if (slash < 0) {
    throw new ArtifactNameError(raw, "NO_FILE_NAME", `the name has no file after '${head}/'`);
  }
  const kind = head as ArtifactKind;
  const rest = path.slice(slash + 1);
  if (kind === "cache" && !SHA256_HEX.test(rest)) {
    throw new ArtifactNameError(
      raw,
      "BAD_CACHE_HASH",
      "a cache artifact is named 'cache/<sha256>' with 64 lowercase hex digits",
    );
  }
  return alias === undefined ? { raw, path, kind, rest } : { raw, path, kind, rest, alias };
}

/**
 * Where an artifact appears in the session's working directory, as Spark's executors lay it
 * out: `files/x` and `pyfiles/x` as `x`, `archives/a.tar.gz#env` as `env`, `archives/a.zip`
 * as `a.zip`. Jars, classes, cache blobs and other names have no place there.
 *
 * @param name A parsed artifact name.
 * @returns The single path segment in the working directory, or `undefined`.
 */
export function executorViewName(name: ArtifactName): string | undefined {
  switch (name.kind) {
    case "files":
    case "pyfiles":
      return basename(name.rest);
    case "archives":
      return name.alias ?? basename(name.rest);
    default:
      return undefined;
  }
}

function basename(path: string): string {
  const i = path.lastIndexOf("/");
  return i < 0 ? path : path.slice(i + 1);
}
