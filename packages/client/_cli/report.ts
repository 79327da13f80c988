// Copyright 2026 the Valise authors. Apache-2.0 license.
// Failures as the user sees them: one line with the error class, and what to do about it.
import { isValiseClientError } from "../error.ts";
import { UsageError } from "./args.ts";
import { err } from "./context.ts";

const HINTS: [RegExp, string][] = [
  [
    /^UNAVAILABLE$/,
    "is a server running there? Start one with `deno task serve`, or pass --remote / set SPARK_REMOTE",
  ],
  [/^UNAUTHENTICATED$/, "the server wants a token: add ;token=… to the connection string"],
  [
    /^INVALID_HANDLE\./,
    "the remembered session is gone: `valise release` forgets it, or pass --session UUID",
  ],
  [
    /^ARTIFACT_ALREADY_EXISTS$/,
    "artifacts cannot be overwritten: use another file name, or a new session (`valise release`)",
  ],
  [/^SQL_CONF_NOT_FOUND$/, "`valise conf list` shows the keys that are set"],
  [/^ARTIFACT_NOT_FOUND$/, "`valise ls` lists the session's artifacts by the names `rm` takes"],
  [/^CRC_MISMATCH$/, "the bytes were damaged on the way: try again"],
  [
    /^INTEGRITY_ERROR$/,
    "the server answered for another session: `valise release` and start again",
  ],
  [/^PYTHON_INTERPRETER\./, "check spark.sql.execution.pyspark.python with `valise conf get`"],
  [
    /^QUOTA_EXCEEDED$/,
    "release sessions you no longer need, or ask the operator for a larger quota",
  ],
  [
    /^APPLY_FUNCTION_(NOT_FOUND|FAILED)$/,
    "check the function: --fn needs a module of the session (`valise add --pyfile`), or use --code",
  ],
  [/^APPLY_(PYARROW|PANDAS)_UNAVAILABLE$/, "use --form columns, or an interpreter that has it"],
  [/^APPLY_OUTPUT_TYPE_MISMATCH$/, "make the function's output fit --schema (or drop --schema)"],
  [/^APPLY_INVALID_INPUT$/, "--in must be an Arrow IPC stream or file"],
  [/^APPLY_TIMEOUT$/, "raise --timeout-ms, or the server's wall-time limit"],
  [/^INVALID_CONNECT_URL$/, "the format is sc://host:port/;token=…;user_id=…"],
];

/**
 * Reports a failure on stderr in one line, `valise: [CLASS] message`, and a hint.
 *
 * @param e What was thrown.
 * @param command The command that ran, for the hint.
 * @returns The exit code: 2 for usage, argument and file mistakes, else 1.
 */
export function report(e: unknown, command: string): number {
  let errorClass: string;
  let message: string;
  let exit = 1;
  if (e instanceof UsageError) {
    errorClass = "USAGE";
    message = e.message;
    exit = 2;
    command = e.command;
  } else if (isValiseClientError(e)) {
    errorClass = e.errorClass;
    message = e.message.replace(/^\[[^\]]*\]\s*/, "");
  } else if (e instanceof SyntaxError) {
    errorClass = "INVALID_CONNECT_URL";
    message = e.message;
    exit = 2;
  } else if (e instanceof TypeError || e instanceof RangeError) {
    errorClass = "INVALID_ARGUMENT";
    message = e.message.replace(/^\[([^\]]*)\]\s*/, (_, c) => {
      errorClass = c;
      return "";
    });
    exit = 2;
  } else if (e instanceof Deno.errors.NotFound) {
    errorClass = "FILE_NOT_FOUND";
    message = (e as Error).message;
    exit = 2;
  } else {
    errorClass = "INTERNAL_ERROR";
    message = e instanceof Error ? e.message : String(e);
  }
  const hint = HINTS.find(([re]) => re.test(errorClass))?.[1] ??
    (command === "main" ? "see `valise --help`" : `see \`valise ${command} --help\``);
  err(`valise: [${errorClass}] ${message.split("\n")[0]}\nhint: ${hint}\n`);
  return exit;
}
