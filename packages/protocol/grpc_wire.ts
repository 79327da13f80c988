// Copyright 2026 the Valise authors. Apache-2.0 license.
// This module is browser compatible.
/**
 * The two pieces of gRPC's wire that Valise's direct call paths (the server's `Run` path and the
 * client's server-streaming calls, which bypass Connect's pipelines) both need: the envelope of an
 * uncompressed message, and the names of HTTP/2 error codes for the errors of a reset stream.
 * Reading envelopes stays with each side's size-capped reader.
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
