// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * One warm fork server process (optionally inside bubblewrap) and the runs it carries. Over 600
 * lines on purpose: the fork server's protocol (frames both ways, flow control, the checks that a
 * lying fork server is killed) is one concept, and every check needs the run state beside it.
 *
 * @module
 */
import { FrameType, OUTPUT_PIECE, STDOUT_WINDOW } from "./_bootstrap.ts";
import { Channel } from "./_channel.ts";
import type { DataClaim, DataSocket } from "./_data_socket.ts";
import { encodeFrame, encodeRunPayload, type Frame, FrameDecoder } from "./_frames.ts";
import { LaunchError } from "./launch_error.ts";
import type { LauncherLogger, RunEvent } from "./types.ts";

const decoder = new TextDecoder();
/** Characters of one line of a fork server's stderr that go to the server's log. */
const LOG_LINE = 2000;
/** Characters of a fork server's stderr that go to the server's log in all. */
const LOG_TOTAL = 64 * 1024;
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
  /**
   * Bytes of frames other than RUN that may wait to be written to the process, beyond the
   * streamed stdin of its runs (each within `STDIN_WINDOW`); past it the process is killed.
   * @default {SEND_QUEUE_BYTES}
   */
  sendQueueBytes?: number;
  /**
   * Time a run has to end after a KILL frame before a second one is sent, and after that;
   * a fork server that lets it live longer is killed (an honest one SIGKILLs the run's
   * process group at once, and on a second KILL closes the run's pipes).
   * @default {KILL_GRACE_MS}
   */
  killGraceMs?: number;
  /**
   * The socket that runs asking for `direct` stdio connect to (bound into the sandbox).
   * @default {undefined} every run's stdio goes through the fork server's pipes
   */
  dataSocket?: DataSocket | undefined;
}

/** The JSON the fork server's child reads. */
export interface RunRequestJson {
  /** What to run; `none`: nothing before the console of a `repl` run. */
  kind: "code" | "module" | "script" | "none";
  /** Source, module name or absolute script path (`""` for `none`). */
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
  /** Python's console follows the target, like `python -i`. */
  repl?: boolean;
  /**
   * Stdin and stdout of a `stdinStream` + `flow` run go over the fork server's data socket,
   * not through the fork server: `true` asks for it, and the child gets where and its token
   * (a run of a fork server without a data socket keeps the pipes).
   */
  direct?: boolean | { path: string; token: string };
}

/** Bytes of streamed stdin sent to the fork server but not yet written to the run's pipe. */
export const STDIN_WINDOW = 1 << 20;
/** The largest STDIN frame payload. */
const STDIN_PIECE = 256 * 1024;
/**
 * Bytes of frames other than RUN (acks, kills, streamed stdin beyond the runs' windows) that may
 * wait to be written to the fork server. An honest one reads its stdin all the time; one that
 * stops must not make this process queue without bound.
 */
export const SEND_QUEUE_BYTES = 16 * 1024 * 1024;
/** Default of {@linkcode ForkServerInit.killGraceMs}. */
export const KILL_GRACE_MS = 10_000;
/**
 * Unacknowledged stdout of a `flow` run the fork server may have sent: it stops reading the
 * run's pipe at `STDOUT_WINDOW`, after a read of at most `OUTPUT_PIECE`.
 */
const FLOW_SLACK = STDOUT_WINDOW + OUTPUT_PIECE;
/**
 * Stdout of a `direct` run read from its socket and not yet acknowledged: past it the socket is
 * not read (the child blocks in write()). Larger than a piped run's window: no pipe buffers the
 * data on its way here.
 */
export const DIRECT_WINDOW = 4 * STDOUT_WINDOW;
/**
 * Stdin of a `direct` run handed to its socket's writes and not yet written: past it
 * `writeStdin` waits. The writes go on while the caller makes the next chunk.
 */
export const DIRECT_STDIN_WINDOW = 4 * STDIN_WINDOW;

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
   * stdout does not count toward `outputBytes` but toward `streamBytes`.
   */
  flow?: boolean;
  /** Cap on a `flow` run's stdout bytes; beyond it the run is killed, reported truncated. */
  streamBytes: number;
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
  /** SIGINTs the run's process group (nothing once the run has ended). */
  interrupt(): void;
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
  /** A STARTED frame came. */
  started: boolean;
  /** A KILL frame was sent: the fork server then drains the pipes without flow control. */
  killing: boolean;
  /** Fails the fork server if the run outlives its KILL frame by `killGraceMs`. */
  killTimer: ReturnType<typeof setTimeout> | undefined;
  /** `flow` stdout delivered but not yet acknowledged. */
  unacked: number;
  /** `flow` stdout bytes left before `streamBytes`. */
  streamLeft: number;
  /** Stdin is streamed in STDIN frames. */
  stdinStream: boolean;
  /** Stdin and stdout go over the data socket (`direct` runs). */
  direct: DirectState | undefined;
}

/** A `direct` run's connection, from its claim to the end of its stdout. */
interface DirectState {
  claim: DataClaim;
  /** The connection, once the child made it. */
  conn: Deno.UnixConn | undefined;
  /** Reads stdout from the connection, started with the run; ends at its end. */
  reader: Promise<void> | undefined;
  /** Wakes the reader waiting for the consumer to take what it delivered. */
  wake: (() => void) | undefined;
  /** Stdin writes in order; the last one's promise. */
  writing: Promise<boolean>;
  /** Stdin bytes handed to `writing` and not yet written. */
  unwritten: number;
  /** Each queued write's promise and size, oldest first. */
  queued: { done: Promise<boolean>; bytes: number }[];
}

/** The fork server broke the frame protocol: it is killed. */
class ProtocolViolation extends Error {
  override name = "ProtocolViolation";
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
  /** Bytes of non-RUN frames handed to the writer and not yet written. */
  #queued = 0;
  /** Why it was killed for breaking the protocol, if it was. */
  #violation: string | undefined;

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
      started: false,
      killing: false,
      killTimer: undefined,
      unacked: 0,
      streamLeft: options.streamBytes,
      stdinStream: request.stdinStream ?? false,
      direct: undefined,
    };
    let wire = request;
    if (request.direct !== undefined) {
      const claim = request.direct && request.stdinStream && request.flow
        ? this.#init.dataSocket?.claim()
        : undefined;
      const { direct: _, ...rest } = request;
      wire = rest;
      if (claim) {
        wire = { ...rest, direct: { path: this.#init.dataSocket!.path, token: claim.token } };
        state.direct = {
          claim,
          conn: undefined,
          reader: undefined,
          wake: undefined,
          writing: Promise.resolve(true),
          unwritten: 0,
          queued: [],
        };
        state.stdinStream = false;
      }
    }
    this.#runs.set(id, state);
    if (this.dead) {
      this.#finishLost(id, state);
    } else {
      // Not counted against SEND_QUEUE_BYTES: a RUN frame's size is the request's, bounded by
      // the caller, and a server holds at most its session's concurrent runs.
      this.#send(encodeFrame(FrameType.RUN, id, encodeRunPayload(wire, stdin)), false);
    }
    return {
      events: state.events,
      kill: (timedOut: boolean) => {
        if (!this.#runs.has(id)) return;
        if (timedOut) state.timedOut = true;
        this.#kill(id, state);
      },
      writeStdin: async (data: Uint8Array) => {
        if (state.direct) return await this.#writeDirect(state, state.direct, data);
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
        const direct = state.direct;
        if (direct) {
          direct.writing = direct.writing.then(async (ok) => {
            if (!ok) return false;
            const conn = await direct.claim.conn;
            await conn.closeWrite();
            return true;
          }).catch(() => false);
          return;
        }
        if (!state.ended) this.#send(encodeFrame(FrameType.STDIN, id));
      },
      interrupt: () => {
        if (!state.ended) this.#send(encodeFrame(FrameType.INTERRUPT, id));
      },
      ack: (bytes: number) => {
        if (state.ended || bytes <= 0) return;
        state.unacked = Math.max(0, state.unacked - bytes);
        if (state.direct) {
          const wake = state.direct.wake;
          state.direct.wake = undefined;
          wake?.();
          return;
        }
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

  #send(frame: Uint8Array, counted = true): void {
    if (this.#dead) return;
    if (!counted) {
      this.#writer.write(frame).catch(() => {});
      return;
    }
    // Streamed stdin stays within each run's window; the rest is a few bytes per event.
    let cap = this.#init.sendQueueBytes ?? SEND_QUEUE_BYTES;
    for (const r of this.#runs.values()) if (r.stdinStream) cap += STDIN_WINDOW;
    if (this.#queued + frame.length > cap) {
      this.#fail(`it stopped reading its input (${this.#queued} bytes waiting, limit ${cap})`);
      return;
    }
    this.#queued += frame.length;
    this.#writer.write(frame).then(() => this.#queued -= frame.length, () => {});
  }

  #kill(id: number, state: RunState): void {
    state.killing = true;
    // Nobody takes a killed run's stdout any more: its reader drains the socket unthrottled.
    this.#wakeDirect(state);
    this.#send(encodeFrame(FrameType.KILL, id));
    if (state.killTimer !== undefined || state.ended) return;
    const grace = this.#init.killGraceMs ?? KILL_GRACE_MS;
    state.killTimer = setTimeout(() => {
      // A second KILL makes an honest fork server close the pipes that a process which left
      // the run's group still holds; a run alive after that is kept alive by the fork server.
      this.#send(encodeFrame(FrameType.KILL, id));
      state.killTimer = setTimeout(
        () => this.#fail(`run ${id} was still running ${2 * grace} ms after it was killed`),
        grace,
      );
    }, grace);
  }

  /** Kills the fork server for breaking the protocol; its runs end reporting why. */
  #fail(why: string): void {
    if (this.#violation !== undefined) return;
    this.#violation = why;
    this.#init.log(
      "error",
      `fork server ${this.pid} (${this.#init.interpreter}) broke the protocol and was killed: ${why}`,
      {},
    );
    this.hardKill();
  }

  async #readFrames(): Promise<void> {
    const frames = new FrameDecoder();
    try {
      for await (const chunk of this.#child.stdout) {
        for (const f of frames.push(chunk)) this.#onFrame(f);
        if (this.#violation !== undefined) break;
      }
    } catch (e) {
      this.#fail(e instanceof Error ? e.message : String(e));
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
    // The fork server runs the session's interpreter: what it writes here is the session's.
    // The server logs a bounded amount of it (lines cut at LOG_LINE, LOG_TOTAL in all), keeps a
    // bounded tail for error messages, and drains the rest.
    this.#stderrDone = (async () => {
      let line = "";
      let logged = 0;
      const log = (text: string) => {
        if (logged >= LOG_TOTAL) return;
        logged += text.length;
        this.#init.log(
          "warn",
          logged >= LOG_TOTAL
            ? `fork server: ${text} (more of its stderr is not logged)`
            : `fork server: ${text}`,
          {},
        );
      };
      for await (const chunk of this.#child.stderr) {
        const text = decoder.decode(chunk, { stream: true });
        this.#stderrTail = (this.#stderrTail + text).slice(-4000);
        if (logged >= LOG_TOTAL) continue;
        line += text;
        const parts = line.split("\n");
        line = parts.pop() ?? "";
        if (line.length > LOG_LINE) {
          parts.push(line.slice(0, LOG_LINE) + " …");
          line = "";
        }
        for (const p of parts) if (p) log(p.slice(0, LOG_LINE));
      }
      if (line) log(line);
    })();
    return this.#stderrDone;
  }

  #finishLost(id: number, state: RunState): void {
    this.#runs.delete(id);
    if (state.direct) this.#closeDirect(state.direct);
    if (this.#violation !== undefined) {
      state.events.push({
        kind: "stderr",
        data: encoder.encode(
          `[valise] the worker's fork server broke the protocol and was killed: ${this.#violation}\n`,
        ),
      });
    } else if (!this.#stopping) {
      state.events.push({
        kind: "stderr",
        data: encoder.encode("[valise] the worker's fork server exited\n"),
      });
    }
    this.#exit(state, -1, "SIGKILL");
  }

  #exit(state: RunState, exitCode: number, signal: string): void {
    if (state.direct) this.#closeDirect(state.direct);
    state.ended = true;
    clearTimeout(state.killTimer);
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

  /**
   * Queues a direct run's stdin for its connection, in order (not copied); waits while more
   * than `DIRECT_STDIN_WINDOW` is queued. `false` once the run ended or a write failed.
   */
  async #writeDirect(state: RunState, direct: DirectState, data: Uint8Array): Promise<boolean> {
    if (state.ended) return false;
    const done = direct.writing.then(async (ok) => {
      if (!ok || state.ended) return false;
      const conn = await direct.claim.conn;
      for (let off = 0; off < data.length;) {
        off += await conn.write(data.subarray(off));
      }
      return !state.ended;
    }).catch(() => false).finally(() => {
      direct.unwritten -= data.length;
      direct.queued.shift();
    });
    direct.writing = done;
    direct.unwritten += data.length;
    direct.queued.push({ done, bytes: data.length });
    while (direct.unwritten > DIRECT_STDIN_WINDOW) {
      if (!await direct.queued[0]!.done) return false;
    }
    return !state.ended;
  }

  /**
   * A direct run's stdout, from its connection: read only while less than `DIRECT_WINDOW` is
   * unacknowledged (the child blocks in write() meanwhile), capped by `streamBytes` as piped
   * stdout is. Ends at the end of the connection, or when it is closed.
   */
  async #readDirect(id: number, state: RunState, direct: DirectState): Promise<void> {
    let conn: Deno.UnixConn;
    try {
      conn = await direct.claim.conn;
    } catch {
      return; // the run ended before its child connected
    }
    direct.conn = conn;
    if (state.ended) {
      this.#closeDirect(direct);
      return;
    }
    const buf = new Uint8Array(OUTPUT_PIECE);
    try {
      while (true) {
        while (!state.ended && !state.killing && state.unacked >= DIRECT_WINDOW) {
          await new Promise<void>((resolve) => direct.wake = resolve);
        }
        const n = await conn.read(buf);
        if (n === null) return;
        if (state.ended || state.killing || state.truncated) continue;
        this.#onFlowStdout(id, state, buf.slice(0, n), DIRECT_WINDOW + OUTPUT_PIECE);
      }
    } catch {
      // closed: the run ended, or lingered past its grace
    }
  }

  #wakeDirect(state: RunState): void {
    const wake = state.direct?.wake;
    if (state.direct) state.direct.wake = undefined;
    wake?.();
  }

  #closeDirect(direct: DirectState): void {
    direct.claim.cancel();
    const wake = direct.wake;
    direct.wake = undefined;
    wake?.();
    try {
      direct.conn?.close();
    } catch {
      // closed already
    }
    direct.conn = undefined;
  }

  /**
   * Flow-controlled stdout: the window is enforced here too, since the fork server runs the
   * session's interpreter, and every byte counts toward the run's `streamBytes`.
   */
  #onFlowStdout(id: number, state: RunState, data: Uint8Array, slack = FLOW_SLACK): void {
    if (state.truncated) return;
    if (state.unacked + data.length > slack) {
      // After a KILL the fork server drains the pipes without flow control: nobody will take
      // that output, so it is dropped rather than queued.
      if (state.killing) return;
      throw new ProtocolViolation(
        `run ${id}: ${
          state.unacked + data.length
        } bytes of flow-controlled stdout unacknowledged, window ${STDOUT_WINDOW}`,
      );
    }
    if (data.length <= state.streamLeft) {
      state.streamLeft -= data.length;
      state.unacked += data.length;
      state.events.push({ kind: "stdout", data });
      return;
    }
    if (state.streamLeft > 0) {
      state.unacked += state.streamLeft;
      state.events.push({ kind: "stdout", data: data.subarray(0, state.streamLeft) });
    }
    state.streamLeft = 0;
    state.truncated = true;
    state.events.push({
      kind: "stderr",
      data: encoder.encode(
        `\n[valise] output stream truncated at ${state.options.streamBytes} bytes\n`,
      ),
    });
    this.#kill(id, state);
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
        if (state.started) throw new ProtocolViolation(`run ${f.id} was reported started twice`);
        state.started = true;
        // Stdout of a direct run is read from here on, so that `started` comes first.
        if (state.direct) state.direct.reader = this.#readDirect(f.id, state, state.direct);
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
        if (f.payload.length !== 4) {
          throw new ProtocolViolation(`a STDIN_ACK frame of ${f.payload.length} bytes, not 4`);
        }
        const acked = new DataView(f.payload.buffer, f.payload.byteOffset, 4).getUint32(0);
        if (acked > state.inflight) {
          // An ack for bytes never sent would open the window without bound.
          throw new ProtocolViolation(
            `run ${f.id}: ${acked} bytes of stdin acknowledged, ${state.inflight} in flight`,
          );
        }
        state.inflight -= acked;
        const wake = state.wake;
        state.wake = undefined;
        wake?.();
        return;
      }
      case FrameType.STDOUT:
      case FrameType.STDERR: {
        if (f.type === FrameType.STDOUT && state.options.flow) {
          this.#onFlowStdout(f.id, state, f.payload);
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
        this.#kill(f.id, state);
        return;
      }
      case FrameType.EXITED: {
        const { code, signal } = JSON.parse(decoder.decode(f.payload)) as {
          code: number;
          signal: string;
        };
        this.#runs.delete(f.id);
        const reader = state.direct?.reader;
        if (state.direct && reader) {
          // The child is gone; what it wrote to the socket is read to its end (bounded by
          // streamBytes, and in time: a process that left the run's group and still holds
          // the socket gets the kill grace, then the connection is closed).
          const direct = state.direct;
          // Its connection may still wait to be heard (the exit can come first under load).
          direct.claim.cancelWhenHeard().catch(() => {});
          const timer = setTimeout(
            () => this.#closeDirect(direct),
            this.#init.killGraceMs ?? KILL_GRACE_MS,
          );
          reader.finally(() => {
            clearTimeout(timer);
            this.#exit(state, code, signal);
          });
          return;
        }
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
