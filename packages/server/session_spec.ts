// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * A session as the launcher sees it: what Run and Apply (and an embedder running the launcher
 * itself) hand to `Launcher.run()`.
 *
 * @module
 */
import type { SessionLimits, SessionSpec } from "@valise/launcher";
import { PIP_REQUIREMENTS_KEY, type Session } from "@valise/session-store";
import { ServerError } from "./errors.ts";

/**
 * Config keys a session may use to lower (never raise) the server's worker limits for itself.
 */
export const WORKER_LIMIT_KEYS: Readonly<Record<keyof SessionLimits, string>> = {
  wallTimeMs: "spark.valise.worker.timeoutMs",
  interactiveTimeMs: "spark.valise.worker.interactiveTimeoutMs",
  maxWorkersPerSession: "spark.valise.worker.maxConcurrent",
  memoryBytes: "spark.valise.worker.memoryBytes",
  outputBytes: "spark.valise.worker.outputBytes",
  processes: "spark.valise.worker.processes",
  sandboxMemoryBytes: "spark.valise.worker.sandboxMemoryBytes",
  streamBytes: "spark.valise.worker.streamBytes",
};

/**
 * Describes a session to the launcher: its working directory, the `sys.path` entries of its
 * zip/egg pyfiles, the shared parts it links to (bound read-only in the sandbox), its
 * interpreter and worker environment, and the limits it chose below the server's.
 *
 * @param session The session.
 * @param serverLimits The launcher's limits, which session overrides may only lower.
 * @param layers Store paths of the session's pip layers, for `sys.path` after its pyfiles.
 * @returns The launcher's view of the session.
 */
export function sessionSpec(
  session: Session,
  serverLimits: SessionLimits,
  layers: readonly string[] = [],
): SessionSpec {
  const limits: Partial<SessionLimits> = {};
  for (const [k, key] of Object.entries(WORKER_LIMIT_KEYS) as [keyof SessionLimits, string][]) {
    const raw = session.config.value(key);
    const n = raw === undefined ? NaN : Number(raw);
    if (Number.isSafeInteger(n) && n > 0) limits[k] = Math.min(n, serverLimits[k]);
  }
  const interpreter = session.interpreter();
  return {
    key: `${session.userId}\u0000${session.sessionId}`,
    root: session.root,
    pythonPath: session.pythonPath(),
    // Bound by the store's own paths: nothing the session's workers wrote decides a mount.
    readOnlyDirs: [session.viewDir],
    sharedTrees: session.sharedTrees(),
    ...(layers.length ? { layers: [...layers] } : {}),
    ...(session.worker ? { worker: session.worker } : {}),
    env: session.config.workerEnv(),
    ...(interpreter !== undefined && interpreter !== "" ? { interpreter } : {}),
    limits,
  };
}

/** What gives a run the session's pip layers (the server's `PipLayers`). */
export interface LayerSource {
  /** The session's layers, built first if its requirement set changed; kept until `release`. */
  prepare(session: Session): Promise<{ layers: string[]; release: () => void }>;
}

/**
 * {@linkcode sessionSpec} with the session's pip layers, applied first when its requirement set
 * (`spark.valise.pip.requirements`) changed since its last run.
 *
 * @param session The session.
 * @param serverLimits The launcher's limits.
 * @param pip The server's pip layers, if it installs packages.
 * @returns The spec, and a function that lets the layers go once the run has ended.
 */
export async function preparedSpec(
  session: Session,
  serverLimits: SessionLimits,
  pip: LayerSource | undefined,
): Promise<{ spec: SessionSpec; release: () => void }> {
  if (!pip && (session.config.value(PIP_REQUIREMENTS_KEY) ?? "").trim() !== "") {
    // Running without the packages the session asked for would fail later, less clearly.
    throw new ServerError(
      "PIP_INSTALL_FAILED",
      `Cannot run with the session's requirements (${PIP_REQUIREMENTS_KEY}): this server does ` +
        "not install packages for sessions. Unset the key, or use a server that installs them.",
      { reason: "DISABLED" },
    );
  }
  const prepared = pip ? await pip.prepare(session) : { layers: [], release: () => {} };
  return { spec: sessionSpec(session, serverLimits, prepared.layers), release: prepared.release };
}
