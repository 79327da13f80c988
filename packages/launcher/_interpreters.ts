// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Which interpreter a session's workers run, and which host directories may be shown to them for
 * it: the default interpreter and the allow-list are the operator's (their homes are resolved
 * here, once); an interpreter inside the session is the session's and decides no mount.
 *
 * @module
 */
import { basename, dirname, isAbsolute, join, normalize } from "node:path";
import { findExecutable, SYSTEM_DIRS, trustedInterpreterDirs, under } from "./_sandbox.ts";
import { LaunchError } from "./launch_error.ts";
import { INTERPRETER_CONFIG_KEY, type LauncherLogger, type SessionSpec } from "./types.ts";

/** An interpreter as the launcher starts it. */
export interface Interpreter {
  /** Reported in `started` and in errors. */
  display: string;
  /** The program that is executed. */
  exe: string;
  /** Arguments before `-c` (the `.pex`). */
  prefixArgs: string[];
  /** Whether it is a PEX. */
  pex: boolean;
}

/** The default interpreter as probed at start. */
export interface DefaultInterpreter {
  /** Its real path (`sys.executable`). */
  path: string;
  /** Its version (`platform.python_version()`). */
  version: string;
}

/** How {@linkcode Interpreters} is set up. */
export interface InterpretersInit {
  /** The default interpreter's name or path. */
  defaultName: string;
  /** Absolute interpreter paths sessions may name. */
  allowed: readonly string[];
  /** Directories no interpreter home may overlap (the data directory). */
  protectedPaths: readonly string[];
  /** Where problems are logged. */
  log: LauncherLogger;
  /** Workers run unsandboxed as uids of their own: the default must be reachable by them. */
  warnUnreachable: boolean;
}

/**
 * Whether `path` is `root` or inside it (both normalized, absolute).
 *
 * @param root A directory.
 * @param path A path.
 * @returns `true` when inside.
 */
export function inside(root: string, path: string): boolean {
  return under(path, root);
}

/**
 * The real path of `p` when it exists, else its normal form.
 *
 * @param p A path.
 * @returns The path.
 */
export function realOrNormal(p: string): string {
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

/** The launcher's interpreters: the default, the allow-list, and their homes. */
export class Interpreters {
  #init: InterpretersInit;
  #allowed: Set<string>;
  #protected: string[];
  #defaultFound: string | undefined;
  #defaultReal: Promise<DefaultInterpreter> | undefined;
  #defaultDirs: Promise<string[]> | undefined;
  #trustedDirs: string[];
  #trustedFiles: string[] = [];

  /**
   * Checks the allow-list and resolves the homes of its interpreters.
   *
   * @param init The default, the allow-list and the paths to protect.
   */
  constructor(init: InterpretersInit) {
    this.#init = init;
    for (const p of init.allowed) {
      if (!isAbsolute(p)) {
        throw new TypeError(`Cannot allow interpreter ${p}: the path is not absolute`);
      }
      // A typo in the allow-list would otherwise show only when a session names the path.
      if (!usableInterpreter(p)) {
        throw new TypeError(
          `Cannot allow interpreter ${p}: it is not an executable file (or a .pex); ` +
            `check the --allow-interpreter path`,
        );
      }
    }
    this.#protected = init.protectedPaths.map((p) => {
      if (!isAbsolute(p)) throw new TypeError(`Cannot protect ${p}: the path is not absolute`);
      return realOrNormal(p);
    });
    this.#allowed = new Set(init.allowed.map((p) => normalize(p)));
    // The homes of allowed interpreters are what sandboxes bind for any interpreter: resolved
    // here, once, from the operator's paths, never from a session's files.
    const dirs: string[] = [];
    for (const p of this.#allowed) {
      if (/\.pex$/i.test(p)) this.#trustedFiles.push(p);
      else dirs.push(...this.#checkTrusted(p, trustedInterpreterDirs(p)));
    }
    this.#trustedDirs = [...new Set(dirs)].sort();
    this.#defaultFound = findExecutable(init.defaultName, Deno.env.get("PATH"));
  }

  /**
   * The default interpreter's real path: a pyenv shim or wrapper costs tens of milliseconds per
   * start and needs its own tree, so the interpreter is asked where it really lives, once.
   *
   * @returns Its real path.
   */
  async defaultPython(): Promise<string> {
    return (await this.defaultInfo()).path;
  }

  /** The allowed interpreters, as the operator gave them (normalized). */
  get allowed(): readonly string[] {
    return [...this.#allowed];
  }

  /**
   * The default interpreter's real path and version, probed once.
   *
   * @returns Path and version.
   */
  defaultInfo(): Promise<DefaultInterpreter> {
    if (this.#defaultReal) return this.#defaultReal;
    const found = this.#defaultFound;
    const name = this.#init.defaultName;
    if (found === undefined) {
      return Promise.reject(
        new LaunchError(
          "INTERPRETER_NOT_FOUND",
          name.includes("/")
            ? `Cannot find the default interpreter ${name}: it is not an executable file`
            : `Cannot find the default interpreter ${name} on the server's PATH`,
          { interpreter: name },
        ),
      );
    }
    const probe = (async () => {
      const out = await new Deno.Command(found, {
        args: [
          "-c",
          "import platform, sys; sys.stdout.write(sys.executable + '\\n' + platform.python_version())",
        ],
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
      const [exe = "", version = ""] = new TextDecoder().decode(out.stdout).trim().split("\n");
      if (!out.success || !isAbsolute(exe)) {
        throw new LaunchError(
          "INTERPRETER_FAILED",
          `Cannot start the default interpreter ${found}: ${
            new TextDecoder().decode(out.stderr).trim() || `exit code ${out.code}`
          }`,
          { interpreter: found },
        );
      }
      const closed = this.#init.warnUnreachable ? closedToOthers(exe) : undefined;
      if (closed) {
        this.#init.log(
          "warn",
          `workers run as their own uids without a sandbox and cannot reach the default ` +
            `interpreter ${exe} (${closed} is closed to other users): choose one they can ` +
            `reach (--python /usr/bin/python3), or use the sandbox`,
          {},
        );
      }
      return { path: exe, version: version.trim() };
    })();
    this.#defaultReal = probe;
    probe.catch(() => this.#defaultReal = undefined);
    return probe;
  }

  /** Homes of the default interpreter and the allow-list: what sandboxes bind for any. */
  async trustedDirs(): Promise<string[]> {
    if (this.#defaultDirs === undefined) {
      this.#defaultDirs = this.defaultPython().then((real) => {
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

  /** Directories no interpreter home may overlap, as given (real paths). */
  get protectedPaths(): readonly string[] {
    return this.#protected;
  }

  /**
   * The interpreter a session runs: its `spark.sql.execution.pyspark.python` (relative: inside
   * the session; absolute: on the allow-list), else the default.
   *
   * @param session The session.
   * @param root Its normalized root.
   * @returns How to start it.
   * @throws {LaunchError} when it cannot or may not be used.
   */
  async resolve(session: SessionSpec, root: string): Promise<Interpreter> {
    const raw = session.interpreter?.trim() ?? "";
    if (raw === "") {
      const exe = await this.defaultPython();
      return { display: exe, exe, prefixArgs: [], pex: false };
    }
    let path: string;
    const onPath = raw.includes("/") ? undefined : await this.#lookUp(raw);
    if (onPath !== undefined) {
      path = onPath;
    } else if (isAbsolute(raw)) {
      path = normalize(raw);
      const allowed = this.#allowed.has(path) || path === this.#defaultFound ||
        path === (await this.defaultPython().catch(() => undefined));
      if (!allowed) {
        throw new LaunchError(
          "INTERPRETER_NOT_ALLOWED",
          `Cannot use interpreter ${raw} from ${INTERPRETER_CONFIG_KEY}: absolute interpreter ` +
            `paths must be on the server's allow-list. Choose ${this.#choices()}, or ask the ` +
            `operator to start the server with --allow-interpreter ${raw}`,
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
    if (st === undefined && !raw.includes("/")) {
      throw new LaunchError(
        "INTERPRETER_NOT_FOUND",
        `Cannot find interpreter ${raw} from ${INTERPRETER_CONFIG_KEY}: a bare name is looked ` +
          `up on the server's PATH among the interpreters it allows, and in the session's ` +
          `directory; it is in neither. Choose ${this.#choices()}, or a path inside the ` +
          `session such as environment/bin/python`,
        { interpreter: raw },
      );
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
    if (onPath === undefined && !isAbsolute(raw)) {
      await this.#checkResolves(session, root, raw, path);
    }
    if (pex) {
      const exe = await this.defaultPython();
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
      ...await this.trustedDirs(),
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

  /**
   * A bare name, as Spark's workers would run it: looked up on the server's PATH, but only
   * among the interpreters the server allows (the default and the allow-list), then among the
   * allow-list by file name. `undefined` leaves it to the session's directory.
   */
  async #lookUp(name: string): Promise<string | undefined> {
    const real = await this.defaultPython().catch(() => undefined);
    const allowed = new Set([...this.#allowed, this.#defaultFound, real]);
    const dirs = (Deno.env.get("PATH") ?? "").split(":").filter((d) => isAbsolute(d));
    for (const d of dirs) {
      const candidate = normalize(join(d, name));
      // The default is run by its real path, as when a session names none.
      if (real !== undefined && (candidate === this.#defaultFound || candidate === real)) {
        return real;
      }
      if (allowed.has(candidate) && usableInterpreter(candidate)) return candidate;
    }
    return [...this.#allowed].find((p) => basename(p) === name);
  }

  /** What a session may choose, for messages. */
  #choices(): string {
    const names = [...new Set([this.#defaultFound, ...this.#allowed])]
      .filter((p): p is string => p !== undefined);
    return names.length === 0
      ? "an interpreter inside the session"
      : `one the server allows (${names.join(", ")})`;
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
}

/** Whether `p` is an executable file, or a `.pex` file or directory. */
function usableInterpreter(p: string): boolean {
  try {
    const st = Deno.statSync(p);
    if (/\.pex$/i.test(p)) return st.isFile || st.isDirectory;
    return st.isFile && ((st.mode ?? 0o755) & 0o111) !== 0;
  } catch {
    return false;
  }
}
