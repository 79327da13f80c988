// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * What every way of running Apply shares (one worker, several, on other nodes): its failures,
 * the function and form of a request, the driver's first frames and what its end means.
 *
 * @module
 */
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import type { RunExitedEvent } from "@valise/launcher";
import {
  ApplyForm,
  type ApplyResponse,
  ApplyResponseSchema,
  isFramingError,
} from "@valise/protocol";
import type { Schema } from "apache-arrow";
import { type ColumnarField, ColumnarTypeError } from "./_columnar.ts";
import { DriverFrame, driverFrameHeader, type DriverFrameReader } from "./_apply_driver.ts";
import { type ApplyErrorClass, isServerErrorCode, ServerError } from "./errors.ts";

/** Apply's own failures: a {@linkcode ServerError} of an `APPLY_*` class. */
export function applyFailure(
  code: ApplyErrorClass,
  message: string,
  traceback = "",
  cause?: unknown,
): ServerError {
  return new ServerError(code, message, { traceback, ...(cause === undefined ? {} : { cause }) });
}

/** What Apply's failures become for a client: column types Python cannot take are the input's fault. */
export function asApplyError(e: unknown): unknown {
  return e instanceof ColumnarTypeError
    ? applyFailure("APPLY_UNSUPPORTED_TYPE", e.message, "", e)
    : e;
}

/** The driver's first frame: what the session's interpreter is and has. */
export interface Hello {
  /** `sys.executable`. */
  executable: string;
  /** `sys.version_info[:3]`. */
  version: number[];
  /** Whether pyarrow is importable (`"found"`), else `null`. */
  pyarrow: string | null;
  /** Whether pandas is importable (`"found"`), else `null`. */
  pandas: string | null;
}

/** What the driver counted: the whole call (`DONE`) or one unit (`MARK`). */
export interface DoneStats {
  /** Input rows. */
  rowsIn: number;
  /** Output rows. */
  rowsOut: number;
  /** Input batches. */
  batchesIn: number;
  /** Output batches. */
  batchesOut: number;
}

/** How batches reach the function: Arrow IPC untouched, or the server's columnar encoding. */
export type Transport = "arrow" | "columnar";

/** The function's argument: what `form` names in the driver. */
export type FormName = "pyarrow" | "pandas" | "columns";

/** The forms of the wire, by name. */
export const FORMS: Record<ApplyForm, FormName> = {
  [ApplyForm.UNSPECIFIED]: "columns",
  [ApplyForm.PYARROW]: "pyarrow",
  [ApplyForm.PANDAS]: "pandas",
  [ApplyForm.COLUMNS]: "columns",
};

/** The function to apply: a module's attribute, or inline code and the name it defines. */
export type ApplyFn = { module: string } | { code: string; name: string };

const DOTTED = "[A-Za-z_]\\w*(?:\\.[A-Za-z_]\\w*)*";
const MODULE_FUNCTION = new RegExp(`^${DOTTED}:${DOTTED}$`);
const FUNCTION_NAME = new RegExp(`^${DOTTED}$`);

/**
 * The function a request names, checked: `pkg.mod:fn`, or code and a Python name.
 *
 * @param f The request's `function` oneof.
 * @param functionName The name the code defines.
 * @returns The function.
 * @throws {ServerError} `APPLY_INVALID_REQUEST`.
 */
export function checkedFunction(
  f: { case: "moduleFunction" | "code"; value: string } | { case: undefined; value?: undefined },
  functionName: string,
): ApplyFn {
  if (f.case === "moduleFunction") {
    if (!MODULE_FUNCTION.test(f.value)) {
      throw applyFailure(
        "APPLY_INVALID_REQUEST",
        `Cannot apply ${JSON.stringify(f.value)}: module_function must look like "pkg.mod:fn"`,
      );
    }
    return { module: f.value };
  }
  if (f.case === "code") {
    if (!FUNCTION_NAME.test(functionName)) {
      throw applyFailure(
        "APPLY_INVALID_REQUEST",
        `Cannot apply inline code: function_name ${
          JSON.stringify(functionName)
        } is not a Python name`,
      );
    }
    return { code: f.value, name: functionName };
  }
  throw applyFailure(
    "APPLY_INVALID_REQUEST",
    "Cannot apply: the start request names no function (module_function or code)",
  );
}

/** What a worker is asked to do, whoever runs it. */
export interface ApplyTask {
  /** The function. */
  fn: ApplyFn;
  /** Its argument's form. */
  form: FormName;
  /** The declared output schema, if any. */
  declared: Schema | undefined;
  /** Its IPC bytes (empty when none). */
  declaredBytes: Uint8Array;
  /** The request's wall-time limit (0: the session's). */
  timeoutMs: number;
}

/**
 * Why a worker cannot take this task, from its `HELLO`: the form needs what it lacks.
 *
 * @returns The failure, or `undefined` when it can.
 */
export function helloFailure(
  h: Hello,
  form: FormName,
  interpreter: string,
): ServerError | undefined {
  const where = `the session's interpreter ${interpreter} (${h.executable})`;
  if (form === "pyarrow" && !h.pyarrow) {
    return applyFailure(
      "APPLY_PYARROW_UNAVAILABLE",
      `Cannot apply a pyarrow-form function: pyarrow is not importable by ${where}; ` +
        "use form COLUMNS or PANDAS, or add pyarrow to the session's environment",
    );
  }
  if (form === "pandas" && !h.pandas) {
    return applyFailure(
      "APPLY_PANDAS_UNAVAILABLE",
      `Cannot apply a pandas-form function: pandas is not importable by ${where}; ` +
        "use form COLUMNS, or add pandas to the session's environment",
    );
  }
  return undefined;
}

/**
 * The driver's `START` frame (header and payload).
 *
 * @param task The task.
 * @param transport The transport its `HELLO` decided.
 * @param fields The declared schema as columnar fields (columnar transport).
 * @param units Whether the driver is fed units (whole IPC streams, a `MARK` after each).
 * @returns The frame's parts.
 */
export function startFrame(
  task: ApplyTask,
  transport: Transport,
  fields: ColumnarField[] | undefined,
  units: boolean,
): Uint8Array[] {
  const json = new TextEncoder().encode(JSON.stringify({
    function: task.fn,
    form: task.form,
    transport,
    fields: fields ?? null,
    schemaIpc: transport === "arrow" && task.declaredBytes.length
      ? btoa(String.fromCharCode(...task.declaredBytes))
      : null,
    ...(units ? { units: true } : {}),
  }));
  return [driverFrameHeader(DriverFrame.START, json.length), json];
}

/**
 * The frames completed by `chunk`. The driver shares its stdout with the session's code, so a
 * length it did not write fails the call (and the run is killed) instead of being buffered.
 */
export function readFrames(
  frames: DriverFrameReader,
  chunk: Uint8Array,
  limit: number,
): ReturnType<DriverFrameReader["push"]> {
  try {
    return frames.push(chunk);
  } catch (e) {
    if (!isFramingError(e)) throw e;
    if (e.code === "TOO_LARGE") {
      throw applyFailure(
        "APPLY_OUTPUT_TOO_LARGE",
        `Cannot pass the function's output: a batch of ${
          (e.size ?? 0) - 5
        } bytes is larger than the limit of ${limit} bytes (the server's message size limit); ` +
          "return smaller batches (fewer rows each), and do not write to the driver's stdout",
      );
    }
    throw applyFailure(
      "APPLY_PROTOCOL",
      `Cannot read the Apply driver's output: ${e.message} (did the function write to stdout's file descriptor?)`,
    );
  }
}

/**
 * The failure an `ERROR` frame reports. What the driver names must be one of Apply's classes;
 * anything else is a lie (the session's code can write the frame).
 */
export function driverError(payload: Uint8Array): ServerError {
  let err: { errorClass?: unknown; message?: unknown; traceback?: unknown } = {};
  try {
    err = JSON.parse(new TextDecoder().decode(payload));
  } catch {
    throw applyFailure("APPLY_PROTOCOL", "Cannot read the Apply driver's ERROR frame");
  }
  const name = typeof err.errorClass === "string" ? err.errorClass : "";
  const cls: ApplyErrorClass = isServerErrorCode(name) && name.startsWith("APPLY_")
    ? name as ApplyErrorClass
    : "APPLY_PROTOCOL";
  return applyFailure(
    cls,
    typeof err.message === "string" ? err.message : "",
    typeof err.traceback === "string" ? err.traceback : "",
  );
}

/** Why a run ended, in words. */
export function describeExit(ev: RunExitedEvent | undefined): string {
  if (!ev) return "ended without an exit status";
  return ev.signal ? `was killed by ${ev.signal}` : `exited with code ${ev.exitCode}`;
}

/**
 * What a worker that ended without `DONE` failed with: its time limit, an output limit, or an
 * exit (with the end of what it printed).
 */
export function exitFailure(
  exited: RunExitedEvent | undefined,
  stderrTail: string,
  interpreter: string,
): ServerError {
  if (exited?.timedOut) {
    return applyFailure(
      "APPLY_TIMEOUT",
      `Cannot finish: the worker ran past its time limit and was killed`,
    );
  }
  if (exited?.outputTruncated) {
    const marker = stderrTail.trim().split("\n").findLast((l) => l.startsWith("[valise]"));
    return applyFailure(
      "APPLY_OUTPUT_TOO_LARGE",
      `Cannot finish: the worker passed an output limit and was killed (${
        marker ?? "output truncated"
      }); what the function prints counts toward spark.valise.worker.outputBytes, the ` +
        "output batches toward spark.valise.worker.streamBytes: print less, or produce less",
    );
  }
  return applyFailure(
    "APPLY_WORKER_FAILED",
    `Cannot finish: the worker (${interpreter}) ${describeExit(exited)} before it was done${
      stderrTail.trim() ? `: ${stderrTail.trim().slice(-1500)}` : ""
    }`,
  );
}

/** What reading the input failed with, as the call's failure. */
export function inputFailure(inputError: unknown): unknown {
  if (inputError instanceof ServerError || inputError instanceof ColumnarTypeError) {
    return inputError;
  }
  const why = inputError instanceof Error ? inputError.message : String(inputError);
  const fix = isFramingError(inputError) && inputError.code === "TOO_LARGE"
    ? "; send smaller record batches (fewer rows each)"
    : "";
  return applyFailure(
    "APPLY_INVALID_INPUT",
    `Cannot read the input as an Arrow IPC stream: ${why}${fix}`,
    "",
    inputError,
  );
}

/** Adds one count to another. */
export function addStats(into: DoneStats, more: DoneStats): void {
  into.rowsIn += more.rowsIn;
  into.rowsOut += more.rowsOut;
  into.batchesIn += more.batchesIn;
  into.batchesOut += more.batchesOut;
}

/**
 * A `MARK` or `DONE` payload, checked: four non-negative safe integers (the session's code can
 * write these frames too).
 */
export function parseStats(payload: Uint8Array): DoneStats {
  let v: Record<string, unknown> | undefined;
  try {
    v = JSON.parse(new TextDecoder().decode(payload));
  } catch { /* refused below */ }
  const n = (k: string): number => {
    const x = v?.[k];
    if (typeof x !== "number" || !Number.isSafeInteger(x) || x < 0) {
      throw applyFailure("APPLY_PROTOCOL", `Cannot read the Apply driver's counts (${k})`);
    }
    return x;
  };
  return {
    rowsIn: n("rowsIn"),
    rowsOut: n("rowsOut"),
    batchesIn: n("batchesIn"),
    batchesOut: n("batchesOut"),
  };
}

/** One response of the call. */
export function response(
  value: NonNullable<MessageInitShape<typeof ApplyResponseSchema>["response"]>,
): ApplyResponse {
  return create(ApplyResponseSchema, { response: value });
}

/** A piece of the output's Arrow IPC stream. */
export function ipc(bytes: Uint8Array): ApplyResponse {
  return response({ case: "arrowIpc", value: bytes });
}

/** The `error` response of a failure in Python, before the call fails with it. */
export function errorResponse(failure: ServerError): ApplyResponse {
  return response({
    case: "error",
    value: { message: failure.detail, traceback: failure.traceback, errorClass: failure.code },
  });
}

/** The `done` response: the counts, the transport, the interpreter, the workers used. */
export function doneResponse(
  done: DoneStats,
  transport: "pyarrow" | "columnar",
  interpreter: string,
  parallelism: number,
): ApplyResponse {
  return response({
    case: "done",
    value: {
      rowsIn: BigInt(done.rowsIn),
      rowsOut: BigInt(done.rowsOut),
      batchesIn: BigInt(done.batchesIn),
      batchesOut: BigInt(done.batchesOut),
      transport,
      interpreter,
      parallelism,
    },
  });
}
