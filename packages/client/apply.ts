// Copyright 2026 the Valise authors. Apache-2.0 license.
import type { RecordBatch, Schema, Table } from "apache-arrow";

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
   * Workers the batches are spread over (each in its own process of the session, and in a
   * cluster on other nodes too); the output keeps the input's order. The server lowers it to
   * its `--apply-max-parallelism` ({@linkcode ApplySummary.parallelism} says how many it used).
   * @default {1}
   */
  parallelism?: number;
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
  /** The workers the batches were spread over (the server may lower the asked parallelism). */
  parallelism: number;
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
