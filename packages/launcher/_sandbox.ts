// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * bubblewrap command lines, and the host directories of the interpreters the server trusts.
 *
 * Every bind source comes from a fact the server established itself: the session's working
 * directory, server-owned read-only views and shared trees (by their store paths), and the homes
 * of interpreters on the server's allow-list, resolved once when the launcher starts. Nothing a
 * session wrote (a `pyvenv.cfg`, a symlink in its directory, a file in an archive) is read to
 * decide what gets mounted.
 *
 * @module
 */
import { dirname, isAbsolute, join, resolve } from "node:path";

/**
 * Finds an executable on a `PATH`-like list, synchronously (the constructor needs it).
 *
 * @param name A bare name or a path.
 * @param path The search list.
 * @returns The absolute path, or `undefined`.
 */
export function findExecutable(name: string, path: string | undefined): string | undefined {
  const candidates = name.includes("/")
    ? [resolve(name)]
    : (path ?? "/usr/local/bin:/usr/bin:/bin").split(":").filter((d) => d !== "").map((d) =>
      join(d, name)
    );
  for (const c of candidates) {
    try {
      const st = Deno.statSync(c);
      if (st.isFile && ((st.mode ?? 0o755) & 0o111) !== 0) return c;
    } catch {
      // not this one
    }
  }
  return undefined;
}

/** Directories whose contents are system files every interpreter may see. */
export const SYSTEM_DIRS: readonly string[] = [
  "/usr",
  "/bin",
  "/sbin",
  "/lib",
  "/lib32",
  "/lib64",
  "/libx32",
];

/** Files and directories of `/etc` an interpreter and its libraries read. */
const ETC_ENTRIES = [
  "ld.so.cache",
  "ld.so.conf",
  "ld.so.conf.d",
  "localtime",
  "timezone",
  "nsswitch.conf",
  "hosts",
  "host.conf",
  "resolv.conf",
  "gai.conf",
  "protocols",
  "services",
  "mime.types",
  "ssl",
  "ca-certificates",
  "ca-certificates.conf",
  "alternatives",
  "os-release",
];

/**
 * Whether `path` is `dir` or below it (both normalized, absolute).
 *
 * @param path The path.
 * @param dir The directory.
 * @returns `true` when inside.
 */
export function under(path: string, dir: string): boolean {
  return path === dir || path.startsWith(dir.endsWith("/") ? dir : dir + "/");
}

/**
 * The host directories, outside the system ones, that running a *trusted* interpreter reads:
 * the prefix of every symlink hop (`/opt/venv/bin/python` → `/root/.pyenv/versions/3.11.7/bin/
 * python3`) and of the `home` of its `pyvenv.cfg`. Only for interpreters the operator named (the
 * default and the allow-list): their files are the server's, never a session's.
 *
 * @param interpreter Absolute path of a trusted interpreter.
 * @returns Directories to bind read-only, sorted.
 */
export function trustedInterpreterDirs(interpreter: string): string[] {
  const found = new Set<string>();
  const add = (file: string) => {
    const bin = dirname(file);
    const prefix = bin.endsWith("/bin") ? dirname(bin) : bin;
    if (prefix === "/" || SYSTEM_DIRS.some((d) => under(prefix, d))) return;
    found.add(prefix);
  };
  let p = interpreter;
  for (let hop = 0; hop < 40; hop++) {
    add(p);
    let target: string;
    try {
      if (!Deno.lstatSync(p).isSymlink) break;
      target = Deno.readLinkSync(p);
    } catch {
      break;
    }
    p = isAbsolute(target) ? target : resolve(dirname(p), target);
  }
  try {
    add(Deno.realPathSync(interpreter));
  } catch {
    // reported when it fails to start
  }
  try {
    const cfg = Deno.readTextFileSync(join(dirname(dirname(interpreter)), "pyvenv.cfg"));
    const home = /^\s*home\s*=\s*(.+?)\s*$/m.exec(cfg)?.[1];
    if (home && isAbsolute(home)) add(join(home, "python"));
  } catch {
    // not a venv
  }
  return [...found].sort();
}

/** Who the worker runs as, when the server is root and drops it to an unprivileged id. */
export interface DropTo {
  /** Host uid of the worker. */
  uid: number;
  /** Host gid of the worker. */
  gid: number;
  /** The `setpriv` program (from util-linux, under `/usr`, so the sandbox shows it read-only). */
  setpriv: string;
}

/** What one sandbox exposes. */
export interface SandboxLayout {
  /** Session directory, bound read-write at the same path; the working directory. */
  root: string;
  /**
   * Server-owned directories bound read-only at the same path (the session's view of its
   * artifacts). No worker can write them or change the path that leads to them.
   */
  readOnlyDirs: string[];
  /** Shared trees, by their store paths, bound read-only at the same path. */
  sharedTrees: string[];
  /** Homes of trusted interpreters, bound read-only at the same path. */
  interpreterDirs: string[];
  /** Trusted files (an absolute `.pex` on the allow-list), bound read-only at the same path. */
  interpreterFiles: string[];
  /** Extra directories bound read-write at the same path (the session's PEX_ROOT). */
  writableDirs: string[];
  /**
   * Unix sockets of the server's (its package-index proxy), bound at the same path.
   * @default {[]}
   */
  sockets?: string[];
  /** Server-written `/etc/passwd` and `/etc/group` for the sandbox. */
  identity: { passwd: string; group: string } | undefined;
  /** Keep the host's network. */
  network: boolean;
  /** Size of the private `/tmp` and `/dev/shm` (memory-backed), in bytes. */
  tmpBytes: number;
  /**
   * Run bubblewrap as root without a user namespace, and drop the worker to this uid/gid with
   * `setpriv` before the interpreter starts: mounts are made with the server's rights, the
   * session's code never has them. Without it, bubblewrap makes a user namespace and the worker
   * runs as the server's own user.
   */
  dropTo: DropTo | undefined;
}

/**
 * The full command line that runs `command` in a sandbox: `bwrap`'s arguments, `--`, and (when
 * dropping privileges) `setpriv` before the command. Order matters: later mounts go over earlier
 * ones, so read-only binds come after the read-write session root.
 *
 * @param bwrap The bwrap program.
 * @param layout What to expose.
 * @param command The program and its arguments.
 * @returns The argv to spawn.
 */
export function sandboxCommand(bwrap: string, layout: SandboxLayout, command: string[]): string[] {
  const isolation = layout.dropTo
    // No user namespace: bwrap keeps root's rights to set up mounts. The sandbox keeps only
    // the capabilities setpriv needs to give up root; uid changes clear them all.
    ? [
      "--unshare-ipc",
      "--unshare-pid",
      "--unshare-uts",
      "--unshare-cgroup-try",
      ...(layout.network ? [] : ["--unshare-net"]),
      "--cap-drop",
      "ALL",
      "--cap-add",
      "CAP_SETUID",
      "--cap-add",
      "CAP_SETGID",
      "--cap-add",
      "CAP_SETPCAP",
    ]
    : ["--unshare-all", ...(layout.network ? ["--share-net"] : []), "--cap-drop", "ALL"];
  const args = [
    bwrap,
    ...isolation,
    "--unshare-pid",
    // The fork server is PID 1 of the namespace and reaps it; bwrap's own init would exit
    // after reporting the status and leave itself a zombie for the host's init to reap. (A
    // worker dropped to its uid loses the parent-death signal, and a capless root bwrap may not
    // send it to another uid: a crashed server's sandbox is killed at the next start instead.)
    "--as-pid-1",
    "--die-with-parent",
    "--new-session",
  ];
  for (const d of SYSTEM_DIRS) {
    let st: Deno.FileInfo;
    try {
      st = Deno.lstatSync(d);
    } catch {
      continue;
    }
    if (st.isSymlink) args.push("--symlink", Deno.readLinkSync(d), d);
    else if (st.isDirectory) args.push("--ro-bind", d, d);
  }
  // bwrap makes the parents of a file bind 0700; a worker of its own uid must read /etc.
  args.push("--perms", "0755", "--dir", "/etc");
  for (const e of ETC_ENTRIES) args.push("--ro-bind-try", `/etc/${e}`, `/etc/${e}`);
  try {
    for (const e of Deno.readDirSync("/etc")) {
      if (/^python3(\.\d+)?$/.test(e.name)) {
        args.push("--ro-bind-try", `/etc/${e.name}`, `/etc/${e.name}`);
      }
    }
  } catch {
    // no /etc to read
  }
  if (layout.identity) {
    args.push("--ro-bind", layout.identity.passwd, "/etc/passwd");
    args.push("--ro-bind", layout.identity.group, "/etc/group");
  }
  // World-writable and sticky, as on a host: a worker of its own uid must be able to use it.
  args.push("--proc", "/proc", "--dev", "/dev");
  // Memory-backed: sized, so that without a cgroup they cannot take the host's RAM.
  const size = String(layout.tmpBytes);
  args.push("--perms", "01777", "--size", size, "--tmpfs", "/tmp");
  args.push("--perms", "01777", "--size", size, "--tmpfs", "/dev/shm");
  // Every directory leading to a bind exists only as an empty mount point; make it
  // traversable but unlistable, so the names of sessions and trees around stay unknown.
  const ancestors = new Set<string>();
  const binds = [
    layout.root,
    ...layout.readOnlyDirs,
    ...layout.sharedTrees,
    ...layout.interpreterDirs,
    ...layout.interpreterFiles,
    ...layout.writableDirs,
    ...(layout.sockets ?? []),
  ];
  for (const b of binds) {
    for (let d = dirname(b); d !== "/" && d !== "/tmp"; d = dirname(d)) {
      if (SYSTEM_DIRS.some((s) => under(d, s)) || binds.some((o) => under(d, o))) continue;
      ancestors.add(d);
    }
  }
  for (const d of [...ancestors].sort((x, y) => x.split("/").length - y.split("/").length)) {
    args.push("--perms", "0111", "--dir", d);
  }
  args.push("--bind", layout.root, layout.root);
  for (const p of layout.readOnlyDirs) args.push("--ro-bind", p, p);
  for (const p of layout.sharedTrees) args.push("--ro-bind", p, p);
  for (const p of layout.interpreterDirs) args.push("--ro-bind", p, p);
  for (const p of layout.interpreterFiles) args.push("--ro-bind", p, p);
  for (const p of layout.writableDirs) args.push("--bind", p, p);
  for (const p of layout.sockets ?? []) args.push("--bind", p, p);
  // Dropping to the worker's uid, bwrap has no right left to enter a directory the worker
  // owns; each run enters its working directory itself, as the worker.
  args.push("--remount-ro", "/", "--chdir", layout.dropTo ? "/" : layout.root, "--");
  if (layout.dropTo) args.push(...dropPrivileges(layout.dropTo));
  return [...args, ...command];
}

/**
 * The `setpriv` prefix that makes a command run as an unprivileged uid/gid with no
 * supplementary groups, no capabilities (not even in the bounding set) and `no_new_privs`, so
 * that no setuid program can give any back.
 *
 * @param to The uid, gid and setpriv program.
 * @returns Program and arguments, ending with `--`.
 */
export function dropPrivileges(to: DropTo): string[] {
  return [
    to.setpriv,
    `--reuid=${to.uid}`,
    `--regid=${to.gid}`,
    "--clear-groups",
    "--inh-caps=-all",
    "--bounding-set=-all",
    "--no-new-privs",
    "--",
  ];
}

/**
 * The `/etc/passwd` and `/etc/group` a sandbox shows: root, nobody and the worker, so that
 * `getpass.getuser()` and `pwd.getpwuid(os.getuid())` work without revealing the host's users.
 *
 * @param uid The worker's uid.
 * @param gid The worker's gid.
 * @param home The worker's home (its working directory).
 * @returns The two files' text.
 */
export function identityFiles(
  uid: number,
  gid: number,
  home: string,
): { passwd: string; group: string } {
  const lines = ["root:x:0:0:root:/:/usr/sbin/nologin"];
  if (uid !== 0) lines.push(`valise:x:${uid}:${gid}:valise worker:${home}:/usr/sbin/nologin`);
  lines.push("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin");
  const groups = ["root:x:0:"];
  if (gid !== 0) groups.push(`valise:x:${gid}:`);
  groups.push("nogroup:x:65534:");
  return { passwd: lines.join("\n") + "\n", group: groups.join("\n") + "\n" };
}

/**
 * Whether bubblewrap works here with the very command line sandboxes use (so an old bwrap
 * without a flag, or a host without user namespaces, is caught at start).
 *
 * @param bwrap The bwrap program.
 * @param setpriv The setpriv program, when the launcher is root and drops workers to a uid.
 * @returns Why it does not work, or `undefined` when it does.
 */
export function probeBwrap(bwrap: string, setpriv: string | undefined): string | undefined {
  let root: string | undefined;
  try {
    root = Deno.makeTempDirSync({ prefix: "valise-probe-" });
    const argv = sandboxCommand(bwrap, {
      root,
      readOnlyDirs: [],
      sharedTrees: [],
      interpreterDirs: [],
      interpreterFiles: [],
      writableDirs: [],
      identity: undefined,
      network: false,
      tmpBytes: 2 ** 20,
      dropTo: setpriv ? { uid: 65534, gid: 65534, setpriv } : undefined,
    }, ["/bin/true"]);
    const out = new Deno.Command(argv[0]!, {
      args: argv.slice(1),
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).outputSync();
    if (out.success) return undefined;
    return `${bwrap} does not work here: ${new TextDecoder().decode(out.stderr).trim()}`;
  } catch (e) {
    return `${bwrap} cannot run: ${e instanceof Error ? e.message : String(e)}`;
  } finally {
    if (root) Deno.removeSync(root);
  }
}
