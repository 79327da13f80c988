// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * A hand-written HTTP/2 client for hostile tests: frames written byte by byte over a `node:net`
 * socket (preface, SETTINGS, HEADERS with a literal HPACK block, DATA, RST_STREAM, GOAWAY,
 * WINDOW_UPDATE, PING), so a test can send what no well-behaved client library would: a
 * WINDOW_UPDATE of 0, a window pushed past 2^31-1, a second GOAWAY, a reset after the answer, a
 * flood of PINGs. What the server sends back is parsed only as far as frame types, flags and
 * stream ids: enough to wait for an answer, a reset, a GOAWAY or the end of the connection.
 *
 * @module
 */
import * as net from "node:net";

/** HTTP/2 frame types (RFC 9113 §6). */
export const FrameType = {
  DATA: 0,
  HEADERS: 1,
  RST_STREAM: 3,
  SETTINGS: 4,
  PING: 6,
  GOAWAY: 7,
  WINDOW_UPDATE: 8,
} as const;

/** SETTINGS identifiers (RFC 9113 §6.5.2). */
export const Setting = {
  HEADER_TABLE_SIZE: 1,
  ENABLE_PUSH: 2,
  MAX_CONCURRENT_STREAMS: 3,
  INITIAL_WINDOW_SIZE: 4,
  MAX_FRAME_SIZE: 5,
} as const;

const END_STREAM = 0x1;
const ACK = 0x1;
const END_HEADERS = 0x4;
const PREFACE = new TextEncoder().encode("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

/** One frame: a 9-byte header and its payload. */
export function frame(
  type: number,
  flags: number,
  streamId: number,
  payload: Uint8Array,
): Uint8Array {
  const out = new Uint8Array(9 + payload.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, payload.length << 8);
  out[3] = type;
  out[4] = flags;
  v.setUint32(5, streamId & 0x7fffffff);
  out.set(payload, 9);
  return out;
}

function u32(...values: number[]): Uint8Array {
  const out = new Uint8Array(4 * values.length);
  values.forEach((x, i) => new DataView(out.buffer).setUint32(4 * i, x >>> 0));
  return out;
}

/** An HPACK integer with an `n`-bit prefix whose high bits are `mask` (RFC 7541 §5.1). */
function hpackInt(value: number, n: number, mask: number): number[] {
  const max = (1 << n) - 1;
  if (value < max) return [mask | value];
  const out = [mask | max];
  let rest = value - max;
  while (rest >= 128) {
    out.push((rest % 128) + 128);
    rest = Math.floor(rest / 128);
  }
  out.push(rest);
  return out;
}

function hpackString(s: string): number[] {
  const bytes = new TextEncoder().encode(s);
  return [...hpackInt(bytes.length, 7, 0), ...bytes];
}

/**
 * A header block of literals (no Huffman, no dynamic table): `:method POST` and `:scheme http`
 * from the static table, every other field a literal without indexing.
 */
export function headerBlock(path: string, headers: Record<string, string>): Uint8Array {
  const out: number[] = [0x83, 0x86]; // :method POST, :scheme http
  out.push(...hpackInt(4, 4, 0), ...hpackString(path)); // :path, name indexed
  out.push(...hpackInt(1, 4, 0), ...hpackString("127.0.0.1")); // :authority
  for (const [k, v] of Object.entries(headers)) out.push(0, ...hpackString(k), ...hpackString(v));
  return new Uint8Array(out);
}

/** How a stream ended, as the server told it. */
export type StreamEnd = "answered" | "reset" | "goaway" | "connection closed";

/** A raw connection to an HTTP/2 server. */
export class RawH2 {
  /** The socket. */
  readonly socket: net.Socket;
  /** Whether the socket has closed. */
  closed = false;
  /** The server's GOAWAY error codes, in order. */
  readonly goaways: number[] = [];
  /** The lowest last-stream id of the server's GOAWAYs: streams above it are not processed. */
  lastStream = 2 ** 31 - 1;
  /** RST_STREAM codes the server sent, by stream. */
  readonly resets: Map<number, number> = new Map();
  /** Streams the server ended (END_STREAM), answered. */
  readonly answered: Set<number> = new Set();
  /** Streams on which the server sent a HEADERS frame. */
  readonly headersSeen: Set<number> = new Set();
  /** PING ACKs received. */
  pingAcks = 0;
  #buf = new Uint8Array(0);
  #waiters: (() => void)[] = [];
  #nextStream = 1;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on("data", (chunk: Uint8Array) => this.#read(chunk));
    socket.on("error", () => {/* the server may cut us off: that is what `closed` says */});
    socket.on("close", () => {
      this.closed = true;
      this.#wake();
    });
  }

  /**
   * Connects, sends the preface and an empty SETTINGS frame.
   *
   * @param port The server's loopback port.
   * @returns The connection, once the socket is connected.
   */
  static connect(port: number): Promise<RawH2> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(port, "127.0.0.1");
      const c = new RawH2(socket);
      socket.once("error", reject);
      socket.once("connect", () => {
        socket.off("error", reject);
        c.write(PREFACE);
        // Roomy windows: the answers are read as they come, never a reason for the server to wait.
        c.settings([[Setting.INITIAL_WINDOW_SIZE, 2 ** 20]]);
        c.windowUpdate(0, 2 ** 24);
        resolve(c);
      });
    });
  }

  /** Writes bytes unless the socket is gone. */
  write(...chunks: Uint8Array[]): void {
    if (this.closed || this.socket.destroyed || !this.socket.writable) return;
    for (const c of chunks) this.socket.write(c);
  }

  /** Opens a stream with a HEADERS frame; returns its id. */
  headers(path: string, headers: Record<string, string>, endStream = false): number {
    const id = this.#nextStream;
    this.#nextStream += 2;
    this.write(
      frame(
        FrameType.HEADERS,
        END_HEADERS | (endStream ? END_STREAM : 0),
        id,
        headerBlock(path, headers),
      ),
    );
    return id;
  }

  /** A DATA frame. */
  data(stream: number, bytes: Uint8Array, endStream = false): void {
    this.write(frame(FrameType.DATA, endStream ? END_STREAM : 0, stream, bytes));
  }

  /** RST_STREAM with an error code. */
  reset(stream: number, code: number): void {
    this.write(frame(FrameType.RST_STREAM, 0, stream, u32(code)));
  }

  /** GOAWAY naming the last stream the client processed (none of the server's). */
  goaway(code: number, lastStream = 0): void {
    this.write(frame(FrameType.GOAWAY, 0, 0, u32(lastStream, code)));
  }

  /** WINDOW_UPDATE of `increment` (0 and values past the window's cap included). */
  windowUpdate(stream: number, increment: number): void {
    this.write(frame(FrameType.WINDOW_UPDATE, 0, stream, u32(increment & 0x7fffffff)));
  }

  /** `count` PING frames in one write. */
  ping(count = 1): void {
    const one = frame(FrameType.PING, 0, 0, new Uint8Array(8));
    const all = new Uint8Array(one.length * count);
    for (let i = 0; i < count; i++) all.set(one, i * one.length);
    this.write(all);
  }

  /** A SETTINGS frame of (identifier, value) pairs. */
  settings(pairs: [number, number][]): void {
    const payload = new Uint8Array(6 * pairs.length);
    const v = new DataView(payload.buffer);
    pairs.forEach(([id, value], i) => {
      v.setUint16(6 * i, id);
      v.setUint32(6 * i + 2, value >>> 0);
    });
    this.write(frame(FrameType.SETTINGS, 0, 0, payload));
  }

  /** Resolves once `stream` is answered or reset, or the connection ends. */
  async waitStream(stream: number): Promise<StreamEnd> {
    for (;;) {
      if (this.answered.has(stream)) return "answered";
      if (this.resets.has(stream)) return "reset";
      if (this.closed) return "connection closed";
      if (stream > this.lastStream) return "goaway";
      await new Promise<void>((r) => this.#waiters.push(r));
    }
  }

  /**
   * Sends a PING and resolves once its ACK (or the end of the connection) arrives: the server
   * processes frames in order, so everything sent before has been read by then.
   */
  async roundTrip(): Promise<void> {
    const want = this.pingAcks + 1;
    this.ping();
    while (this.pingAcks < want && !this.closed) {
      await new Promise<void>((r) => this.#waiters.push(r));
    }
  }

  /** Resolves once the server has closed the connection (or it was destroyed here). */
  async waitClosed(): Promise<void> {
    while (!this.closed) await new Promise<void>((r) => this.#waiters.push(r));
  }

  #wake(): void {
    for (const w of this.#waiters.splice(0)) w();
  }

  #read(chunk: Uint8Array): void {
    const buf = new Uint8Array(this.#buf.length + chunk.length);
    buf.set(this.#buf);
    buf.set(chunk, this.#buf.length);
    let o = 0;
    while (buf.length - o >= 9) {
      const v = new DataView(buf.buffer, buf.byteOffset + o);
      const len = v.getUint32(0) >>> 8;
      if (buf.length - o < 9 + len) break;
      const type = buf[o + 3]!;
      const flags = buf[o + 4]!;
      const stream = v.getUint32(5) & 0x7fffffff;
      const payload = buf.subarray(o + 9, o + 9 + len);
      o += 9 + len;
      if (type === FrameType.SETTINGS && !(flags & ACK)) {
        this.write(frame(FrameType.SETTINGS, ACK, 0, new Uint8Array(0)));
      } else if (type === FrameType.GOAWAY && len >= 8) {
        const g = new DataView(payload.buffer, payload.byteOffset);
        this.goaways.push(g.getUint32(4));
        this.lastStream = Math.min(this.lastStream, g.getUint32(0) & 0x7fffffff);
      } else if (type === FrameType.RST_STREAM && len >= 4) {
        this.resets.set(stream, new DataView(payload.buffer, payload.byteOffset).getUint32(0));
      }
      if (type === FrameType.PING && flags & ACK) this.pingAcks++;
      if (type === FrameType.HEADERS) this.headersSeen.add(stream);
      if ((type === FrameType.HEADERS || type === FrameType.DATA) && flags & END_STREAM) {
        this.answered.add(stream);
      }
    }
    this.#buf = buf.slice(o);
    this.#wake();
  }
}
