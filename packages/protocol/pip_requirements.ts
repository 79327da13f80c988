// Copyright 2026 the Valise authors. Apache-2.0 license.
// This module is browser compatible.
/**
 * The requirement sets sessions may ask a server to `pip install`: PEP 508 names with extras,
 * version specifiers and environment markers, nothing else. A requirement line is data for the
 * installer's resolver, never a place for installer options (`--index-url`, `-e`, `-r`), file
 * paths or URLs: the server alone decides where packages come from (its indexes, the session's
 * uploaded wheels). The same rules run in the client (before sending), the session store (when
 * `spark.valise.pip.requirements` is set) and the server (before a build).
 *
 * @module
 */

/** Most bytes of a requirement set's text (UTF-16 code units, as given). */
export const MAX_REQUIREMENTS_TEXT = 64 * 1024;
/** Most requirements in one set. */
export const MAX_REQUIREMENTS = 256;
/** Most characters of one requirement line. */
export const MAX_REQUIREMENT_LINE = 1024;

/** Why a requirement was refused; carried by {@linkcode RequirementError}. */
export type RequirementProblem =
  | "TOO_LARGE"
  | "TOO_MANY"
  | "LINE_TOO_LONG"
  | "CONTROL_CHARACTER"
  | "OPTION"
  | "URL"
  | "PATH"
  | "SYNTAX"
  | "DUPLICATE";

/** A requirement (or a set of them) that the rules refuse; the message names the line. */
export class RequirementError extends SyntaxError {
  /** What is wrong. */
  readonly problem: RequirementProblem;
  /** The offending line, as given (capped), or `""` for the set as a whole. */
  readonly line: string;
  override name = "RequirementError";

  /**
   * @param problem What is wrong.
   * @param line The offending line.
   * @param message The whole message.
   */
  constructor(problem: RequirementProblem, line: string, message: string) {
    super(message);
    this.problem = problem;
    this.line = line.slice(0, 200);
  }
}

/** One validated requirement. */
export interface Requirement {
  /** The distribution's name, normalized (PEP 503: lowercase, runs of `-_.` as `-`). */
  readonly name: string;
  /** The canonical text: normalized name, sorted extras and specifiers, tidied marker. */
  readonly text: string;
}

const NAME = "[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?";
const VERSION = "[A-Za-z0-9.*+!_-]+";
const OP = "===|==|!=|<=|>=|~=|<|>";
const SPEC = `(?:${OP})\\s*${VERSION}`;
const SPECS = `${SPEC}(?:\\s*,\\s*${SPEC})*`;
const LINE = new RegExp(
  `^(${NAME})\\s*(?:\\[\\s*(${NAME}(?:\\s*,\\s*${NAME})*)?\\s*\\])?\\s*` +
    `(\\(\\s*${SPECS}\\s*\\)|${SPECS})?\\s*(?:;\\s*(.*))?$`,
);
/** The variables of PEP 508's environment markers. */
const MARKER_VARIABLES: ReadonlySet<string> = new Set([
  "python_version",
  "python_full_version",
  "os_name",
  "sys_platform",
  "platform_release",
  "platform_system",
  "platform_version",
  "platform_machine",
  "platform_python_implementation",
  "implementation_name",
  "implementation_version",
  "extra",
]);

/**
 * Whether `text` is a PEP 508 marker expression: comparisons of marker variables and quoted
 * strings, joined by `and`/`or`, in parentheses or not.
 */
function isMarker(text: string): boolean {
  const tokens = text.match(
    /\s*(?:===|==|!=|<=|>=|~=|<|>|\(|\)|"[^"\\]*"|'[^'\\]*'|not\s+in\b|[A-Za-z_][A-Za-z0-9_]*)\s*/gy,
  );
  if (!tokens || tokens.join("") !== text) return false;
  const t = tokens.map((x) => x.trim().replace(/\s+/g, " "));
  let i = 0;
  const value = (): boolean => {
    const v = t[i];
    if (v === undefined) return false;
    if (/^["']/.test(v) || MARKER_VARIABLES.has(v)) {
      i++;
      return true;
    }
    return false;
  };
  const op = (): boolean => {
    const v = t[i];
    if (v !== undefined && /^(===|==|!=|<=|>=|~=|<|>|in|not in)$/.test(v)) {
      i++;
      return true;
    }
    return false;
  };
  const term = (depth: number): boolean => {
    if (t[i] === "(") {
      i++;
      if (depth > 32 || !expr(depth + 1) || t[i] !== ")") return false;
      i++;
      return true;
    }
    return value() && op() && value();
  };
  const expr = (depth: number): boolean => {
    if (!term(depth)) return false;
    while (t[i] === "and" || t[i] === "or") {
      i++;
      if (!term(depth)) return false;
    }
    return true;
  };
  return expr(0) && i === t.length;
}

/**
 * The normalized form of a distribution name (PEP 503).
 *
 * @param name A distribution name.
 * @returns It in lowercase, runs of `-`, `_`, `.` as one `-`.
 */
export function normalizeDistributionName(name: string): string {
  return name.toLowerCase().replace(/[-_.]+/g, "-");
}

/**
 * Parses one requirement line (no comment, not blank).
 *
 * @param line The line, e.g. `requests[socks]>=2.31,<3; python_version >= "3.8"`.
 * @returns The requirement.
 * @throws {RequirementError} When the line is an option, a path, a URL or not PEP 508.
 */
export function parseRequirement(line: string): Requirement {
  const raw = line.trim();
  const quoted = JSON.stringify(raw.slice(0, 200));
  if (raw.length > MAX_REQUIREMENT_LINE) {
    throw new RequirementError(
      "LINE_TOO_LONG",
      raw,
      `Cannot use requirement ${quoted}…: it is ${raw.length} characters long, the most is ` +
        `${MAX_REQUIREMENT_LINE}.`,
    );
  }
  // deno-lint-ignore no-control-regex
  if (/[\u0000-\u0008\u000a-\u001f\u007f]/.test(raw)) {
    throw new RequirementError(
      "CONTROL_CHARACTER",
      raw,
      `Cannot use requirement ${quoted}: it contains a control character.`,
    );
  }
  if (raw.startsWith("-")) {
    throw new RequirementError(
      "OPTION",
      raw,
      `Cannot use requirement ${quoted}: requirement lines cannot carry installer options ` +
        `(-e, -r, --index-url, --find-links, …). Choose an index the server offers with ` +
        `indexUrl (or spark.valise.pip.indexUrl), and upload local wheels as artifacts.`,
    );
  }
  if (/:\/\/|^[a-z+]+:/i.test(raw) || /@/.test(raw)) {
    throw new RequirementError(
      "URL",
      raw,
      `Cannot use requirement ${quoted}: URLs and direct references (name @ URL) are not ` +
        `allowed; packages come from the server's indexes or the session's uploaded wheels. ` +
        `Name a version instead, e.g. requests==2.32.3.`,
    );
  }
  if (/[/\\]/.test(raw) || /^[.~]/.test(raw) || /\.(whl|zip|tar(\.\w+)?|tgz)$/i.test(raw)) {
    throw new RequirementError(
      "PATH",
      raw,
      `Cannot use requirement ${quoted}: file paths are not allowed. Upload a local wheel as ` +
        `an artifact (files/<name>.whl) and require it by name and version, e.g. mylib==1.0.`,
    );
  }
  const m = LINE.exec(raw);
  const marker = m?.[4]?.trim();
  if (!m || (marker !== undefined && !isMarker(marker))) {
    throw new RequirementError(
      "SYNTAX",
      raw,
      `Cannot use requirement ${quoted}: it is not a requirement such as requests==2.32.3, ` +
        `idna>=3.7,<4 or pkg[extra]; python_version >= "3.9" (PEP 508, without URLs).`,
    );
  }
  const name = normalizeDistributionName(m[1]!);
  const extras = m[2]
    ? [...new Set(m[2].split(",").map((e) => normalizeDistributionName(e.trim())))].sort()
    : [];
  const specs = m[3]
    ? m[3].replace(/^\(|\)$/g, "").split(",").map((s) => s.replace(/\s+/g, "")).filter((s) =>
      s !== ""
    ).sort()
    : [];
  const text = name + (extras.length ? `[${extras.join(",")}]` : "") + specs.join(",") +
    (marker !== undefined ? `; ${marker.replace(/\s+/g, " ")}` : "");
  return { name, text };
}

/**
 * Parses a requirement set as a requirements file holds it: one requirement per line, `#`
 * comments and blank lines ignored.
 *
 * @param text The set.
 * @returns The requirements, in the order given.
 * @throws {RequirementError} For a set over the caps, a refused line, or a name listed twice.
 */
export function parseRequirements(text: string): Requirement[] {
  if (text.length > MAX_REQUIREMENTS_TEXT) {
    throw new RequirementError(
      "TOO_LARGE",
      "",
      `Cannot use the requirement set: it is ${text.length} characters long, the most is ` +
        `${MAX_REQUIREMENTS_TEXT}.`,
    );
  }
  const out: Requirement[] = [];
  const seen = new Set<string>();
  for (const rawLine of text.split(/\r?\n/)) {
    // A comment starts at '#' at the line's start or after whitespace, as in pip's files.
    const line = rawLine.replace(/(^|\s)#.*$/, "").trim();
    if (line === "") continue;
    if (line.endsWith("\\")) {
      throw new RequirementError(
        "SYNTAX",
        line,
        `Cannot use requirement ${JSON.stringify(line.slice(0, 200))}: line continuations ` +
          `('\\' at the end) are not supported; write each requirement on one line.`,
      );
    }
    const r = parseRequirement(line);
    if (seen.has(r.name)) {
      throw new RequirementError(
        "DUPLICATE",
        line,
        `Cannot use the requirement set: ${r.name} is listed twice; combine the versions in ` +
          `one line, e.g. ${r.name}>=1,<2.`,
      );
    }
    seen.add(r.name);
    out.push(r);
    if (out.length > MAX_REQUIREMENTS) {
      throw new RequirementError(
        "TOO_MANY",
        "",
        `Cannot use the requirement set: it lists more than ${MAX_REQUIREMENTS} requirements.`,
      );
    }
  }
  return out;
}

/**
 * The set `current` with `added` in it: an added requirement replaces the one of the same
 * name, the others keep their order.
 *
 * @param current The set so far.
 * @param added Requirements to add.
 * @returns The new set.
 */
export function mergeRequirements(
  current: readonly Requirement[],
  added: readonly Requirement[],
): Requirement[] {
  const byName = new Map(current.map((r) => [r.name, r]));
  for (const r of added) byName.set(r.name, r);
  return [...byName.values()];
}

/**
 * The text a set is stored as (`spark.valise.pip.requirements`): canonical lines, one each.
 *
 * @param set The requirements.
 * @returns The text, `""` for none.
 */
export function formatRequirements(set: readonly Requirement[]): string {
  return set.map((r) => r.text).join("\n");
}

/** A wheel's file name, read (PEP 427). */
export interface WheelName {
  /** The distribution, normalized. */
  readonly name: string;
  /** Its version. */
  readonly version: string;
}

const WHEEL =
  /^([A-Za-z0-9](?:[A-Za-z0-9._]*[A-Za-z0-9])?)-([A-Za-z0-9_.!+]+)(?:-\d[A-Za-z0-9_.]*)?-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+\.whl$/;

/**
 * Reads a wheel's file name (`mylib-1.0-py3-none-any.whl`).
 *
 * @param fileName The file name, without directories.
 * @returns Name and version, or `undefined` when it is not a wheel's name.
 */
export function parseWheelFilename(fileName: string): WheelName | undefined {
  if (fileName.length > 255) return undefined;
  const m = WHEEL.exec(fileName);
  if (!m) return undefined;
  return { name: normalizeDistributionName(m[1]!), version: m[2]!.replace(/_/g, "-") };
}

/**
 * Checks a package index URL a session names: `https://` (or `http://`) with a host, without
 * credentials, at most 2048 characters. Whether the server offers that index is the server's
 * decision, made at install time.
 *
 * @param url The URL.
 * @returns It without a trailing `/`.
 * @throws {RequirementError} (`URL`) when it is not such a URL.
 */
export function normalizeIndexUrl(url: string): string {
  const trimmed = url.trim();
  let u: URL | undefined;
  try {
    u = new URL(trimmed);
  } catch {
    u = undefined;
  }
  if (
    !u || trimmed.length > 2048 || (u.protocol !== "https:" && u.protocol !== "http:") ||
    u.hostname === "" || u.search !== "" || u.hash !== ""
  ) {
    throw new RequirementError(
      "URL",
      trimmed,
      `Cannot use package index ${JSON.stringify(trimmed.slice(0, 200))}: it is not an ` +
        `https:// or http:// URL such as https://pypi.org/simple.`,
    );
  }
  if (u.username !== "" || u.password !== "") {
    throw new RequirementError(
      "URL",
      `${u.protocol}//${u.host}${u.pathname}`,
      `Cannot use package index ${u.protocol}//…@${u.host}${u.pathname}: credentials do not ` +
        `belong in a session's settings; the server's operator configures them.`,
    );
  }
  return u.href.replace(/\/+$/, "");
}
