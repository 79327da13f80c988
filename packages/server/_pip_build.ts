// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * One pip layer's build: the installer's command line, and its run in a one-off sandbox whose
 * only way out is the build's proxy socket; what the build left, measured and listed.
 *
 * @module
 */
import { statfsSync } from "node:fs";
import { basename, join } from "node:path";
import { type Launcher, pythonStub } from "@valise/launcher";
import { normalizeDistributionName, type Requirement } from "@valise/protocol";
import type { LayerDistribution, SessionStore, TreeInfo } from "@valise/session-store";
import DRIVER_TEXT from "./pip_driver.py" with { type: "text" };
import { ServerError } from "./errors.ts";
import type { PipProxy } from "./pip_proxy.ts";
import type { Target } from "./_pip_target.ts";

/** Most characters of the installer's output an error message carries (its end). */
export const ERROR_TAIL = 1500;

const DRIVER_STUB = pythonStub(DRIVER_TEXT, "@valise/server/pip_driver.py", {});

/** The installer, found once. */
export interface Installer {
  /** `uv pip install`, or `python -m pip install`. */
  kind: "uv" | "pip";
  /** The program (uv), or the interpreter running pip. */
  path: string;
  /** Its version line. */
  version: string;
}

/** Everything a layer is built from, and its key. */
export interface Plan {
  /** The layer's key: sha256 of all the rest, `-pip`. */
  key: string;
  /** The canonical requirement set. */
  requirements: Requirement[];
  /** The interpreter it is for. */
  target: Target;
  /** The session's uploaded wheels, by file name, with their blobs. */
  wheels: { file: string; sha256: string; blob: string }[];
  /** The indexes, or `undefined` offline. */
  index: { url: string; extras: string[] } | undefined;
  /** `host:port`s the build's proxy connects to. */
  hosts: string[];
  /** The installer. */
  installer: Installer;
}

/** What a build needs of the server. */
export interface BuildContext {
  /** The store (layers, blobs, lent uids). */
  store: SessionStore;
  /** The launcher whose sandbox runs the installer. */
  launcher: Launcher;
  /** The proxy the build's socket comes from. */
  proxy: PipProxy;
  /** The install time limit and whether sdists are allowed. */
  options: { timeoutMs?: number | undefined; allowSdist?: boolean | undefined };
  /** Builds stop below this much free disk. */
  minFreeBytes: number;
}

/**
 * The installer: `uv`, or a Python whose pip installs; asked for its version (it is the operator's
 * program, run with the server's rights).
 *
 * @param installer `--pip-installer`, if given.
 * @param launcher For the default interpreter, when no uv is on the server's PATH.
 * @returns Its kind, real path and version line.
 * @throws {ServerError} `PIP_INSTALL_FAILED` (reason `NO_INSTALLER`).
 */
export async function findInstaller(
  installer: string | undefined,
  launcher: Launcher,
): Promise<Installer> {
  let path = installer;
  if (path === undefined) {
    path = findOnPath("uv") ?? await launcher.defaultInterpreter();
  }
  const real = await Deno.realPath(path).catch(() => {
    throw new ServerError(
      "PIP_INSTALL_FAILED",
      `Cannot install packages: the installer ${path} does not exist (--pip-installer).`,
      { reason: "NO_INSTALLER" },
    );
  });
  const kind = /^uv(-\S*)?$/.test(basename(path)) || /^uv$/.test(basename(real)) ? "uv" : "pip";
  const out = await new Deno.Command(real, {
    args: kind === "uv" ? ["--version"] : ["-m", "pip", "--version"],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output().catch((e) => ({ success: false, stdout: new Uint8Array(), stderr: e }));
  const text = new TextDecoder().decode(out.stdout).trim().split("\n")[0] ?? "";
  if (!out.success || text === "") {
    throw new ServerError(
      "PIP_INSTALL_FAILED",
      `Cannot install packages: ${real} ${
        kind === "uv" ? "--version" : "-m pip --version"
      } failed; give an installer with --pip-installer (uv, or a Python with pip).`,
      { reason: "NO_INSTALLER" },
    );
  }
  return { kind, path: real, version: kind === "uv" ? text : text.split(" from ")[0]! };
}

/**
 * Runs the installer into `<buildRoot>/target` in a one-off sandbox: the default interpreter
 * runs `pip_driver.py`, which relays to the proxy's socket and runs the installer. Its output
 * goes to `emit` line by line (server paths replaced); the end of it is kept for an error.
 */
export async function runInstaller(
  ctx: BuildContext,
  buildRoot: string,
  plan: Plan,
  emit: (line: string) => void,
): Promise<{
  exit: { exitCode: number; signal: string; timedOut: boolean } | undefined;
  lowDisk: boolean;
  refused: readonly string[];
  tail: string[];
  timeoutMs: number;
}> {
  const wheelsDir = `${buildRoot}-wheels`;
  const key = `pip-build\u0000${basename(buildRoot)}`;
  const tail: string[] = [];
  let tailChars = 0;
  const tidy = (line: string) =>
    line.split(`${buildRoot}/target`).join("<layer>").split(wheelsDir).join("<uploaded-wheels>")
      .split(buildRoot).join("<build>").split(ctx.store.dataDir).join("<data-dir>");
  const onLine = (raw: string) => {
    const line = tidy(raw.replace(/\s+$/, "")).slice(0, 1000);
    if (line === "") return;
    tail.push(line);
    tailChars += line.length + 1;
    while (tailChars > ERROR_TAIL && tail.length > 1) tailChars -= tail.shift()!.length + 1;
    emit(line);
  };
  let exit: { exitCode: number; signal: string; timedOut: boolean } | undefined;
  let lowDisk = false;
  let grant: Awaited<ReturnType<PipProxy["open"]>> | undefined;
  const lease = ctx.store.leaseWorkerId();
  const timeoutMs = ctx.options.timeoutMs ?? 600_000;
  const abort = new AbortController();
  // A build writes what its packages hold: it stops, as an upload does, at the disk floor.
  const watchdog = setInterval(() => {
    try {
      const st = statfsSync(ctx.store.dataDir);
      if (Number(st.bavail) * Number(st.bsize) < ctx.minFreeBytes) {
        lowDisk = true;
        abort.abort(new Error("low disk"));
      }
    } catch { /* checked again next time */ }
  }, 1000);
  try {
    if (plan.wheels.length) {
      await Deno.mkdir(wheelsDir, { mode: 0o755 });
      await Deno.chmod(wheelsDir, 0o755);
      for (const w of plan.wheels) await Deno.link(w.blob, join(wheelsDir, w.file));
    }
    if (plan.index) grant = await ctx.proxy.open(plan.hosts);
    const python = await ctx.launcher.defaultInterpreter();
    const certs = serverCertificates();
    const { argv, env } = installerCommand(plan, {
      buildRoot,
      wheelsDir: plan.wheels.length ? wheelsDir : undefined,
      allowSdist: ctx.options.allowSdist ?? false,
      timeoutMs,
      certs,
    });
    // Bound when the sandbox would not show them otherwise (it shows /etc/ssl and /usr).
    const outside = (p: string | undefined) =>
      p !== undefined && !/^\/(etc\/ssl|etc\/ca-certificates|usr)\//.test(p) ? [p] : [];
    emit(
      `valise: installing ${plan.requirements.map((r) => r.text).join(" ")} for ` +
        `${plan.target.display} with ${plan.installer.version}`,
    );
    const dec = { stdout: new TextDecoder(), stderr: new TextDecoder() };
    const partial = { stdout: "", stderr: "" };
    try {
      for await (
        const ev of ctx.launcher.run({
          key,
          root: buildRoot,
          pythonPath: [],
          interpreter: python,
          sharedTrees: plan.target.trees,
          readOnlyDirs: [
            ...(plan.wheels.length ? [wheelsDir] : []),
            ...outside(certs.SSL_CERT_DIR),
          ],
          readOnlyFiles: [
            ...(plan.installer.kind === "uv" ? [plan.installer.path] : []),
            ...outside(certs.SSL_CERT_FILE),
          ],
          ...(grant ? { proxySocket: grant.path } : {}),
          limits: { wallTimeMs: timeoutMs },
          ...(lease ? { worker: { uid: lease.uid, gid: lease.gid } } : {}),
        }, {
          code: DRIVER_STUB,
          args: [JSON.stringify({
            argv,
            env,
            socket: grant?.path ?? "",
            dirs: [join(buildRoot, "tmp"), join(buildRoot, "cache")],
          })],
          timeoutMs,
        }, abort.signal)
      ) {
        if (ev.kind === "stdout" || ev.kind === "stderr") {
          const text = partial[ev.kind] + dec[ev.kind].decode(ev.data, { stream: true });
          const lines = text.split(/\r?\n|\r/);
          partial[ev.kind] = (lines.pop() ?? "").slice(-4096);
          for (const l of lines) onLine(l);
        } else if (ev.kind === "exited") {
          exit = ev;
        }
      }
    } catch (e) {
      if (!lowDisk) throw e;
    }
    for (const rest of [partial.stdout, partial.stderr]) if (rest) onLine(rest);
  } finally {
    clearInterval(watchdog);
    await ctx.launcher.stopSession(key);
    await grant?.close();
    if (Deno.uid() === 0) {
      // Its processes are gone (stopSession): nothing races these walks. What the build's
      // uid made is the server's now, and nothing but files, directories and links stays.
      await command("chown", ["-R", "-h", `${Deno.uid()}:${Deno.gid()}`, buildRoot]);
      await command("find", [
        buildRoot,
        "(",
        "-type",
        "p",
        "-o",
        "-type",
        "s",
        "-o",
        "-type",
        "b",
        "-o",
        "-type",
        "c",
        ")",
        "-delete",
      ]);
    }
    lease?.release();
    await Deno.remove(wheelsDir, { recursive: true }).catch(() => {});
  }
  return { exit, lowDisk, refused: grant?.refused ?? [], tail, timeoutMs };
}

/** The installer's command line and environment for a plan. */
export function installerCommand(
  plan: Plan,
  where: {
    buildRoot: string;
    wheelsDir: string | undefined;
    allowSdist: boolean;
    timeoutMs: number;
    certs: { SSL_CERT_FILE?: string | undefined; SSL_CERT_DIR?: string | undefined };
  },
): { argv: string[]; env: Record<string, string> } {
  const target = join(where.buildRoot, "target");
  const cache = join(where.buildRoot, "cache");
  const reqs = plan.requirements.map((r) => r.text);
  const env: Record<string, string> = {
    HOME: where.buildRoot,
    TMPDIR: join(where.buildRoot, "tmp"),
    LANG: "C.UTF-8",
    PATH: "/usr/local/bin:/usr/bin:/bin",
    NO_COLOR: "1",
  };
  // The operator's certificate authorities (a TLS-inspecting egress has its own): uv reads
  // these, pip gets --cert.
  for (const k of ["SSL_CERT_FILE", "SSL_CERT_DIR"] as const) {
    const v = where.certs[k];
    if (v !== undefined) env[k] = v;
  }
  const i = plan.installer;
  const index = plan.index;
  if (i.kind === "uv") {
    Object.assign(env, {
      UV_CACHE_DIR: cache,
      UV_NO_CONFIG: "1",
      UV_PYTHON_DOWNLOADS: "never",
      UV_HTTP_TIMEOUT: String(Math.max(10, Math.floor(where.timeoutMs / 1000))),
    });
    const argv = [
      i.path,
      "pip",
      "install",
      "--no-config",
      "--color",
      "never",
      "--python",
      plan.target.python,
      "--target",
      target,
      "--cache-dir",
      cache,
    ];
    if (index) {
      argv.push("--index-url", index.url);
      for (const e of index.extras) argv.push("--extra-index-url", e);
    } else {
      argv.push("--offline", "--no-index");
    }
    if (where.wheelsDir) argv.push("--find-links", where.wheelsDir);
    if (!where.allowSdist) argv.push("--only-binary", ":all:");
    return { argv: [...argv, ...reqs], env };
  }
  const argv = [i.path, "-m", "pip"];
  if (plan.target.python !== i.path) argv.push("--python", plan.target.python);
  argv.push(
    "install",
    "--isolated",
    "--no-input",
    "--disable-pip-version-check",
    "--no-warn-script-location",
    "--progress-bar",
    "off",
    "--cache-dir",
    cache,
    "--target",
    target,
  );
  if (where.certs.SSL_CERT_FILE !== undefined) argv.push("--cert", where.certs.SSL_CERT_FILE);
  if (index) {
    argv.push("--proxy", "{proxy}", "--index-url", index.url);
    for (const e of index.extras) argv.push("--extra-index-url", e);
  } else {
    argv.push("--no-index");
  }
  if (where.wheelsDir) argv.push("--find-links", where.wheelsDir);
  if (!where.allowSdist) argv.push("--only-binary", ":all:");
  return { argv: [...argv, ...reqs], env };
}

/** The distributions a layer holds, from its `*.dist-info` directories' names. */
export async function distributionsIn(dir: string): Promise<LayerDistribution[]> {
  const out: LayerDistribution[] = [];
  for await (const e of Deno.readDir(dir)) {
    const m = /^(.+)-([^-]+)\.dist-info$/.exec(e.name);
    if (m && e.isDirectory) out.push({ name: normalizeDistributionName(m[1]!), version: m[2]! });
  }
  return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** Bytes of regular files and entries under `dir`, links not followed. */
export async function measure(dir: string): Promise<TreeInfo> {
  const out: TreeInfo = { bytes: 0, entries: 0 };
  const pending = [dir];
  while (pending.length) {
    const d = pending.pop()!;
    for await (const e of Deno.readDir(d)) {
      const path = join(d, e.name);
      const st = await Deno.lstat(path);
      out.entries++;
      if (st.isFile) out.bytes += st.size;
      else if (st.isDirectory) pending.push(path);
    }
  }
  return out;
}

/**
 * The server's own `SSL_CERT_FILE` and `SSL_CERT_DIR`, when they name what exists: the
 * certificate authorities its operator trusts, which installs trust too.
 */
export function serverCertificates(): { SSL_CERT_FILE?: string; SSL_CERT_DIR?: string } {
  const out: { SSL_CERT_FILE?: string; SSL_CERT_DIR?: string } = {};
  for (const [k, file] of [["SSL_CERT_FILE", true], ["SSL_CERT_DIR", false]] as const) {
    const v = Deno.env.get(k);
    if (!v?.startsWith("/")) continue;
    try {
      const st = Deno.statSync(v);
      if (file ? st.isFile : st.isDirectory) out[k] = v;
    } catch { /* not there: not passed on */ }
  }
  return out;
}

export function findOnPath(name: string): string | undefined {
  for (const d of (Deno.env.get("PATH") ?? "").split(":")) {
    if (!d.startsWith("/")) continue;
    try {
      const p = join(d, name);
      const st = Deno.statSync(p);
      if (st.isFile && ((st.mode ?? 0) & 0o111) !== 0) return p;
    } catch { /* not here */ }
  }
  return undefined;
}

export async function command(program: string, args: string[]): Promise<void> {
  const out = await new Deno.Command(program, { args, stdout: "null", stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(
      `Cannot clean up a pip build: ${program} failed: ${
        new TextDecoder().decode(out.stderr).trim()
      }`,
    );
  }
}
