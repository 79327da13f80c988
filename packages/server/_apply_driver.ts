// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The Apply driver's protocol constants, defined here once, and the program that starts it: its
 * Python source lives in `apply_driver.py` (stdlib only, Python 3.8+), which the server runs as
 * an ordinary launcher run (`code`, streamed stdin, flow-controlled stdout), so it gets the
 * session's interpreter, working directory, `sys.path`, environment, sandbox and limits. See
 * `docs/apply.md` for the frames and the columnar encoding.
 *
 * Frames both ways: `u32 length (of what follows, big-endian) | u8 type | payload`.
 *
 * @module
 */
import { pythonStub } from "@valise/launcher";
import { FrameReader, u32Frames } from "@valise/protocol";
import DRIVER_SOURCE_TEXT from "./apply_driver.py" with { type: "text" };

/** Frame types of the driver protocol. */
export const DriverFrame = {
  /** Server → driver: JSON: the function, form, transport and declared output columns. */
  START: 1,
  /** Server → driver: one columnar batch, or a chunk of the Arrow IPC input stream. */
  DATA: 2,
  /** Server → driver: the input has ended. */
  END: 3,
  /** Driver → server, first: JSON `{executable, version, pyarrow, pandas}` (versions or null). */
  HELLO: 10,
  /** Driver → server: one columnar output batch, or a chunk of the Arrow IPC output stream. */
  OUT: 11,
  /** Driver → server: JSON `{errorClass, message, traceback}`; the driver then exits. */
  ERROR: 12,
  /** Driver → server: JSON `{rowsIn, rowsOut, batchesIn, batchesOut}`; the last frame. */
  DONE: 13,
  /**
   * Driver → server, in units mode only: the output of one input unit is complete; JSON
   * `{rowsIn, rowsOut, batchesIn, batchesOut}` of that unit.
   */
  MARK: 14,
} as const;

/** The file name the driver is compiled under (its frames are stripped from what users see). */
export const DRIVER_FILENAME = "@valise/server/apply_driver.py";

/** Source of the driver, as in `apply_driver.py`. */
export const DRIVER_SOURCE: string = DRIVER_SOURCE_TEXT;

/** The program the launcher runs: the constants, then the driver compiled under its file name. */
export const DRIVER_STUB: string = pythonStub(DRIVER_SOURCE_TEXT, DRIVER_FILENAME, {
  frames: DriverFrame,
  file: DRIVER_FILENAME,
});

/** One frame the Apply driver wrote. */
export interface DriverFrameData {
  /** Frame type, one of `DriverFrame`. */
  type: number;
  /** Payload: its own copy, starting 8-byte aligned (the columnar decoder views it). */
  payload: Uint8Array;
}

/**
 * The largest driver frame (type and payload) accepted by default: one columnar output batch
 * or one piece of the Arrow IPC output, as large as the server's default `readMaxBytes`.
 */
export const DRIVER_FRAME_BYTES: number = 64 * 1024 * 1024;

const DRIVER_FORMAT = u32Frames<DriverFrameData>(
  "driver frame",
  1,
  (body) => ({ type: body[0]!, payload: body.slice(1) }),
);

/**
 * Incremental reader of driver frames (`u32 length (big-endian) | u8 type | payload`), capped:
 * the driver runs code of the session, which may write any bytes to the driver's stdout.
 */
export class DriverFrameReader extends FrameReader<DriverFrameData> {
  /**
   * @param maxFrameBytes The largest frame accepted, header included; a longer length fails
   * with a `FramingError` (`TOO_LARGE`) as soon as it is read.
   */
  constructor(maxFrameBytes: number = DRIVER_FRAME_BYTES + 5) {
    super(DRIVER_FORMAT, { maxFrameBytes });
  }
}

/**
 * Encodes a driver frame header; the payload follows it.
 *
 * @param type The frame type.
 * @param payloadLength Bytes of payload that follow.
 * @returns The 5-byte header.
 */
export function driverFrameHeader(type: number, payloadLength: number): Uint8Array {
  const out = new Uint8Array(5);
  const v = new DataView(out.buffer);
  v.setUint32(0, payloadLength + 1);
  v.setUint8(4, type);
  return out;
}
