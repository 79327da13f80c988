// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * One Arrow IPC stream out of several workers' outputs, unit by unit in input order: each
 * unit's output is a whole IPC stream of its own (arrow transport) or columnar batches; the
 * merged stream has the first schema, and each unit's dictionaries and batches.
 *
 * @module
 */
import { ipcMessageReader, IpcMessageType } from "@valise/protocol";
import type { Schema } from "apache-arrow";
import {
  ColumnarTypeError,
  decodeColumnarBatch,
  readColumnarBatch,
  schemaOfHeader,
} from "./_columnar.ts";
import { IpcStreamPieces, parseSchemaMessage } from "./_ipc_pieces.ts";
import { applyFailure, type Transport } from "./_apply_common.ts";

const EOS = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Field names, types and nullability, in order: what batches of a schema must agree on. */
function shape(schema: Schema): string {
  return schema.fields.map((f) => `${f.name}: ${f.type}${f.nullable ? "" : " not null"}`)
    .join(", ");
}

/** Builds the call's output stream from its units' output items, in input order. */
export class OutputMerger {
  #transport: Transport;
  #declared: Schema | undefined;
  #declaredBytes: Uint8Array;
  #max: number;
  /** Arrow: the schema message sent, once one is. */
  #schema: Uint8Array | undefined;
  #schemaShape: string | undefined;
  /** Columnar: the stream being written, once one batch came. */
  #pieces: IpcStreamPieces | undefined;

  /**
   * @param transport The workers' transport.
   * @param declared The declared output schema, if any.
   * @param declaredBytes Its IPC bytes (empty when none).
   * @param maxMessageBytes The largest message.
   */
  constructor(
    transport: Transport,
    declared: Schema | undefined,
    declaredBytes: Uint8Array,
    maxMessageBytes: number,
  ) {
    this.#transport = transport;
    this.#declared = declared;
    this.#declaredBytes = declaredBytes;
    this.#max = maxMessageBytes;
  }

  /**
   * The stream's bytes for one output item.
   *
   * @param item One IPC message of a unit's output stream (arrow) or one columnar batch.
   * @returns Pieces of the output stream (none for a repeated schema).
   * @throws {ServerError} `APPLY_OUTPUT_TYPE_MISMATCH` when it does not fit the stream's
   * schema, `APPLY_PROTOCOL` when it is not one whole message.
   */
  item(item: Uint8Array): Uint8Array[] {
    return this.#transport === "arrow" ? this.#arrow(item) : this.#columnar(item);
  }

  #arrow(item: Uint8Array): Uint8Array[] {
    let messages;
    try {
      messages = ipcMessageReader({ maxMessageBytes: this.#max }).push(item);
    } catch (e) {
      throw applyFailure(
        "APPLY_PROTOCOL",
        `Cannot merge a worker's output: ${(e as Error).message}`,
      );
    }
    const m = messages[0];
    if (messages.length !== 1 || !m || m.bytes.length !== item.length) {
      throw applyFailure(
        "APPLY_PROTOCOL",
        "Cannot merge a worker's output: an item is not one whole Arrow IPC message",
      );
    }
    if (m.type === IpcMessageType.SCHEMA) {
      if (!this.#schema) {
        this.#schema = item.slice();
        return [this.#schema];
      }
      if (sameBytes(item, this.#schema)) return [];
      // Workers inferred the schema each from its own first output: the same columns may still
      // serialize differently (metadata), and batches of the same shape fit either.
      let other: string;
      try {
        this.#schemaShape ??= shape(parseSchemaMessage(concat(this.#schema, EOS)));
        other = shape(parseSchemaMessage(concat(item, EOS)));
      } catch (e) {
        throw applyFailure(
          "APPLY_PROTOCOL",
          `Cannot merge a worker's output: ${(e as Error).message}`,
        );
      }
      if (other !== this.#schemaShape) {
        throw applyFailure(
          "APPLY_OUTPUT_TYPE_MISMATCH",
          `The workers' outputs have different schemas (${this.#schemaShape} and ${other}): ` +
            "each worker infers it from its own first output batch; declare the output schema",
        );
      }
      return [];
    }
    if (m.type === IpcMessageType.DICTIONARY_BATCH || m.type === IpcMessageType.RECORD_BATCH) {
      if (!this.#schema) {
        throw applyFailure(
          "APPLY_PROTOCOL",
          "Cannot merge a worker's output: a batch before its schema",
        );
      }
      // A unit's dictionaries come again before its batches: in the merged stream they replace
      // the previous unit's (IPC streams allow replacement dictionaries).
      return [item];
    }
    throw applyFailure(
      "APPLY_PROTOCOL",
      `Cannot merge a worker's output: an Arrow IPC message of type ${m.type}`,
    );
  }

  #columnar(item: Uint8Array): Uint8Array[] {
    const out: Uint8Array[] = [];
    if (!this.#pieces) {
      const { header } = readColumnarBatch(item);
      this.#pieces = new IpcStreamPieces(this.#declared ?? schemaOfHeader(header));
      out.push(this.#pieces.start());
    }
    try {
      out.push(this.#pieces.batch(decodeColumnarBatch(item, this.#pieces.schema)));
    } catch (e) {
      if (!(e instanceof ColumnarTypeError)) throw e;
      throw applyFailure("APPLY_OUTPUT_TYPE_MISMATCH", e.message);
    }
    return out;
  }

  /**
   * The end of the stream: the end-of-stream marker, after the declared schema when no
   * output came (no stream at all without either).
   *
   * @returns The last pieces.
   */
  end(): Uint8Array[] {
    if (this.#transport === "arrow") {
      if (this.#schema) return [EOS];
      if (!this.#declaredBytes.length) return [];
      const schema = ipcMessageReader({ maxMessageBytes: this.#max }).push(this.#declaredBytes)
        .find((m) => m?.type === IpcMessageType.SCHEMA);
      return schema ? [schema.bytes.slice(), EOS] : [];
    }
    if (!this.#pieces && this.#declared) {
      this.#pieces = new IpcStreamPieces(this.#declared);
      return [this.#pieces.start(), this.#pieces.end()];
    }
    return this.#pieces ? [this.#pieces.end()] : [];
  }
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}
