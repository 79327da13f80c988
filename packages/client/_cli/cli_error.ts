// Copyright 2026 the Valise authors. Apache-2.0 license.

/** A failure the CLI has diagnosed itself: its class, message, hint and exit code. */
export class CliError extends Error {
  override name = "CliError";
  /** The class shown in brackets (the server's, the client's, or the CLI's own). */
  readonly errorClass: string;
  /** What to do about it. */
  readonly hint: string | undefined;
  /** The exit code: 2 for the user's words or files, 1 otherwise. */
  readonly exitCode: number;

  /**
   * Creates the error.
   *
   * @param errorClass The class shown in brackets.
   * @param message What went wrong, one line.
   * @param options The hint, the exit code (default 1) and the cause.
   */
  constructor(
    errorClass: string,
    message: string,
    options: { hint?: string | undefined; exitCode?: number; cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.errorClass = errorClass;
    this.hint = options.hint;
    this.exitCode = options.exitCode ?? 1;
  }
}
