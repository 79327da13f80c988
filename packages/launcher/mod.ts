// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Runs Python workers for Valise sessions: in the session's directory (Spark's executor
 * view), with the session's interpreter (`spark.sql.execution.pyspark.python`: a venv, a
 * conda-pack env or a `.pex` inside the session, or an allowed absolute path) and
 * `sys.path`, a clean environment, limits, and — when bubblewrap is installed — a sandbox
 * that shows nothing but the session. A warm fork server per (session, interpreter) starts
 * later runs in a few milliseconds.
 *
 * ```ts
 * import { Launcher, type RunExitedEvent } from "@valise/launcher";
 * import assert from "node:assert/strict";
 *
 * const root = await Deno.makeTempDir();
 * await Deno.writeTextFile(`${root}/mylib.py`, "VERSION = 2\n");
 * const launcher = new Launcher({ logger: () => {} });
 * const session = { key: "user/session-1", root, pythonPath: [] };
 * let out = "";
 * let exit: RunExitedEvent | undefined;
 * for await (const ev of launcher.run(session, { code: "import mylib; print(mylib.VERSION)" })) {
 *   if (ev.kind === "stdout") out += new TextDecoder().decode(ev.data);
 *   if (ev.kind === "exited") exit = ev;
 * }
 * assert.equal(out, "2\n");
 * assert.equal(exit?.exitCode, 0);
 * await launcher.close();
 * await Deno.remove(root, { recursive: true });
 * ```
 *
 * @module
 */
export { Launcher } from "./launcher.ts";
export { RunControl } from "./run_control.ts";
export {
  DEFAULT_LIMITS,
  INTERPRETER_CONFIG_KEY,
  type LauncherLimits,
  type LauncherLogger,
  type LauncherOptions,
  type LauncherStats,
  type RunEvent,
  type RunExitedEvent,
  type RunOutputEvent,
  type RunSpec,
  type RunStartedEvent,
  type RunTarget,
  type SessionLimits,
  type SessionSpec,
} from "./types.ts";
export {
  isLaunchError,
  LaunchError,
  type LaunchErrorCode,
  type LaunchErrorOptions,
} from "./launch_error.ts";
export { pythonStub } from "./python_stub.ts";
export type { DefaultInterpreter } from "./_interpreters.ts";
