// Copyright 2026 the Valise authors. Apache-2.0 license.
// Failures as the user sees them: one line with the error class, and what to do about it. The
// hint is about the actual cause: where one error class has several causes (a refused token, a
// failed connection), the CLI tells them apart from what it sent and what came back.
import {
  type ConnectionString,
  endpointsOf,
  formatEndpoint,
  parseConnectionString,
} from "../connection_string.ts";
import { isValiseClientError, type ValiseClientError } from "../error.ts";
import { UsageError } from "./args.ts";
import { CliError } from "./cli_error.ts";
import { type Context, err } from "./context.ts";
import { usageOf } from "./help.ts";

/** Hints by error class, where the class alone says what to do. */
const HINTS: [RegExp, string][] = [
  [
    /^INVALID_HANDLE\.SESSION_(CLOSED|CHANGED|NOT_FOUND)$/,
    "the server no longer has this session (released, or idle too long): drop --session " +
    "(or ;session_id=) to use the remembered one, or start one with `valise new`",
  ],
  [
    /^ARTIFACT_ALREADY_EXISTS$/,
    "artifacts cannot be overwritten: use another file name, or a new session (`valise new`)",
  ],
  [/^SQL_CONF_NOT_FOUND$/, "`valise conf list` shows the keys that are set"],
  [/^ARTIFACT_NOT_FOUND$/, "`valise ls` lists the session's artifacts by the names `rm` takes"],
  [/^CRC_MISMATCH$/, "the bytes were damaged on the way: try again"],
  [/^INTEGRITY_ERROR$/, "the server answered for another session: start a new one (`valise new`)"],
  [
    /^PYTHON_INTERPRETER\.NOT_ALLOWED$/,
    "the server runs only the interpreters it allows (serve --allow-interpreter PATH): ask its " +
    "operator, or use one inside the session (e.g. environment/bin/python)",
  ],
  [/^PYTHON_INTERPRETER\./, "check spark.sql.execution.pyspark.python with `valise conf get`"],
  [
    /^QUOTA_EXCEEDED$/,
    "release sessions you no longer need, or ask the operator for a larger quota",
  ],
  [
    /^APPLY_FUNCTION_NOT_FOUND$/,
    "--fn MOD:FN needs a module the session can import (`valise add --pyfile`); " +
    "or give the function's file with --code FILE --function NAME",
  ],
  [/^APPLY_FUNCTION_FAILED$/, "the function raised an exception: the traceback above shows where"],
  [/^APPLY_(PYARROW|PANDAS)_UNAVAILABLE$/, "use --form columns, or an interpreter that has it"],
  [/^APPLY_INVALID_INPUT$/, "--in must be an Arrow IPC stream or file"],
  [/^APPLY_TIMEOUT$/, "raise --timeout-ms, or the server's wall-time limit"],
  [/^INVALID_CONNECT_URL$/, "the format is sc://HOST:PORT/;token=…;user_id=…"],
  [
    /^PIP_INSTALL_FAILED$/,
    "the installer's words above say why: check the names and versions (`valise pip list` " +
    "shows the session's set and index)",
  ],
  [
    /^PIP_INVALID_REQUEST$/,
    "requirements are names and versions (requests==2.32.3); local wheels are given by path; " +
    "indexes are the server's",
  ],
  [/^PIP_NOT_INSTALLED$/, "`valise pip list` shows the session's requirements"],
];

interface Diagnosis {
  errorClass: string;
  message: string;
  hint?: string | undefined;
  exitCode: number;
}

/**
 * Reports a failure on stderr: `valise: [CLASS] message` and a `hint:` line (a usage error
 * first shows the command's usage lines). With `--json` the same goes to stdout as one
 * `{"type":"error",…}` line.
 *
 * @param e What was thrown.
 * @param command The command that ran, for the hint.
 * @param ctx The context: the remote (what was sent) and `--json`.
 * @returns The exit code: 2 for usage, argument and file mistakes, else 1.
 */
export function report(e: unknown, command: string, ctx?: Context): number {
  const d = diagnose(e, ctx);
  if (e instanceof UsageError) command = e.command;
  const helpOf = command === "main" ? "valise help" : `valise help ${command}`;
  const hint = d.hint ?? `see \`${helpOf}\``;
  const message = d.message.split("\n")[0]!;
  const usage = e instanceof UsageError ? usageOf(command) : "";
  // An install that failed where its output was not shown (a run installs first): the
  // installer's own words follow the summary.
  const more = d.errorClass === "PIP_INSTALL_FAILED"
    ? d.message.split("\n").slice(1).map((l) => `  ${l}\n`).join("")
    : "";
  err(`${usage}valise: [${d.errorClass}] ${message}\n${more}hint: ${hint}\n`);
  if (ctx?.globals.json) {
    ctx.emit({ type: "error", class: d.errorClass, message, hint, exitCode: d.exitCode });
  }
  return d.exitCode;
}

function diagnose(e: unknown, ctx: Context | undefined): Diagnosis {
  if (e instanceof UsageError) return { errorClass: "USAGE", message: e.message, exitCode: 2 };
  if (e instanceof CliError) {
    return { errorClass: e.errorClass, message: e.message, hint: e.hint, exitCode: e.exitCode };
  }
  if (isValiseClientError(e)) return diagnoseCall(e, remoteOf(ctx));
  if (e instanceof SyntaxError) {
    return withHint({ errorClass: "INVALID_CONNECT_URL", message: e.message, exitCode: 2 });
  }
  if (e instanceof TypeError || e instanceof RangeError) {
    let errorClass = "INVALID_ARGUMENT";
    const message = e.message.replace(/^\[([^\]]*)\]\s*/, (_, c) => {
      errorClass = c;
      return "";
    });
    return withHint({ errorClass, message, exitCode: 2 });
  }
  if (e instanceof Deno.errors.NotFound) {
    return { errorClass: "FILE_NOT_FOUND", message: e.message, exitCode: 2 };
  }
  return {
    errorClass: "INTERNAL_ERROR",
    message: e instanceof Error ? e.message : String(e),
    exitCode: 1,
  };
}

function withHint(d: Diagnosis): Diagnosis {
  const hint = HINTS.find(([re]) => re.test(d.errorClass))?.[1];
  return hint === undefined ? d : { ...d, hint };
}

function remoteOf(ctx: Context | undefined): ConnectionString | undefined {
  try {
    return ctx === undefined ? undefined : parseConnectionString(ctx.remote);
  } catch {
    return undefined;
  }
}

/** A failed call: the class the server (or the transport) gave, and a hint about its cause. */
function diagnoseCall(e: ValiseClientError, remote: ConnectionString | undefined): Diagnosis {
  const message = e.message.replace(/^\[[^\]]*\]\s*/, "");
  const at = remote === undefined ? "the server" : hostPort(remote);
  const base = { errorClass: e.errorClass, message, exitCode: 1 };
  const transport = `${message} ${causeText(e)}`;
  if (
    remote?.useSsl &&
    /wrong version number|InvalidContentType|packet length too long/i.test(transport)
  ) {
    return {
      errorClass: "TLS_FAILED",
      message: `Cannot speak TLS with ${at} (use_ssl=true): it answered in plaintext`,
      hint: "the server speaks plaintext: drop ;use_ssl=true from the connection string",
      exitCode: 1,
    };
  }
  const http = /^HTTP (\d{3})\b/.exec(message)?.[1];
  if (http !== undefined) {
    // A gRPC server answers with a gRPC status; a bare HTTP status is a web server or a proxy.
    const proxy = http.startsWith("5");
    return {
      errorClass: "NOT_SPARK_CONNECT",
      message: `${at} answered HTTP ${http} without a gRPC status: it is not a Valise or ` +
        `Spark Connect server${proxy ? ", or a proxy there could not reach one" : ""}`,
      hint: "check the host and port of --remote (or $VALISE_REMOTE, $SPARK_REMOTE): a Valise " +
        "server logs " +
        "'valise listening on HOST:PORT' when it starts",
      exitCode: 1,
    };
  }
  switch (e.errorClass) {
    case "UNAVAILABLE":
      return {
        ...base,
        hint: `is a server running at ${at}? Start one with \`deno task serve\`, or pass ` +
          "--remote / set VALISE_REMOTE (or SPARK_REMOTE)",
      };
    case "UNAUTHENTICATED":
      return { ...base, hint: tokenHint(remote) };
    case "RPC_ERROR":
      if (/EPIPE|ECONNRESET|Protocol error|GOAWAY|closed before|ERR_HTTP2/i.test(transport)) {
        return {
          ...base,
          hint: `the connection to ${at} broke before an answer: check that it is a Valise or ` +
            "Spark Connect server (gRPC over HTTP/2)" +
            (remote?.useSsl ? "" : ", and add ;use_ssl=true if it speaks TLS"),
        };
      }
  }
  return withHint(base);
}

/** Which of the token's problems it is, from what was sent: none, a malformed one, or one. */
function tokenHint(remote: ConnectionString | undefined): string {
  const token = remote?.token;
  if (token === undefined || token === "") {
    return "the server wants a token: add ;token=TOKEN to the connection string (--remote, " +
      "$VALISE_REMOTE or $SPARK_REMOTE)";
  }
  if (/\s/.test(token)) {
    return "the token has white space in it, which no server token has: check ;token= in the " +
      "connection string";
  }
  return "the server does not accept this token: check ;token= in the connection string (the " +
    "operator lists the tokens in serve --token-file)";
}

/** Where the calls went: `h1:15002`, or `h1:15002, h2:15002` for several endpoints. */
function hostPort(c: ConnectionString): string {
  return endpointsOf(c).map(formatEndpoint).join(", ");
}

function causeText(e: unknown): string {
  const parts: string[] = [];
  let c: unknown = (e as { cause?: unknown }).cause;
  for (let i = 0; i < 4 && c instanceof Error; i++) {
    parts.push(c.message);
    c = c.cause;
  }
  return parts.join(" ");
}
