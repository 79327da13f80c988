// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * bubblewrap command lines and the host paths an interpreter needs.
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
const SYSTEM_DIRS = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];

/** Files and directories of `/etc` an interpreter and its libraries read. */
const ETC_ENTRIES = [
  "ld.so.cache",
  "ld.so.conf",
  "ld.so.conf.d",
  "localtime",
  "timezone",
  "nsswitch.conf",
  "passwd",
  "group",
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

function under(path: string, dir: string): boolean {
  return path === dir || path.startsWith(dir.endsWith("/") ? dir : dir + "/");
}

/**
 * The host directories, outside the system ones, that running `interpreter` reads: the
 * prefix of every symlink hop (`venv/bin/python` → `/root/.pyenv/versions/3.11.7/bin/python3`)
 * and of the `home` of a `pyvenv.cfg`.
 *
 * @param interpreter Absolute path of the executable that is started.
 * @param exclude Directories already bound (the session root), whose insides need nothing.
 * @returns Directories to bind read-only.
 */
export function interpreterDirs(interpreter: string, exclude: string[]): string[] {
  const found = new Set<string>();
  const add = (file: string) => {
    const bin = dirname(file);
    const prefix = bin.endsWith("/bin") ? dirname(bin) : bin;
    if (prefix === "/" || SYSTEM_DIRS.some((d) => under(prefix, d))) return;
    if (exclude.some((d) => under(prefix, d))) return;
    // Never expose a directory that holds a session: bind only the bin directory then.
    if (exclude.some((d) => under(d, prefix))) {
      if (!exclude.some((d) => under(d, bin)) && bin !== "/") found.add(bin);
      return;
    }
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
    // reported later, when it fails to start
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

/** What one sandbox exposes. */
export interface SandboxLayout {
  /** Session directory, bound read-write at the same path; the working directory. */
  root: string;
  /** Paths inside `root` bound read-only over it. */
  readOnlyPaths: string[];
  /** Shared trees bound read-only at the same path. */
  sharedTrees: string[];
  /** Interpreter directories bound read-only at the same path. */
  interpreterDirs: string[];
  /** Extra directories bound read-write at the same path (the session's PEX_ROOT). */
  writableDirs: string[];
  /** Keep the host's network. */
  network: boolean;
}

/**
 * The bwrap arguments (before `--`) for a layout. Order matters: later mounts go over
 * earlier ones, so read-only binds come after the read-write session root.
 *
 * @param layout What to expose.
 * @returns Arguments for `bwrap`.
 */
export function bwrapArgs(layout: SandboxLayout): string[] {
  const args = [
    "--unshare-all",
    ...(layout.network ? ["--share-net"] : []),
    "--unshare-pid",
    // The fork server is PID 1 of the namespace and reaps it; bwrap's own init would exit
    // after reporting the status and leave itself a zombie for the host's init to reap.
    "--as-pid-1",
    "--die-with-parent",
    "--new-session",
    "--cap-drop",
    "ALL",
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
  args.push("--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp");
  // Every directory leading to a bind exists only as an empty mount point; make it
  // traversable but unlistable, so the names of sessions and trees around stay unknown.
  const ancestors = new Set<string>();
  const binds = [
    layout.root,
    ...layout.sharedTrees,
    ...layout.interpreterDirs,
    ...layout.writableDirs,
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
  for (const p of layout.readOnlyPaths) args.push("--ro-bind-try", p, p);
  for (const p of layout.sharedTrees) args.push("--ro-bind", p, p);
  for (const p of layout.interpreterDirs) args.push("--ro-bind", p, p);
  for (const p of layout.writableDirs) args.push("--bind", p, p);
  args.push("--remount-ro", "/", "--chdir", layout.root);
  return args;
}
