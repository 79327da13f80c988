// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * One warm fork server process (optionally inside bubblewrap) and the runs it carries.
 *
 * @module
 */
import { FrameType } from "./_bootstrap.ts";
import { Channel } from "./_channel.ts";
import { encodeFrame, encodeRunPayload, type Frame, FrameDecoder } from "./_frames.ts";
import { LaunchError } from "./launch_error.ts";
import type { LauncherLogger, RunEvent } from "./launcher.ts";

const decoder = new TextDecoder();
const encoder = new TextEncoder();

/** What the fork server says once it is up. */
export interface ReadyInfo {
  /** Its pid (inside the sandbox's PID namespace when sandboxed). */
  pid: number;
  /** `sys.executable`. */
  executable: string;
  /** `sys.version_info[:3]`. */
  version: number[];
}

/** How to start a fork server. */
export interface ForkServerInit {
  /** Program and arguments, e.g. `["bwrap", …, "--", python, "-c", source]`. */
  command: string[];
  /** The complete environment of the process. */
  env: Record<string, string>;
  /** Working directory of the spawned program. */
  cwd: string;
  /** The interpreter as configured, for messages. */
  interpreter: string;
  /** Where diagnostics go. */
  log: LauncherLogger;
  /** Limit on the time to the READY frame. */
  startTimeoutMs: number;
}

/** The JSON the fork server's child reads. */
export interface RunRequestJson {
  /** What to run. */
  kind: "code" | "module" | "script";
  /** Source, module name or absolute script path. */
  target: string;
  /** `sys.argv[1:]`. */
  args: string[];
  /** Working directory. */
  cwd: string;
  /** Entries put first on `sys.path`. */
  path: string[];
  /** `RLIMIT_AS`, 0 for none. */
  memoryBytes: number;
  /** Stdin arrives in STDIN frames (ending with an empty one), not in the RUN frame. */
  stdinStream?: boolean;
  /** Stdout is flow-controlled by ACK frames. */
  flow?: boolean;
}

/** Bytes of streamed stdin sent to the fork server but not yet written to the run's pipe. */
export const STDIN_WINDOW = 1 << 20;
/** The largest STDIN frame payload. */
const STDIN_PIECE = 256 * 1024;

/** Per-run settings kept on this side. */
export interface RunOptions {
  /** Output cap (stdout + stderr bytes). */
  outputBytes: number;
  /** Reported in `started`. */
  interpreter: string;
  /** Reported in `started`. */
  cwd: string;
  /** Called once the run has ended (after its `exited` event is queued). */
  onExit: () => void;
  /**
   * Stdout is flow-controlled: the caller acknowledges what it consumed with `ack()`, and
   * stdout does not count toward `outputBytes`.
   */
  flow?: boolean;
}

/** One run in flight. */
export interface RunHandle {
  /** The run's events, ending after `exited`. */
  events: Channel<RunEvent>;
  /**
   * Kills the run's process group.
   *
   * @param timedOut Reports `timedOut` in `exited`.
   */
  kill(timedOut: boolean): void;
  /**
   * Sends bytes to a `stdinStream` run's stdin, waiting while too much is in flight.
   *
   * @param data The bytes (copied).
   * @returns `false` once the run has ended (the bytes were dropped).
   */
  writeStdin(data: Uint8Array): Promise<boolean>;
  /** Ends a `stdinStream` run's stdin once what was sent is written. */
  endStdin(): void;
  /**
   * Acknowledges stdout bytes of a `flow` run that the consumer has taken.
   *
   * @param bytes How many.
   */
  ack(bytes: number): void;
}

interface RunState {
  events: Channel<RunEvent>;
  remaining: number;
  limit: number;
  truncated: boolean;
  timedOut: boolean;
  start: number;
  options: RunOptions;
  ended: boolean;
  inflight: number;
  wake: (() => void) | undefined;
}

/** A running fork server. */
export class ForkServer {
  #child: Deno.ChildProcess;
  #writer: WritableStreamDefaultWriter<Uint8Array>;
  #runs = new Map<number, RunState>();
  #nextId = 1;
  #ready: Promise<ReadyInfo>;
  #resolveReady!: (info: ReadyInfo) => void;
  #rejectReady!: (e: unknown) => void;
  #isReady = false;
  #stderrTail = "";
  #dead = false;
  #stopping = false;
  #done: Promise<void>;
  #init: ForkServerInit;
  #startTimer: ReturnType<typeof setTimeout> | undefined;

  /**
   * Spawns the process; throws a {@linkcode LaunchError} when it cannot be spawned.
   *
   * @param init How to start it.
   */
  constructor(init: ForkServerInit) {
    this.#init = init;
    this.#ready = new Promise<ReadyInfo>((resolve, reject) => {
      this.#resolveReady = resolve;
      this.#rejectReady = reject;
    });
    // A rejection nobody awaits (the server died while idle) must not crash the host.
    this.#ready.catch(() => {});
    const [program, ...args] = init.command;
    try {
      this.#child = new Deno.Command(program as string, {
        args,
        env: init.env,
        clearEnv: true,
        cwd: init.cwd,
        stdin: "piped",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
    } catch (e) {
      throw new LaunchError(
        "INTERPRETER_FAILED",
        `Cannot start interpreter ${init.interpreter} (spark.sql.execution.pyspark.python): ${
          e instanceof Error ? e.message : String(e)
        }`,
        { interpreter: init.interpreter, cause: e },
      );
    }
    this.#writer = this.#child.stdin.getWriter();
    this.#startTimer = setTimeout(() => {
      this.#startTimer = undefined;
      if (!this.#isReady) {
        this.#stderrTail += `\n(not ready after ${init.startTimeoutMs} ms)`;
        this.hardKill();
      }
    }, init.startTimeoutMs);
    this.#done = Promise.all([this.#readFrames(), this.#readStderr()]).then(async () => {
      await this.#child.status;
    });
  }

  /** The OS pid of the spawned process (bwrap's when sandboxed). */
  get pid(): number {
    return this.#child.pid;
  }

  /** Resolves once the server accepts runs; rejects with a `LaunchError` if it never does. */
  get ready(): Promise<ReadyInfo> {
    return this.#ready;
  }

  /** Runs in flight. */
  get activeRuns(): number {
    return this.#runs.size;
  }

  /** Whether the process is gone or going. */
  get dead(): boolean {
    return this.#dead || this.#stopping;
  }

  /** Resolves when the process has exited and its pipes are drained. */
  get done(): Promise<void> {
    return this.#done;
  }

  /**
   * Starts a run; its events arrive on the returned handle.
   *
   * @param request What the child does.
   * @param stdin Bytes for its standard input.
   * @param options Output cap and what `started` reports.
   * @returns The handle.
   */
  start(request: RunRequestJson, stdin: Uint8Array, options: RunOptions): RunHandle {
    const id = this.#nextId++;
    const state: RunState = {
      events: new Channel<RunEvent>(),
      remaining: options.outputBytes,
      limit: options.outputBytes,
      truncated: false,
      timedOut: false,
      start: performance.now(),
      options,
      ended: false,
      inflight: 0,
      wake: undefined,
    };
    this.#runs.set(id, state);
    if (this.dead) {
      this.#finishLost(id, state);
    } else {
      this.#send(encodeFrame(FrameType.RUN, id, encodeRunPayload(request, stdin)));
    }
    return {
      events: state.events,
      kill: (timedOut: boolean) => {
        if (!this.#runs.has(id)) return;
        if (timedOut) state.timedOut = true;
        this.#send(encodeFrame(FrameType.KILL, id));
      },
      writeStdin: async (data: Uint8Array) => {
        for (let off = 0; off < data.length; off += STDIN_PIECE) {
          const piece = data.subarray(off, off + STDIN_PIECE);
          while (
            !state.ended && state.inflight > 0 && state.inflight + piece.length > STDIN_WINDOW
          ) {
            await new Promise<void>((resolve) => state.wake = resolve);
          }
          if (state.ended) return false;
          state.inflight += piece.length;
          this.#send(encodeFrame(FrameType.STDIN, id, piece));
        }
        return !state.ended;
      },
      endStdin: () => {
        if (!state.ended) this.#send(encodeFrame(FrameType.STDIN, id));
      },
      ack: (bytes: number) => {
        if (state.ended || bytes <= 0) return;
        const payload = new Uint8Array(4);
        new DataView(payload.buffer).setUint32(0, bytes);
        this.#send(encodeFrame(FrameType.ACK, id, payload));
      },
    };
  }

  /**
   * Stops gracefully: closing its stdin makes the server SIGKILL every run's process group,
   * reap them and exit. A server that does not exit within `graceMs` is killed.
   *
   * @param graceMs Time to wait before SIGKILL.
   * @returns Resolves when the process is gone.
   */
  async stop(graceMs = 2000): Promise<void> {
    if (!this.#stopping && !this.#dead) {
      this.#stopping = true;
      this.#writer.close().catch(() => {});
      const timer = setTimeout(() => this.hardKill(), graceMs);
      try {
        await this.#done;
      } finally {
        clearTimeout(timer);
      }
    }
    await this.#done;
  }

  /**
   * SIGKILLs the process and its direct children. With bwrap, a child is the sandbox's init:
   * killing it ends its whole PID namespace. Killing bwrap alone is not enough once a root
   * launcher has dropped the init to a worker uid: the kernel then no longer sends it bwrap's
   * parent-death signal, and a session's interpreter that ignores its closed stdin would run on,
   * holding the pipes (and this server's `done`) forever.
   */
  hardKill(): void {
    this.#stopping = true;
    // Children first: once bwrap is gone they belong to the host's init and cannot be found.
    for (const pid of childrenOf(this.#child.pid)) {
      try {
        Deno.kill(pid, "SIGKILL");
      } catch {
        // gone meanwhile
      }
    }
    try {
      this.#child.kill("SIGKILL");
    } catch {
      // already gone
    }
  }

  #send(frame: Uint8Array): void {
    if (this.#dead) return;
    this.#writer.write(frame).catch(() => {});
  }

  async #readFrames(): Promise<void> {
    const frames = new FrameDecoder();
    try {
      for await (const chunk of this.#child.stdout) {
        for (const f of frames.push(chunk)) this.#onFrame(f);
      }
    } catch (e) {
      this.#init.log("error", `fork server ${this.pid}: bad frame stream`, { error: String(e) });
      this.hardKill();
    }
    this.#dead = true;
    if (this.#startTimer !== undefined) clearTimeout(this.#startTimer);
    this.#writer.close().catch(() => {});
    // stderr may still hold the reason; wait for it before reporting.
    const status = await this.#child.status;
    await this.#stderrDone;
    if (!this.#isReady) {
      const how = status.signal ? `was killed by ${status.signal}` : `exited with ${status.code}`;
      this.#rejectReady(
        new LaunchError(
          "INTERPRETER_FAILED",
          `Cannot start interpreter ${this.#init.interpreter} (spark.sql.execution.pyspark.python): it ${how} before it was ready${
            this.#stderrTail.trim() ? `: ${this.#stderrTail.trim()}` : ""
          }`,
          { interpreter: this.#init.interpreter },
        ),
      );
    }
    for (const [id, state] of this.#runs) this.#finishLost(id, state);
  }

  #stderrDone: Promise<void> = Promise.resolve();

  #readStderr(): Promise<void> {
    this.#stderrDone = (async () => {
      let line = "";
      for await (const chunk of this.#child.stderr) {
        const text = decoder.decode(chunk, { stream: true });
        this.#stderrTail = (this.#stderrTail + text).slice(-4000);
        line += text;
        const parts = line.split("\n");
        line = parts.pop() ?? "";
        for (const p of parts) if (p) this.#init.log("warn", `fork server: ${p}`, {});
      }
      if (line) this.#init.log("warn", `fork server: ${line}`, {});
    })();
    return this.#stderrDone;
  }

  #finishLost(id: number, state: RunState): void {
    this.#runs.delete(id);
    if (!this.#stopping) {
      state.events.push({
        kind: "stderr",
        data: encoder.encode("[valise] the worker's fork server exited\n"),
      });
    }
    this.#exit(state, -1, "SIGKILL");
  }

  #exit(state: RunState, exitCode: number, signal: string): void {
    state.ended = true;
    state.wake?.();
    state.wake = undefined;
    state.events.push({
      kind: "exited",
      exitCode,
      signal,
      durationMs: Math.round(performance.now() - state.start),
      timedOut: state.timedOut,
      outputTruncated: state.truncated,
    });
    state.events.close();
    try {
      state.options.onExit();
    } catch (e) {
      this.#init.log("error", "onExit failed", { error: String(e) });
    }
  }

  #onFrame(f: Frame): void {
    if (f.type === FrameType.READY) {
      this.#isReady = true;
      if (this.#startTimer !== undefined) clearTimeout(this.#startTimer);
      this.#startTimer = undefined;
      this.#resolveReady(JSON.parse(decoder.decode(f.payload)) as ReadyInfo);
      return;
    }
    const state = this.#runs.get(f.id);
    if (!state) return;
    switch (f.type) {
      case FrameType.STARTED: {
        const { pid } = JSON.parse(decoder.decode(f.payload)) as { pid: number };
        state.events.push({
          kind: "started",
          pid,
          interpreter: state.options.interpreter,
          cwd: state.options.cwd,
        });
        return;
      }
      case FrameType.STDIN_ACK: {
        state.inflight -= new DataView(f.payload.buffer, f.payload.byteOffset).getUint32(0);
        const wake = state.wake;
        state.wake = undefined;
        wake?.();
        return;
      }
      case FrameType.STDOUT:
      case FrameType.STDERR: {
        if (f.type === FrameType.STDOUT && state.options.flow) {
          state.events.push({ kind: "stdout", data: f.payload });
          return;
        }
        if (state.truncated) return;
        const kind = f.type === FrameType.STDOUT ? "stdout" : "stderr";
        if (f.payload.length <= state.remaining) {
          state.remaining -= f.payload.length;
          state.events.push({ kind, data: f.payload });
          return;
        }
        if (state.remaining > 0) {
          state.events.push({ kind, data: f.payload.subarray(0, state.remaining) });
        }
        state.remaining = 0;
        state.truncated = true;
        state.events.push({
          kind: "stderr",
          data: encoder.encode(`\n[valise] output truncated at ${state.limit} bytes\n`),
        });
        this.#send(encodeFrame(FrameType.KILL, f.id));
        return;
      }
      case FrameType.EXITED: {
        const { code, signal } = JSON.parse(decoder.decode(f.payload)) as {
          code: number;
          signal: string;
        };
        this.#runs.delete(f.id);
        this.#exit(state, code, signal);
        return;
      }
      case FrameType.FAILED: {
        const { message } = JSON.parse(decoder.decode(f.payload)) as { message: string };
        this.#runs.delete(f.id);
        state.events.push({ kind: "stderr", data: encoder.encode(`[valise] ${message}\n`) });
        this.#exit(state, 70, "");
        return;
      }
    }
  }
}

/** The pids whose parent is `pid` (from /proc; none where there is no /proc). */
function childrenOf(pid: number): number[] {
  const out: number[] = [];
  let entries: Deno.DirEntry[];
  try {
    entries = [...Deno.readDirSync("/proc")];
  } catch {
    return out;
  }
  for (const e of entries) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const stat = Deno.readTextFileSync(`/proc/${e.name}/stat`);
      // Fields after the command (which may hold spaces and parentheses): state, ppid, ...
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid === pid) out.push(Number(e.name));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}
