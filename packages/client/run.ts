// Copyright 2026 the Valise authors. Apache-2.0 license.
import type { RunControl } from "./run_control.ts";

/**
 * What {@linkcode Session.run} runs: exactly one of `code`, `module` or `script`, or
 * `{ repl: true }` for Python's console alone.
 */
export type RunTarget = { code: string } | { module: string } | { script: string } | {
  repl: true;
};

/** Options of a run. */
export interface RunOptions {
  /**
   * Arguments (`sys.argv[1:]`).
   * @default {[]}
   */
  args?: string[];
  /**
   * The program's stdin. Bytes or text are sent whole, with the request, and stdin is then
   * closed. A `ReadableStream` or async iterable is streamed as it produces
   * (`WorkerService/RunInteractive`): each chunk reaches the program as soon as it is read, the
   * stream is read only as fast as the program takes it, its end closes the program's stdin,
   * and once the program has exited it is cancelled. Such a run has the server's interactive
   * time limit (`--interactive-timeout-ms`, an hour by default) instead of the run limit.
   * @default {undefined} empty
   */
  stdin?: Uint8Array | string | ReadableStream<Uint8Array> | AsyncIterable<Uint8Array>;
  /**
   * Like `python -i`: after the target (or alone, with `{ repl: true }` as the target),
   * Python's console reads stdin in the target's globals and writes its prompts (`>>> `) to
   * stdout; from then on stderr goes to stdout too, so that prompts, results and tracebacks
   * arrive in order.
   * @default {false}
   */
  repl?: boolean;
  /**
   * Interrupts the run on request (Ctrl-C); the run then streams its stdin, as with a stream.
   * @default {undefined}
   */
  control?: RunControl;
  /**
   * Wall-clock limit in milliseconds; 0 means the server's default.
   * @default {0}
   */
  timeoutMs?: number;
  /**
   * Cancels the run (the server kills the worker).
   * @default {undefined}
   */
  signal?: AbortSignal;
}

/** A run request: the target and its options. */
export type RunSpec = RunTarget & RunOptions;

/**
 * One event of a run, in order, told apart by `kind` (as the launcher's `RunEvent`): `started`,
 * then `stdout` and `stderr` as the program writes, then `exited`.
 */
export type RunEvent =
  | { kind: "started"; pid: number; interpreter: string; cwd: string }
  | { kind: "stdout"; data: Uint8Array }
  | { kind: "stderr"; data: Uint8Array }
  | {
    kind: "exited";
    exitCode: number;
    signal: string;
    durationMs: number;
    timedOut: boolean;
    outputTruncated: boolean;
  };

/** The outcome of {@linkcode Session.runCollect}. */
export interface RunResult {
  /** Standard output, decoded as UTF-8. */
  stdout: string;
  /** Standard error, decoded as UTF-8. */
  stderr: string;
  /** Exit code, -1 when killed by a signal. */
  exitCode: number;
  /** The signal's name when killed by one, else `""`. */
  signal: string;
  /** Whether the time limit killed it. */
  timedOut: boolean;
  /** Whether output beyond the server's limit was dropped. */
  outputTruncated: boolean;
  /** The interpreter that ran it. */
  interpreter: string;
  /** Wall time in milliseconds, as the server measured it. */
  durationMs: number;
}
