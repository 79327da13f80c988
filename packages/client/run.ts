// Copyright 2026 the Valise authors. Apache-2.0 license.

/** What {@linkcode Session.run} runs: exactly one of `code`, `module` or `script`. */
export type RunTarget = { code: string } | { module: string } | { script: string };

/** Options of a run. */
export interface RunOptions {
  /**
   * Arguments (`sys.argv[1:]`).
   * @default {[]}
   */
  args?: string[];
  /**
   * Bytes written to the program's stdin, which is then closed.
   * @default {undefined} empty
   */
  stdin?: Uint8Array | string;
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
