// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The fork server's protocol constants, defined here once, and the program that starts it: its
 * Python source lives in `fork_server.py` (a stdlib-only program, Python 3.8+), which gets these
 * constants injected as `VALISE` and is compiled under its own file name, so tracebacks point at
 * the right line of that file.
 *
 * @module
 */
import FORK_SERVER_SOURCE from "./fork_server.py" with { type: "text" };
import { pythonStub } from "./python_stub.ts";

/** Frame types, shared with the TypeScript side. */
export const FrameType = {
  /** Deno → Python: start a run. Payload: u32 JSON length, JSON, stdin bytes. */
  RUN: 1,
  /** Deno → Python: SIGKILL the run's process group. */
  KILL: 2,
  /** Deno → Python: bytes for a streamed stdin (`stdinStream` runs); empty payload: EOF. */
  STDIN: 3,
  /** Deno → Python: u32 bytes of a `flow` run's stdout the consumer has taken. */
  ACK: 4,
  /** Deno → Python: SIGINT the run's process group (Ctrl-C of an interactive run). */
  INTERRUPT: 5,
  /** Python → Deno: the server is up. Payload: JSON `{pid, executable, version}`. */
  READY: 10,
  /** Python → Deno: the run's process was forked. Payload: JSON `{pid}`. */
  STARTED: 11,
  /** Python → Deno: bytes the run wrote to stdout. */
  STDOUT: 12,
  /** Python → Deno: bytes the run wrote to stderr. */
  STDERR: 13,
  /** Python → Deno: the run ended. Payload: JSON `{code, signal}`. */
  EXITED: 14,
  /** Python → Deno: the run could not be forked. Payload: JSON `{message}`. */
  FAILED: 15,
  /** Python → Deno: u32 bytes of streamed stdin written to the run's pipe (or dropped). */
  STDIN_ACK: 16,
} as const;

/**
 * Bytes of a `flow` run's stdout that may be sent but not yet acknowledged; beyond it the
 * fork server stops reading the run's pipe, so the run blocks in write().
 */
export const STDOUT_WINDOW = 1 << 20;

/**
 * The most the fork server reads from a run's pipe at once: no STDOUT or STDERR frame carries
 * more, so the launcher refuses longer frames.
 */
export const OUTPUT_PIECE = 1 << 20;

/** The file name the fork server is compiled under: tracebacks name it, with its real lines. */
export const BOOTSTRAP_FILENAME = "@valise/launcher/fork_server.py";

/** Source of the fork server, as in `fork_server.py`. */
export const BOOTSTRAP_SOURCE: string = FORK_SERVER_SOURCE;

/**
 * The `python -c` program that starts the fork server: the constants, then the source compiled
 * under its file name.
 */
export const BOOTSTRAP_STUB: string = pythonStub(FORK_SERVER_SOURCE, BOOTSTRAP_FILENAME, {
  frames: FrameType,
  stdoutWindow: STDOUT_WINDOW,
  outputPiece: OUTPUT_PIECE,
  file: BOOTSTRAP_FILENAME,
});
