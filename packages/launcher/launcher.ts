// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * {@linkcode Launcher}: runs Python for a session, in the session's directory, interpreter and
 * path, optionally sandboxed with bubblewrap, through a warm fork server per (session,
 * interpreter). The pieces: `_interpreters.ts` (which interpreter, and what of the host it may
 * see), `_pool.ts` (fork servers and how each is started), `_slots.ts` (concurrency and the
 * queue), `_checks.ts` (what callers hand in), `_sandbox.ts` and `_cgroup.ts` (the confinement).
 *
 * @module
 */
import { Cgroups } from "./_cgroup.ts";
import { checkRequest, checkSession, positiveInt, validateLimits } from "./_checks.ts";
import type { RunHandle } from "./_fork_server.ts";
import { type DefaultInterpreter, inside, Interpreters } from "./_interpreters.ts";
import { ForkServerPool, type PoolEntry } from "./_pool.ts";
import { findExecutable, probeBwrap, SYSTEM_DIRS } from "./_sandbox.ts";
import { RunSlots } from "./_slots.ts";
import { attachRunControl } from "./run_control.ts";
import { LaunchError } from "./launch_error.ts";
import {
  DEFAULT_LIMITS,
  type LauncherLimits,
  type LauncherLogger,
  type LauncherOptions,
  type LauncherStats,
  type RunEvent,
  type RunSpec,
  type SessionSpec,
} from "./types.ts";

const defaultLogger: LauncherLogger = (level, message, fields) => {
  if (level === "info") return;
  const extra = Object.keys(fields).length ? ` ${JSON.stringify(fields)}` : "";
  console.error(`[valise launcher] ${level}: ${message}${extra}`);
};

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
  #setpriv: string | undefined;
  #cgroups: Cgroups | undefined;
  #noCgroups = "";
  #interpreters: Interpreters;
  #pool: ForkServerPool;
  #slots: RunSlots;
  #closed = false;
  #epochs = new Map<string, number>();

  /**
   * Checks the options and finds `bwrap` and the default interpreter. Logs once when workers
   * will not be sandboxed.
   *
   * @param options See {@linkcode LauncherOptions}.
   */
  constructor(options: LauncherOptions = {}) {
    this.#log = options.logger ?? defaultLogger;
    this.#limits = validateLimits(options.limits ?? {}, { ...DEFAULT_LIMITS });
    const idleMs = positiveInt("forkServerIdleMs", options.forkServerIdleMs ?? 300_000);
    const startTimeoutMs = positiveInt("startTimeoutMs", options.startTimeoutMs ?? 30_000);
    const maxForkServers = positiveInt("maxForkServers", options.maxForkServers ?? 64);
    let prlimit: string | undefined;
    if (Deno.build.os === "linux" && Deno.uid() === 0) {
      // Trusted programs under /usr, which every sandbox shows read-only.
      this.#setpriv = findExecutable("/usr/bin/setpriv", undefined);
      prlimit = findExecutable("/usr/bin/prlimit", undefined);
    }
    if (options.pexRoot !== undefined && !options.pexRoot.startsWith("/")) {
      throw new TypeError(`Cannot use pexRoot ${options.pexRoot}: the path is not absolute`);
    }
    const mode = options.sandbox ?? "auto";
    if (mode !== "none") {
      const bwrap = options.bwrapPath ?? findExecutable("bwrap", Deno.env.get("PATH"));
      const problem = bwrap === undefined
        ? "bwrap was not found on PATH"
        : probeBwrap(bwrap, this.#setpriv);
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
    this.#interpreters = new Interpreters({
      defaultName: options.defaultPython ?? "python3",
      allowed: options.allowedInterpreters ?? [],
      protectedPaths: options.protectedPaths ?? [],
      log: this.#log,
      warnUnreachable: !this.#bwrap && this.#setpriv !== undefined,
    });
    if ((options.cgroups ?? "auto") === "auto") {
      const found = Cgroups.detect();
      if (typeof found === "string") this.#noCgroups = found;
      else this.#cgroups = found;
    } else {
      this.#noCgroups = "cgroups are set to none";
    }
    this.#pool = new ForkServerPool({
      log: this.#log,
      interpreters: this.#interpreters,
      bwrap: this.#bwrap,
      setpriv: this.#setpriv,
      prlimit,
      cgroups: this.#cgroups,
      network: options.workerNetwork ?? false,
      idleMs,
      startTimeoutMs,
      maxForkServers,
      pexRoot: options.pexRoot,
    });
    this.#slots = new RunSlots(this.#limits.maxWorkersTotal, this.#limits.maxQueue);
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

  /** Whether the launcher can run a session's workers as another uid (it runs as root). */
  get canDropPrivileges(): boolean {
    return this.#setpriv !== undefined;
  }

  /**
   * Finds the default interpreter's real path (logging, once, a problem workers would have
   * with it); a server calls it at start so that a bad default shows then, not at a first run.
   *
   * @returns The interpreter's real path.
   */
  defaultInterpreter(): Promise<string> {
    return this.#interpreters.defaultPython();
  }

  /**
   * The default interpreter's real path and version (for a server's start-up report).
   *
   * @returns Path and version.
   */
  defaultInterpreterInfo(): Promise<DefaultInterpreter> {
    return this.#interpreters.defaultInfo();
  }

  /**
   * The interpreter a session's workers run, resolved as a run would resolve it, for a server
   * that runs tools for that interpreter (a package installer). `trusted` says whether it lies
   * outside the session (the default, the allow-list, or the default running a `.pex`): only a
   * trusted one may be run with the server's rights; the others only in a sandbox.
   *
   * @param session The session.
   * @returns Its path (`display`), the program that is executed, whether it is a `.pex`, and
   *   whether it is trusted.
   * @throws {LaunchError} As a run would, when it cannot or may not be used.
   */
  async interpreterOf(
    session: SessionSpec,
  ): Promise<{ path: string; exe: string; pex: boolean; trusted: boolean }> {
    const root = checkSession(session, this.#setpriv !== undefined);
    const i = await this.#interpreters.resolve(session, root);
    return { path: i.display, exe: i.exe, pex: i.pex, trusted: !inside(root, i.exe) };
  }

  /**
   * Host directories an interpreter link of a session's environment may lead into and still
   * run: the system directories and the homes of the default and allowed interpreters (the
   * rule `interpreterOf()` applies to a link inside the session).
   *
   * @returns The directories.
   */
  async interpreterHomes(): Promise<string[]> {
    return [...SYSTEM_DIRS, ...await this.#interpreters.trustedDirs()];
  }

  /** The absolute interpreters sessions may choose besides the default (`--allow-interpreter`). */
  get allowedInterpreters(): readonly string[] {
    return this.#interpreters.allowed;
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

  /**
   * Current counters.
   *
   * @returns Fork servers, running and queued runs.
   */
  stats(): LauncherStats {
    return { ...this.#pool.stats(), running: this.#slots.running, queued: this.#slots.queued };
  }

  /**
   * How many runs of a session are executing now (holding a slot; not those queued).
   *
   * @param key The session's key.
   * @returns The count.
   */
  runningOf(key: string): number {
    return this.#slots.runningOf(key);
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
    const root = checkSession(session, this.#setpriv !== undefined);
    const limits = validateLimits(session.limits ?? {}, this.#limits);
    const job = checkRequest(root, session, request, limits);
    const epoch = this.#epochs.get(session.key) ?? 0;
    signal?.throwIfAborted();
    // Synchronous: a stat of a local directory takes microseconds, and an async op's round trip
    // through the runtime's thread pool is a tenth of a warm run (docs/BENCHMARKS.md).
    let rootInfo: Deno.FileInfo | undefined;
    try {
      rootInfo = Deno.statSync(root);
    } catch {
      rootInfo = undefined;
    }
    if (!rootInfo?.isDirectory) {
      throw new LaunchError(
        "SESSION_DIR_MISSING",
        `Cannot run in session ${session.key}: ${root} is not a directory`,
      );
    }
    const interp = await this.#interpreters.resolve(session, root);
    await this.#slots.acquire(session.key, limits.maxWorkersPerSession, signal);
    let handle: RunHandle | undefined;
    let finished = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let entry: PoolEntry | undefined;
    let released = false;
    const onAbort = () => handle?.kill(false);
    let detach: (() => void) | undefined;
    // The slot and the timers belong to the process, not to this generator: they are let go
    // when the run has exited, even if the consumer stops iterating without return().
    const release = () => {
      if (released) return;
      released = true;
      clearTimeout(timer);
      detach?.();
      signal?.removeEventListener("abort", onAbort);
      this.#slots.release(session.key);
      if (entry) this.#pool.release(entry);
    };
    try {
      for (let attempt = 0;; attempt++) {
        // Checked right before a fork server may be created, so none outlives close().
        this.#checkEpoch(session.key, epoch);
        entry = this.#pool.claim(session, root, interp, limits);
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
      if (request.control && !released) detach = attachRunControl(request.control, h.interrupt);
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
    this.#slots.rejectQueued(
      (k) => k === key,
      () => new LaunchError("SESSION_STOPPED", `Cannot start run: session ${key} was stopped`),
    );
    await this.#pool.stopSession(key);
  }

  /**
   * Kills every run and fork server and refuses new runs.
   *
   * @returns Resolves when every process is gone.
   */
  async close(): Promise<void> {
    this.#closed = true;
    this.#slots.rejectQueued(
      () => true,
      () => new LaunchError("CLOSED", "Cannot start run: the launcher is closed"),
    );
    await this.#pool.close();
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
}
