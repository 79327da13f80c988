// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Framing of the pipe protocol with the fork server:
 * `u32 length (of what follows) | u8 type | u32 run id | payload`, big-endian.
 *
 * @module
 */
import { FrameReader, u32Frames } from "@valise/protocol";
import { OUTPUT_PIECE } from "./_bootstrap.ts";

/** One decoded frame. */
export interface Frame {
  /** Frame type, one of `FrameType`. */
  type: number;
  /** Run id, 0 for server-wide frames. */
  id: number;
  /** Payload bytes (a view into the bytes read: not to be written to). */
  payload: Uint8Array;
}

const encoder = new TextEncoder();

/**
 * Encodes one frame.
 *
 * @param type Frame type.
 * @param id Run id.
 * @param payload Payload bytes.
 * @returns The frame's bytes.
 */
export function encodeFrame(
  type: number,
  id: number,
  payload: Uint8Array = new Uint8Array(),
): Uint8Array {
  const out = new Uint8Array(9 + payload.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, 5 + payload.length);
  view.setUint8(4, type);
  view.setUint32(5, id);
  out.set(payload, 9);
  return out;
}

/**
 * Encodes a RUN payload: `u32 JSON length | JSON | stdin bytes`.
 *
 * @param spec The run's JSON description.
 * @param stdin Bytes for the run's standard input.
 * @returns The payload.
 */
export function encodeRunPayload(spec: unknown, stdin: Uint8Array): Uint8Array {
  const json = encoder.encode(JSON.stringify(spec));
  const out = new Uint8Array(4 + json.length + stdin.length);
  new DataView(out.buffer).setUint32(0, json.length);
  out.set(json, 4);
  out.set(stdin, 4 + json.length);
  return out;
}

/**
 * The longest frame the fork server may send: header and one read of a run's pipe (JSON frames
 * are far smaller). The fork server runs the session's own interpreter, so a longer length is a
 * protocol violation, refused before any of it is buffered.
 */
export const MAX_FRAME_BYTES: number = 9 + OUTPUT_PIECE;

const FORMAT = u32Frames<Frame>("fork server frame", 5, (body) => ({
  type: body[0]!,
  id: new DataView(body.buffer, body.byteOffset, 5).getUint32(1),
  payload: body.subarray(5),
}));

/** Incremental, size-capped decoder of the fork server's frames. */
export class FrameDecoder extends FrameReader<Frame> {
  /**
   * @param maxFrameBytes The longest frame accepted, header included.
   */
  constructor(maxFrameBytes: number = MAX_FRAME_BYTES) {
    super(FORMAT, { maxFrameBytes });
  }
}
