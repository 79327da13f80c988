// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * `valise.v1.WorkerService/Apply`: a Python function over Arrow record batches, once per
 * batch, streaming, in the session's environment (the launcher's fork server, like `Run`).
 * See `docs/apply.md`.
 *
 * @module
 */
import type { HandlerContext } from "@connectrpc/connect";
import type { Launcher, RunExitedEvent, SessionLimits, SessionSpec } from "@valise/launcher";
import {
  type ApplyRequest,
  type ApplyResponse,
  type ApplyStart,
  ipcRecordBatches,
} from "@valise/protocol";
import type { Session, SessionStore } from "@valise/session-store";
import type { RecordBatch } from "apache-arrow";
import { VerifiedReader } from "./_ipc_verify.ts";
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
import {
  applyFailure,
  type ApplyFn,
  type ApplyTask,
  asApplyError,
  checkedFunction,
  doneResponse,
  type DoneStats,
  driverError,
  errorResponse,
  exitFailure,
  FORMS,
  type Hello,
  helloFailure,
  inputFailure,
  ipc,
  parseStats,
  readFrames,
  response,
  startFrame,
  type Transport,
} from "./_apply_common.ts";
import { type ServerError, toConnectError } from "./errors.ts";
import type { Metrics } from "./metrics.ts";
import { bindSession } from "./_bind.ts";
import { driveParallel, type RemoteLanes } from "./_apply_parallel.ts";
import { type LayerSource, preparedSpec } from "./session_spec.ts";

const CACHE_NAME = /^cache\/[0-9a-f]{64}$/;
const decoder = new TextDecoder();

function functionOf(start: ApplyStart): ApplyFn {
  return checkedFunction(start.function, start.functionName);
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
   * The most workers one call may spread its batches over; a request for more gets this many
   * (`done.parallelism` says how many it got).
   * @default {DEFAULT_APPLY_MAX_PARALLELISM}
   */
  readonly maxParallelism?: number | undefined;
  /**
   * Workers on other nodes for parallel calls, in a cluster.
   * @default {undefined} every worker on this node
   */
  readonly remote?: RemoteLanes | undefined;
  /**
   * Receives notices (a worker on another node lost).
   * @default {undefined}
   */
  readonly log?: ((line: string) => void) | undefined;
  /**
   * The server's pip layers, applied before the driver starts.
   * @default {undefined} none
   */
  readonly pip?: LayerSource | undefined;
}

/** The default of {@linkcode ApplyContext.maxParallelism} (`--apply-max-parallelism`). */
export const DEFAULT_APPLY_MAX_PARALLELISM = 4;

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
      const job: Job = {
        fn,
        form,
        declared,
        declaredBytes: start.outputSchema,
        input: streamFormat(input),
        timeoutMs: start.timeoutMs,
        signal: abort.signal,
      };
      // Clamped, not refused: a client asking for more workers than allowed still gets its rows.
      const parallelism = Math.min(
        Math.max(start.parallelism, 1),
        ctx.maxParallelism ?? DEFAULT_APPLY_MAX_PARALLELISM,
      );
      const responses = parallelism > 1
        ? driveParallel(ctx, session, job, parallelism)
        : drive(ctx, prepared.spec, job);
      for await (const r of responses) {
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

/**
 * Runs a job as an Apply call does (one worker, or `parallelism` of them): the responses of the
 * call, `done` last. For servers of other RPCs that run Python over Arrow batches (ExecutePlan).
 *
 * @param ctx The Apply context.
 * @param session The session, held by the caller.
 * @param job The task, its input and signal.
 * @param parallelism Workers to spread the batches over (clamped as Apply clamps).
 * @returns The responses.
 */
export async function* runApplyJob(
  ctx: ApplyContext,
  session: Session,
  job: Job,
  parallelism: number,
): AsyncGenerator<ApplyResponse, void, undefined> {
  const n = Math.min(Math.max(parallelism, 1), ctx.maxParallelism ?? DEFAULT_APPLY_MAX_PARALLELISM);
  if (n > 1) {
    yield* driveParallel(ctx, session, job, n);
    return;
  }
  const prepared = await preparedSpec(session, ctx.limits, ctx.pip);
  try {
    yield* drive(ctx, prepared.spec, job);
  } finally {
    prepared.release();
  }
}

/** A task with its input and the call's signal: what one worker (or several) runs. */
export interface Job extends ApplyTask {
  /** The input: the bytes of one Arrow IPC stream. */
  input: AsyncIterable<Uint8Array>;
  /** Aborted when the call ends. */
  signal: AbortSignal;
}

async function* drive(
  ctx: ApplyContext,
  spec: SessionSpec,
  job: Job,
): AsyncGenerator<ApplyResponse, void, undefined> {
  const worker = new AbortController();
  let resolveHello!: (h: Hello | undefined) => void;
  const hello = new Promise<Hello | undefined>((r) => resolveHello = r);
  let transport: Transport | undefined;
  let fields: ColumnarField[] | undefined;
  let inputError: unknown;

  async function* toDriver(): AsyncGenerator<Uint8Array, void, undefined> {
    const h = await hello;
    if (!h || !transport) return;
    yield* startFrame(job, transport, fields, false);
    try {
      if (transport === "arrow") {
        for await (const chunk of job.input) {
          yield driverFrameHeader(DriverFrame.DATA, chunk.length);
          yield chunk;
        }
      } else {
        const batches = ipcRecordBatches<RecordBatch>(job.input, VerifiedReader, {
          maxMessageBytes,
        });
        for await (const batch of batches) {
          // A batch of null columns has no buffer to bound its rows: the message limit does.
          const parts = encodeColumnarBatch(batch, maxMessageBytes);
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
  // Stdout comes over the worker's socket, stderr through the fork server: a failure found in
  // the output kills the worker, and what it printed before still reaches the client first.
  const stop = AbortSignal.any([job.signal, worker.signal]);
  let broken: { error: unknown } | undefined;
  try {
    for await (
      const ev of ctx.launcher.run(spec, {
        code: DRIVER_STUB,
        stdin: toDriver(),
        streamStdout: true,
        directStdio: true,
        timeoutMs: job.timeoutMs,
      }, stop)
    ) {
      if (broken && ev.kind === "stdout") continue;
      if (ev.kind === "started") {
        interpreter = ev.interpreter;
      } else if (ev.kind === "stderr") {
        stderrTail = (stderrTail + decoder.decode(ev.data, { stream: true })).slice(-4000);
        yield response({ case: "stderr", value: ev.data });
      } else if (ev.kind === "exited") {
        exited = ev;
      } else {
        try {
          yield* fromDriver(ev.data);
        } catch (e) {
          broken = { error: e };
          worker.abort();
        }
      }
    }
  } finally {
    resolveHello(undefined);
  }

  function* fromDriver(data: Uint8Array): Generator<ApplyResponse, void, undefined> {
    for (const f of readFrames(frames, data, maxMessageBytes)) {
      switch (f.type) {
        case DriverFrame.HELLO: {
          const h = JSON.parse(decoder.decode(f.payload)) as Hello;
          const refused = helloFailure(h, job.form, interpreter);
          if (refused) throw refused;
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
          failure = driverError(f.payload);
          yield errorResponse(failure);
          break;
        }
        case DriverFrame.DONE:
          done = parseStats(f.payload);
          break;
        default:
          throw applyFailure("APPLY_PROTOCOL", `Unexpected driver frame ${f.type}`);
      }
    }
  }

  if (broken) throw broken.error;
  if (failure) throw failure;
  if (inputError !== undefined) throw inputFailure(inputError);
  if (!done) throw exitFailure(exited, stderrTail, interpreter);
  if (transport === "columnar") {
    if (!pieces && job.declared) {
      pieces = new IpcStreamPieces(job.declared);
      yield ipc(pieces.start());
    }
    if (pieces) yield ipc(pieces.end());
  }
  yield doneResponse(done, transport === "arrow" ? "pyarrow" : "columnar", interpreter, 1);
}
