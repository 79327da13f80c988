// Copyright 2026 the Valise authors. Apache-2.0 license.
// WorkerService/Apply: the start request, the input streamed after it, the output batches and
// the summary as they come back.
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { type RecordBatch, RecordBatchReader, type Schema, Table, tableToIPC } from "apache-arrow";
import {
  ApplyForm,
  type ApplyRequest,
  ApplyRequestSchema,
  type ApplyStartSchema,
  ipcRecordBatches,
} from "@valise/protocol";
import type {
  ApplyFormName,
  ApplyFunction,
  ApplyInput,
  ApplyOptions,
  ApplyResult,
  ApplySummary,
} from "./apply.ts";
import { ValiseClientError } from "./error.ts";
import { clientError } from "./_client_error.ts";
import type { SessionCore } from "./_core.ts";
import { decodeAll } from "./_decode.ts";
import { resolveApplyInput, type ResolvedInput } from "./_apply_input.ts";

type ApplyStartInit = MessageInitShape<typeof ApplyStartSchema>;

const FORMS: Record<ApplyFormName, ApplyForm> = {
  columns: ApplyForm.COLUMNS,
  pandas: ApplyForm.PANDAS,
  pyarrow: ApplyForm.PYARROW,
};

/**
 * Applies a Python function to the input's record batches in the session, yielding the output
 * batches as they arrive. Retried when its node fails only before any response, and only when
 * the input can be sent again.
 *
 * @param core The session.
 * @param fn `"pkg.mod:fn"` or `{ code, functionName }`.
 * @param input The record batches, IPC bytes or a cache artifact.
 * @param options Form, output schema, time limit, signal, stderr callback.
 * @returns The output batches; the return value is the summary.
 * @throws {TypeError} For a bad function or input (before anything is sent).
 */
export function applyBatches(
  core: SessionCore,
  fn: ApplyFunction,
  input: ApplyInput,
  options: ApplyOptions,
): AsyncGenerator<RecordBatch, ApplySummary, undefined> {
  const start = applyStart(core, fn, options);
  const resolved = resolveApplyInput(input);
  return core.retry.stream("Apply", async function* (call, node) {
    const stderrParts: Uint8Array[] = [];
    let traceback: string | undefined;
    let summary: ApplySummary | undefined;
    const ac = new AbortController();
    const signal = options.signal ? AbortSignal.any([options.signal, ac.signal]) : ac.signal;
    const inputFailure: { error?: unknown } = {};
    const requests = applyRequests(core, start, resolved, inputFailure);
    const responses = node.applyWorkers.apply(requests, { signal });
    const output = async function* (): AsyncGenerator<Uint8Array, void, undefined> {
      for await (const res of responses) {
        call.seen = true;
        const m = res.response;
        switch (m.case) {
          case "arrowIpc":
            yield m.value;
            break;
          case "stderr":
            stderrParts.push(m.value);
            options.onStderr?.(m.value);
            break;
          case "error":
            if (m.value.traceback !== "") traceback = m.value.traceback;
            break;
          case "done":
            summary = {
              rowsIn: Number(m.value.rowsIn),
              rowsOut: Number(m.value.rowsOut),
              batchesIn: Number(m.value.batchesIn),
              batchesOut: Number(m.value.batchesOut),
              transport: m.value.transport,
              interpreter: m.value.interpreter,
              // A server older than parallel Apply says nothing: it used one worker.
              parallelism: Math.max(1, m.value.parallelism),
              stderr: "",
            };
            break;
        }
      }
    };
    try {
      // Drained: the call's last responses (stderr, done) follow the end-of-stream marker.
      yield* ipcRecordBatches<RecordBatch>(output(), RecordBatchReader, { drain: true });
      if (!summary) {
        throw clientError(
          "APPLY_PROTOCOL",
          "Internal",
          "The Apply call ended without its done response",
        );
      }
      summary.stderr = decodeAll(stderrParts);
      return summary;
    } catch (e) {
      // What the input threw (a bad batch, the caller's own generator failing) is the cause,
      // not the cancelled call it led to.
      if ("error" in inputFailure) throw inputFailure.error;
      // `done` is the server's last word: the call succeeded. The server may finish before
      // the client half-closes (it stops reading at the input's end-of-stream marker), and
      // the HTTP/2 stream closing under a pending write can then fail the call afterwards.
      if (summary) {
        summary.stderr = decodeAll(stderrParts);
        return summary;
      }
      if (e instanceof SyntaxError) {
        throw clientError("APPLY_PROTOCOL", "Internal", `The Apply output: ${e.message}`, {
          cause: e,
        });
      }
      throw withTraceback(ValiseClientError.from(e), traceback);
    } finally {
      // Also when the caller stops early: the server then kills the worker.
      ac.abort();
    }
  }, { signal: options.signal, replayable: resolved.replayable, seenWhat: "the call's output" });
}

/**
 * Gathers an Apply call's output into one table.
 *
 * @param batches The call's output batches, returning the summary.
 * @param outputSchema The declared output schema, for an empty output.
 * @returns The table, the number of batches and the summary.
 */
export async function collectApply(
  batches: AsyncGenerator<RecordBatch, ApplySummary, undefined>,
  outputSchema: Schema | undefined,
): Promise<ApplyResult> {
  const got: RecordBatch[] = [];
  while (true) {
    const r = await batches.next();
    if (r.done) {
      const table = got.length > 0
        ? new Table(got)
        : outputSchema
        ? new Table(outputSchema)
        : new Table();
      return { ...r.value, table, batches: got.length };
    }
    got.push(r.value);
  }
}

function applyStart(core: SessionCore, fn: ApplyFunction, options: ApplyOptions): ApplyStartInit {
  let func: { case: "moduleFunction" | "code"; value: string };
  let functionName = "";
  if (typeof fn === "string") {
    if (!/^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$/.test(fn)) {
      throw new TypeError(`Cannot apply "${fn}": the function must look like "pkg.mod:fn"`);
    }
    func = { case: "moduleFunction", value: fn };
  } else if (
    typeof fn === "object" && fn !== null && typeof fn.code === "string" &&
    typeof fn.functionName === "string" && fn.functionName !== ""
  ) {
    func = { case: "code", value: fn.code };
    functionName = fn.functionName;
  } else {
    throw new TypeError(
      'Cannot apply: the function must be "pkg.mod:fn" or { code, functionName }',
    );
  }
  const form = options.form ?? "columns";
  if (!(form in FORMS)) {
    throw new TypeError(`Cannot apply: form "${form}" is not columns, pandas or pyarrow`);
  }
  const timeoutMs = options.timeoutMs ?? 0;
  if (!Number.isInteger(timeoutMs) || timeoutMs < 0 || timeoutMs > 0xffffffff) {
    throw new RangeError(`Cannot apply: timeoutMs ${timeoutMs} is not a non-negative integer`);
  }
  const parallelism = options.parallelism ?? 1;
  if (!Number.isInteger(parallelism) || parallelism < 1 || parallelism > 0xffffffff) {
    throw new RangeError(`Cannot apply: parallelism ${parallelism} is not a positive integer`);
  }
  return {
    sessionId: core.sessionId,
    userContext: core.userContext,
    function: func,
    functionName,
    form: FORMS[form],
    outputSchema: options.outputSchema
      ? tableToIPC(new Table(options.outputSchema), "stream")
      : new Uint8Array(),
    timeoutMs,
    parallelism,
  };
}

async function* applyRequests(
  core: SessionCore,
  start: ApplyStartInit,
  input: ResolvedInput,
  failure: { error?: unknown },
): AsyncGenerator<ApplyRequest, void, undefined> {
  // Built per attempt: the server-side session id may be known by now.
  yield create(ApplyRequestSchema, {
    request: {
      case: "start",
      value: {
        ...start,
        ...core.observed(),
        input: input.cacheArtifact === undefined
          ? { case: "streamed", value: true }
          : { case: "cacheArtifact", value: input.cacheArtifact },
      },
    },
  });
  try {
    for await (const piece of input.chunks()) {
      yield create(ApplyRequestSchema, { request: { case: "arrowIpc", value: piece } });
    }
  } catch (e) {
    failure.error = e;
    throw e;
  }
}

function withTraceback(err: ValiseClientError, traceback: string | undefined): ValiseClientError {
  if (traceback === undefined || err.traceback !== undefined) return err;
  return new ValiseClientError(err.message, {
    errorClass: err.errorClass,
    grpcCode: err.grpcCode,
    sqlState: err.sqlState,
    reason: err.reason,
    parameters: err.parameters,
    traceback,
    cause: err.cause,
  });
}
