// Copyright 2026 the Valise authors. Apache-2.0 license.
import { type RecordBatch, RecordBatchReader, type Schema, type Table } from "apache-arrow";
import { ipcStream, isRecordBatch, pieces } from "./_ipc.ts";

/**
 * The function {@linkcode Session.apply} runs: `"pkg.mod:fn"` (importable in the session: a
 * pyfile, a package of its environment), or source code that defines `functionName`.
 */
export type ApplyFunction = string | { code: string; functionName: string };

/**
 * The input of {@linkcode Session.apply}: a `Table`, record batches (sync or async, all of one
 * schema), the bytes of an Arrow IPC stream or file (whole, or in chunks of any size), or a
 * `cache/<sha256>` artifact the session holds.
 */
export type ApplyInput =
  | Table
  | Iterable<RecordBatch>
  | AsyncIterable<RecordBatch>
  | Uint8Array
  | AsyncIterable<Uint8Array>
  | { cacheArtifact: string };

/** What the Python function is handed per batch (see docs/apply.md). */
export type ApplyFormName = "columns" | "pandas" | "pyarrow";

/** Options of {@linkcode Session.apply}. */
export interface ApplyOptions {
  /**
   * What the function gets: `columns` (`dict[str, list]`), `pandas` (a `DataFrame`) or
   * `pyarrow` (a `RecordBatch`).
   * @default {"columns"}
   */
  form?: ApplyFormName;
  /**
   * The output's schema; the function's output is checked (and converted) against it.
   * @default {undefined} inferred from the first non-empty output batch
   */
  outputSchema?: Schema;
  /**
   * Wall-clock limit in milliseconds; 0 means the server's (it is never above the server's).
   * @default {0}
   */
  timeoutMs?: number;
  /**
   * Cancels the call (the server kills the worker).
   * @default {undefined}
   */
  signal?: AbortSignal;
  /**
   * Receives what the function prints (its stdout and stderr), as it prints it.
   * @default {undefined}
   */
  onStderr?: (data: Uint8Array) => void;
}

/** How an Apply call ended: the iterator's return value. */
export interface ApplySummary {
  /** Input rows the function saw. */
  rowsIn: number;
  /** Output rows it produced. */
  rowsOut: number;
  /** Input batches (one call of the function each). */
  batchesIn: number;
  /** Output batches. */
  batchesOut: number;
  /** `pyarrow` (Arrow IPC reached Python untouched) or `columnar` (the server converted it). */
  transport: string;
  /** The interpreter, as resolved on the server. */
  interpreter: string;
  /** Everything the function printed, decoded as UTF-8. */
  stderr: string;
}

/** The outcome of {@linkcode Session.applyCollect}: the output as one table, and the summary. */
export interface ApplyResult extends ApplySummary {
  /** The output; without any output batch, an empty table (of `outputSchema` when given). */
  table: Table;
  /** The output batches (as {@linkcode ApplySummary.batchesOut} counts them). */
  batches: number;
}

/** The input as the start request names it and the bytes that follow it. */
export interface ResolvedInput {
  /** `cache/<sha256>`, or `undefined` when the input is streamed. */
  cacheArtifact: string | undefined;
  /** The Arrow IPC bytes to stream (empty for a cache artifact). */
  chunks: () => AsyncIterable<Uint8Array>;
  /** Whether `chunks` can be called again (for a retry). */
  replayable: boolean;
}

function isTable(x: object): x is Table {
  return "batches" in x && "schema" in x && Array.isArray((x as Table).batches);
}

/**
 * Sorts out what {@linkcode ApplyInput} was given. An iterable is told apart by its first item
 * (bytes or record batches), which is then sent with the rest.
 *
 * @param input The input.
 * @returns How to send it.
 * @throws {TypeError} For anything else.
 */
export function resolveApplyInput(input: ApplyInput): ResolvedInput {
  if (input instanceof Uint8Array && isIpcFile(input)) {
    // apache-arrow writes a file's schema only in its footer, so the part after the magic is not
    // always a readable stream: the file is read here and sent as a stream.
    return {
      cacheArtifact: undefined,
      replayable: true,
      chunks: () => {
        const reader = RecordBatchReader.from(input);
        reader.open();
        return ipcStream(reader.schema, reader);
      },
    };
  }
  if (input instanceof Uint8Array) {
    return { cacheArtifact: undefined, replayable: true, chunks: () => toAsync(pieces(input)) };
  }
  if (typeof input !== "object" || input === null || typeof input === "string") {
    throw new TypeError(`Cannot apply: the input is a ${typeof input}, not Arrow data`);
  }
  if ("cacheArtifact" in input) {
    if (typeof input.cacheArtifact !== "string") {
      throw new TypeError("Cannot apply: cacheArtifact must be a string like cache/<sha256>");
    }
    return {
      cacheArtifact: input.cacheArtifact,
      replayable: true,
      chunks: () => toAsync([]),
    };
  }
  if (isTable(input)) {
    return {
      cacheArtifact: undefined,
      replayable: true,
      chunks: () => ipcStream(input.schema, input.batches),
    };
  }
  if (isRecordBatch(input)) {
    return {
      cacheArtifact: undefined,
      replayable: true,
      chunks: () => ipcStream(input.schema, [input]),
    };
  }
  if (!(Symbol.asyncIterator in input) && !(Symbol.iterator in input)) {
    throw new TypeError(
      "Cannot apply: the input must be a Table, record batches, Arrow IPC bytes or " +
        "{ cacheArtifact }",
    );
  }
  const items = input as AsyncIterable<unknown> | Iterable<unknown>;
  return { cacheArtifact: undefined, replayable: false, chunks: () => sniffed(items) };
}

/**
 * Whether the bytes start with the Arrow IPC file magic (`ARROW1`).
 *
 * @param head The first bytes.
 * @returns `true` for an IPC file.
 */
export function isIpcFile(head: Uint8Array): boolean {
  return head.length >= 6 && String.fromCharCode(...head.subarray(0, 6)) === "ARROW1";
}

async function* sniffed(
  items: AsyncIterable<unknown> | Iterable<unknown>,
): AsyncGenerator<Uint8Array, void, undefined> {
  const it = Symbol.asyncIterator in items
    ? (items as AsyncIterable<unknown>)[Symbol.asyncIterator]()
    : (items as Iterable<unknown>)[Symbol.iterator]();
  const first = await it.next();
  if (first.done) return;
  const rest = {
    async *[Symbol.asyncIterator]() {
      yield first.value;
      while (true) {
        const r = await it.next();
        if (r.done) return;
        yield r.value;
      }
    },
  };
  try {
    if (first.value instanceof Uint8Array) {
      let n = 0;
      for await (const c of rest) {
        if (!(c instanceof Uint8Array)) {
          throw new TypeError(`Cannot apply: input chunk ${n} is not a Uint8Array`);
        }
        n++;
        yield* pieces(c);
      }
    } else if (isRecordBatch(first.value)) {
      yield* ipcStream(undefined, rest as AsyncIterable<RecordBatch>);
    } else {
      throw new TypeError(
        "Cannot apply: the input's items must be Arrow RecordBatches or Uint8Array chunks",
      );
    }
  } finally {
    await it.return?.();
  }
}

async function* toAsync<T>(xs: Iterable<T>): AsyncGenerator<T, void, undefined> {
  yield* xs;
}
