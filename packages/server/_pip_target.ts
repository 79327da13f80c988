// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Which interpreter a pip layer is built for: its place, as the server established it (a server
 * interpreter, or one of a tree the session added), and what it reports of itself when run.
 *
 * @module
 */
import { join, relative } from "node:path";
import type { Launcher, SessionLimits } from "@valise/launcher";
import type { Session, SessionStore } from "@valise/session-store";
import { ServerError } from "./errors.ts";
import { sessionSpec } from "./session_spec.ts";

/** Most characters of an interpreter's complaint an error message carries. */
const ERROR_TAIL = 1500;

/** What the server asks an interpreter about itself (stdlib only, Python 3.8+). */
const PROBE = `
import json, os, platform, sys, sysconfig
print(json.dumps({
    "executable": os.path.realpath(sys.executable),
    "version": platform.python_version(),
    "implementation": sys.implementation.name,
    "cacheTag": str(sys.implementation.cache_tag),
    "platform": sysconfig.get_platform(),
    "soabi": str(sysconfig.get_config_var("SOABI") or ""),
    "abiflags": str(getattr(sys, "abiflags", "")),
    "machine": platform.machine(),
    "system": platform.system(),
    "libc": "-".join(platform.libc_ver()),
    "maxsize": str(sys.maxsize),
}))
`;

/** Where a session's interpreter is, as the server established it. */
export interface Target {
  /** Identity of the place: `host:<realpath>:<ino>:<size>:<mtime>` or `tree:<key>/<path>`. */
  canonical: string;
  /** The interpreter the installer targets, by a path valid in the sandbox. */
  python: string;
  /** Trees to bind (the archive the interpreter lives in). */
  trees: string[];
  /** How a probe's sandbox names it: an absolute trusted path, or `env/<path>`. */
  probeInterpreter: string;
  /** The tree `env` links to in a probe's root. */
  probeLink: string | undefined;
  /** For messages: the interpreter as the session names it. */
  display: string;
}

/** Where the session's interpreter is, by facts the server established. */
export async function interpreterTarget(
  session: Session,
  ctx: { store: SessionStore; launcher: Launcher; limits: SessionLimits },
): Promise<Target> {
  const spec = sessionSpec(session, ctx.limits);
  const i = await ctx.launcher.interpreterOf(spec);
  const display = session.interpreter() || i.path;
  if (i.trusted) {
    const real = await Deno.realPath(i.exe);
    const st = await Deno.stat(real);
    return {
      canonical: `host:${real}:${st.ino}:${st.size}:${st.mtime?.getTime() ?? 0}`,
      python: i.exe,
      trees: [],
      probeInterpreter: i.exe,
      probeLink: undefined,
      display,
    };
  }
  // Inside the session: only an interpreter of an archive it added (a shared, read-only,
  // content-addressed tree) has a place other sessions can share; what the session's workers
  // wrote into its directory does not.
  const [view, ...rest] = relative(session.root, i.exe).split("/");
  const art = session.artifacts().find((a) => a.view === view && a.tree !== undefined);
  if (!art || rest.length === 0 || rest.includes("..")) {
    throw new ServerError(
      "PIP_INSTALL_FAILED",
      `Cannot install packages for the interpreter ${display}: pip layers are built for the ` +
        `server's interpreters and for interpreters of archives the session added ` +
        `(archives/env.tar.gz#environment → environment/bin/python), not for files in the ` +
        `session's working directory.`,
      { reason: "INTERPRETER" },
    );
  }
  const tree = ctx.store.trees.path(art.tree!);
  return {
    canonical: `tree:${art.tree}/${rest.join("/")}`,
    python: join(tree, ...rest),
    trees: [tree],
    probeInterpreter: `env/${rest.join("/")}`,
    probeLink: tree,
    display,
  };
}

/**
 * What an interpreter reports of itself (version, platform, ABI, libc), asked in a sandbox of its
 * own as a lent uid, without network: an interpreter of an archive is the archive's code.
 *
 * @param target Where the interpreter is.
 * @param ctx The store (for the probe's directory and a lent uid) and the launcher.
 * @returns What it reported (strings only).
 * @throws {ServerError} `PIP_INSTALL_FAILED` (reason `INTERPRETER`) when it says nothing usable.
 */
export async function probeInterpreter(
  target: Target,
  ctx: { store: SessionStore; launcher: Launcher },
): Promise<Record<string, string>> {
  const id = crypto.randomUUID();
  const root = join(ctx.store.layers.root, `.probe-${id}`);
  await Deno.mkdir(root, { mode: 0o700 });
  if (target.probeLink) await Deno.symlink(target.probeLink, join(root, "env"));
  const lease = ctx.store.leaseWorkerId();
  const key = `pip-probe\u0000${id}`;
  let stdout = "";
  let stderr = "";
  let code = -1;
  const dec = new TextDecoder();
  try {
    for await (
      const ev of ctx.launcher.run({
        key,
        root,
        pythonPath: [],
        interpreter: target.probeInterpreter,
        sharedTrees: target.trees,
        limits: { wallTimeMs: 60_000 },
        ...(lease ? { worker: { uid: lease.uid, gid: lease.gid } } : {}),
      }, { code: PROBE, timeoutMs: 60_000 })
    ) {
      if (ev.kind === "stdout" && stdout.length < 65536) stdout += dec.decode(ev.data);
      if (ev.kind === "stderr") stderr = (stderr + dec.decode(ev.data)).slice(-ERROR_TAIL);
      if (ev.kind === "exited") code = ev.exitCode;
    }
  } finally {
    await ctx.launcher.stopSession(key);
    lease?.release();
    await Deno.remove(root, { recursive: true }).catch(() => {});
  }
  const last = stdout.trim().split("\n").pop() ?? "";
  let parsed: unknown;
  try {
    parsed = JSON.parse(last);
  } catch {
    parsed = undefined;
  }
  const ok = code === 0 && typeof parsed === "object" && parsed !== null &&
    Object.values(parsed).every((v) => typeof v === "string" && v.length <= 512);
  if (!ok) {
    throw new ServerError(
      "PIP_INSTALL_FAILED",
      `Cannot install packages for the interpreter ${target.display}: it did not say which ` +
        `Python it is (exit ${code})${stderr.trim() ? `: ${stderr.trim()}` : ""}`,
      { reason: "INTERPRETER" },
    );
  }
  return parsed as Record<string, string>;
}
