// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * `valise.v1.WorkerService/Apply`: a Python function over Arrow record batches, once per
 * batch, streaming, in the session's environment (the launcher's fork server, like `Run`).
 * See `docs/apply.md`.
 *
 * @module
 */
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import type { HandlerContext } from "@connectrpc/connect";
import type { Launcher, RunExitedEvent, SessionLimits, SessionSpec } from "@valise/launcher";
import {
  ApplyForm,
  type ApplyRequest,
  type ApplyResponse,
  ApplyResponseSchema,
  type ApplyStart,
  ipcRecordBatches,
  isFramingError,
} from "@valise/protocol";
import type { Session, SessionStore } from "@valise/session-store";
import { type RecordBatch, RecordBatchReader, type Schema } from "apache-arrow";
import {
  type ColumnarField,
  columnarField,
  ColumnarTypeError,
  decodeColumnarBatch,
  encodeColumnarBatch,
  readColumnarBatch,
  schemaOfHeader,
} from "./_columnar.ts";
import { IpcStreamPieces, parseSchemaMessage } from "./_ipc_pieces.ts";
import {
  DRIVER_FRAME_BYTES,
  DRIVER_STUB,
  DriverFrame,
  driverFrameHeader,
  DriverFrameReader,
} from "./_apply_driver.ts";
import { type ApplyErrorClass, isServerErrorCode, ServerError, toConnectError } from "./errors.ts";
import type { Metrics } from "./metrics.ts";
import { bindSession } from "./_bind.ts";
import { type LayerSource, preparedSpec } from "./session_spec.ts";

/** Apply's own failures: a {@linkcode ServerError} of an `APPLY_*` class. */
function applyFailure(
  code: ApplyErrorClass,
  message: string,
  traceback = "",
  cause?: unknown,
): ServerError {
  return new ServerError(code, message, { traceback, ...(cause === undefined ? {} : { cause }) });
}

/** What Apply's failures become for a client: column types Python cannot take are the input's fault. */
function asApplyError(e: unknown): unknown {
  return e instanceof ColumnarTypeError
    ? applyFailure("APPLY_UNSUPPORTED_TYPE", e.message, "", e)
    : e;
}

interface Hello {
  executable: string;
  version: number[];
  pyarrow: string | null;
  pandas: string | null;
}

interface DoneStats {
  rowsIn: number;
  rowsOut: number;
  batchesIn: number;
  batchesOut: number;
}

const FORMS: Record<ApplyForm, "pyarrow" | "pandas" | "columns"> = {
  [ApplyForm.UNSPECIFIED]: "columns",
  [ApplyForm.PYARROW]: "pyarrow",
  [ApplyForm.PANDAS]: "pandas",
  [ApplyForm.COLUMNS]: "columns",
};
const DOTTED = "[A-Za-z_]\\w*(?:\\.[A-Za-z_]\\w*)*";
const MODULE_FUNCTION = new RegExp(`^${DOTTED}:${DOTTED}$`);
const FUNCTION_NAME = new RegExp(`^${DOTTED}$`);
const CACHE_NAME = /^cache\/[0-9a-f]{64}$/;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

function functionOf(start: ApplyStart): { module: string } | { code: string; name: string } {
  const f = start.function;
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
    if (!FUNCTION_NAME.test(start.functionName)) {
      throw applyFailure(
        "APPLY_INVALID_REQUEST",
        `Cannot apply inline code: function_name ${
          JSON.stringify(start.functionName)
        } is not a Python name`,
      );
    }
    return { code: f.value, name: start.functionName };
  }
  throw applyFailure(
    "APPLY_INVALID_REQUEST",
    "Cannot apply: the start request names no function (module_function or code)",
  );
}

async function* streamedInput(
  it: AsyncIterator<ApplyRequest>,
): AsyncGenerator<Uint8Array, void, undefined> {
  while (true) {
    const r = await it.next();
    if (r.done) return;
    const m = r.value.request;
    if (m.case !== "arrowIpc") {
      throw applyFailure(
        "APPLY_INVALID_REQUEST",
        "Cannot apply: only the first request may be `start`; the others carry `arrow_ipc`",
      );
    }
    if (m.value.length) yield m.value;
  }
}

async function* fileInput(path: string): AsyncGenerator<Uint8Array, void, undefined> {
  using f = await Deno.open(path);
  const buf = new Uint8Array(1 << 20);
  while (true) {
    const n = await f.read(buf);
    if (n === null) return;
    yield buf.slice(0, n);
  }
}

function cacheInput(
  store: SessionStore,
  session: Session,
  name: string,
): AsyncGenerator<Uint8Array, void, undefined> {
  if (!CACHE_NAME.test(name)) {
    throw applyFailure(
      "APPLY_INVALID_REQUEST",
      `Cannot read input ${JSON.stringify(name)}: cache_artifact must be "cache/<sha256 hex>"`,
    );
  }
  const record = session.artifact(name);
  if (!record) {
    throw applyFailure(
      "APPLY_INPUT_NOT_FOUND",
      `Cannot read input ${name}: session ${session.sessionId} holds no such artifact`,
    );
  }
  return fileInput(store.blobs.path(record.sha256));
}

/** Skips the `ARROW1\0\0` lead of the IPC file format: the stream that follows is read. */
async function* streamFormat(
  source: AsyncIterable<Uint8Array>,
): AsyncGenerator<Uint8Array, void, undefined> {
  let head = new Uint8Array(0);
  let decided = false;
  for await (const chunk of source) {
    if (decided) {
      yield chunk;
      continue;
    }
    const joined = new Uint8Array(head.length + chunk.length);
    joined.set(head);
    joined.set(chunk, head.length);
    if (joined.length < 8) {
      head = joined;
      continue;
    }
    decided = true;
    const file = decoder.decode(joined.subarray(0, 6)) === "ARROW1";
    yield file ? joined.subarray(8) : joined;
  }
  if (!decided && head.length) yield head;
}

function response(
  value: NonNullable<MessageInitShape<typeof ApplyResponseSchema>["response"]>,
): ApplyResponse {
  return create(ApplyResponseSchema, { response: value });
}

function ipc(bytes: Uint8Array): ApplyResponse {
  return response({ case: "arrowIpc", value: bytes });
}

/**
 * The frames completed by `chunk`. The driver shares its stdout with the session's code, so a
 * length it did not write fails the call (and the run is killed) instead of being buffered.
 */
function readFrames(
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

function describeExit(ev: RunExitedEvent | undefined): string {
  if (!ev) return "ended without an exit status";
  return ev.signal ? `was killed by ${ev.signal}` : `exited with code ${ev.exitCode}`;
}

/** What the Apply handler needs. */
export interface ApplyContext {
  /** The session store. */
  readonly store: SessionStore;
  /** The launcher that runs the driver. */
  readonly launcher: Launcher;
  /** The server's worker limits, which session overrides may only lower. */
  readonly limits: SessionLimits;
  /** Counters for `/metrics`. */
  readonly metrics?: Metrics | undefined;
  /**
   * The largest Arrow IPC message of the input, and the largest output batch (one driver
   * frame), in bytes: the server's `readMaxBytes`.
   * @default {DRIVER_FRAME_BYTES}
   */
  readonly maxMessageBytes?: number | undefined;
  /**
   * The server's pip layers, applied before the driver starts.
   * @default {undefined} none
   */
  readonly pip?: LayerSource | undefined;
}

/** The Apply method of `valise.v1.WorkerService`. */
export type ApplyHandler = (
  requests: AsyncIterable<ApplyRequest>,
  call: HandlerContext,
) => AsyncGenerator<ApplyResponse, void, undefined>;

/**
 * Creates the `WorkerService/Apply` handler: binds the session from the first request,
 * starts the Apply driver in the session's fork server, streams the input in (Arrow IPC
 * untouched when the interpreter has pyarrow, else the columnar encoding) and the function's
 * output back as one Arrow IPC stream. Cancelling the call kills the worker.
 *
 * @param ctx The session store, the launcher and the limits.
 * @returns The handler.
 */
export function createApplyHandler(ctx: ApplyContext): ApplyHandler {
  return async function* apply(requests, call) {
    const it = requests[Symbol.asyncIterator]();
    const abort = new AbortController();
    const onAbort = () => abort.abort(call.signal.reason);
    call.signal.addEventListener("abort", onAbort, { once: true });
    let release: (() => void) | undefined;
    const started = performance.now();
    let outcome: "ok" | "error" | "cancelled" = "error";
    let rowsIn = 0;
    let rowsOut = 0;
    try {
      const first = await it.next();
      if (first.done || first.value.request.case !== "start") {
        throw applyFailure(
          "APPLY_INVALID_REQUEST",
          "Cannot apply: the first request must be `start`",
        );
      }
      const start = first.value.request.value;
      const session = await bindSession(ctx.store, start);
      release = session.hold();
      const prepared = await preparedSpec(session, ctx.limits, ctx.pip);
      const held = release;
      release = () => (prepared.release(), held());
      const fn = functionOf(start);
      const form = FORMS[start.form];
      if (form === undefined) {
        throw applyFailure("APPLY_INVALID_REQUEST", `Cannot apply: unknown form ${start.form}`);
      }
      const declared = start.outputSchema.length
        ? parseSchemaMessage(start.outputSchema)
        : undefined;
      let input: AsyncIterable<Uint8Array>;
      if (start.input.case === "streamed") input = streamedInput(it);
      else if (start.input.case === "cacheArtifact") {
        input = cacheInput(ctx.store, session, start.input.value);
      } else {
        throw applyFailure(
          "APPLY_INVALID_REQUEST",
          "Cannot apply: the start request names no input (streamed or cache_artifact)",
        );
      }
      for await (
        const r of drive(ctx, prepared.spec, {
          fn,
          form,
          declared,
          declaredBytes: start.outputSchema,
          input: streamFormat(input),
          timeoutMs: start.timeoutMs,
          signal: abort.signal,
        })
      ) {
        if (r.response.case === "done") {
          rowsIn = Number(r.response.value.rowsIn);
          rowsOut = Number(r.response.value.rowsOut);
          outcome = "ok";
        }
        yield r;
      }
      // End the response only after the client half-closed: ending it while the client still
      // writes (e.g. after the IPC end marker) fails that client's call ("Premature close").
      for (let r = await it.next(); !r.done; r = await it.next()) {
        // Nothing after the end of the input counts.
      }
    } catch (e) {
      throw toConnectError(asApplyError(e), { badRequest: "APPLY_INVALID_REQUEST" });
    } finally {
      call.signal.removeEventListener("abort", onAbort);
      abort.abort();
      release?.();
      if (outcome === "error" && call.signal.aborted) outcome = "cancelled";
      ctx.metrics?.apply(outcome, (performance.now() - started) / 1000, rowsIn, rowsOut);
    }
  };
}

interface Job {
  fn: { module: string } | { code: string; name: string };
  form: "pyarrow" | "pandas" | "columns";
  declared: Schema | undefined;
  declaredBytes: Uint8Array;
  input: AsyncIterable<Uint8Array>;
  timeoutMs: number;
  signal: AbortSignal;
}

async function* drive(
  ctx: ApplyContext,
  spec: SessionSpec,
  job: Job,
): AsyncGenerator<ApplyResponse, void, undefined> {
  let resolveHello!: (h: Hello | undefined) => void;
  const hello = new Promise<Hello | undefined>((r) => resolveHello = r);
  let transport: "arrow" | "columnar" | undefined;
  let fields: ColumnarField[] | undefined;
  let inputError: unknown;

  async function* toDriver(): AsyncGenerator<Uint8Array, void, undefined> {
    const h = await hello;
    if (!h || !transport) return;
    const startJson = encoder.encode(JSON.stringify({
      function: job.fn,
      form: job.form,
      transport,
      fields: fields ?? null,
      schemaIpc: transport === "arrow" && job.declaredBytes.length
        ? btoa(String.fromCharCode(...job.declaredBytes))
        : null,
    }));
    yield driverFrameHeader(DriverFrame.START, startJson.length);
    yield startJson;
    try {
      if (transport === "arrow") {
        for await (const chunk of job.input) {
          yield driverFrameHeader(DriverFrame.DATA, chunk.length);
          yield chunk;
        }
      } else {
        const batches = ipcRecordBatches<RecordBatch>(job.input, RecordBatchReader, {
          maxMessageBytes,
        });
        for await (const batch of batches) {
          const parts = encodeColumnarBatch(batch);
          yield driverFrameHeader(DriverFrame.DATA, parts.reduce((n, p) => n + p.length, 0));
          yield* parts;
        }
      }
      yield driverFrameHeader(DriverFrame.END, 0);
    } catch (e) {
      inputError = e;
      throw e;
    }
  }

  const maxMessageBytes = ctx.maxMessageBytes ?? DRIVER_FRAME_BYTES;
  const frames = new DriverFrameReader(maxMessageBytes + 5);
  let pieces: IpcStreamPieces | undefined;
  let done: DoneStats | undefined;
  let failure: ServerError | undefined;
  let exited: RunExitedEvent | undefined;
  let interpreter = "";
  let stderrTail = "";
  try {
    for await (
      const ev of ctx.launcher.run(spec, {
        code: DRIVER_STUB,
        stdin: toDriver(),
        streamStdout: true,
        timeoutMs: job.timeoutMs,
      }, job.signal)
    ) {
      if (ev.kind === "started") {
        interpreter = ev.interpreter;
      } else if (ev.kind === "stderr") {
        stderrTail = (stderrTail + decoder.decode(ev.data, { stream: true })).slice(-4000);
        yield response({ case: "stderr", value: ev.data });
      } else if (ev.kind === "exited") {
        exited = ev;
      } else {
        for (const f of readFrames(frames, ev.data, maxMessageBytes)) {
          switch (f.type) {
            case DriverFrame.HELLO: {
              const h = JSON.parse(decoder.decode(f.payload)) as Hello;
              const where = `the session's interpreter ${interpreter} (${h.executable})`;
              if (job.form === "pyarrow" && !h.pyarrow) {
                throw applyFailure(
                  "APPLY_PYARROW_UNAVAILABLE",
                  `Cannot apply a pyarrow-form function: pyarrow is not importable by ${where}; ` +
                    "use form COLUMNS or PANDAS, or add pyarrow to the session's environment",
                );
              }
              if (job.form === "pandas" && !h.pandas) {
                throw applyFailure(
                  "APPLY_PANDAS_UNAVAILABLE",
                  `Cannot apply a pandas-form function: pandas is not importable by ${where}; ` +
                    "use form COLUMNS, or add pandas to the session's environment",
                );
              }
              transport = h.pyarrow ? "arrow" : "columnar";
              if (transport === "columnar" && job.declared) {
                fields = job.declared.fields.map(columnarField);
              }
              resolveHello(h);
              break;
            }
            case DriverFrame.OUT: {
              if (transport === "arrow") {
                yield ipc(f.payload);
                break;
              }
              if (!pieces) {
                const { header } = readColumnarBatch(f.payload);
                pieces = new IpcStreamPieces(job.declared ?? schemaOfHeader(header));
                yield ipc(pieces.start());
              }
              let batch;
              try {
                batch = decodeColumnarBatch(f.payload, pieces.schema);
              } catch (e) {
                if (!(e instanceof ColumnarTypeError)) throw e;
                throw applyFailure("APPLY_OUTPUT_TYPE_MISMATCH", e.message);
              }
              yield ipc(pieces.batch(batch));
              break;
            }
            case DriverFrame.ERROR: {
              const err = JSON.parse(decoder.decode(f.payload)) as {
                errorClass: string;
                message: string;
                traceback: string;
              };
              // What the driver names must be one of Apply's classes; anything else is a lie.
              const cls: ApplyErrorClass =
                isServerErrorCode(err.errorClass) && err.errorClass.startsWith("APPLY_")
                  ? err.errorClass as ApplyErrorClass
                  : "APPLY_PROTOCOL";
              failure = applyFailure(cls, err.message, err.traceback);
              yield response({
                case: "error",
                value: { message: err.message, traceback: err.traceback, errorClass: cls },
              });
              break;
            }
            case DriverFrame.DONE:
              done = JSON.parse(decoder.decode(f.payload)) as DoneStats;
              break;
            default:
              throw applyFailure("APPLY_PROTOCOL", `Unexpected driver frame ${f.type}`);
          }
        }
      }
    }
  } finally {
    resolveHello(undefined);
  }
  if (failure) throw failure;
  if (inputError !== undefined) {
    if (inputError instanceof ServerError || inputError instanceof ColumnarTypeError) {
      throw inputError;
    }
    const why = inputError instanceof Error ? inputError.message : String(inputError);
    const fix = isFramingError(inputError) && inputError.code === "TOO_LARGE"
      ? "; send smaller record batches (fewer rows each)"
      : "";
    throw applyFailure(
      "APPLY_INVALID_INPUT",
      `Cannot read the input as an Arrow IPC stream: ${why}${fix}`,
      "",
      inputError,
    );
  }
  if (!done) {
    if (exited?.timedOut) {
      throw applyFailure(
        "APPLY_TIMEOUT",
        `Cannot finish: the worker ran past its time limit and was killed`,
      );
    }
    if (exited?.outputTruncated) {
      const marker = stderrTail.trim().split("\n").findLast((l) => l.startsWith("[valise]"));
      throw applyFailure(
        "APPLY_OUTPUT_TOO_LARGE",
        `Cannot finish: the worker passed an output limit and was killed (${
          marker ?? "output truncated"
        }); what the function prints counts toward spark.valise.worker.outputBytes, the ` +
          "output batches toward spark.valise.worker.streamBytes: print less, or produce less",
      );
    }
    throw applyFailure(
      "APPLY_WORKER_FAILED",
      `Cannot finish: the worker (${interpreter}) ${describeExit(exited)} before it was done${
        stderrTail.trim() ? `: ${stderrTail.trim().slice(-1500)}` : ""
      }`,
    );
  }
  if (transport === "columnar") {
    if (!pieces && job.declared) {
      pieces = new IpcStreamPieces(job.declared);
      yield ipc(pieces.start());
    }
    if (pieces) yield ipc(pieces.end());
  }
  yield response({
    case: "done",
    value: {
      rowsIn: BigInt(done.rowsIn),
      rowsOut: BigInt(done.rowsOut),
      batchesIn: BigInt(done.batchesIn),
      batchesOut: BigInt(done.batchesOut),
      transport: transport === "arrow" ? "pyarrow" : "columnar",
      interpreter,
    },
  });
}
