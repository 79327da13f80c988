// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Framing of the pipe protocol with the fork server:
 * `u32 length (of what follows) | u8 type | u32 run id | payload`, big-endian.
 *
 * @module
 */

/** One decoded frame. */
export interface Frame {
  /** Frame type, one of `FrameType`. */
  type: number;
  /** Run id, 0 for server-wide frames. */
  id: number;
  /** Payload bytes (a view into the decoder's buffer copy). */
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

/** Incremental decoder of a byte stream into frames. */
export class FrameDecoder {
  #buf: Uint8Array = new Uint8Array(0);
  #start = 0;
  #end = 0;

  /**
   * Adds bytes and returns the frames completed by them.
   *
   * @param chunk Bytes read from the stream.
   * @returns Complete frames, in order.
   */
  push(chunk: Uint8Array): Frame[] {
    this.#append(chunk);
    const frames: Frame[] = [];
    while (this.#end - this.#start >= 4) {
      const view = new DataView(this.#buf.buffer, this.#buf.byteOffset + this.#start);
      const n = view.getUint32(0);
      if (n < 5) throw new SyntaxError(`Cannot decode frame: length ${n} is below 5`);
      if (this.#end - this.#start < 4 + n) break;
      const type = view.getUint8(4);
      const id = view.getUint32(5);
      const payload = this.#buf.slice(this.#start + 9, this.#start + 4 + n);
      frames.push({ type, id, payload });
      this.#start += 4 + n;
    }
    if (this.#start === this.#end) this.#start = this.#end = 0;
    return frames;
  }

  /** Bytes held that do not yet make a whole frame. */
  get pending(): number {
    return this.#end - this.#start;
  }

  #append(chunk: Uint8Array): void {
    if (this.#end + chunk.length > this.#buf.length) {
      const live = this.#end - this.#start;
      if (live + chunk.length <= this.#buf.length) {
        this.#buf.copyWithin(0, this.#start, this.#end);
      } else {
        const next = new Uint8Array(Math.max(live + chunk.length, this.#buf.length * 2, 65536));
        next.set(this.#buf.subarray(this.#start, this.#end), 0);
        this.#buf = next;
      }
      this.#start = 0;
      this.#end = live;
    }
    this.#buf.set(chunk, this.#end);
    this.#end += chunk.length;
  }
}
