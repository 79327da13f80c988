// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Control groups for sandboxes: one cgroup per fork server with a memory limit and a process
 * limit that hold for everything the sandbox runs, however it forks. cgroup v2 is used where the
 * server can create a delegated subtree with the `memory` and `pids` controllers; otherwise the
 * v1 `memory` and `pids` hierarchies when they are writable (hybrid hosts); otherwise none, and
 * the launcher says so.
 *
 * @module
 */
import { join } from "node:path";

/** Limits of one cgroup. */
export interface CgroupLimits {
  /** `memory.max` / `memory.limit_in_bytes`; 0 for none. */
  memoryBytes: number;
  /** `pids.max`: processes and threads; 0 for none. */
  pids: number;
}

/** One created cgroup (in one or two hierarchies). */
export interface CgroupHandle {
  /** The `cgroup.procs` files a process writes its pid to, to enter it. */
  readonly procs: string[];
  /** Removes the cgroup once its processes are gone (best effort; retried by `close`). */
  remove(): Promise<void>;
}

interface Hierarchy {
  /** Directory of the server's own subtree (`valise-<pid>`). */
  base: string;
  /** Creates `base` again if a launcher of this process removed it. */
  ensureBase: () => void;
  /** Files to write per cgroup: name → value from the limits. */
  files: (limits: CgroupLimits) => [string, string][];
}

function read(path: string): string | undefined {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return undefined;
  }
}

/** The cgroup path of this process in a hierarchy (`0::/x` for v2, `N:memory:/x` for v1). */
function ownPath(controller: string | undefined): string | undefined {
  const text = read("/proc/self/cgroup");
  if (!text) return undefined;
  for (const line of text.split("\n")) {
    const [, ctrls, path] = line.split(":");
    if (path === undefined) continue;
    if (
      controller === undefined ? line.startsWith("0::") : ctrls!.split(",").includes(controller)
    ) {
      return path;
    }
  }
  return undefined;
}

function tryMkdir(path: string): boolean {
  try {
    Deno.mkdirSync(path);
    return true;
  } catch (e) {
    return e instanceof Deno.errors.AlreadyExists;
  }
}

function removeStale(parent: string): void {
  // Subtrees of earlier servers that died without cleaning up (a crash): what still runs in
  // them is a sandbox that outlived its server, which nothing else would stop. Kill it; remove
  // what is empty (a cgroup whose processes are still exiting goes at the next start).
  try {
    for (const e of Deno.readDirSync(parent)) {
      const m = /^valise-(\d+)$/.exec(e.name);
      if (!m || !e.isDirectory || Number(m[1]) === Deno.pid) continue;
      if (read(`/proc/${m[1]}/stat`) !== undefined) continue;
      const dir = join(parent, e.name);
      try {
        for (const c of Deno.readDirSync(dir)) {
          if (!c.isDirectory) continue;
          for (const pid of (read(join(dir, c.name, "cgroup.procs")) ?? "").split(/\s+/)) {
            if (/^\d+$/.test(pid)) {
              try {
                Deno.kill(Number(pid), "SIGKILL");
              } catch { /* gone */ }
            }
          }
          try {
            Deno.removeSync(join(dir, c.name));
          } catch { /* its processes are still exiting */ }
        }
        Deno.removeSync(dir);
      } catch {
        // still in use or not ours to remove
      }
    }
  } catch {
    // cannot list
  }
}

function v2(): Hierarchy[] | undefined {
  const mount = [
    "/sys/fs/cgroup",
    "/sys/fs/cgroup/unified",
  ].find((m) => read(join(m, "cgroup.controllers")) !== undefined);
  const own = ownPath(undefined);
  if (!mount || own === undefined) return undefined;
  const parent = join(mount, own);
  const available = (read(join(parent, "cgroup.controllers")) ?? "").split(/\s+/);
  if (!available.includes("memory") || !available.includes("pids")) return undefined;
  removeStale(parent);
  const base = join(parent, `valise-${Deno.pid}`);
  try {
    // Fails with EBUSY when the server's own cgroup holds processes (the "no internal
    // processes" rule) and is not the root: then there is no subtree to delegate here.
    Deno.writeTextFileSync(join(parent, "cgroup.subtree_control"), "+memory +pids");
    if (!tryMkdir(base)) return undefined;
    Deno.writeTextFileSync(join(base, "cgroup.subtree_control"), "+memory +pids");
  } catch {
    try {
      Deno.removeSync(base);
    } catch {
      // never made
    }
    return undefined;
  }
  return [{
    base,
    ensureBase: () => {
      if (tryMkdir(base)) {
        Deno.writeTextFileSync(join(base, "cgroup.subtree_control"), "+memory +pids");
      }
    },
    files: (l) => [
      ...(l.memoryBytes > 0
        ? [["memory.max", String(l.memoryBytes)], ["memory.swap.max", "0"]] as [string, string][]
        : []),
      ...(l.pids > 0 ? [["pids.max", String(l.pids)]] as [string, string][] : []),
    ],
  }];
}

function v1(): Hierarchy[] | undefined {
  const out: Hierarchy[] = [];
  for (const controller of ["memory", "pids"]) {
    const mount = join("/sys/fs/cgroup", controller);
    const own = ownPath(controller);
    if (own === undefined || read(join(mount, "cgroup.procs")) === undefined) return undefined;
    const parent = join(mount, own);
    removeStale(parent);
    const base = join(parent, `valise-${Deno.pid}`);
    if (!tryMkdir(base)) return undefined;
    out.push({
      base,
      ensureBase: () => void tryMkdir(base),
      files: controller === "memory"
        ? (l) => l.memoryBytes > 0 ? [["memory.limit_in_bytes", String(l.memoryBytes)]] : []
        : (l) => l.pids > 0 ? [["pids.max", String(l.pids)]] : [],
    });
  }
  return out;
}

/** The cgroups a launcher puts its sandboxes in. */
export class Cgroups {
  /** `"v2"` or `"v1"`. */
  readonly version: "v1" | "v2";
  #hierarchies: Hierarchy[];
  #live = new Set<string>();

  private constructor(version: "v1" | "v2", hierarchies: Hierarchy[]) {
    this.version = version;
    this.#hierarchies = hierarchies;
  }

  /**
   * Finds a writable cgroup hierarchy with memory and pids controllers and creates the
   * server's subtree in it.
   *
   * @returns The cgroups, or why there are none.
   */
  static detect(): Cgroups | string {
    if (Deno.build.os !== "linux") return "cgroups exist only on Linux";
    if (Deno.uid() !== 0) return "the server is not root, so it cannot create cgroups";
    const h2 = v2();
    if (h2) return new Cgroups("v2", h2);
    const h1 = v1();
    if (h1) return new Cgroups("v1", h1);
    return "no writable cgroup hierarchy with the memory and pids controllers was found";
  }

  /**
   * Creates one cgroup with these limits.
   *
   * @param limits Memory and process limits.
   * @returns The cgroup.
   */
  create(limits: CgroupLimits): CgroupHandle {
    // Several launchers of one process (Deno workers too) share its subtree.
    const name = `f${crypto.randomUUID().slice(0, 13)}`;
    const dirs: string[] = [];
    try {
      for (const h of this.#hierarchies) {
        const dir = join(h.base, name);
        try {
          Deno.mkdirSync(dir);
        } catch (e) {
          // Another launcher of the process removed the (then empty) subtree as it closed.
          if (!(e instanceof Deno.errors.NotFound)) throw e;
          h.ensureBase();
          Deno.mkdirSync(dir);
        }
        dirs.push(dir);
        for (const [file, value] of h.files(limits)) {
          try {
            Deno.writeTextFileSync(join(dir, file), value);
          } catch (e) {
            // memory.swap.max is absent without swap accounting; the others must hold.
            if (file !== "memory.swap.max") throw e;
          }
        }
      }
    } catch (e) {
      for (const d of dirs) {
        try {
          Deno.removeSync(d);
        } catch { /* empty anyway */ }
      }
      throw e;
    }
    for (const d of dirs) this.#live.add(d);
    return {
      procs: dirs.map((d) => join(d, "cgroup.procs")),
      remove: async () => {
        for (const d of dirs) {
          if (await removeWhenEmpty(d)) this.#live.delete(d);
        }
      },
    };
  }

  /** Removes every cgroup still present and the server's subtrees. */
  async close(): Promise<void> {
    for (const d of [...this.#live]) {
      if (await removeWhenEmpty(d)) this.#live.delete(d);
    }
    for (const h of this.#hierarchies) {
      try {
        Deno.removeSync(h.base);
      } catch {
        // another launcher's cgroups are inside; the last to close (or the next start) removes it
      }
    }
  }
}

async function removeWhenEmpty(dir: string): Promise<boolean> {
  // The processes of a killed sandbox leave their cgroup a moment after the sandbox's exit is
  // reported; wait for that (cgroup.procs empty), then remove.
  for (let i = 0; i < 200; i++) {
    const procs = read(join(dir, "cgroup.procs"));
    if (procs === undefined) return true;
    if (procs.trim() === "") {
      try {
        await Deno.remove(dir);
        return true;
      } catch (e) {
        if (e instanceof Deno.errors.NotFound) return true;
      }
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  return false;
}

/**
 * A command prefix that moves the process into the given cgroups, then execs the rest: the
 * process and everything it starts are inside before any of the sandbox's code runs.
 *
 * @param procs The `cgroup.procs` files.
 * @returns `sh` and its arguments; append the command.
 */
export function enterCgroups(procs: string[]): string[] {
  return [
    "/bin/sh",
    "-c",
    'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n - 1)); done; exec "$@"',
    "valise-cgroup",
    String(procs.length),
    ...procs,
  ];
}
