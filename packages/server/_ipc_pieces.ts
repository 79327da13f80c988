// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Writing Arrow IPC streams piece by piece (schema, each batch, end) and reading a stream's
 * schema: how Apply's output reaches the client as it is produced.
 *
 * @module
 */
import { type RecordBatch, RecordBatchReader, type Schema, Table, tableToIPC } from "apache-arrow";
import { verifyIpcMessages } from "./_ipc_verify.ts";

/**
 * Parses an Arrow IPC stream that holds a schema (an EOS marker or batches may follow).
 *
 * @param bytes The stream's bytes.
 * @returns The schema.
 * @throws {TypeError} when the bytes are not an Arrow IPC stream.
 */
export function parseSchemaMessage(bytes: Uint8Array): Schema {
  let schema: Schema | undefined;
  try {
    verifyIpcMessages(bytes);
    const reader = RecordBatchReader.from(bytes);
    reader.open();
    schema = reader.schema;
  } catch (e) {
    throw new TypeError(
      `Cannot read the output schema: not an Arrow IPC stream (${
        e instanceof Error ? e.message : e
      })`,
    );
  }
  if (!schema) throw new TypeError("Cannot read the output schema: the stream holds none");
  return schema;
}

/**
 * Serializes batches of one schema as consecutive pieces of a single Arrow IPC stream:
 * `start()` gives the schema message, `batch()` each record batch message, `end()` the
 * end-of-stream marker.
 */
export class IpcStreamPieces {
  #schema: Schema;
  #head: number;
  #headBytes: Uint8Array;

  /**
   * @param schema The stream's schema.
   */
  constructor(schema: Schema) {
    this.#schema = schema;
    const empty = tableToIPC(new Table(schema), "stream");
    // An empty table serializes as the schema message and the 8-byte end-of-stream marker.
    this.#head = empty.length - 8;
    this.#headBytes = empty.subarray(0, this.#head);
  }

  /** The schema. */
  get schema(): Schema {
    return this.#schema;
  }

  /**
   * The schema message.
   *
   * @returns Its bytes.
   */
  start(): Uint8Array {
    return this.#headBytes;
  }

  /**
   * One record batch message.
   *
   * @param batch A batch of the stream's schema.
   * @returns Its bytes.
   */
  batch(batch: RecordBatch): Uint8Array {
    const full = tableToIPC(new Table([batch]), "stream");
    return full.subarray(this.#head, full.length - 8);
  }

  /**
   * The end-of-stream marker.
   *
   * @returns Its bytes.
   */
  end(): Uint8Array {
    return new Uint8Array([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
  }
}
