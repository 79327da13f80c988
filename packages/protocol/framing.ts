// Copyright 2026 the Valise authors. Apache-2.0 license.
// This module is browser compatible.
/**
 * Size-capped framing of byte streams whose lengths come from someone else: a client, a worker,
 * a fork server running a session's interpreter. One reader serves every length-prefixed format
 * of Valise (the fork server's frames, the Apply driver's frames, Arrow IPC messages): it checks
 * each length before it buffers a byte of the frame, never holds more than one frame, and every
 * step either consumes bytes or asks for strictly more, so no input makes it loop.
 *
 * ```ts
 * import { FrameReader, u32Frames } from "@valise/protocol";
 * import { deepEqual, throws } from "node:assert/strict";
 *
 * const reader = new FrameReader(u32Frames("frame", 1, (body) => body[0]), { maxFrameBytes: 64 });
 * deepEqual(reader.push(new Uint8Array([0, 0, 0, 1, 7, 0, 0])), [7]);
 * deepEqual(reader.push(new Uint8Array([0, 1, 8])), [8]);
 * // A forged 4 GiB length fails at once, before anything of it is buffered.
 * throws(() => reader.push(new Uint8Array([255, 255, 255, 240, 2])), /larger than the limit/);
 * ```
 *
 * @module
 */

/**
 * Why bytes could not be framed; carried by {@linkcode FramingError}.
 *
 * - `TOO_LARGE`: a length (or what has to be buffered) is above the reader's cap.
 * - `BAD_LENGTH`: a length is negative, too small for its own header, or out of range.
 * - `BAD_HEADER`: a header's fields point outside it or are malformed.
 * - `UNEXPECTED`: a well-formed frame that may not come where it came.
 * - `TRUNCATED`: the stream ended inside a frame.
 */
export type FramingErrorCode =
  | "TOO_LARGE"
  | "BAD_LENGTH"
  | "BAD_HEADER"
  | "UNEXPECTED"
  | "TRUNCATED";

const BRAND = Symbol.for("valise.protocol.FramingError");

/** Bytes that are not a well-formed, size-bounded stream of frames. */
export class FramingError extends SyntaxError {
  override name = "FramingError";
  /** Stable code, see {@linkcode FramingErrorCode}. */
  readonly code: FramingErrorCode;
  /** For `TOO_LARGE`: the cap in bytes that was exceeded. */
  readonly limit: number | undefined;
  /** For `TOO_LARGE`: the size in bytes that exceeded it. */
  readonly size: number | undefined;

  /**
   * @param code Stable code.
   * @param message A `Cannot read <what>: <why>` message naming the values involved.
   * @param sizes For `TOO_LARGE`: the cap, and the size that exceeded it.
   */
  constructor(
    code: FramingErrorCode,
    message: string,
    sizes: { limit?: number; size?: number } = {},
  ) {
    super(message);
    this.code = code;
    this.limit = sizes.limit;
    this.size = sizes.size;
    Object.defineProperty(this, BRAND, { value: true });
  }
}

/**
 * Whether `e` is a {@linkcode FramingError}, also one from another copy of this module.
 *
 * @param e Anything thrown.
 * @returns `true` for a framing error.
 */
export function isFramingError(e: unknown): e is FramingError {
  return typeof e === "object" && e !== null && BRAND in e;
}

/** Capacity kept after the queue empties; larger buffers (one big frame's) are let go. */
const KEEP_BYTES = 4 * 1024 * 1024;
const EMPTY = new Uint8Array(0);

/**
 * A FIFO of bytes that refuses to hold more than its cap. Bytes are copied into one buffer, so
 * memory follows the bytes held, however small the pieces they came in (a sender writing one
 * byte at a time must not cost an object per byte).
 */
export class ByteQueue {
  #buf: Uint8Array = EMPTY;
  #start = 0;
  #end = 0;
  #max: number;

  /**
   * @param maxBytes The most it may hold.
   */
  constructor(maxBytes: number) {
    if (!Number.isSafeInteger(maxBytes) || maxBytes < 0) {
      throw new RangeError(`Cannot cap a byte queue at ${maxBytes} bytes`);
    }
    this.#max = maxBytes;
  }

  /** Bytes held. */
  get length(): number {
    return this.#end - this.#start;
  }

  /** Bytes allocated (at most the cap, and at most 4 MiB once empty). */
  get capacity(): number {
    return this.#buf.length;
  }

  /**
   * Makes room for `n` bytes in all, at most the cap, so a frame of known size is not copied
   * again as it grows.
   *
   * @param n Bytes to have room for.
   */
  reserve(n: number): void {
    const want = Math.min(n, this.#max);
    if (want <= this.#buf.length) return;
    const next = new Uint8Array(want);
    next.set(this.#buf.subarray(this.#start, this.#end));
    this.#end -= this.#start;
    this.#start = 0;
    this.#buf = next;
  }

  /**
   * Appends a copy of `chunk`.
   *
   * @param chunk The bytes.
   * @throws {FramingError} `TOO_LARGE` when the queue would hold more than its cap.
   */
  push(chunk: Uint8Array): void {
    const held = this.length;
    if (held + chunk.length > this.#max) {
      throw new FramingError(
        "TOO_LARGE",
        `Cannot buffer ${chunk.length} more bytes: ${held} are held and the limit is ${this.#max}`,
        { limit: this.#max, size: held + chunk.length },
      );
    }
    if (!chunk.length) return;
    if (this.#end + chunk.length > this.#buf.length) {
      if (held + chunk.length <= this.#buf.length) {
        this.#buf.copyWithin(0, this.#start, this.#end);
        this.#start = 0;
        this.#end = held;
      } else {
        this.reserve(Math.max(held + chunk.length, this.#buf.length * 2, 1024));
      }
    }
    this.#buf.set(chunk, this.#end);
    this.#end += chunk.length;
  }

  /**
   * The first `n` bytes, left in the queue: a view, valid until the queue next changes.
   *
   * @param n How many (at most `length`).
   * @returns The bytes.
   */
  peek(n: number): Uint8Array {
    if (n > this.length) throw new RangeError(`Cannot peek ${n} bytes of ${this.length}`);
    return this.#buf.subarray(this.#start, this.#start + n);
  }

  /**
   * The first `n` bytes, removed from the queue: a copy.
   *
   * @param n How many (at most `length`).
   * @returns The bytes.
   */
  take(n: number): Uint8Array {
    const out = this.peek(n).slice();
    this.#start += n;
    if (this.#start === this.#end) {
      this.#start = this.#end = 0;
      if (this.#buf.length > KEEP_BYTES) this.#buf = EMPTY;
    }
    return out;
  }
}

/** What a {@linkcode FrameFormat} learned from a frame's first bytes. */
export type FrameMeasure =
  /** The frame's whole length, header included. */
  | { frameBytes: number }
  /** The header is longer than what was looked at: look again at this many bytes. */
  | { headerBytes: number };

/** A length-prefixed format: how long a frame is, and what it means. */
export interface FrameFormat<F> {
  /** What a frame is called in error messages, e.g. `"driver frame"`. */
  readonly name: string;
  /** Bytes to look at before anything can be said about a frame's length. */
  readonly headerBytes: number;
  /**
   * Reads a frame's length from its first bytes.
   *
   * @param head The first `headerBytes` bytes of the frame, or as many as last asked for.
   * @returns The frame's length, or how many first bytes are needed to tell.
   * @throws {FramingError} when the header is malformed.
   */
  measure(head: Uint8Array): FrameMeasure;
  /**
   * Turns a whole frame into its value.
   *
   * @param frame The frame's bytes, header included (may be a view into the pushed chunks).
   * @returns Its value.
   */
  decode(frame: Uint8Array): F;
  /**
   * Whether a frame ends the stream (an end-of-stream marker): the reader then ignores
   * everything after it.
   *
   * @param value A decoded frame.
   * @returns `true` for the last frame.
   */
  last?(value: F): boolean;
}

/** Options of {@linkcode FrameReader}. */
export interface FrameReaderOptions {
  /** The largest frame accepted, header included; the reader never holds more than this. */
  maxFrameBytes: number;
}

/**
 * Incremental, size-capped reader of a length-prefixed format. It holds at most one incomplete
 * frame (never more than `maxFrameBytes`), refuses a length above the cap as soon as it is read,
 * and fails for good after the first error.
 */
export class FrameReader<F> {
  #format: FrameFormat<F>;
  #max: number;
  #queue: ByteQueue;
  #need: number;
  #frame = false;
  #done = false;
  #failure: unknown;

  /**
   * @param format The format.
   * @param options The cap.
   */
  constructor(format: FrameFormat<F>, options: FrameReaderOptions) {
    const max = options.maxFrameBytes;
    if (!Number.isSafeInteger(max) || max < format.headerBytes || format.headerBytes < 1) {
      throw new RangeError(
        `Cannot read ${format.name}s of at most ${max} bytes with ${format.headerBytes}-byte headers`,
      );
    }
    this.#format = format;
    this.#max = max;
    this.#queue = new ByteQueue(max);
    this.#need = format.headerBytes;
  }

  /** The cap: the largest frame accepted. */
  get maxFrameBytes(): number {
    return this.#max;
  }

  /** Whether the last frame (see {@linkcode FrameFormat.last}) was read. */
  get done(): boolean {
    return this.#done;
  }

  /** Bytes held that do not yet make a whole frame (always below the cap). */
  get pending(): number {
    return this.#queue.length;
  }

  /**
   * Adds bytes and returns the frames they complete.
   *
   * @param chunk Bytes read (frames may be views into it: do not reuse its memory).
   * @returns Whole frames, in order.
   * @throws {FramingError} when a length is malformed or above the cap; again on every later call.
   */
  push(chunk: Uint8Array): F[] {
    if (this.#failure !== undefined) throw this.#failure;
    if (this.#done) return [];
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
    if (!this.#done && this.#queue.length) {
      this.#failure = new FramingError(
        "TRUNCATED",
        `Cannot read ${this.#format.name}: the stream ends inside one (${
          this.#frame
            ? `${this.#queue.length} of its ${this.#need} bytes arrived`
            : `${this.#queue.length} bytes, too few for its header`
        })`,
      );
      throw this.#failure;
    }
  }

  #push(chunk: Uint8Array): F[] {
    const out: F[] = [];
    let off = 0;
    // Every measure() either grows what is looked at or fixes a frame at least that long, and
    // every other step consumes bytes: no header can hold the reader in place.
    while (true) {
      if (this.#queue.length === 0 && chunk.length - off >= this.#need) {
        const view = chunk.subarray(off, off + this.#need);
        if (!this.#frame) {
          this.#measure(view);
          if (this.#need > view.length) continue;
        }
        off += view.length;
        out.push(this.#emit(view));
        if (this.#done) return out;
        continue;
      }
      const k = Math.min(this.#need - this.#queue.length, chunk.length - off);
      this.#queue.push(chunk.subarray(off, off + k));
      off += k;
      if (this.#queue.length < this.#need) return out;
      if (!this.#frame) {
        this.#measure(this.#queue.peek(this.#need));
        if (this.#need > this.#queue.length) continue;
      }
      out.push(this.#emit(this.#queue.take(this.#need)));
      if (this.#done) return out;
    }
  }

  #emit(frame: Uint8Array): F {
    this.#frame = false;
    this.#need = this.#format.headerBytes;
    const value = this.#format.decode(frame);
    if (this.#format.last?.(value)) this.#done = true;
    return value;
  }

  #measure(head: Uint8Array): void {
    const name = this.#format.name;
    const m = this.#format.measure(head);
    const frame = "frameBytes" in m;
    const n = frame ? m.frameBytes : m.headerBytes;
    const least = frame ? head.length : head.length + 1;
    if (!Number.isSafeInteger(n) || n < least) {
      throw new FramingError(
        "BAD_LENGTH",
        `Cannot read ${name}: its header gives a length of ${n} bytes, less than the ${least} it needs`,
      );
    }
    if (n > this.#max) {
      throw new FramingError(
        "TOO_LARGE",
        `Cannot read ${name}: ${n} bytes is larger than the limit of ${this.#max} bytes`,
        { limit: this.#max, size: n },
      );
    }
    this.#frame = frame;
    this.#need = n;
    if (this.#queue.length) this.#queue.reserve(n);
  }
}

/**
 * The format `u32 length (big-endian, of what follows) | body`, as the fork server and the Apply
 * driver frame their messages.
 *
 * @param name What a frame is called in error messages.
 * @param minBody The smallest valid body (its fixed fields).
 * @param decode Turns a body into its value (a view into the frame: copy what must outlive it).
 * @returns The format.
 */
export function u32Frames<F>(
  name: string,
  minBody: number,
  decode: (body: Uint8Array) => F,
): FrameFormat<F> {
  return {
    name,
    headerBytes: 4,
    measure(head) {
      const n = new DataView(head.buffer, head.byteOffset, 4).getUint32(0);
      if (n < minBody) {
        throw new FramingError(
          "BAD_LENGTH",
          `Cannot read ${name}: length ${n} is below its ${minBody}-byte header`,
        );
      }
      return { frameBytes: 4 + n };
    },
    decode: (frame) => decode(frame.subarray(4)),
  };
}
