// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Warm fork servers, one per (session, what the session looks like): how each is started (the
 * chain of cgroup, hard limits, sandbox and privilege drop), kept, retired when its session
 * changes, and bounded in number.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { dirname, join, normalize } from "node:path";
import { BOOTSTRAP_STUB } from "./_bootstrap.ts";
import { type CgroupHandle, type Cgroups, enterCgroups } from "./_cgroup.ts";
import { DataSocket } from "./_data_socket.ts";
import { ForkServer } from "./_fork_server.ts";
import { inside, type Interpreter, type Interpreters } from "./_interpreters.ts";
import { dropPrivileges, identityFiles, sandboxCommand, under } from "./_sandbox.ts";
import { LaunchError } from "./launch_error.ts";
import type { LauncherLimits, LauncherLogger, SessionSpec } from "./types.ts";

/** One fork server of the pool, started or starting. */
export interface PoolEntry {
  /** Resolves with the server once it is ready. */
  starting: Promise<ForkServer>;
  /** The server, once spawned. */
  server: ForkServer | undefined;
  idleTimer: ReturnType<typeof setTimeout> | undefined;
  /** The session changed since it started: stop it when its runs end. */
  retiring: boolean;
  /** When a run last took or left it (for least-recently-used stopping). */
  lastUsed: number;
  /** Its cgroup, if any. */
  cgroup: CgroupHandle | undefined;
}

/** How a {@linkcode ForkServerPool} starts fork servers. */
export interface PoolInit {
  /** Where diagnostics go. */
  log: LauncherLogger;
  /** The interpreters and their trusted homes. */
  interpreters: Interpreters;
  /** The bwrap program, when workers are sandboxed. */
  bwrap: string | undefined;
  /** The setpriv program, when the launcher is root and drops workers' privileges. */
  setpriv: string | undefined;
  /** The prlimit program, for hard limits set before a session's code runs. */
  prlimit: string | undefined;
  /** Control groups for each sandbox, when available. */
  cgroups: Cgroups | undefined;
  /** Give sandboxed workers the host's network. */
  network: boolean;
  /** A fork server with no run for this long is stopped. */
  idleMs: number;
  /** Time to the fork server's READY frame. */
  startTimeoutMs: number;
  /** Fork servers kept in total. */
  maxForkServers: number;
  /** Where `.pex` interpreters unpack; a temporary directory when undefined. */
  pexRoot: string | undefined;
}

/** A stable, file-system-safe name for an opaque session key. */
function hashKey(key: string): string {
  return createHash("sha256").update(key).digest("hex").slice(0, 16);
}

/** The launcher's fork servers. */
export class ForkServerPool {
  #init: PoolInit;
  #servers = new Map<string, Map<string, PoolEntry>>();
  #pending = new Set<Promise<unknown>>();
  #started = 0;
  #closed = false;
  #pexRoot: string | undefined;
  #pexRootOwned = false;
  #pexRootOpen = false;
  #runtimeDir: string | undefined;

  /** @param init How fork servers are started and bounded. */
  constructor(init: PoolInit) {
    this.#init = init;
    this.#pexRoot = init.pexRoot;
  }

  /** Fork servers alive or starting, those started so far, and their host pids. */
  stats(): { forkServers: number; forkServersStarted: number; pids: number[] } {
    let forkServers = 0;
    const pids: number[] = [];
    for (const m of this.#servers.values()) {
      forkServers += m.size;
      for (const e of m.values()) if (e.server && !e.server.dead) pids.push(e.server.pid);
    }
    return { forkServers, forkServersStarted: this.#started, pids };
  }

  /**
   * The fork server for a session as it is now: the one already started for the same spec, or
   * a new one (the session's older ones then retire).
   *
   * @param session The session.
   * @param root Its normalized root.
   * @param interp Its interpreter.
   * @param limits Its limits.
   * @returns The entry; await `starting` for the server. Claimed: no idle stop until released.
   */
  claim(
    session: SessionSpec,
    root: string,
    interp: Interpreter,
    limits: LauncherLimits,
  ): PoolEntry {
    const entry = this.#entry(session, root, interp, limits);
    if (entry.idleTimer !== undefined) clearTimeout(entry.idleTimer);
    entry.idleTimer = undefined;
    return entry;
  }

  /**
   * A run of the entry ended: stop a retiring server now, an idle one after the idle time.
   *
   * @param entry The entry its run used.
   */
  release(entry: PoolEntry): void {
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
    }, this.#init.idleMs);
  }

  /**
   * Stops the session's fork servers and removes what a `.pex` unpacked for it.
   *
   * @param key The session's key.
   */
  async stopSession(key: string): Promise<void> {
    const entries = this.#servers.get(key);
    this.#servers.delete(key);
    if (entries) await Promise.all([...entries.values()].map((e) => this.#stop(e)));
    // What a .pex unpacked for this session goes with it (the processes are gone now).
    if (this.#pexRoot !== undefined) {
      await Deno.remove(join(this.#pexRoot, `s-${hashKey(key)}`), { recursive: true }).catch(
        () => {},
      );
    }
  }

  /** Stops every fork server and removes the pool's own directories and cgroups. */
  async close(): Promise<void> {
    this.#closed = true;
    const all: PoolEntry[] = [];
    for (const m of this.#servers.values()) all.push(...m.values());
    this.#servers.clear();
    await Promise.all(all.map((e) => this.#stop(e)));
    await Promise.all(this.#pending);
    if (this.#pexRootOwned && this.#pexRoot) {
      await Deno.remove(this.#pexRoot, { recursive: true }).catch(() => {});
    }
    if (this.#runtimeDir) await Deno.remove(this.#runtimeDir, { recursive: true }).catch(() => {});
    await this.#init.cgroups?.close();
  }

  #entry(
    session: SessionSpec,
    root: string,
    interp: Interpreter,
    limits: LauncherLimits,
  ): PoolEntry {
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
    // Layers and trusted files are bound as the view and the trees are: read-only, same path.
    const readOnlyDirs = [...(session.readOnlyDirs ?? []), ...(session.readOnlyFiles ?? [])]
      .map((p) => normalize(p));
    const sharedTrees = [...(session.sharedTrees ?? []), ...(session.layers ?? [])]
      .map((p) => normalize(p));
    const sockets = session.proxySocket !== undefined ? [normalize(session.proxySocket)] : [];
    const bounds = [limits.memoryBytes, limits.processes, limits.sandboxMemoryBytes];
    const fingerprint = JSON.stringify([
      root,
      interp,
      env,
      readOnlyDirs,
      sharedTrees,
      sockets,
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
      BOOTSTRAP_STUB,
    ];
    const { log } = this.#init;
    const entry: PoolEntry = {
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
      // Its own, bound into its sandbox only: bulk-data runs connect their stdio to it. Without
      // one (a path too long for a Unix socket, no right to give it to the worker's uid) they
      // keep the fork server's pipes.
      let data: DataSocket | undefined;
      try {
        data = DataSocket.open(this.#runtime(), worker);
      } catch (e) {
        log("warn", "no data socket for the fork server: bulk-data runs use its pipes", {
          session: session.key,
          error: e instanceof Error ? e.message : String(e),
        });
      }
      let full: string[];
      try {
        full = await this.#command(session, root, interp, limits, {
          command,
          readOnlyDirs,
          sharedTrees,
          sockets: data ? [...sockets, data.path] : sockets,
          pexDir,
          worker,
          entry,
        });
      } catch (e) {
        await data?.close();
        throw e;
      }
      const server = new ForkServer({
        command: full,
        // The steps before the interpreter get only this, and run from "/": each run enters
        // its working directory itself.
        env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", LANG: "C.UTF-8" },
        cwd: "/",
        interpreter: interp.display,
        log,
        startTimeoutMs: this.#init.startTimeoutMs,
        dataSocket: data,
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
        const p = Promise.all([entry.cgroup?.remove(), data?.close()]).finally(() =>
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

  /**
   * The whole command line of a fork server: into its cgroup, hard limits, the sandbox (with
   * the privilege drop), then env(1) and the interpreter.
   */
  async #command(
    session: SessionSpec,
    root: string,
    interp: Interpreter,
    limits: LauncherLimits,
    parts: {
      command: string[];
      readOnlyDirs: string[];
      sharedTrees: string[];
      sockets: string[];
      pexDir: string | undefined;
      worker: { uid: number; gid: number } | undefined;
      entry: PoolEntry;
    },
  ): Promise<string[]> {
    const { bwrap, setpriv, prlimit, cgroups } = this.#init;
    const prefix: string[] = [];
    if (cgroups) {
      parts.entry.cgroup = cgroups.create({
        memoryBytes: limits.sandboxMemoryBytes,
        pids: limits.processes,
      });
      prefix.push(...enterCgroups(parts.entry.cgroup.procs));
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
    if (prlimit) prefix.push(prlimit, ...rlimits, "--");
    const dropTo = parts.worker && setpriv ? { ...parts.worker, setpriv } : undefined;
    if (!bwrap) return [...prefix, ...(dropTo ? dropPrivileges(dropTo) : []), ...parts.command];
    const trusted = await this.#init.interpreters.trustedDirs();
    const keepApart = [
      root,
      ...parts.readOnlyDirs,
      ...parts.sharedTrees,
      ...parts.sockets,
      ...this.#init.interpreters.protectedPaths,
    ];
    return [
      ...prefix,
      ...sandboxCommand(bwrap, {
        root,
        readOnlyDirs: parts.readOnlyDirs,
        sharedTrees: parts.sharedTrees,
        // Never a home that holds what the session's binds would otherwise keep apart.
        interpreterDirs: trusted.filter((d) => !keepApart.some((b) => under(b, d) || under(d, b))),
        interpreterFiles: interp.pex && !inside(root, interp.prefixArgs[0]!)
          ? [interp.prefixArgs[0]!]
          : [],
        writableDirs: parts.pexDir ? [parts.pexDir] : [],
        sockets: parts.sockets,
        identity: this.#identity(
          dropTo?.uid ?? Deno.uid() ?? 0,
          dropTo?.gid ?? Deno.gid() ?? 0,
          root,
        ),
        network: this.#init.network,
        tmpBytes: limits.sandboxMemoryBytes > 0 ? limits.sandboxMemoryBytes : 2 ** 30,
        dropTo,
      }, parts.command),
    ];
  }

  /** The uid/gid a session's workers run as: its own, or nobody when the launcher is root. */
  #workerOf(session: SessionSpec): { uid: number; gid: number } | undefined {
    if (session.worker) return { uid: session.worker.uid, gid: session.worker.gid };
    return this.#init.setpriv ? { uid: 65534, gid: 65534 } : undefined;
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
  #retire(byKey: Map<string, PoolEntry>): void {
    for (const e of byKey.values()) {
      e.retiring = true;
      if (e.server && !e.server.dead && e.server.activeRuns === 0) this.#stopLater(e);
    }
  }

  /** Keeps the number of fork servers bounded: the least recently used idle ones stop. */
  #bound(): void {
    const all: PoolEntry[] = [];
    for (const m of this.#servers.values()) all.push(...m.values());
    let over = all.filter((e) => !e.retiring).length - this.#init.maxForkServers;
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

  #stopLater(entry: PoolEntry): void {
    if (entry.idleTimer !== undefined) clearTimeout(entry.idleTimer);
    entry.idleTimer = undefined;
    const p = this.#stop(entry).finally(() => this.#pending.delete(p));
    this.#pending.add(p);
  }

  async #stop(entry: PoolEntry): Promise<void> {
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

  #ensurePexRoot(): string {
    if (this.#pexRoot === undefined) {
      this.#pexRoot = Deno.makeTempDirSync({ prefix: "valise-pex-" });
      this.#pexRootOwned = true;
    }
    if (this.#init.setpriv && !this.#pexRootOpen) {
      // Workers of other uids must reach their own subdirectory, but never list the others.
      Deno.mkdirSync(this.#pexRoot, { recursive: true });
      Deno.chmodSync(this.#pexRoot, 0o711);
      this.#pexRootOpen = true;
    }
    return this.#pexRoot;
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
}
