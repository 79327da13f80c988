// Copyright 2026 the Valise authors. Apache-2.0 license.
// This module is browser compatible.
/**
 * The pieces of gRPC's wire that Valise's direct call paths (the server's `Run` and
 * `AddArtifacts` paths and the client's direct calls, which bypass Connect's pipelines) need: the
 * envelope of an uncompressed message, a size-capped reader of a stream of envelopes, and the
 * names of HTTP/2 error codes for the errors of a reset stream.
 *
 * ```ts
 * import { grpcEnvelope, http2ErrorName } from "@valise/protocol";
 * import { deepEqual, equal } from "node:assert/strict";
 *
 * deepEqual(grpcEnvelope(new Uint8Array([7, 8])), new Uint8Array([0, 0, 0, 0, 2, 7, 8]));
 * equal(http2ErrorName(8), "CANCEL");
 * ```
 *
 * @module
 */

/**
 * One uncompressed gRPC message in its envelope: a flags byte (0), its length (4 bytes, big
 * endian), the message.
 *
 * @param message The serialized message.
 * @returns A new buffer holding the envelope.
 */
export function grpcEnvelope(message: Uint8Array): Uint8Array {
  const out = new Uint8Array(5 + message.length);
  new DataView(out.buffer).setUint32(1, message.length);
  out.set(message, 5);
  return out;
}

const HTTP2_ERROR_NAMES: Readonly<Record<number, string>> = {
  0: "NO_ERROR",
  1: "PROTOCOL_ERROR",
  2: "INTERNAL_ERROR",
  3: "FLOW_CONTROL_ERROR",
  4: "SETTINGS_TIMEOUT",
  5: "STREAM_CLOSED",
  6: "FRAME_SIZE_ERROR",
  7: "REFUSED_STREAM",
  8: "CANCEL",
  9: "COMPRESSION_ERROR",
  10: "CONNECT_ERROR",
  11: "ENHANCE_YOUR_CALM",
  12: "INADEQUATE_SECURITY",
  13: "HTTP_1_1_REQUIRED",
};

/**
 * The name RFC 9113 gives an HTTP/2 error code (`RST_STREAM`, `GOAWAY`).
 *
 * @param code The error code.
 * @returns Its name, or `undefined` for a code the RFC does not define.
 */
export function http2ErrorName(code: number): string | undefined {
  return HTTP2_ERROR_NAMES[code];
}

/** What is wrong with a stream of gRPC envelopes. */
export type EnvelopeFault =
  /** A declared length over the cap (refused at its header, before a byte of it is kept). */
  | { readonly kind: "too_large"; readonly length: number; readonly max: number }
  /** The compressed flag on a stream that has no compression. */
  | { readonly kind: "compressed" }
  /** The stream ended inside an envelope. */
  | { readonly kind: "incomplete" };

/**
 * Splits a stream of uncompressed gRPC envelopes, in pieces of any size, into messages. Each
 * length is checked against the cap as soon as its header is whole, before a byte of its message
 * is kept; what is kept of a message is only what has arrived of it (views of the pieces, no
 * buffer of the declared length), so a forged length costs nothing until its bytes come. A
 * message that lies wholly inside one piece is handed on as a view of it (no copy); one spread
 * over several is gathered into one buffer when its last byte arrives. The first fault stops it.
 *
 * ```ts
 * import { GrpcEnvelopeReader, grpcEnvelope } from "@valise/protocol";
 * import { deepEqual } from "node:assert/strict";
 *
 * const r = new GrpcEnvelopeReader(16);
 * const got: number[][] = [];
 * const bytes = grpcEnvelope(new Uint8Array([1, 2, 3]));
 * r.push(bytes.subarray(0, 4), (m) => got.push([...m]));
 * r.push(bytes.subarray(4), (m) => got.push([...m]));
 * deepEqual(got, [[1, 2, 3]]);
 * r.push(new Uint8Array([0, 0, 0, 1, 0]), () => {});
 * deepEqual(r.fault, { kind: "too_large", length: 256, max: 16 });
 * ```
 */
export class GrpcEnvelopeReader {
  /** What is wrong, once something is; nothing more is read then. */
  fault: EnvelopeFault | undefined;
  #max: number;
  #header = new Uint8Array(5);
  #headerHave = 0;
  /** The length of the message being read, or -1 between messages. */
  #length = -1;
  #parts: Uint8Array[] = [];
  #have = 0;

  /**
   * @param maxBytes The largest message, in bytes.
   */
  constructor(maxBytes: number) {
    this.#max = maxBytes;
  }

  /** Whether part of an envelope is held. */
  get pending(): boolean {
    return this.#headerHave > 0 || this.#length >= 0;
  }

  /**
   * Takes the next bytes; hands on each message as it is whole.
   *
   * @param chunk The bytes, in order. Views of it are kept and handed on: it must not be reused.
   * @param onMessage Told each message, in order.
   */
  push(chunk: Uint8Array, onMessage: (message: Uint8Array) => void): void {
    let off = 0;
    while (off < chunk.length && this.fault === undefined) {
      if (this.#length < 0) {
        const n = Math.min(5 - this.#headerHave, chunk.length - off);
        this.#header.set(chunk.subarray(off, off + n), this.#headerHave);
        this.#headerHave += n;
        off += n;
        if (this.#headerHave < 5) return;
        this.#headerHave = 0;
        const view = new DataView(this.#header.buffer);
        const flags = view.getUint8(0);
        const length = view.getUint32(1);
        if (length > this.#max) {
          this.fault = { kind: "too_large", length, max: this.#max };
          return;
        }
        if ((flags & 0b01) !== 0) {
          this.fault = { kind: "compressed" };
          return;
        }
        this.#length = length;
      }
      const n = Math.min(this.#length - this.#have, chunk.length - off);
      if (n > 0) this.#parts.push(chunk.subarray(off, off + n));
      this.#have += n;
      off += n;
      if (this.#have < this.#length) return;
      const parts = this.#parts;
      // Empty messages share one view: a body of them (5 bytes each) costs no allocation apiece.
      const message = parts.length === 1
        ? parts[0]!
        : parts.length === 0
        ? EMPTY
        : join(parts, this.#length);
      this.#parts = [];
      this.#have = 0;
      this.#length = -1;
      onMessage(message);
    }
  }

  /** The stream ended: an envelope cut short is a fault. */
  end(): void {
    if (this.fault === undefined && this.pending) this.fault = { kind: "incomplete" };
    this.#parts = [];
  }
}

const EMPTY = new Uint8Array(0);

function join(parts: Uint8Array[], length: number): Uint8Array {
  const out = new Uint8Array(length);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
