// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Helpers of the hostile tests (issue 10): a real `serve` process in a fresh data directory,
 * runs collected with their `started` event observable, config writes, refusals with their
 * error class, and whether the sandbox these attacks target is available here.
 *
 * @module
 */
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { ConnectError } from "@connectrpc/connect";
import {
  addArtifactsRequests,
  type ArtifactSource,
  ConfigRequest_OperationSchema,
  ErrorInfoSchema,
  HealthCheckResponse_ServingStatus,
  RunRequestSchema,
} from "@valise/protocol";
import { bwrapWorks, type ServerProcess, startServer } from "./_server.ts";
import { removeTree } from "./_util.ts";

/** A server of a hostile test, with its directories. */
export type HostileServer = ServerProcess & { dataDir: string; tmp: string };

/**
 * Why the sandboxed, root-run attacks cannot be performed here, or `undefined` when they can:
 * the server must run as root (workers then get their own uids) with a working bubblewrap.
 */
export function sandboxMissing(): string | undefined {
  if (Deno.build.os !== "linux") return "not Linux";
  if (Deno.uid() !== 0) return "not root";
  if (!bwrapWorks()) return "bubblewrap does not work here";
  return undefined;
}

/** Whether the kernel offers cgroups the server can write (v1 memory+pids, or v2). */
export function cgroupsMissing(): string | undefined {
  const why = sandboxMissing();
  if (why) return why;
  try {
    Deno.statSync("/sys/fs/cgroup/memory/cgroup.procs");
    Deno.statSync("/sys/fs/cgroup/pids/cgroup.procs");
    return undefined;
  } catch {
    try {
      const c = Deno.readTextFileSync("/sys/fs/cgroup/cgroup.controllers");
      if (c.includes("memory") && c.includes("pids")) return undefined;
    } catch { /* neither */ }
  }
  return "no cgroup hierarchy with memory and pids";
}

/** Options of {@linkcode withServer}. */
export interface WithServerOptions {
  /** More `serve` flags. */
  args?: string[];
  /** Require this token (`--token`); the clients send it. */
  token?: string;
  /** Use this data directory (kept afterwards) instead of a fresh temporary one. */
  dirs?: { tmp: string; dataDir: string };
}

/** Resolves with `promise`'s value, or `undefined` once `ms` passed (the timer is cleared). */
export async function within<T>(promise: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<undefined>((r) => timer = setTimeout(() => r(undefined), ms)),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Turns a hang into a failure naming what hung (a guard, not a timed assertion).
 *
 * @param promise What the server should answer.
 * @param what Named in the failure.
 * @param guardMs How long a hang may last.
 * @returns The answer.
 */
export async function answered<T>(promise: Promise<T>, what: string, guardMs: number): Promise<T> {
  const got = await within(promise.then((value) => ({ value })), guardMs);
  if (got === undefined) {
    throw new Error(`${what}: no answer within ${guardMs} ms (the server hangs)`);
  }
  return got.value;
}

/**
 * Fails unless the server answers Health/Check with SERVING (within the guard).
 *
 * @param server The server.
 * @param what Named in a failure.
 * @param guardMs How long a hang may last.
 */
export async function serving(server: ServerProcess, what: string, guardMs: number): Promise<void> {
  const res = await answered(server.clients.health.check({}), what, guardMs);
  if (res.status !== HealthCheckResponse_ServingStatus.SERVING) {
    throw new Error(`${what}: the server answered Health/Check with status ${res.status}`);
  }
}

/** The start time of a process (field 22 of /proc/<pid>/stat), or "" once it is gone. */
function startTime(pid: number): string {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // A zombie is gone for our purposes: it runs nothing and holds nothing.
    return fields[0] === "Z" ? "" : fields[19] ?? "";
  } catch {
    return "";
  }
}

/**
 * Starts a server in a fresh temporary directory, runs `fn`, stops it and removes the
 * directory. Containment is checked on the way out: the server must exit on SIGTERM within
 * 30 s, and no process it started (fork servers, sandboxes, workers) may outlive it. Either
 * failure is an error of the test (after the leftovers are killed, by pid, so that later tests
 * run clean).
 */
export async function withServer(
  o: WithServerOptions,
  fn: (s: HostileServer) => Promise<void>,
): Promise<void> {
  const tmp = o.dirs?.tmp ?? await Deno.makeTempDir({ prefix: "valise-hostile-" });
  const dataDir = o.dirs?.dataDir ?? join(tmp, "data");
  const server = await startServer({
    dataDir,
    args: [...(o.token ? ["--token", o.token] : []), ...(o.args ?? [])],
    ...(o.token ? { headers: { authorization: `Bearer ${o.token}` } } : {}),
  });
  let failure: unknown;
  try {
    await fn(Object.assign(server, { dataDir, tmp }));
  } catch (e) {
    failure = e;
  }
  const problems = await stopChecked(server);
  if (!o.dirs) await removeTree(tmp);
  if (failure !== undefined) {
    if (problems.length && failure instanceof Error) {
      failure.message += `\n(and on stopping the server: ${problems.join("; ")})`;
    }
    throw failure;
  }
  if (problems.length) throw new Error(problems.join("; "));
}

/** SIGTERMs a server and checks that it and everything it started are gone. */
export async function stopChecked(server: ServerProcess): Promise<string[]> {
  const problems: string[] = [];
  const tree = descendants(server.pid).map((pid) => ({
    pid,
    start: startTime(pid),
    comm: comm(pid),
  }));
  try {
    server.child.kill("SIGTERM");
  } catch { /* gone */ }
  if ((await within(server.child.status, 30_000)) === undefined) {
    problems.push("the server did not exit within 30 s of SIGTERM");
    server.child.kill("SIGKILL");
    await server.child.status;
  }
  const alive = () => tree.filter((p) => p.start !== "" && startTime(p.pid) === p.start);
  const end = Date.now() + 10_000;
  while (alive().length && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
  const left = alive();
  if (left.length) {
    problems.push(
      `processes outlived the server: ${
        left.map((p) => `${p.pid} ${p.comm} (uid ${uidOf(p.pid)})`).join(", ")
      }`,
    );
    for (const p of left) {
      try {
        Deno.kill(p.pid, "SIGKILL");
      } catch { /* gone meanwhile */ }
    }
  }
  return problems;
}

function uidOf(pid: number): string {
  try {
    return /^Uid:\s+(\d+)/m.exec(Deno.readTextFileSync(`/proc/${pid}/status`))?.[1] ?? "?";
  } catch {
    return "?";
  }
}

/** What a run produced. */
export interface Ran {
  /** Its stdout, decoded. */
  stdout: string;
  /** Its stderr, decoded. */
  stderr: string;
  /** Exit code, -1 when killed. */
  exitCode: number;
  /** Killing signal, or "". */
  signal: string;
  /** The working directory the server reported. */
  cwd: string;
}

/** Options of {@linkcode run}. */
export interface RunOptions {
  /** The user id. */
  userId?: string;
  /** Called once the `started` event arrived (the worker's process exists). */
  onStarted?: (cwd: string) => void | Promise<void>;
  /** Called with each stdout chunk as it arrives. */
  onStdout?: (text: string, soFar: string) => void | Promise<void>;
  /** Run time limit in ms. */
  timeoutMs?: number;
  /** Guard: the call is cancelled and the run fails after this many ms (default 120 s). */
  guardMs?: number;
}

/** Runs Python code in a session and collects its events. */
export async function run(
  s: ServerProcess,
  sessionId: string,
  code: string,
  o: RunOptions = {},
): Promise<Ran> {
  const r: Ran = { stdout: "", stderr: "", exitCode: NaN, signal: "", cwd: "" };
  const dec = new TextDecoder();
  const req = create(RunRequestSchema, {
    sessionId,
    ...(o.userId !== undefined ? { userContext: { userId: o.userId } } : {}),
    target: { case: "code", value: code },
    timeoutMs: o.timeoutMs ?? 60_000,
  });
  const guard = new AbortController();
  const timer = setTimeout(() => guard.abort(), o.guardMs ?? 120_000);
  try {
    for await (const ev of s.clients.worker.run(req, { signal: guard.signal })) {
      const e = ev.event;
      if (e.case === "started") {
        r.cwd = e.value.cwd;
        await o.onStarted?.(e.value.cwd);
      } else if (e.case === "stdout") {
        const t = dec.decode(e.value);
        r.stdout += t;
        await o.onStdout?.(t, r.stdout);
      } else if (e.case === "stderr") r.stderr += dec.decode(e.value);
      else if (e.case === "exited") {
        r.exitCode = e.value.exitCode;
        r.signal = e.value.signal;
      }
    }
  } catch (e) {
    if (guard.signal.aborted) {
      throw new Error(`the run did not end within ${o.guardMs ?? 120_000} ms (guard): ${r.stderr}`);
    }
    throw e;
  } finally {
    clearTimeout(timer);
  }
  return r;
}

/** The `key value` lines a probe printed, as a record. */
export function lines(stdout: string): Record<string, string> {
  return Object.fromEntries(
    stdout.trim().split("\n").filter((l) => l.includes(" ")).map((l) => {
      const i = l.indexOf(" ");
      return [l.slice(0, i), l.slice(i + 1)];
    }),
  );
}

/** Python prelude of probes: `attempt(f)` prints what happened, never raises. */
export const ATTEMPT = `
import os, sys
def attempt(f):
    try:
        r = f()
        return "allowed" if r is None or r is True or isinstance(r, int) else "allowed:" + repr(r)[:200]
    except Exception as e:
        return type(e).__name__
`;

/** Sets config pairs of a session. */
export async function setConf(
  s: ServerProcess,
  sessionId: string,
  pairs: Record<string, string>,
  userId?: string,
): Promise<void> {
  await s.clients.spark.config({
    sessionId,
    ...(userId !== undefined ? { userContext: { userId } } : {}),
    operation: create(ConfigRequest_OperationSchema, {
      opType: {
        case: "set",
        value: { pairs: Object.entries(pairs).map(([key, value]) => ({ key, value })) },
      },
    }),
  });
}

/** Adds artifacts to a session in one AddArtifacts stream; resolves with the summaries. */
export async function add(
  s: ServerProcess,
  sessionId: string,
  artifacts: ArtifactSource[],
  userId?: string,
): Promise<{ name: string; isCrcSuccessful: boolean }[]> {
  const res = await s.clients.spark.addArtifacts(
    addArtifactsRequests(artifacts, { sessionId, ...(userId !== undefined ? { userId } : {}) }),
  );
  return res.artifacts;
}

/** A refused call: its gRPC code, error class, `valise.reason` and message. */
export interface Refusal {
  /** gRPC code. */
  code: number;
  /** The error class (ErrorInfo metadata). */
  errorClass: string | undefined;
  /** The `valise.reason` metadata. */
  reason: string | undefined;
  /** The message. */
  message: string;
}

/** Awaits a call that must fail and returns how it failed. */
export async function refused(p: Promise<unknown>): Promise<Refusal> {
  try {
    await p;
  } catch (e) {
    const err = ConnectError.from(e);
    const info = err.findDetails(ErrorInfoSchema)[0];
    return {
      code: err.code,
      errorClass: info?.metadata.errorClass,
      reason: info?.metadata["valise.reason"],
      message: err.rawMessage,
    };
  }
  throw new Error("the call was expected to fail, it succeeded");
}

/** The session's directory, from the working directory a run reported (`<sid>/root`). */
export function sessionDirOf(cwd: string): string {
  return cwd.replace(/\/root$/, "");
}

/** Reads a blob's bytes, mode and owner on the host. */
export function blobOnDisk(dataDir: string, sha256: string): {
  bytes: Uint8Array;
  mode: number;
  uid: number;
} {
  const p = join(dataDir, "blobs", "sha256", sha256.slice(0, 2), sha256);
  const st = Deno.lstatSync(p);
  return { bytes: Deno.readFileSync(p), mode: (st.mode ?? 0) & 0o7777, uid: st.uid ?? -1 };
}

/** Runs a host command as another, unprivileged host user (uid/gid 12345, no groups). */
export async function asOtherUser(
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  // Through a shell: setpriv keeps root's capabilities until its own exec, so the command's
  // path must be walked by a process that has none left.
  const out = await new Deno.Command("setpriv", {
    args: [
      "--reuid",
      "12345",
      "--regid",
      "12345",
      "--clear-groups",
      "--",
      "/bin/sh",
      "-c",
      'exec "$@"',
      "sh",
      ...args,
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Host pids of every descendant of `pid` (from /proc). */
export function descendants(pid: number): number[] {
  const children = new Map<number, number[]>();
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    let stat: string;
    try {
      stat = Deno.readTextFileSync(`/proc/${e.name}/stat`);
    } catch {
      continue;
    }
    const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
    const list = children.get(ppid) ?? [];
    list.push(Number(e.name));
    children.set(ppid, list);
  }
  const out: number[] = [];
  const stack = [pid];
  while (stack.length) {
    for (const c of children.get(stack.pop()!) ?? []) {
      out.push(c);
      stack.push(c);
    }
  }
  return out;
}

/** The program name of a pid (`/proc/<pid>/comm`), or "" once it is gone. */
export function comm(pid: number): string {
  try {
    return Deno.readTextFileSync(`/proc/${pid}/comm`).trim();
  } catch {
    return "";
  }
}

/** Polls `probe` until `done` holds; fails with `what` after the guard deadline. */
export async function until<T>(
  probe: () => T | Promise<T>,
  done: (v: T) => boolean,
  what: string,
  deadlineMs = 60_000,
): Promise<T> {
  const end = Date.now() + deadlineMs;
  for (;;) {
    const v = await probe();
    if (done(v)) return v;
    if (Date.now() > end) throw new Error(`gave up waiting: ${what} (last: ${JSON.stringify(v)})`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
