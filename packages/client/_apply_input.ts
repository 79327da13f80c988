// Copyright 2026 the Valise authors. Apache-2.0 license.
// What Session.apply was given, sorted out into the start request's input and the bytes to stream.
import { type RecordBatch, RecordBatchReader, type Table } from "apache-arrow";
import type { ApplyInput } from "./apply.ts";
import { ipcStream, isRecordBatch, pieces } from "./_ipc.ts";

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
