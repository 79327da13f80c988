// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Test helpers: collecting a run's events, building sessions and interpreters, and looking
 * at this process's descendants in /proc.
 *
 * @module
 */
import { join } from "node:path";
import type { Launcher, RunEvent, RunExitedEvent, RunSpec, SessionSpec } from "../mod.ts";

const decoder = new TextDecoder();

/** A run's events, collected. */
export interface Collected {
  /** Every event. */
  events: RunEvent[];
  /** stdout as text. */
  stdout: string;
  /** stderr as text. */
  stderr: string;
  /** The `exited` event. */
  exit: RunExitedEvent;
}

/**
 * Runs to the end and collects.
 *
 * @param launcher The launcher.
 * @param session The session.
 * @param request What to run.
 * @param signal Abort signal.
 * @returns What happened.
 */
export async function collect(
  launcher: Launcher,
  session: SessionSpec,
  request: RunSpec,
  signal?: AbortSignal,
): Promise<Collected> {
  const events: RunEvent[] = [];
  let stdout = "";
  let stderr = "";
  let exit: RunExitedEvent | undefined;
  for await (const ev of launcher.run(session, request, signal)) {
    events.push(ev);
    if (ev.kind === "stdout") stdout += decoder.decode(ev.data, { stream: true });
    if (ev.kind === "stderr") stderr += decoder.decode(ev.data, { stream: true });
    if (ev.kind === "exited") exit = ev;
  }
  if (!exit) throw new Error("run ended without exited");
  return { events, stdout, stderr, exit };
}

/** Debian's interpreter, which has `venv` without pip. */
export const SYSTEM_PYTHON = "/usr/bin/python3";

/**
 * Without a sandbox, a root launcher's workers run as nobody, who cannot reach an interpreter
 * in root's home (a pyenv default): such tests use the system's.
 *
 * @param sandbox The sandbox mode of the test's launcher.
 * @returns Launcher options to spread.
 */
export function reachablePython(sandbox: string | undefined): { defaultPython?: string } {
  return sandbox === "none" && Deno.uid() === 0 ? { defaultPython: SYSTEM_PYTHON } : {};
}

/**
 * Runs a command and fails on a non-zero exit.
 *
 * @param cmd Program and arguments.
 * @returns stdout.
 */
export async function sh(...cmd: string[]): Promise<string> {
  const [program, ...args] = cmd;
  const out = await new Deno.Command(program as string, { args, stdout: "piped", stderr: "piped" })
    .output();
  if (!out.success) {
    throw new Error(`${cmd.join(" ")} failed: ${decoder.decode(out.stderr)}`);
  }
  return decoder.decode(out.stdout);
}

/**
 * Makes a venv at `dir` (Debian's python, no pip) holding `mylib` with the given VERSION.
 *
 * @param dir Where the venv goes.
 * @param version Value of `mylib.VERSION`.
 * @returns Path of its `bin/python`.
 */
export async function makeVenv(dir: string, version: number): Promise<string> {
  await sh(SYSTEM_PYTHON, "-m", "venv", "--without-pip", dir);
  const site = (await sh(
    join(dir, "bin/python"),
    "-c",
    "import sysconfig; print(sysconfig.get_paths()['purelib'])",
  )).trim();
  await Deno.writeTextFile(join(site, "mylib.py"), `VERSION = ${version}\n`);
  return join(dir, "bin/python");
}

/**
 * Writes a zip with the given files (via Python's zipfile).
 *
 * @param path The zip.
 * @param files Name → content.
 */
export async function makeZip(path: string, files: Record<string, string>): Promise<void> {
  await sh(
    SYSTEM_PYTHON,
    "-c",
    "import sys, json, zipfile\nwith zipfile.ZipFile(sys.argv[1], 'w') as z:\n" +
      "    for k, v in json.loads(sys.argv[2]).items(): z.writestr(k, v)",
    path,
    JSON.stringify(files),
  );
}

const PEX_MAIN = `
import os, sys
_here = sys.argv[0]
sys.path.insert(0, os.path.join(_here, '.deps'))
if os.environ.get('PEX_INTERPRETER') == '1':
    root = os.environ['PEX_ROOT']
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, 'touched'), 'w') as f:
        f.write('1')
    args = sys.argv[1:]
    if args[:1] == ['-c']:
        sys.argv = ['-c'] + args[2:]
        g = {'__name__': '__main__', '__builtins__': __builtins__}
        exec(compile(args[1], '<string>', 'exec'), g)
    else:
        raise SystemExit('only -c is supported by this test pex')
else:
    raise SystemExit('PEX_INTERPRETER is not set')
`;

/**
 * Makes a PEX-shaped zipapp (`__main__.py`, `PEX-INFO`, deps in `.deps/`) that honours
 * `PEX_INTERPRETER=1` for `-c` and touches `$PEX_ROOT/touched`.
 *
 * @param path The `.pex`.
 * @param version `mylib.VERSION` inside it.
 */
export async function makePexLike(path: string, version: number): Promise<void> {
  await makeZip(path, {
    "__main__.py": PEX_MAIN,
    "PEX-INFO": JSON.stringify({ build_properties: {}, requirements: [] }),
    ".deps/mylib.py": `VERSION = ${version}\n`,
  });
}

/**
 * The processes descending from `roots`, from /proc.
 *
 * @param roots Ancestors to start from.
 * @returns pid → [ppid, comm].
 */
export function descendants(roots: number[]): Map<number, [number, string]> {
  const parent = new Map<number, [number, string]>();
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const stat = Deno.readTextFileSync(`/proc/${e.name}/stat`);
      const close = stat.lastIndexOf(")");
      const comm = stat.slice(stat.indexOf("(") + 1, close);
      const fields = stat.slice(close + 2).split(" ");
      parent.set(Number(e.name), [Number(fields[1]), comm]);
    } catch {
      // gone
    }
  }
  const out = new Map<number, [number, string]>();
  const todo = [...roots];
  while (todo.length) {
    const p = todo.pop() as number;
    for (const [pid, info] of parent) {
      if (info[0] === p && !out.has(pid)) {
        out.set(pid, info);
        todo.push(pid);
      }
    }
  }
  return out;
}

/**
 * Whether a process exists (a zombie counts: it is not reaped).
 *
 * @param pid The pid.
 * @returns `true` while /proc has it.
 */
export function alive(pid: number): boolean {
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch {
    return false;
  }
}

/**
 * Waits until `check` holds, polling (no time limit: the test runner's own applies).
 *
 * @param check The condition.
 */
export async function until(check: () => boolean | Promise<boolean>): Promise<void> {
  while (!(await check())) await new Promise((r) => setTimeout(r, 10));
}

/** Whether bwrap works here. */
export function bwrapWorks(): boolean {
  try {
    return new Deno.Command("bwrap", {
      args: ["--unshare-all", "--ro-bind", "/", "/", "--", "true"],
      stdout: "null",
      stderr: "null",
    }).outputSync().success;
  } catch {
    return false;
  }
}

/** A logger that keeps messages. */
export function memoryLogger(): { lines: string[]; log: (l: string, m: string) => void } {
  const lines: string[] = [];
  return { lines, log: (l: string, m: string) => lines.push(`${l}: ${m}`) };
}

/**
 * Runs `fn` once per sandbox mode, each as a test step; where bubblewrap does not work, its step
 * is reported as ignored, with the reason, never silently dropped.
 *
 * @param t The test's context.
 * @param fn The body, given the mode.
 */
export async function eachSandbox(
  t: Deno.TestContext,
  fn: (sandbox: "none" | "bwrap") => Promise<void>,
): Promise<void> {
  for (const sandbox of ["none", "bwrap"] as const) {
    const skip = sandbox === "bwrap" && !bwrapWorks();
    await t.step({
      name: `sandbox ${sandbox}${skip ? " (ignored: bubblewrap does not work here)" : ""}`,
      ignore: skip,
      fn: () => fn(sandbox),
    });
  }
}

/** The name (comm) a fork server's standby child shows while it waits for its spec. */
export const STANDBY_NAME = "valise-standby";

/**
 * Host pids of the standby children (forked ahead, waiting for a spec) below `roots`. A fork
 * server takes the standby's name for the instant of its fork (so that the child never shows
 * under a run's name); a sandboxed one is bwrap's child, and is left out.
 *
 * @param roots Ancestors to start from (a launcher's `stats().pids`, a server's pid).
 * @returns Their pids.
 */
export function standbys(roots: number[]): number[] {
  const procs = descendants(roots);
  // The parent may be a root, which `descendants` leaves out: read its name from /proc.
  return [...procs].filter(([, [ppid, comm]]) =>
    comm === STANDBY_NAME && (procs.get(ppid)?.[1] ?? commOf(ppid)) !== "bwrap"
  ).map(([p]) => p);
}

function commOf(pid: number): string | undefined {
  try {
    return Deno.readTextFileSync(`/proc/${pid}/comm`).trim();
  } catch {
    return undefined;
  }
}

/**
 * A process's pid as its own PID namespace sees it (the last `NSpid` field): what a sandboxed
 * fork server reports in `started`.
 *
 * @param pid The host pid.
 * @returns The innermost pid, or `undefined` once the process is gone.
 */
export function innermostPid(pid: number): number | undefined {
  try {
    const status = Deno.readTextFileSync(`/proc/${pid}/status`);
    const ns = /^NSpid:\s+(.+)$/m.exec(status)?.[1]?.trim().split(/\s+/);
    return ns ? Number(ns.at(-1)) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Waits until `check` holds, polling, and fails after `guardMs` (a hang turned into a failure,
 * not a timed assertion).
 *
 * @param what What is awaited, for the failure's message.
 * @param check The condition.
 * @param guardMs The guard.
 */
export async function eventually(
  what: string,
  check: () => boolean | Promise<boolean>,
  guardMs = 30_000,
): Promise<void> {
  const deadline = Date.now() + guardMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`still not true after ${guardMs} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
