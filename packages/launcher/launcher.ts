// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * {@linkcode Launcher}: runs Python for a session, in the session's directory, interpreter and
 * path, optionally sandboxed with bubblewrap, through a warm fork server per (session,
 * interpreter).
 *
 * @module
 */
import { dirname, isAbsolute, join, normalize, relative } from "node:path";
import { BOOTSTRAP_STUB } from "./_bootstrap.ts";
import { type CgroupHandle, Cgroups, enterCgroups } from "./_cgroup.ts";
import { ForkServer, type RunHandle, type RunRequestJson } from "./_fork_server.ts";
import {
  dropPrivileges,
  findExecutable,
  identityFiles,
  sandboxCommand,
  SYSTEM_DIRS,
  trustedInterpreterDirs,
  under,
} from "./_sandbox.ts";
import { LaunchError } from "./launch_error.ts";

/** The config key that names a session's interpreter; error messages cite it. */
export const INTERPRETER_CONFIG_KEY = "spark.sql.execution.pyspark.python";

/** Limits that a session may override. */
export interface SessionLimits {
  /** Wall-clock limit of one run, in ms; a run's own `timeoutMs` may only lower it. */
  wallTimeMs: number;
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

/** What to run: exactly one of `code`, `module`, `script`. */
export type RunTarget =
  | { code: string; module?: undefined; script?: undefined }
  | { module: string; code?: undefined; script?: undefined }
  | { script: string; code?: undefined; module?: undefined };

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
   * Wall-clock limit in ms; 0 or absent means the session's `wallTimeMs`, larger values are
   * capped to it.
   * @default {0}
   */
  timeoutMs?: number;
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

interface Waiter {
  key: string;
  max: number;
  resolve: () => void;
  reject: (e: unknown) => void;
}

interface ServerEntry {
  starting: Promise<ForkServer>;
  server: ForkServer | undefined;
  idleTimer: ReturnType<typeof setTimeout> | undefined;
  /** The session changed since it started: stop it when its runs end. */
  retiring: boolean;
  /** When a run last took or left it (for least-recently-used stopping). */
  lastUsed: number;
  /** Its cgroup, if any. */
  cgroup: CgroupHandle | undefined;
}

interface Interpreter {
  /** Reported in `started` and in errors. */
  display: string;
  /** The program that is executed. */
  exe: string;
  /** Arguments before `-c` (the `.pex`). */
  prefixArgs: string[];
  /** Whether it is a PEX. */
  pex: boolean;
}

const defaultLogger: LauncherLogger = (level, message, fields) => {
  if (level === "info") return;
  const extra = Object.keys(fields).length ? ` ${JSON.stringify(fields)}` : "";
  console.error(`[valise launcher] ${level}: ${message}${extra}`);
};

const STUB = BOOTSTRAP_STUB;

function inside(root: string, path: string): boolean {
  const rel = relative(root, path);
  return rel === "" || (!rel.startsWith("..") && !isAbsolute(rel));
}

function positiveInt(name: string, value: number, allowZero = false): number {
  if (!Number.isSafeInteger(value) || value < (allowZero ? 0 : 1)) {
    throw new RangeError(
      `Cannot use ${name}: ${value} is not a ${allowZero ? "non-negative" : "positive"} integer`,
    );
  }
  return value;
}

function validateLimits(limits: Partial<LauncherLimits>, base: LauncherLimits): LauncherLimits {
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

function abortable<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

/**
 * Runs Python workers for sessions.
 *
 * @example Run code in a session directory
 * ```ts
 * import { Launcher } from "@valise/launcher";
 * import assert from "node:assert/strict";
 * const root = await Deno.makeTempDir();
 * const launcher = new Launcher({ logger: () => {} });
 * let out = "";
 * for await (const ev of launcher.run({ key: "s1", root, pythonPath: [] }, { code: "print(6 * 7)" })) {
 *   if (ev.kind === "stdout") out += new TextDecoder().decode(ev.data);
 * }
 * assert.equal(out, "42\n");
 * await launcher.close();
 * await Deno.remove(root, { recursive: true });
 * ```
 */
export class Launcher {
  #limits: LauncherLimits;
  #log: LauncherLogger;
  #bwrap: string | undefined;
  #network: boolean;
  #allowed: Set<string>;
  #defaultName: string;
  #defaultFound: string | undefined;
  #defaultReal: Promise<string> | undefined;
  #pexRoot: string | undefined;
  #pexRootOwned = false;
  #pexRootOpen = false;
  #idleMs: number;
  #startTimeoutMs: number;
  #closed = false;
  #servers = new Map<string, Map<string, ServerEntry>>();
  #epochs = new Map<string, number>();
  #running = 0;
  #runningBySession = new Map<string, number>();
  #queue: Waiter[] = [];
  #pending = new Set<Promise<unknown>>();
  #protected: string[];
  #trustedDirs: string[] = [];
  #trustedFiles: string[] = [];
  #defaultDirs: Promise<string[]> | undefined;
  #cgroups: Cgroups | undefined;
  #noCgroups = "";
  #setpriv: string | undefined;
  #prlimit: string | undefined;
  #runtimeDir: string | undefined;
  #maxForkServers: number;
  #started = 0;

  /**
   * Checks the options and finds `bwrap` and the default interpreter. Logs once when workers
   * will not be sandboxed.
   *
   * @param options See {@linkcode LauncherOptions}.
   */
  constructor(options: LauncherOptions = {}) {
    this.#log = options.logger ?? defaultLogger;
    this.#limits = validateLimits(options.limits ?? {}, { ...DEFAULT_LIMITS });
    this.#idleMs = positiveInt("forkServerIdleMs", options.forkServerIdleMs ?? 300_000);
    this.#startTimeoutMs = positiveInt("startTimeoutMs", options.startTimeoutMs ?? 30_000);
    this.#network = options.workerNetwork ?? false;
    for (const p of options.allowedInterpreters ?? []) {
      if (!isAbsolute(p)) {
        throw new TypeError(`Cannot allow interpreter ${p}: the path is not absolute`);
      }
    }
    this.#allowed = new Set((options.allowedInterpreters ?? []).map((p) => normalize(p)));
    this.#maxForkServers = positiveInt("maxForkServers", options.maxForkServers ?? 64);
    this.#protected = (options.protectedPaths ?? []).map((p) => {
      if (!isAbsolute(p)) throw new TypeError(`Cannot protect ${p}: the path is not absolute`);
      return realOrNormal(p);
    });
    // The homes of allowed interpreters are what sandboxes bind for any interpreter: resolved
    // here, once, from the operator's paths, never from a session's files.
    for (const p of this.#allowed) {
      if (/\.pex$/i.test(p)) this.#trustedFiles.push(p);
      else this.#trustedDirs.push(...this.#checkTrusted(p, trustedInterpreterDirs(p)));
    }
    this.#trustedDirs = [...new Set(this.#trustedDirs)].sort();
    this.#defaultName = options.defaultPython ?? "python3";
    this.#defaultFound = findExecutable(this.#defaultName, Deno.env.get("PATH"));
    if (Deno.build.os === "linux" && Deno.uid() === 0) {
      // Trusted programs under /usr, which every sandbox shows read-only.
      this.#setpriv = findExecutable("/usr/bin/setpriv", undefined);
      this.#prlimit = findExecutable("/usr/bin/prlimit", undefined);
    }
    if ((options.cgroups ?? "auto") === "auto") {
      const found = Cgroups.detect();
      if (typeof found === "string") this.#noCgroups = found;
      else this.#cgroups = found;
    } else {
      this.#noCgroups = "cgroups are set to none";
    }
    if (options.pexRoot !== undefined) {
      if (!isAbsolute(options.pexRoot)) {
        throw new TypeError(`Cannot use pexRoot ${options.pexRoot}: the path is not absolute`);
      }
      this.#pexRoot = normalize(options.pexRoot);
    }
    const mode = options.sandbox ?? "auto";
    if (mode !== "none") {
      const bwrap = options.bwrapPath ?? findExecutable("bwrap", Deno.env.get("PATH"));
      const problem = bwrap === undefined ? "bwrap was not found on PATH" : Launcher.#probe(bwrap);
      if (problem === undefined) {
        this.#bwrap = bwrap;
      } else if (mode === "bwrap") {
        throw new LaunchError("SANDBOX_UNAVAILABLE", `Cannot sandbox workers: ${problem}`);
      } else {
        this.#log("warn", `workers are not sandboxed: ${problem}`, {});
      }
    } else {
      this.#log("warn", "workers are not sandboxed: sandbox is set to none", {});
    }
  }

  static #probe(bwrap: string): string | undefined {
    try {
      const out = new Deno.Command(bwrap, {
        // The flags the sandboxes use, so an old bwrap without one is caught here.
        args: [
          "--unshare-all",
          "--unshare-pid",
          "--as-pid-1",
          "--die-with-parent",
          "--new-session",
          "--cap-drop",
          "ALL",
          "--ro-bind",
          "/",
          "/",
          "--tmpfs",
          "/tmp",
          "--perms",
          "0111",
          "--dir",
          "/tmp/probe",
          "--remount-ro",
          "/",
          "--",
          "true",
        ],
        stdin: "null",
        stdout: "null",
        stderr: "piped",
      }).outputSync();
      if (out.success) return undefined;
      return `${bwrap} does not work here: ${new TextDecoder().decode(out.stderr).trim()}`;
    } catch (e) {
      return `${bwrap} cannot run: ${e instanceof Error ? e.message : String(e)}`;
    }
  }

  /** Whether workers run inside bubblewrap. */
  get sandboxed(): boolean {
    return this.#bwrap !== undefined;
  }

  /**
   * How each sandbox's memory and process count are bounded as a whole: `"cgroup v2"`,
   * `"cgroup v1"`, or why no cgroup is used (then only per-process limits hold, and a hard
   * `RLIMIT_NPROC` when workers run as their own uid).
   */
  get containment(): string {
    return this.#cgroups ? `cgroup ${this.#cgroups.version}` : `no cgroups: ${this.#noCgroups}`;
  }

  /**
   * Finds the default interpreter's real path (logging, once, a problem workers would have
   * with it); a server calls it at start so that a bad default shows then, not at a first run.
   *
   * @returns The interpreter's real path.
   */
  defaultInterpreter(): Promise<string> {
    return this.#defaultPython();
  }

  /**
   * Kills every process of these uids: at start, what a crashed server's sandboxes left (a
   * hostile interpreter can keep its sandbox alive after the server dies; its uid says whose
   * it is). Only for uids the caller gave to its own sessions' workers.
   *
   * @param uids Worker uids.
   * @returns How many processes were killed.
   */
  killWorkersOf(uids: Iterable<number>): number {
    const wanted = new Set(uids);
    if (wanted.size === 0 || this.#setpriv === undefined) return 0;
    let killed = 0;
    for (const e of Deno.readDirSync("/proc")) {
      if (!/^\d+$/.test(e.name)) continue;
      let status: string;
      try {
        status = Deno.readTextFileSync(`/proc/${e.name}/status`);
      } catch {
        continue;
      }
      const uid = Number(/^Uid:\s+(\d+)/m.exec(status)?.[1]);
      if (!wanted.has(uid)) continue;
      try {
        Deno.kill(Number(e.name), "SIGKILL");
        killed++;
      } catch {
        // already gone
      }
    }
    return killed;
  }

  /** Whether the launcher can run a session's workers as another uid (it runs as root). */
  get canDropPrivileges(): boolean {
    return this.#setpriv !== undefined;
  }

  #checkTrusted(interpreter: string, dirs: string[]): string[] {
    for (const d of dirs) {
      const bad = this.#protected.find((p) => under(p, d) || under(d, p));
      if (bad !== undefined) {
        throw new TypeError(
          `Cannot allow interpreter ${interpreter}: its directory ${d} overlaps ${bad}, which ` +
            `workers must not see; install the interpreter elsewhere`,
        );
      }
    }
    return dirs;
  }

  /**
   * Current counters.
   *
   * @returns Fork servers, running and queued runs.
   */
  stats(): LauncherStats {
    let forkServers = 0;
    const pids: number[] = [];
    for (const m of this.#servers.values()) {
      forkServers += m.size;
      for (const e of m.values()) if (e.server && !e.server.dead) pids.push(e.server.pid);
    }
    return {
      forkServers,
      forkServersStarted: this.#started,
      running: this.#running,
      queued: this.#queue.length,
      pids,
    };
  }

  /**
   * Runs Python in a session. Events stream as they are produced and end with `exited`.
   * Breaking out of the loop, or aborting `signal`, kills the run.
   *
   * Throws (on iteration) a {@linkcode LaunchError} when the interpreter cannot be used, the
   * queue is full, the session is stopped or the launcher closed before the run started;
   * `TypeError`/`RangeError` for a malformed request; `signal.reason` when aborted before
   * the run started.
   *
   * @param session The session.
   * @param request What to run.
   * @param signal Cancels the run (kills its process group).
   * @returns The run's events.
   */
  async *run(
    session: SessionSpec,
    request: RunSpec,
    signal?: AbortSignal,
  ): AsyncGenerator<RunEvent, void, undefined> {
    if (this.#closed) throw new LaunchError("CLOSED", "Cannot run: the launcher is closed");
    const root = this.#checkSession(session);
    const limits = validateLimits(session.limits ?? {}, this.#limits);
    const job = this.#checkRequest(root, session, request, limits);
    const epoch = this.#epochs.get(session.key) ?? 0;
    signal?.throwIfAborted();
    const rootInfo = await Deno.stat(root).catch(() => undefined);
    if (!rootInfo?.isDirectory) {
      throw new LaunchError(
        "SESSION_DIR_MISSING",
        `Cannot run in session ${session.key}: ${root} is not a directory`,
      );
    }
    const interp = await this.#resolveInterpreter(session, root);
    await this.#acquire(session.key, limits.maxWorkersPerSession, signal);
    let handle: RunHandle | undefined;
    let finished = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let entry: ServerEntry | undefined;
    let released = false;
    const onAbort = () => handle?.kill(false);
    // The slot and the timers belong to the process, not to this generator: they are let go
    // when the run has exited, even if the consumer stops iterating without return().
    const release = () => {
      if (released) return;
      released = true;
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      this.#release(session.key);
      if (entry) this.#maybeIdle(entry);
    };
    try {
      for (let attempt = 0;; attempt++) {
        // Checked right before a fork server may be created, so none outlives close().
        this.#checkEpoch(session.key, epoch);
        entry = this.#entry(session, root, interp, limits);
        if (entry.idleTimer !== undefined) clearTimeout(entry.idleTimer);
        entry.idleTimer = undefined;
        const server = await abortable(entry.starting, signal);
        this.#checkEpoch(session.key, epoch);
        if (!server.dead || attempt > 0) {
          handle = server.start(job.request, job.stdin, {
            outputBytes: limits.outputBytes,
            streamBytes: limits.streamBytes,
            interpreter: interp.display,
            cwd: root,
            onExit: release,
            flow: job.request.flow ?? false,
          });
          break;
        }
      }
      const h = handle;
      timer = setTimeout(() => h.kill(true), job.timeoutMs);
      signal?.addEventListener("abort", onAbort, { once: true });
      if (signal?.aborted) onAbort();
      if (job.stream) this.#pump(h, job.stream, session.key);
      const flow = job.request.flow ?? false;
      while (true) {
        const ev = await h.events.next();
        if (ev === undefined) break;
        if (ev.kind === "exited") finished = true;
        yield ev;
        if (flow && ev.kind === "stdout") h.ack(ev.data.length);
      }
      finished = true;
    } finally {
      if (!handle) release();
      else if (!finished) handle.kill(false);
    }
  }

  /**
   * Kills the session's runs (their whole process groups) and fork servers; runs still
   * waiting for a slot fail with `SESSION_STOPPED`. Later runs of the session start afresh.
   *
   * @param key The session's key.
   * @returns Resolves when every process of the session is gone.
   */
  async stopSession(key: string): Promise<void> {
    this.#epochs.set(key, (this.#epochs.get(key) ?? 0) + 1);
    this.#rejectQueued(
      (w) => w.key === key,
      () => new LaunchError("SESSION_STOPPED", `Cannot start run: session ${key} was stopped`),
    );
    const entries = this.#servers.get(key);
    this.#servers.delete(key);
    if (entries) await Promise.all([...entries.values()].map((e) => this.#stopEntry(e)));
    // What a .pex unpacked for this session goes with it (the processes are gone now).
    if (this.#pexRoot !== undefined) {
      await Deno.remove(join(this.#pexRoot, `s-${hashKey(key)}`), { recursive: true }).catch(
        () => {},
      );
    }
  }

  /**
   * Kills every run and fork server and refuses new runs.
   *
   * @returns Resolves when every process is gone.
   */
  async close(): Promise<void> {
    if (this.#closed) {
      await Promise.all(this.#pending);
      return;
    }
    this.#closed = true;
    this.#rejectQueued(
      () => true,
      () => new LaunchError("CLOSED", "Cannot start run: the launcher is closed"),
    );
    const all: ServerEntry[] = [];
    for (const m of this.#servers.values()) all.push(...m.values());
    this.#servers.clear();
    await Promise.all(all.map((e) => this.#stopEntry(e)));
    await Promise.all(this.#pending);
    if (this.#pexRootOwned && this.#pexRoot) {
      await Deno.remove(this.#pexRoot, { recursive: true }).catch(() => {});
    }
    if (this.#runtimeDir) await Deno.remove(this.#runtimeDir, { recursive: true }).catch(() => {});
    await this.#cgroups?.close();
  }

  async #stopEntry(entry: ServerEntry): Promise<void> {
    if (entry.idleTimer !== undefined) clearTimeout(entry.idleTimer);
    entry.idleTimer = undefined;
    let server: ForkServer;
    try {
      server = await entry.starting;
    } catch {
      return;
    }
    await server.stop();
  }

  #checkSession(session: SessionSpec): string {
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
    for (const p of [...(session.readOnlyDirs ?? []), ...(session.sharedTrees ?? [])]) {
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
      if (this.#setpriv === undefined) {
        throw new LaunchError(
          "SANDBOX_UNAVAILABLE",
          "Cannot run a session's workers as their own uid: the launcher is not root (or " +
            "/usr/bin/setpriv is missing)",
        );
      }
    }
    return root;
  }

  #checkRequest(
    root: string,
    session: SessionSpec,
    request: RunSpec,
    limits: LauncherLimits,
  ): {
    request: RunRequestJson;
    stdin: Uint8Array;
    stream: AsyncIterable<Uint8Array> | undefined;
    timeoutMs: number;
  } {
    const targets = (["code", "module", "script"] as const).filter((k) =>
      typeof request[k] === "string"
    );
    if (targets.length !== 1) {
      throw new TypeError(
        `Cannot run: exactly one of code, module, script must be set, got ${targets.length}`,
      );
    }
    const kind = targets[0] as "code" | "module" | "script";
    let target = request[kind] as string;
    const path = [root];
    for (const p of session.pythonPath) {
      const abs = normalize(join(root, p));
      if (isAbsolute(p) || !inside(root, abs)) {
        throw new RangeError(`Cannot put ${p} on sys.path: it is not inside the session`);
      }
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
    const timeoutMs = asked === 0 ? limits.wallTimeMs : Math.min(asked, limits.wallTimeMs);
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
    if (request.streamStdout) json.flow = true;
    return {
      request: json,
      stdin: stream ? new Uint8Array() : raw as Uint8Array,
      stream,
      timeoutMs,
    };
  }

  #pump(h: RunHandle, source: AsyncIterable<Uint8Array>, key: string): void {
    // Not tracked in #pending: a source that never yields again must not hold up close().
    (async () => {
      try {
        for await (const chunk of source) {
          if (!(chunk instanceof Uint8Array)) {
            throw new TypeError("Cannot stream stdin: a chunk is not a Uint8Array");
          }
          if (!(await h.writeStdin(chunk))) return;
        }
        h.endStdin();
      } catch (e) {
        // The source's owner sees its own failure; for the server it is not a fault.
        this.#log("info", "stdin source failed; killing the run", {
          session: key,
          error: e instanceof Error ? e.message : String(e),
        });
        h.kill(false);
      }
    })();
  }

  #checkEpoch(key: string, epoch: number): void {
    if ((this.#epochs.get(key) ?? 0) !== epoch) {
      throw new LaunchError("SESSION_STOPPED", `Cannot start run: session ${key} was stopped`);
    }
    if (this.#closed) throw new LaunchError("CLOSED", "Cannot start run: the launcher is closed");
  }

  #defaultPython(): Promise<string> {
    if (this.#defaultReal) return this.#defaultReal;
    const found = this.#defaultFound;
    const name = this.#defaultName;
    if (found === undefined) {
      return Promise.reject(
        new LaunchError(
          "INTERPRETER_NOT_FOUND",
          `Cannot find the default interpreter ${name} on PATH (set ${INTERPRETER_CONFIG_KEY} or the server's default)`,
          { interpreter: name },
        ),
      );
    }
    const probe = (async () => {
      // A pyenv shim or wrapper script costs tens of ms per start and needs its own tree;
      // ask the interpreter where it really lives.
      const out = await new Deno.Command(found, {
        args: ["-c", "import sys; sys.stdout.write(sys.executable)"],
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
      const exe = new TextDecoder().decode(out.stdout).trim();
      if (!out.success || !isAbsolute(exe)) {
        throw new LaunchError(
          "INTERPRETER_FAILED",
          `Cannot start the default interpreter ${found}: ${
            new TextDecoder().decode(out.stderr).trim() || `exit code ${out.code}`
          }`,
          { interpreter: found },
        );
      }
      if (!this.#bwrap && this.#setpriv) {
        const closed = closedToOthers(exe);
        if (closed) {
          this.#log(
            "warn",
            `workers run as their own uids without a sandbox and cannot reach the default ` +
              `interpreter ${exe} (${closed} is closed to other users): choose one they can ` +
              `reach (--python /usr/bin/python3), or use the sandbox`,
            {},
          );
        }
      }
      return exe;
    })();
    this.#defaultReal = probe;
    probe.catch(() => this.#defaultReal = undefined);
    return probe;
  }

  async #resolveInterpreter(session: SessionSpec, root: string): Promise<Interpreter> {
    const raw = session.interpreter?.trim() ?? "";
    if (raw === "") {
      const exe = await this.#defaultPython();
      return { display: exe, exe, prefixArgs: [], pex: false };
    }
    let path: string;
    if (isAbsolute(raw)) {
      path = normalize(raw);
      const allowed = this.#allowed.has(path) || path === this.#defaultFound ||
        path === (await this.#defaultPython().catch(() => undefined));
      if (!allowed) {
        throw new LaunchError(
          "INTERPRETER_NOT_ALLOWED",
          `Cannot use interpreter ${raw} from ${INTERPRETER_CONFIG_KEY}: absolute interpreter paths must be on the server's allow-list`,
          { interpreter: raw },
        );
      }
    } else {
      path = normalize(join(root, raw));
      if (!inside(root, path) || path === root) {
        throw new LaunchError(
          "INTERPRETER_OUTSIDE_SESSION",
          `Cannot use interpreter ${raw} from ${INTERPRETER_CONFIG_KEY}: the path leaves the session directory`,
          { interpreter: raw },
        );
      }
    }
    const pex = /\.pex$/i.test(path);
    let st: Deno.FileInfo | undefined;
    try {
      st = await Deno.stat(path);
    } catch {
      st = undefined;
    }
    const usable = st !== undefined &&
      (pex ? st.isFile || st.isDirectory : st.isFile && ((st.mode ?? 0o755) & 0o111) !== 0);
    if (!usable) {
      const why = st === undefined
        ? "does not exist"
        : pex
        ? "is not a file or directory"
        : st.isFile
        ? "is not executable"
        : "is not a file";
      throw new LaunchError(
        "INTERPRETER_NOT_FOUND",
        `Cannot use interpreter ${path} from ${INTERPRETER_CONFIG_KEY}=${raw}: it ${why}`,
        { interpreter: path },
      );
    }
    if (!isAbsolute(raw)) await this.#checkResolves(session, root, raw, path);
    if (pex) {
      const exe = await this.#defaultPython();
      return { display: path, exe, prefixArgs: [path], pex: true };
    }
    return { display: path, exe: path, prefixArgs: [], pex: false };
  }

  /**
   * An interpreter inside the session may be a symlink (a venv's `bin/python`); where it leads
   * must be something a worker is shown: the session, its shared trees, the system, or an
   * allowed interpreter's home. The server resolves the link only to refuse early with a clear
   * message; what gets mounted never depends on it.
   */
  async #checkResolves(
    session: SessionSpec,
    root: string,
    raw: string,
    path: string,
  ): Promise<void> {
    let real: string;
    try {
      real = await Deno.realPath(path);
    } catch {
      real = "";
    }
    const visible = [
      realOrNormal(root),
      ...(session.readOnlyDirs ?? []).map(realOrNormal),
      ...(session.sharedTrees ?? []).map(realOrNormal),
      ...SYSTEM_DIRS,
      ...await this.#allTrustedDirs(),
      ...this.#trustedFiles,
    ];
    if (real !== "" && visible.some((d) => under(real, d))) return;
    throw new LaunchError(
      "INTERPRETER_NOT_ALLOWED",
      `Cannot use interpreter ${raw} from ${INTERPRETER_CONFIG_KEY}: it links to an ` +
        `interpreter outside the session that the server does not allow. Pack the interpreter ` +
        `inside the environment (conda-pack), or build the venv on an interpreter the server ` +
        `allows (its --allow-interpreter list)`,
      { interpreter: raw },
    );
  }

  /** Homes of the default interpreter and the allow-list. */
  async #allTrustedDirs(): Promise<string[]> {
    if (this.#defaultDirs === undefined) {
      this.#defaultDirs = this.#defaultPython().then((real) => {
        const dirs = new Set<string>();
        for (const p of [this.#defaultFound, real]) {
          if (p) { for (const d of this.#checkTrusted(p, trustedInterpreterDirs(p))) dirs.add(d); }
        }
        return [...dirs];
      });
      this.#defaultDirs.catch(() => this.#defaultDirs = undefined);
    }
    const defaults = await this.#defaultDirs.catch(() => [] as string[]);
    return [...new Set([...this.#trustedDirs, ...defaults])].sort();
  }

  /** A private directory for files the sandboxes bind (identity files), created on first use. */
  #runtime(): string {
    if (this.#runtimeDir === undefined) {
      this.#runtimeDir = Deno.makeTempDirSync({ prefix: "valise-run-" });
      Deno.chmodSync(this.#runtimeDir, 0o711);
    }
    return this.#runtimeDir;
  }

  #identity(uid: number, gid: number, home: string): { passwd: string; group: string } {
    const dir = join(this.#runtime(), `id-${uid}-${gid}-${hashKey(home)}`);
    const files = { passwd: join(dir, "passwd"), group: join(dir, "group") };
    try {
      Deno.statSync(files.group);
    } catch {
      const text = identityFiles(uid, gid, home);
      Deno.mkdirSync(dir, { recursive: true, mode: 0o755 });
      Deno.writeTextFileSync(files.passwd, text.passwd, { mode: 0o644 });
      Deno.writeTextFileSync(files.group, text.group, { mode: 0o644 });
    }
    return files;
  }

  #entry(
    session: SessionSpec,
    root: string,
    interp: Interpreter,
    limits: LauncherLimits,
  ): ServerEntry {
    const env: Record<string, string> = {
      PATH: `${dirname(interp.exe)}:/usr/local/bin:/usr/bin:/bin`,
      LANG: "C.UTF-8",
      PYTHONUNBUFFERED: "1",
      PYTHONNOUSERSITE: "1",
      HOME: root,
      ...session.env,
    };
    let pexDir: string | undefined;
    if (interp.pex) {
      pexDir = join(this.#ensurePexRoot(), `s-${hashKey(session.key)}`);
      env.PEX_INTERPRETER = "1";
      env.PEX_ROOT = pexDir;
    }
    const worker = this.#workerOf(session);
    const readOnlyDirs = (session.readOnlyDirs ?? []).map((p) => normalize(p));
    const sharedTrees = (session.sharedTrees ?? []).map((p) => normalize(p));
    const bounds = [limits.memoryBytes, limits.processes, limits.sandboxMemoryBytes];
    const fingerprint = JSON.stringify([
      root,
      interp,
      env,
      readOnlyDirs,
      sharedTrees,
      worker,
      bounds,
    ]);
    let byKey = this.#servers.get(session.key);
    if (!byKey) this.#servers.set(session.key, byKey = new Map());
    const existing = byKey.get(fingerprint);
    if (existing && !(existing.server?.dead ?? false)) return existing;
    this.#retire(byKey);
    // The session's environment reaches the interpreter only: env(1) sets it as the last step,
    // after any step that runs with the server's rights (sh, prlimit, bwrap, setpriv), so no
    // variable of the session (LD_PRELOAD, LD_AUDIT, LD_DEBUG_OUTPUT, …) can steer those.
    const command = [
      "/usr/bin/env",
      "-i",
      ...Object.entries(env).map(([k, v]) => `${k}=${v}`),
      interp.exe,
      ...interp.prefixArgs,
      "-c",
      STUB,
    ];
    const log = this.#log;
    const entry: ServerEntry = {
      server: undefined,
      idleTimer: undefined,
      starting: undefined!,
      retiring: false,
      lastUsed: performance.now(),
      cgroup: undefined,
    };
    const starting = (async () => {
      if (pexDir) {
        await Deno.mkdir(pexDir, { recursive: true, mode: 0o700 });
        if (worker) await Deno.chown(pexDir, worker.uid, worker.gid);
      }
      if (worker) await this.#ownRoot(root, worker);
      const prefix: string[] = [];
      if (this.#cgroups) {
        entry.cgroup = this.#cgroups.create({
          memoryBytes: limits.sandboxMemoryBytes,
          pids: limits.processes,
        });
        prefix.push(...enterCgroups(entry.cgroup.procs));
      }
      // Hard limits set before any of the session's code runs, so it cannot raise them.
      const rlimits = [
        "--core=0:0",
        ...(limits.memoryBytes > 0 ? [`--as=${limits.memoryBytes}:${limits.memoryBytes}`] : []),
        // Counted per uid: only meaningful for a uid of the session's own.
        ...(session.worker && limits.processes > 0
          ? [`--nproc=${limits.processes}:${limits.processes}`]
          : []),
      ];
      if (this.#prlimit) prefix.push(this.#prlimit, ...rlimits, "--");
      const dropTo = worker && this.#setpriv ? { ...worker, setpriv: this.#setpriv } : undefined;
      let full: string[];
      if (this.#bwrap) {
        const trusted = await this.#allTrustedDirs();
        const identity = this.#identity(
          dropTo?.uid ?? Deno.uid() ?? 0,
          dropTo?.gid ?? Deno.gid() ?? 0,
          root,
        );
        full = [
          ...prefix,
          ...sandboxCommand(this.#bwrap, {
            root,
            readOnlyDirs,
            sharedTrees,
            // Never a home that holds what the session's binds would otherwise keep apart.
            interpreterDirs: trusted.filter((d) =>
              ![root, ...readOnlyDirs, ...sharedTrees, ...this.#protected].some((b) =>
                under(b, d) || under(d, b)
              )
            ),
            interpreterFiles: interp.pex && !inside(root, interp.prefixArgs[0]!)
              ? [interp.prefixArgs[0]!]
              : [],
            writableDirs: pexDir ? [pexDir] : [],
            identity,
            network: this.#network,
            tmpBytes: limits.sandboxMemoryBytes > 0 ? limits.sandboxMemoryBytes : 2 ** 30,
            dropTo,
          }, command),
        ];
      } else {
        full = [...prefix, ...(dropTo ? dropPrivileges(dropTo) : []), ...command];
      }
      const server = new ForkServer({
        command: full,
        // The steps before the interpreter get only this, and run from "/": each run enters
        // its working directory itself.
        env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", LANG: "C.UTF-8" },
        cwd: "/",
        interpreter: interp.display,
        log,
        startTimeoutMs: this.#startTimeoutMs,
      });
      this.#started++;
      entry.server = server;
      server.done.then(() => {
        if (byKey.get(fingerprint) === entry) byKey.delete(fingerprint);
        if (byKey.size === 0 && this.#servers.get(session.key) === byKey) {
          this.#servers.delete(session.key);
        }
        if (entry.idleTimer !== undefined) clearTimeout(entry.idleTimer);
        entry.idleTimer = undefined;
        const p = (entry.cgroup?.remove() ?? Promise.resolve()).finally(() =>
          this.#pending.delete(p)
        );
        this.#pending.add(p);
      });
      try {
        const info = await server.ready;
        log("info", "fork server ready", { session: session.key, hostPid: server.pid, ...info });
      } catch (e) {
        await server.stop(0);
        throw e;
      }
      return server;
    })();
    entry.starting = starting;
    starting.catch(() => {
      if (byKey.get(fingerprint) === entry) byKey.delete(fingerprint);
    });
    byKey.set(fingerprint, entry);
    this.#bound();
    return entry;
  }

  /** The uid/gid a session's workers run as: its own, or nobody when the launcher is root. */
  #workerOf(session: SessionSpec): { uid: number; gid: number } | undefined {
    if (session.worker) return { uid: session.worker.uid, gid: session.worker.gid };
    return this.#setpriv ? { uid: 65534, gid: 65534 } : undefined;
  }

  /** Makes the session's working directory the worker's own (only the directory itself). */
  async #ownRoot(root: string, worker: { uid: number; gid: number }): Promise<void> {
    const st = await Deno.lstat(root);
    if (!st.isDirectory) {
      throw new LaunchError("SESSION_DIR_MISSING", `Cannot run: ${root} is not a directory`);
    }
    if (st.uid !== worker.uid || st.gid !== worker.gid) {
      await Deno.chown(root, worker.uid, worker.gid);
    }
  }

  /**
   * A session whose spec changed (new artifacts, interpreter, environment) never goes back to
   * its older fork servers: idle ones stop now, busy ones when their runs end.
   */
  #retire(byKey: Map<string, ServerEntry>): void {
    for (const e of byKey.values()) {
      e.retiring = true;
      if (e.server && !e.server.dead && e.server.activeRuns === 0) this.#stopLater(e);
    }
  }

  /** Keeps the number of fork servers bounded: the least recently used idle ones stop. */
  #bound(): void {
    const all: ServerEntry[] = [];
    for (const m of this.#servers.values()) all.push(...m.values());
    let over = all.filter((e) => !e.retiring).length - this.#maxForkServers;
    if (over <= 0) return;
    const idle = all.filter((e) =>
      !e.retiring && e.server && !e.server.dead && e.server.activeRuns === 0
    ).sort((a, b) => a.lastUsed - b.lastUsed);
    for (const e of idle) {
      if (over-- <= 0) break;
      e.retiring = true;
      this.#stopLater(e);
    }
  }

  #stopLater(entry: ServerEntry): void {
    if (entry.idleTimer !== undefined) clearTimeout(entry.idleTimer);
    entry.idleTimer = undefined;
    const p = this.#stopEntry(entry).finally(() => this.#pending.delete(p));
    this.#pending.add(p);
  }

  #ensurePexRoot(): string {
    if (this.#pexRoot === undefined) {
      this.#pexRoot = Deno.makeTempDirSync({ prefix: "valise-pex-" });
      this.#pexRootOwned = true;
    }
    if (this.#setpriv && !this.#pexRootOpen) {
      // Workers of other uids must reach their own subdirectory, but never list the others.
      Deno.mkdirSync(this.#pexRoot, { recursive: true });
      Deno.chmodSync(this.#pexRoot, 0o711);
      this.#pexRootOpen = true;
    }
    return this.#pexRoot;
  }

  #maybeIdle(entry: ServerEntry): void {
    const server = entry.server;
    entry.lastUsed = performance.now();
    if (!server || server.dead || server.activeRuns > 0 || this.#closed) return;
    if (entry.retiring) return this.#stopLater(entry);
    if (entry.idleTimer !== undefined) clearTimeout(entry.idleTimer);
    entry.idleTimer = setTimeout(() => {
      entry.idleTimer = undefined;
      if (server.activeRuns === 0) {
        const p = server.stop().finally(() => this.#pending.delete(p));
        this.#pending.add(p);
      }
    }, this.#idleMs);
  }

  #acquire(key: string, max: number, signal: AbortSignal | undefined): Promise<void> {
    if (this.#canRun(key, max)) {
      this.#take(key);
      return Promise.resolve();
    }
    if (this.#queue.length >= this.#limits.maxQueue) {
      return Promise.reject(
        new LaunchError(
          "QUEUE_FULL",
          `Cannot queue run: ${this.#queue.length} runs are waiting (maxQueue ${this.#limits.maxQueue}), ${this.#running} running`,
        ),
      );
    }
    return new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        const i = this.#queue.indexOf(waiter);
        if (i >= 0) this.#queue.splice(i, 1);
        reject(signal?.reason);
      };
      const waiter: Waiter = {
        key,
        max,
        resolve: () => {
          signal?.removeEventListener("abort", onAbort);
          resolve();
        },
        reject: (e) => {
          signal?.removeEventListener("abort", onAbort);
          reject(e);
        },
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#queue.push(waiter);
    });
  }

  #canRun(key: string, max: number): boolean {
    return this.#running < this.#limits.maxWorkersTotal &&
      (this.#runningBySession.get(key) ?? 0) < max;
  }

  #take(key: string): void {
    this.#running++;
    this.#runningBySession.set(key, (this.#runningBySession.get(key) ?? 0) + 1);
  }

  #release(key: string): void {
    this.#running--;
    const n = (this.#runningBySession.get(key) ?? 1) - 1;
    if (n === 0) this.#runningBySession.delete(key);
    else this.#runningBySession.set(key, n);
    for (let i = 0; i < this.#queue.length && this.#running < this.#limits.maxWorkersTotal;) {
      const w = this.#queue[i] as Waiter;
      if (this.#canRun(w.key, w.max)) {
        this.#queue.splice(i, 1);
        this.#take(w.key);
        w.resolve();
      } else {
        i++;
      }
    }
  }

  #rejectQueued(match: (w: Waiter) => boolean, error: () => Error): void {
    const keep: Waiter[] = [];
    for (const w of this.#queue) {
      if (match(w)) w.reject(error());
      else keep.push(w);
    }
    this.#queue = keep;
  }
}

function hashKey(key: string): string {
  // FNV-1a 64: a stable, filesystem-safe directory name for an opaque key.
  let h = 0xcbf29ce484222325n;
  for (const b of new TextEncoder().encode(key)) {
    h ^= BigInt(b);
    h = (h * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return h.toString(16).padStart(16, "0");
}

/** The real path of `p` when it exists, else its normal form. */
function realOrNormal(p: string): string {
  try {
    return Deno.realPathSync(p);
  } catch {
    return normalize(p);
  }
}

/** The first directory on the way to `file` that other users may not search, if any. */
function closedToOthers(file: string): string | undefined {
  for (let d = dirname(file); d !== "/"; d = dirname(d)) {
    try {
      if (((Deno.statSync(d).mode ?? 0o755) & 0o001) === 0) return d;
    } catch {
      return d;
    }
  }
  return undefined;
}
