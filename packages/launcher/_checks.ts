// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Checks of what a caller hands the launcher: a session (its root, environment, binds, uid), a
 * run request, limits. Malformed values are `TypeError`/`RangeError`, as built-ins are for
 * arguments; a uid the launcher cannot use is a `LaunchError`.
 *
 * @module
 */
import { dirname, isAbsolute, join, normalize } from "node:path";
import type { RunRequestJson } from "./_fork_server.ts";
import { inside } from "./_interpreters.ts";
import { LaunchError } from "./launch_error.ts";
import type { LauncherLimits, RunSpec, SessionSpec } from "./types.ts";

/**
 * A whole number of at least 1 (or 0 with `allowZero`).
 *
 * @param name What it is, for the message.
 * @param value The value.
 * @param allowZero Whether 0 is accepted.
 * @returns The value.
 */
export function positiveInt(name: string, value: number, allowZero = false): number {
  if (!Number.isSafeInteger(value) || value < (allowZero ? 0 : 1)) {
    throw new RangeError(
      `Cannot use ${name}: ${value} is not a ${allowZero ? "non-negative" : "positive"} integer`,
    );
  }
  return value;
}

/**
 * `base` with `limits` applied, each checked.
 *
 * @param limits Overrides.
 * @param base The limits they apply to.
 * @returns The limits.
 */
export function validateLimits(
  limits: Partial<LauncherLimits>,
  base: LauncherLimits,
): LauncherLimits {
  const out = { ...base };
  for (const [k, v] of Object.entries(limits)) {
    if (v === undefined) continue;
    if (!(k in base)) throw new TypeError(`Cannot use limit ${k}: unknown`);
    const allowZero = k === "memoryBytes" || k === "maxQueue" || k === "processes" ||
      k === "sandboxMemoryBytes";
    out[k as keyof LauncherLimits] = positiveInt(`limits.${k}`, v, allowZero);
  }
  return out;
}

/** A run request, checked and ready for the fork server. */
export interface CheckedRequest {
  /** What the fork server's child reads. */
  request: RunRequestJson;
  /** Bytes for stdin, when they were given whole. */
  stdin: Uint8Array;
  /** Stdin to stream, when it was given as an iterable. */
  stream: AsyncIterable<Uint8Array> | undefined;
  /** The wall-time limit of the run. */
  timeoutMs: number;
}

/**
 * Checks a session and returns its normalized root.
 *
 * @param session The session.
 * @param canDrop Whether the launcher can run workers as another uid.
 * @returns The root.
 */
export function checkSession(session: SessionSpec, canDrop: boolean): string {
  if (typeof session.key !== "string" || session.key === "") {
    throw new TypeError("Cannot run: session.key is empty");
  }
  if (typeof session.root !== "string" || !isAbsolute(session.root)) {
    throw new TypeError(`Cannot run: session.root ${session.root} is not an absolute path`);
  }
  const root = normalize(session.root).replace(/(.)\/$/, "$1");
  if (root === "/") throw new RangeError("Cannot run: session.root is /");
  for (const [k, v] of Object.entries(session.env ?? {})) {
    // A plain name: it becomes an argument of env(1), which must never read it as an option.
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k) || String(v).includes("\0")) {
      throw new TypeError(
        `Cannot use worker environment variable ${JSON.stringify(k)}: names are letters, ` +
          `digits and '_', not starting with a digit, and values hold no NUL`,
      );
    }
  }
  const binds = [
    ...(session.readOnlyDirs ?? []),
    ...(session.sharedTrees ?? []),
    ...(session.layers ?? []),
    ...(session.readOnlyFiles ?? []),
    ...(session.proxySocket !== undefined ? [session.proxySocket] : []),
  ];
  for (const p of binds) {
    if (!isAbsolute(p)) throw new TypeError(`Cannot bind ${p}: the path is not absolute`);
    // A bind source inside the read-write root would be resolved through a path the session
    // can change; one that holds the root would expose it read-only, and its neighbours.
    const n = normalize(p);
    if (inside(root, n) || inside(n, root) || n === "/") {
      throw new RangeError(`Cannot bind ${p} read-only: it overlaps the session's root ${root}`);
    }
  }
  if (session.worker !== undefined) {
    const { uid, gid } = session.worker;
    if (!Number.isSafeInteger(uid) || !Number.isSafeInteger(gid) || uid <= 0 || gid <= 0) {
      throw new TypeError(`Cannot run as uid ${uid} gid ${gid}: not unprivileged ids`);
    }
    if (!canDrop) {
      throw new LaunchError(
        "SANDBOX_UNAVAILABLE",
        "Cannot run a session's workers as their own uid: the launcher is not root (or " +
          "/usr/bin/setpriv is missing)",
      );
    }
  }
  return root;
}

/**
 * Checks a run request against its session and limits.
 *
 * @param root The session's normalized root.
 * @param session The session.
 * @param request What to run.
 * @param limits The session's limits.
 * @returns The checked request.
 */
export function checkRequest(
  root: string,
  session: SessionSpec,
  request: RunSpec,
  limits: LauncherLimits,
): CheckedRequest {
  const targets = (["code", "module", "script"] as const).filter((k) =>
    typeof request[k] === "string"
  );
  const repl = request.repl ?? false;
  if (typeof repl !== "boolean") throw new TypeError("Cannot run: repl must be a boolean");
  if (targets.length > 1 || (targets.length === 0 && !repl)) {
    throw new TypeError(
      `Cannot run: exactly one of code, module, script must be set (or none with repl), got ${targets.length}`,
    );
  }
  const kind = targets[0] ?? "none";
  let target = kind === "none" ? "" : request[kind] as string;
  const path = [root];
  for (const p of session.pythonPath) {
    const abs = normalize(join(root, p));
    if (isAbsolute(p) || !inside(root, abs)) {
      throw new RangeError(`Cannot put ${p} on sys.path: it is not inside the session`);
    }
    if (!path.includes(abs)) path.push(abs);
  }
  // After the session's own entries: its pip layers (checked absolute and outside the root).
  for (const l of session.layers ?? []) {
    const abs = normalize(l);
    if (!path.includes(abs)) path.push(abs);
  }
  if (kind === "module" && !/^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$/.test(target)) {
    throw new TypeError(`Cannot run module ${JSON.stringify(target)}: not a module name`);
  }
  if (kind === "script") {
    const abs = normalize(join(root, target));
    if (isAbsolute(target) || !inside(root, abs) || abs === root) {
      throw new RangeError(`Cannot run script ${target}: it is not a path inside the session`);
    }
    target = abs;
    if (!path.includes(dirname(abs))) path.push(dirname(abs));
  }
  const args = request.args ?? [];
  if (!Array.isArray(args) || args.some((a) => typeof a !== "string")) {
    throw new TypeError("Cannot run: args must be strings");
  }
  const asked = positiveInt("timeoutMs", request.timeoutMs ?? 0, true);
  const cap = request.interactive ? limits.interactiveTimeMs : limits.wallTimeMs;
  const timeoutMs = asked === 0 ? cap : Math.min(asked, cap);
  const raw = request.stdin ?? new Uint8Array();
  let stream: AsyncIterable<Uint8Array> | undefined;
  if (!(raw instanceof Uint8Array)) {
    if (typeof (raw as AsyncIterable<Uint8Array>)?.[Symbol.asyncIterator] !== "function") {
      throw new TypeError("Cannot run: stdin must be a Uint8Array or an AsyncIterable");
    }
    stream = raw;
  }
  const json: RunRequestJson = {
    kind,
    target,
    args,
    cwd: root,
    path,
    memoryBytes: limits.memoryBytes,
  };
  if (stream) json.stdinStream = true;
  if (repl) json.repl = true;
  if (request.streamStdout) json.flow = true;
  if (request.directStdio && stream && request.streamStdout) json.direct = true;
  return {
    request: json,
    stdin: stream ? new Uint8Array() : raw as Uint8Array,
    stream,
    timeoutMs,
  };
}
