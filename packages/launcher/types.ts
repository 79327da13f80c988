// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The launcher's vocabulary: what a session is to it, what a run asks for and reports, its
 * limits and options.
 *
 * @module
 */
import type { RunControl } from "./run_control.ts";

/** The config key that names a session's interpreter; error messages cite it. */
export const INTERPRETER_CONFIG_KEY = "spark.sql.execution.pyspark.python";

/** Limits that a session may override. */
export interface SessionLimits {
  /** Wall-clock limit of one run, in ms; a run's own `timeoutMs` may only lower it. */
  wallTimeMs: number;
  /**
   * Wall-clock limit of an interactive run ({@linkcode RunSpec.interactive}: a person types its
   * stdin), in ms, instead of `wallTimeMs`; the run's own `timeoutMs` may only lower it.
   */
  interactiveTimeMs: number;
  /** Runs of one session that execute at once; more wait in the queue. */
  maxWorkersPerSession: number;
  /** Address-space limit (`RLIMIT_AS`) of each run's process, in bytes; 0 for none. */
  memoryBytes: number;
  /** Bytes of stdout plus stderr one run may produce; beyond it the run is killed. */
  outputBytes: number;
  /**
   * Processes and threads one sandbox (all runs of a session with one interpreter) may have at
   * once: the cgroup's `pids.max`, and a hard `RLIMIT_NPROC` when workers run as their own uid;
   * 0 for none. Forking cannot multiply it.
   */
  processes: number;
  /**
   * Memory of one sandbox as a whole (the cgroup's memory limit), in bytes; 0 for none. Unlike
   * `memoryBytes`, which bounds each process, forking cannot multiply it.
   */
  sandboxMemoryBytes: number;
  /**
   * Bytes of flow-controlled stdout (`streamStdout`) one run may produce; beyond it the run is
   * killed and reported truncated, like `outputBytes`.
   */
  streamBytes: number;
}

/** All limits of a launcher. */
export interface LauncherLimits extends SessionLimits {
  /** Runs that execute at once across all sessions. */
  maxWorkersTotal: number;
  /** Runs that may wait for a free slot; one more is refused with `QUEUE_FULL`. */
  maxQueue: number;
}

/** The default limits. */
export const DEFAULT_LIMITS: Readonly<LauncherLimits> = Object.freeze({
  wallTimeMs: 60_000,
  interactiveTimeMs: 3_600_000,
  maxWorkersPerSession: 4,
  maxWorkersTotal: 16,
  maxQueue: 64,
  memoryBytes: 2 * 1024 ** 3,
  outputBytes: 16 * 1024 ** 2,
  processes: 512,
  sandboxMemoryBytes: 8 * 1024 ** 3,
  streamBytes: 16 * 1024 ** 3,
});

/** A plain description of a session, as the session store knows it. */
export interface SessionSpec {
  /** Opaque unique id of the (user, session) pair. */
  key: string;
  /**
   * Absolute path of the session's directory: the worker's working directory, laid out as
   * Spark's executors see it (`./x.py`, `./env/`, `./lib.zip`).
   */
  root: string;
  /** Entries relative to `root` put on `sys.path` right after `root` (`.zip`/`.egg` pyfiles). */
  pythonPath: string[];
  /**
   * Absolute directories outside `root` that hold what `root` links to and the worker must not
   * change (the session's view of its artifacts: hard links to shared blobs). The sandbox binds
   * them read-only at the same path. The caller guarantees that no worker can write them or
   * change the path leading to them; they are never inside `root`.
   * @default {[]}
   */
  readOnlyDirs?: string[];
  /**
   * Absolute paths outside `root` (shared unpacked environments, by their store paths) that the
   * session links to. The sandbox binds them read-only at the same path. Same guarantee as
   * `readOnlyDirs`.
   * @default {[]}
   */
  sharedTrees?: string[];
  /**
   * Absolute directories outside `root` of installed packages (the session's pip layers, by
   * their store paths), put on `sys.path` right after the `pythonPath` entries, in this order,
   * and bound read-only at the same path. Same guarantee as `readOnlyDirs`.
   * @default {[]}
   */
  layers?: string[];
  /**
   * Absolute paths of trusted files outside `root` (a program the server runs in the sandbox,
   * such as its package installer), bound read-only at the same path. Same guarantee as
   * `readOnlyDirs`.
   * @default {[]}
   */
  readOnlyFiles?: string[];
  /**
   * A Unix socket of the server's (its package-index proxy), bound at the same path: with the
   * sandbox's own network namespace kept, the only way out of it. Never a socket a session
   * could have made.
   * @default {undefined} none
   */
  proxySocket?: string;
  /**
   * Host uid and gid the session's workers run as. Needs a launcher running as root, which
   * then never runs a session's code as root: the sandbox is set up with the server's rights
   * and the worker dropped to this id before its interpreter starts. `root` must be writable by
   * it.
   * @default {undefined} the launcher's own user
   */
  worker?: { uid: number; gid: number };
  /**
   * The session's `spark.pythonWorkerEnv.<NAME>` entries, added to the fixed base environment.
   * @default {{}}
   */
  env?: Record<string, string>;
  /**
   * The raw value of `spark.sql.execution.pyspark.python`: relative paths resolve inside
   * `root`, absolute ones must be allowed by the launcher; a `.pex` runs as the interpreter.
   * @default {the launcher's `defaultPython`}
   */
  interpreter?: string;
  /**
   * Per-session overrides of the launcher's limits.
   * @default {{}}
   */
  limits?: Partial<SessionLimits>;
}

/**
 * What to run: exactly one of `code`, `module`, `script`; or none of them with
 * {@linkcode RunSpec.repl} (Python's console alone).
 */
export type RunTarget =
  | { code: string; module?: undefined; script?: undefined }
  | { module: string; code?: undefined; script?: undefined }
  | { script: string; code?: undefined; module?: undefined }
  | { code?: undefined; module?: undefined; script?: undefined; repl: true };

/** One run request. */
export type RunSpec = RunTarget & {
  /**
   * `sys.argv[1:]`.
   * @default {[]}
   */
  args?: string[];
  /**
   * Bytes on the program's standard input, which is then closed. An async iterable is
   * streamed with backpressure (at most about 1 MiB in flight; the iterable is pulled only as
   * the program reads) and stdin is closed when it ends; if it throws, the run is killed.
   * @default {empty}
   */
  stdin?: Uint8Array | AsyncIterable<Uint8Array>;
  /**
   * Flow-control stdout: the program blocks in `write()` while more than about 1 MiB of
   * `stdout` events are produced but not yet taken by the consumer (taking = asking the
   * iterator for the next event), and stdout counts toward `streamBytes` instead of
   * `outputBytes` (stderr still does). For bulk data on stdout.
   * @default {false}
   */
  streamStdout?: boolean;
  /**
   * For bulk data both ways (streamed `stdin` and `streamStdout`): the program's stdin and stdout
   * are one Unix socket to the server instead of pipes relayed by the fork server (fewer copies
   * of every byte). Stdout keeps its window and its `streamBytes` cap; stderr is still piped, so
   * its order relative to stdout is not kept. The stdin chunks are written as they are, not
   * copied: their memory must not be reused. Ignored for other runs.
   * @default {false}
   */
  directStdio?: boolean;
  /**
   * Wall-clock limit in ms; 0 or absent means the session's `wallTimeMs` (`interactiveTimeMs`
   * for an interactive run), larger values are capped to it.
   * @default {0}
   */
  timeoutMs?: number;
  /**
   * Like `python -i`: after the target (or alone, without one), Python's interactive console
   * reads stdin in the target's globals, writing prompts so that they show without a terminal.
   * From the console on, stderr goes to the stdout pipe, so prompts, results and tracebacks
   * arrive in the order they were written.
   * @default {false}
   */
  repl?: boolean;
  /**
   * A person types the run's stdin: its wall-clock limit is `interactiveTimeMs`, not
   * `wallTimeMs`.
   * @default {false}
   */
  interactive?: boolean;
  /**
   * Interrupts the run (SIGINT to its process group, as Ctrl-C on a terminal does).
   * @default {undefined}
   */
  control?: RunControl;
};

/** The worker has started. */
export interface RunStartedEvent {
  /** Discriminant. */
  kind: "started";
  /** The run's pid (inside the sandbox's PID namespace when sandboxed). */
  pid: number;
  /** The interpreter as resolved on the server. */
  interpreter: string;
  /** The working directory as the worker sees it. */
  cwd: string;
}

/** Bytes the worker wrote. */
export interface RunOutputEvent {
  /** Which stream. */
  kind: "stdout" | "stderr";
  /** The bytes, as produced. */
  data: Uint8Array;
}

/** The worker has ended; always the last event. */
export interface RunExitedEvent {
  /** Discriminant. */
  kind: "exited";
  /** Exit code, or -1 when killed by a signal. */
  exitCode: number;
  /** Signal name such as `"SIGKILL"` when killed by a signal, else `""`. */
  signal: string;
  /** From sending the run to its end, in ms. */
  durationMs: number;
  /** Killed because it ran past its time limit. */
  timedOut: boolean;
  /** Output beyond the limit was dropped (and the run killed). */
  outputTruncated: boolean;
}

/** One event of a run, 1:1 with `valise.v1.RunEvent`. */
export type RunEvent = RunStartedEvent | RunOutputEvent | RunExitedEvent;

/** Receives the launcher's diagnostics. */
export type LauncherLogger = (
  level: "info" | "warn" | "error",
  message: string,
  fields: Record<string, unknown>,
) => void;

/** Options of {@linkcode Launcher}. */
export interface LauncherOptions {
  /**
   * Interpreter of sessions that set none: a name looked up on the server's `PATH`, or a path.
   * The launcher starts workers with its real `sys.executable` (so a pyenv shim is skipped).
   * @default {"python3"}
   */
  defaultPython?: string;
  /**
   * Absolute interpreter paths a session may name in `spark.sql.execution.pyspark.python`.
   * @default {[]}
   */
  allowedInterpreters?: string[];
  /**
   * `"bwrap"` sandboxes every worker (and throws `SANDBOX_UNAVAILABLE` if it cannot),
   * `"none"` does not, `"auto"` does when `bwrap` is found and works.
   * @default {"auto"}
   */
  sandbox?: "auto" | "bwrap" | "none";
  /**
   * The bwrap executable.
   * @default {"bwrap" on PATH}
   */
  bwrapPath?: string;
  /**
   * Give sandboxed workers the host's network.
   * @default {false}
   */
  workerNetwork?: boolean;
  /**
   * Directory the server owns where `.pex` interpreters unpack (`PEX_ROOT`), one subdirectory
   * per session.
   * @default {a temporary directory, removed by close()}
   */
  pexRoot?: string;
  /**
   * Limits; sessions may override the {@linkcode SessionLimits} part.
   * @default {DEFAULT_LIMITS}
   */
  limits?: Partial<LauncherLimits>;
  /**
   * A fork server with no run for this long is stopped.
   * @default {300000}
   */
  forkServerIdleMs?: number;
  /**
   * Time an interpreter has to start its fork server before `INTERPRETER_FAILED`.
   * @default {30000}
   */
  startTimeoutMs?: number;
  /**
   * Receives diagnostics.
   * @default {warnings and errors to console.error}
   */
  logger?: LauncherLogger;
  /**
   * Directories no worker may see beyond what a session's binds show (the server's data
   * directory). An allowed interpreter whose home contains one of them is refused.
   * @default {[]}
   */
  protectedPaths?: string[];
  /**
   * `"auto"` puts each sandbox in a cgroup with `sandboxMemoryBytes` and `processes` as its
   * limits when the launcher runs as root and finds a writable cgroup hierarchy (v2, else v1);
   * `"none"` never does.
   * @default {"auto"}
   */
  cgroups?: "auto" | "none";
  /**
   * Fork servers kept alive across all sessions; beyond it the least recently used idle ones
   * are stopped. Each session keeps at most one idle fork server: one whose session changed
   * (new artifacts, interpreter or environment) is stopped as soon as its runs end.
   * @default {64}
   */
  maxForkServers?: number;
}

/** Counters of a launcher, for health checks. */
export interface LauncherStats {
  /** Fork server processes alive or starting. */
  forkServers: number;
  /** Fork servers started since the launcher was created. */
  forkServersStarted: number;
  /** Runs holding a slot. */
  running: number;
  /** Runs waiting for a slot. */
  queued: number;
  /** Host pids of the fork server processes (bwrap's when sandboxed). */
  pids: number[];
}
