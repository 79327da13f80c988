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
import { FramingError } from "@valise/protocol";
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

/**
 * Incremental reader of driver frames (`u32 length (big-endian) | u8 type | payload`), capped:
 * the driver runs code of the session, which may write any bytes to the driver's stdout. Each
 * payload is copied once, straight from the bytes read into its own buffer (which the columnar
 * decoder views, 8-byte aligned), however the frames are cut.
 */
export class DriverFrameReader {
  #max: number;
  /** The length and type of the frame being read. */
  #head = new Uint8Array(5);
  #headGot = 0;
  /** Its payload, once the header is read. */
  #body: Uint8Array | undefined;
  #bodyGot = 0;
  #failure: unknown;

  /**
   * @param maxFrameBytes The largest frame accepted, header included; a longer length fails
   * with a `FramingError` (`TOO_LARGE`) as soon as it is read.
   */
  constructor(maxFrameBytes: number = DRIVER_FRAME_BYTES + 5) {
    if (!Number.isSafeInteger(maxFrameBytes) || maxFrameBytes < 5) {
      throw new RangeError(`Cannot read driver frames of at most ${maxFrameBytes} bytes`);
    }
    this.#max = maxFrameBytes;
  }

  /** The cap: the largest frame accepted. */
  get maxFrameBytes(): number {
    return this.#max;
  }

  /** Bytes held of a frame not yet whole. */
  get pending(): number {
    return this.#headGot + this.#bodyGot + (this.#body ? 5 : 0);
  }

  /**
   * Adds bytes and returns the frames they complete.
   *
   * @param chunk Bytes read (not kept: the payloads are copies).
   * @returns Whole frames, in order.
   * @throws {FramingError} `BAD_LENGTH` or `TOO_LARGE` as soon as a length is read; again on
   * every later call.
   */
  push(chunk: Uint8Array): DriverFrameData[] {
    if (this.#failure !== undefined) throw this.#failure;
    try {
      return this.#push(chunk);
    } catch (e) {
      this.#failure = e;
      throw e;
    }
  }

  /**
   * Declares the end of the stream.
   *
   * @throws {FramingError} `TRUNCATED` when it ends inside a frame.
   */
  end(): void {
    if (this.#failure !== undefined) throw this.#failure;
    const held = this.pending;
    if (!held) return;
    const n = this.#headGot >= 4 || this.#body
      ? 4 + new DataView(this.#head.buffer).getUint32(0)
      : undefined;
    this.#failure = new FramingError(
      "TRUNCATED",
      `Cannot read driver frame: the stream ends inside one (${
        n === undefined
          ? `${held} bytes, too few for its header`
          : `${held} of its ${n} bytes arrived`
      })`,
    );
    throw this.#failure;
  }

  #push(chunk: Uint8Array): DriverFrameData[] {
    const out: DriverFrameData[] = [];
    let off = 0;
    // Every step takes at least one byte of the chunk, or ends the loop.
    while (off < chunk.length) {
      const body = this.#body;
      if (body === undefined) {
        const k = Math.min(5 - this.#headGot, chunk.length - off);
        this.#head.set(chunk.subarray(off, off + k), this.#headGot);
        this.#headGot += k;
        off += k;
        if (this.#headGot >= 4 && this.#headGot - k < 4) this.#measure();
        if (this.#headGot < 5) break;
        const n = new DataView(this.#head.buffer).getUint32(0);
        this.#headGot = 0;
        this.#body = new Uint8Array(n - 1);
        this.#bodyGot = 0;
      } else {
        const k = Math.min(body.length - this.#bodyGot, chunk.length - off);
        body.set(chunk.subarray(off, off + k), this.#bodyGot);
        this.#bodyGot += k;
        off += k;
      }
      if (this.#body && this.#bodyGot === this.#body.length) {
        out.push({ type: this.#head[4]!, payload: this.#body });
        this.#body = undefined;
        this.#bodyGot = 0;
      }
    }
    return out;
  }

  /** Checks the length just read: at least the type byte, at most the cap. */
  #measure(): void {
    const n = new DataView(this.#head.buffer).getUint32(0);
    if (n < 1) {
      throw new FramingError(
        "BAD_LENGTH",
        "Cannot read driver frame: length 0 is below its 1-byte header",
      );
    }
    if (4 + n > this.#max) {
      throw new FramingError(
        "TOO_LARGE",
        `Cannot read driver frame: ${4 + n} bytes is larger than the limit of ${this.#max} bytes`,
        { limit: this.#max, size: 4 + n },
      );
    }
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
